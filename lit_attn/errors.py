"""The one error type users see: a one-line message that names the problem and the fix."""


class UserError(ValueError):
    """Bad input from the user. The CLI prints ``error: <message>`` and exits with status 2."""


def one_line(exc: BaseException) -> str:
    """First line of an exception's message (messages must stay on one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
