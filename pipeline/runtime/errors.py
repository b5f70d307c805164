"""The one exception type a user sees: a single line saying what, where, and what to do."""


class UserError(Exception):
    """Bad input or configuration. The CLI prints ``str(err)`` alone and exits non-zero."""
