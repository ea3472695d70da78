"""The one base of the errors a user can act on: the CLI shows their message, not a traceback."""


class UserError(Exception):
    """A bad config value, bad data, an unusable tracking store or a diverging run."""
