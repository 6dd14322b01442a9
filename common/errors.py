"""A user's mistake as one or two lines: what is wrong and what to do about it.

The CLI prints `UserError`s without a traceback (`--debug` shows it); anything else that
escapes is a bug or an environment problem and is printed the same short way, with a hint
that `--debug` gives the trace.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: `cause` says what is wrong, `fix` what to do."""

    def __init__(self, cause: str, fix: str = "") -> None:
        super().__init__(cause if not fix else f"{cause}\n  fix: {fix}")
        self.cause = cause
        self.fix = fix


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to `limit` characters."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."
