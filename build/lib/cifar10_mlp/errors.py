"""The one base of the errors a user can act on: the CLI shows their message, not a traceback."""


class UserError(Exception):
    """A bad config value, bad data, an unusable tracking store or a diverging run."""


class JobLost(RuntimeError):
    """A sweep job's worker process died (killed, out of memory, node lost) before it
    returned; the message says how."""
