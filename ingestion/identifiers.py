"""Patient identifiers stop here: they become salted keys, and outputs are scanned for leaks."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Header elements whose values must never reach an output (direct identifiers).
IDENTIFIER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
)
_TOKEN_RE = re.compile(r"[A-Za-z0-9]+")
_MIN_TOKEN = 3  # shorter name parts ("LI", "JO") would match ordinary words


def patient_key(subject: str, salt: bytes) -> str:
    """Stable pseudonym: HMAC-SHA256 of the subject id under a secret salt."""
    return hmac.new(salt, subject.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def identifier_signatures(values: Iterable[str]) -> set[frozenset[str]]:
    """Each identifier value as the set of its tokens; a leak is a cell holding all of them.

    Requiring every token ("DOE^JOHN" -> {doe, john}) keeps a surname that is also an
    ordinary word ("White", "Long") from being reported as a leak on its own.
    """
    signatures = set()
    for value in values:
        tokens = frozenset(t.lower() for t in _TOKEN_RE.findall(str(value)) if len(t) >= _MIN_TOKEN)
        if tokens:
            signatures.add(tokens)
    return signatures


def find_leaks(parquet_files: Iterable[Path], signatures: set[frozenset[str]]) -> list[dict]:
    """Scan every string column of the given Parquet files for identifier values.

    Returns at most one hit per column, naming file, column and row but never the value.
    """
    by_token: dict[str, list[frozenset[str]]] = {}
    for signature in signatures:
        by_token.setdefault(min(signature), []).append(signature)
    hits: list[dict] = []
    if not by_token:
        return hits
    for path in parquet_files:
        if not Path(path).exists():
            continue
        table = pq.read_table(path)
        for name in table.column_names:
            column = table.column(name)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                continue
            for row, value in enumerate(column.to_pylist()):
                if value and _cell_leaks(value, by_token):
                    hits.append({"file": Path(path).name, "column": name, "row": row})
                    break
    return hits


def _cell_leaks(value: str, by_token: dict[str, list[frozenset[str]]]) -> bool:
    tokens = {t.lower() for t in _TOKEN_RE.findall(value)}
    return any(sig <= tokens for t in tokens for sig in by_token.get(t, ()))
