"""One file's failure as one line of its quarantine row: the header element concerned where
known, the exception type and its message, and never a patient identifier value.

Archives from the field hold every kind of malformed header; an exception raised by one
file's content is that file's quarantine reason, never the shard's failure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ingestion.identifiers import IDENTIFIER_KEYWORDS, mentions_identifier

T = TypeVar("T")

_MAX_MESSAGE = 300  # a reason is a table cell: pydicom's longest messages say nothing more past this
_QUOTED_RE = re.compile(r"'[^']*'|\"[^\"]*\"|b'[^']*'")
WITHHELD = "message withheld: it quotes a patient identifier"


class FileProblem(ValueError):
    """A file that cannot be used, with a reason already fit for its quarantine row."""


class HeaderProblem(Exception):
    """An element whose value cannot be used: its keyword and the exception that said so."""

    def __init__(self, keyword: str, cause: BaseException) -> None:
        super().__init__(f"{keyword}: {type(cause).__name__}")
        self.keyword, self.cause = keyword, cause


@contextmanager
def concerning(keyword: str) -> Iterator[None]:
    """Exceptions raised inside name `keyword` as the element concerned (innermost wins)."""
    try:
        yield
    except HeaderProblem:
        raise
    except Exception as exc:
        raise HeaderProblem(keyword, exc) from exc


def header_value(ds: Any, keyword: str, convert: Callable[[Any], T], default: T | None = None) -> T | None:
    """`convert(ds.keyword)`, `default` when the element is absent or empty; any failure to
    read or convert it is a HeaderProblem naming the element."""
    with concerning(keyword):
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        return convert(value)


def describe_failure(exc: BaseException, identifiers: Iterable[str | tuple[str, str]] | None = None,
                     keyword: str | None = None) -> str:
    """'<element>: <exception type>: <message>' on one line. The message is cut to the type and
    the element when the element is an identifier or the message quotes an identifier value;
    with `identifiers` None (the header could not be read at all), every quoted part of the
    message is cut, since a value, if any, is what Python's messages quote."""
    if isinstance(exc, FileProblem):
        return str(exc)
    if isinstance(exc, HeaderProblem):
        keyword, exc = keyword or exc.keyword, exc.cause
    kind = type(exc).__name__
    message = " ".join(str(exc).split())
    if keyword in IDENTIFIER_KEYWORDS or (identifiers is not None and mentions_identifier(message, identifiers)):
        message = f"({WITHHELD})"
    elif identifiers is None:
        message = _QUOTED_RE.sub("'…'", message)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    head = f"{keyword}: {kind}" if keyword else kind
    return f"{head}: {message}" if message else head


def safe_text(text: str, identifiers: Iterable[str | tuple[str, str]] | None) -> str:
    """`text` (a reason built from header values) when it quotes no identifier value, else its
    first word, which by convention names the element (or the problem) and never a value."""
    if identifiers is None or mentions_identifier(text, identifiers):
        return f"{text.split(maxsplit=1)[0]}: ({WITHHELD})"
    return text
