"""Self-contained HTML pages (the data report, the sweep report): figures embedded as PNG, so a
page opens from disk and from MLflow's artifact view alike."""

from __future__ import annotations

import base64
import html
import io

from matplotlib.figure import Figure

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1300px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f4f4f4}img{max-width:100%}figure{margin:2em 0}
.best{background:#e8f4e8}.note{background:#fff8e0;padding:.6em 1em;border-left:4px solid #e0b000}"""


def png(figure: Figure, dpi: int = 100) -> str:
    """A figure as base64 PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return base64.b64encode(buffer.getvalue()).decode()


def image(name: str, encoded_png: str) -> str:
    """An embedded image with its caption."""
    name = html.escape(name)
    return (f'<figure><img alt="{name}" src="data:image/png;base64,{encoded_png}">'
            f"<figcaption>{name}</figcaption></figure>")


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body``."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
