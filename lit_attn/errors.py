"""The one error type users see: a one-line message that names the problem and the fix."""


class UserError(ValueError):
    """Bad input from the user. The CLI prints ``error: <message>`` and exits with status 2."""
