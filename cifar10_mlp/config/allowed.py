"""What each config key allows, declared beside its type in ``schema.py``, and the check.

A schema field is declared with ``allowed(rule)``; :func:`check_node` walks a composed
config node by its schema and checks every leaf against its rule, so a key without a rule
cannot slip through unnoticed (tests walk every leaf with :attr:`Rule.bad_value`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from omegaconf import MISSING, DictConfig, OmegaConf

from cifar10_mlp.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value that is not allowed; the message names key, value and what is allowed."""


def refuse(key: str, value: Any, allowed: str) -> ConfigError:
    """The one-line error for ``key=value``: ``<key>=<value> is not allowed: expected ...``."""
    return ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


@dataclass(frozen=True)
class Rule:
    """What one key allows: ``ok`` tells, ``expected`` says it in words, ``bad_value`` is one
    value of the right type that it refuses (for tests)."""

    expected: str
    nullable: bool = False

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    @property
    def bad_value(self) -> Any:
        raise NotImplementedError

    def check(self, key: str, value: Any) -> None:
        if value is None and self.nullable:
            return
        if value is None or not self.ok(value):
            raise refuse(key, value, ("null or " if self.nullable else "") + self.expected)


@dataclass(frozen=True)
class Range(Rule):
    """A number within bounds; ``low_open``/``high_open`` exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    @property
    def bad_value(self) -> Any:
        return self.low - 1 if self.low is not None else self.high + 1


def at_least(low: int, nullable: bool = False) -> Range:
    return Range(f"an integer >= {low}", nullable, low=low)


def positive(nullable: bool = False) -> Range:
    return Range("a number > 0", nullable, low=0, low_open=True)


def fraction(low_open: bool = False, high_open: bool = True) -> Range:
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    return Range(f"a value in {interval}", low=0, high=1, low_open=low_open, high_open=high_open)


@dataclass(frozen=True)
class OneOf(Rule):
    choices: tuple = ()

    def ok(self, value: Any) -> bool:
        return value in self.choices

    @property
    def bad_value(self) -> Any:
        return "unknown" if isinstance(self.choices[0], str) else max(self.choices) + 1


def one_of(choices: Sequence, nullable: bool = False) -> OneOf:
    return OneOf(f"one of {', '.join(map(str, choices))}", nullable, tuple(choices))


@dataclass(frozen=True)
class Text(Rule):
    """Free text (a name, a path), not empty; ``prefixes``: it must start with one of them."""

    prefixes: tuple[str, ...] = ()

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and value.strip() != "" and (
            not self.prefixes or value.startswith(self.prefixes))

    @property
    def bad_value(self) -> Any:
        return "ftp://nowhere" if self.prefixes else ""


@dataclass(frozen=True)
class TrackingUri(Text):
    """A store's URI, without credentials in it: those would be logged as a param, printed
    and handed to every worker. Refused with the URI's credentials masked."""

    def check(self, key: str, value: Any) -> None:
        super().check(key, value)
        netloc = urlsplit(value).netloc
        if "@" in netloc:
            masked = value.replace(netloc, "***@" + netloc.rsplit("@", 1)[1], 1)
            raise ConfigError(
                f"{key}={masked!r} is not allowed: expected a URI without credentials; set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or put them in "
                "~/.mlflow/credentials (a database's password in ~/.pgpass)")

    @property
    def bad_value(self) -> Any:
        return "http://alice:secret@127.0.0.1:5000"


def text(nullable: bool = False, prefixes: Sequence[str] = ()) -> Text:
    expected = (f"a URI starting with {', '.join(prefixes)}" if prefixes
                else "a non-empty string")
    return Text(expected, nullable, tuple(prefixes))


@dataclass(frozen=True)
class Pattern(Rule):
    """A string that matches ``regex`` as a whole; ``bad_value`` is one that does not."""

    regex: str = ""
    refused: str = ""

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(self.regex, value) is not None

    @property
    def bad_value(self) -> Any:
        return self.refused


@dataclass(frozen=True)
class Items(Rule):
    """A list of at least ``min_items`` (distinct, when asked) items that each pass ``item``.
    With ``name_item``, a bad item is named alone (``data.classes='unicorn'``)."""

    item: Rule | None = None
    min_items: int = 1
    distinct: bool = False
    name_item: bool = False

    def ok(self, value: Any) -> bool:
        return (isinstance(value, list) and all(self.item.ok(v) for v in value)
                and len(set(value) if self.distinct else value) >= self.min_items)

    def check(self, key: str, value: Any) -> None:
        if self.name_item and isinstance(value, list):
            for item in value:
                self.item.check(key, item)
        super().check(key, value)

    @property
    def bad_value(self) -> Any:
        return [self.item.bad_value]


@dataclass(frozen=True)
class Flag(Rule):
    """true or false: the type itself says all (Hydra refuses anything else on composition)."""

    def ok(self, value: Any) -> bool:
        return isinstance(value, bool)

    @property
    def bad_value(self) -> Any:
        return None


def allowed(rule: Rule, default: Any = MISSING) -> Any:
    """A schema field whose values ``rule`` checks (the value itself comes from the YAML)."""
    return dataclasses.field(default=default, metadata={"allowed": rule})


def rules_of(schema: type) -> dict[str, Rule]:
    """The rule of each field of a schema dataclass that declares one."""
    return {f.name: f.metadata["allowed"] for f in dataclasses.fields(schema)
            if "allowed" in f.metadata}


def check_node(node: DictConfig, prefix: str = "") -> None:
    """Check every leaf of ``node`` against the rule its schema declares; raise
    :class:`ConfigError` for the first leaf that breaks it, or that has no rule."""
    schema = OmegaConf.get_type(node)
    declared = rules_of(schema) if dataclasses.is_dataclass(schema) else {}
    for key in node:
        path = f"{prefix}{key}"
        value = node[key]
        if isinstance(value, DictConfig):
            check_node(value, f"{path}.")
            continue
        rule = declared.get(key)
        if not isinstance(rule, Rule):
            raise ConfigError(f"{path} has no declared allowed values in its schema "
                              f"({getattr(schema, '__name__', schema)})")
        rule.check(path, OmegaConf.to_container(value) if OmegaConf.is_config(value)
                   else value)
