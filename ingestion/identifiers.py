"""Patient identifiers stop here: they become salted keys, and outputs are scanned for leaks.

A leak check that cries wolf is switched off, so each kind of identifier is matched the way
it can really leak, not as any substring:
- a name with two or more parts of at least three characters: every part in one cell (the
  parts of "DOE^JOHN" in a path or a sentence), never one common surname ("White") alone;
- a name that leaves one such part or none ("Test^S R"): only a cell that is the whole name
  (case, ^ and spaces aside); a path or text merely holding "test" is a coincidence;
- an ID: its characters as one whole token (or run of tokens) anywhere, paths included; an ID
  inside a longer token ("p12345678", MIMIC's folder naming of its own subject ids) is not it;
- a birth date: only as a date, YYYYMMDD alone in a cell or a written date in text, never
  eight digits inside a hex or UID token ("...-21040522-...", "1.2.840.21040522.5").
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
# The kind each identifier element is matched as; an address leaks the way a name does.
KIND_OF_KEYWORD = {
    "PatientName": "name",
    "OtherPatientNames": "name",
    "PatientMotherBirthName": "name",
    "PatientAddress": "name",
    "PatientID": "id",
    "OtherPatientIDs": "id",
    "PatientTelephoneNumbers": "id",
    "PatientBirthDate": "birth_date",
}
KINDS = ("name", "id", "birth_date")

_TOKEN_RE = re.compile(r"[A-Za-z0-9]+")
_MIN_TOKEN = 3  # shorter name parts ("LI", "JO") would match ordinary words
_MIN_ID = 4  # "42" or "123" as a token of a path is a coincidence: shorter IDs match a whole cell only
_WHOLE_CELL_IGNORED = re.compile(r"[\s^]+")

_MONTHS = {name: number for number, names in enumerate(
    (("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",), ("jun", "june"),
     ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"), ("oct", "october"), ("nov", "november"),
     ("dec", "december")), 1) for name in names}
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
# A written date stands alone: no letter, digit or date separator glued to either end, so
# digits inside a UID ("1.2.840.1921.04.05") or a hex id never read as one.
_BEFORE, _AFTER = r"(?<![\w./-])", r"(?![\w]|[./-]\w)"
_ISO_DATE = re.compile(_BEFORE + r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})" + _AFTER)
_NUMERIC_DATE = re.compile(_BEFORE + r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4})" + _AFTER)
_DAY_MONTH_YEAR = re.compile(_BEFORE + _DAY + r"\s+(?:of\s+)?" + _MONTH + r",?\s+(\d{4})" + _AFTER, re.IGNORECASE)
_MONTH_DAY_YEAR = re.compile(r"(?<![\w])" + _MONTH + r"\s+" + _DAY + r",?\s+(\d{4})" + _AFTER, re.IGNORECASE)


def patient_key(subject: str, salt: bytes) -> str:
    """Stable pseudonym: HMAC-SHA256 of the subject id under a secret salt."""
    return hmac.new(salt, subject.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def dataset_identifiers(ds: Any) -> list[tuple[str, str]]:
    """(keyword, value) of every identifier element present in a pydicom dataset, one pair per
    value of a multi-valued element. Never raises: a value pydicom cannot convert is taken from
    its raw bytes, so a malformed identifier is still known (and kept out of messages)."""
    pairs: list[tuple[str, str]] = []
    for keyword in IDENTIFIER_KEYWORDS:
        try:
            value = ds.get(keyword)
        except Exception:  # a malformed value fails its conversion: fall back to the bytes
            value = _raw_value(ds, keyword)
        items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for item in items:
            text = "" if item is None else str(item).strip()
            if text:
                pairs.append((keyword, text))
    return pairs


def _raw_value(ds: Any, keyword: str) -> str | None:
    try:
        raw = ds.get_item(keyword)
        data = getattr(raw, "value", None)
        return data.decode("latin-1").strip("\0 ") if isinstance(data, bytes) else (None if data is None else str(data))
    except Exception:
        return None


@dataclass
class IdentifierSignatures:
    """What each identifier value looks like in an output cell, by kind (see the module text)."""

    names: dict[frozenset[str], str] = field(default_factory=dict)  # name parts -> kind
    whole: dict[str, str] = field(default_factory=dict)  # a whole cell, normalised -> kind
    ids: dict[tuple[str, ...], str] = field(default_factory=dict)  # token run -> kind
    dates: set[datetime.date] = field(default_factory=set)

    # Lookups by one token, built on first use: a cell's tokens then meet only the signatures
    # they could complete, not every signature of the shard (reports run to a thousand tokens).
    _names_by_token: dict[str, list[tuple[frozenset[str], str]]] | None = field(default=None, init=False, repr=False)
    _ids_by_token: dict[str, list[tuple[tuple[str, ...], str]]] | None = field(default=None, init=False, repr=False)

    def lookups(self) -> tuple[dict[str, list[tuple[frozenset[str], str]]], dict[str, list[tuple[tuple[str, ...], str]]]]:
        if self._names_by_token is None or self._ids_by_token is None:
            self._names_by_token, self._ids_by_token = {}, {}
            for parts, kind in self.names.items():
                self._names_by_token.setdefault(min(parts), []).append((parts, kind))
            for run, kind in self.ids.items():
                self._ids_by_token.setdefault(run[0], []).append((run, kind))
        return self._names_by_token, self._ids_by_token

    def __bool__(self) -> bool:
        return bool(self.names or self.whole or self.ids or self.dates)

    def __len__(self) -> int:
        return len(self.names) + len(self.whole) + len(self.ids) + len(self.dates)


def identifier_signatures(values: Iterable[str | tuple[str, str]]) -> IdentifierSignatures:
    """Signatures of identifier values: (keyword, value) pairs as `dataset_identifiers` gives
    them, or bare values (older callers), whose kind is then guessed: a valid YYYYMMDD is a
    birth date, a value with '^' or without digits a name, anything else an ID."""
    signatures = IdentifierSignatures()
    for item in values:
        keyword, value = item if isinstance(item, tuple) else (None, item)
        value = str(value).strip()
        if not value:
            continue
        kind = KIND_OF_KEYWORD.get(keyword or "") or _guess_kind(value)
        if kind == "birth_date":
            born = parse_dicom_date(value)
            if born is not None:
                signatures.dates.add(born)
            continue
        tokens = tuple(t.lower() for t in _TOKEN_RE.findall(value))
        if kind == "name":
            parts = frozenset(t for t in tokens if len(t) >= _MIN_TOKEN)
            if len(parts) >= 2:
                signatures.names[parts] = kind
            else:
                signatures.whole[_whole_cell(value)] = kind
        elif tokens and len("".join(tokens)) >= _MIN_ID:
            signatures.ids[tokens] = kind
        elif tokens:
            signatures.whole[_whole_cell(value)] = kind
    return signatures


def _guess_kind(value: str) -> str:
    if re.fullmatch(r"\d{8}", value) and parse_dicom_date(value):
        return "birth_date"
    return "name" if "^" in value or not re.search(r"\d", value) else "id"


def parse_dicom_date(value: str) -> datetime.date | None:
    """A DA value (YYYYMMDD, or the old YYYY.MM.DD) as a date, or None."""
    digits = re.sub(r"[.\-/]", "", value.strip())
    if not re.fullmatch(r"\d{8}", digits):
        return None
    return _date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))


def _date(year: int, month: int, day: int) -> datetime.date | None:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def _whole_cell(text: str) -> str:
    return _WHOLE_CELL_IGNORED.sub("", text).lower()


def written_dates(text: str) -> Iterator[datetime.date]:
    """Every date written in `text` (1921-04-05, 04/05/1921 read both ways, "April 5, 1921",
    "5 Apr 1921"), never digits inside a longer token."""
    for match in _ISO_DATE.finditer(text):
        found = _date(int(match[1]), int(match[3]), int(match[4]))
        if found:
            yield found
    for match in _NUMERIC_DATE.finditer(text):
        first, second, year = int(match[1]), int(match[3]), int(match[4])
        for found in (_date(year, first, second), _date(year, second, first)):  # US and European order
            if found:
                yield found
    for match in _DAY_MONTH_YEAR.finditer(text):
        found = _date(int(match[3]), _MONTHS[match[2].lower()], int(match[1]))
        if found:
            yield found
    for match in _MONTH_DAY_YEAR.finditer(text):
        found = _date(int(match[3]), _MONTHS[match[1].lower()], int(match[2]))
        if found:
            yield found


def cell_leaks(value: str, signatures: IdentifierSignatures, whole_cell: bool = True) -> set[str]:
    """The kinds of identifier that `value` (one cell) carries. `whole_cell=False` applies only
    the rules that hold inside longer text (used on the folder part of a path)."""
    kinds: set[str] = set()
    if whole_cell:
        kind = signatures.whole.get(_whole_cell(value))
        if kind:
            kinds.add(kind)
        stripped = value.strip()
        if re.fullmatch(r"\d{8}", stripped) and parse_dicom_date(stripped) in signatures.dates:
            kinds.add("birth_date")
    tokens = [t.lower() for t in _TOKEN_RE.findall(value)]
    present = set(tokens)
    names_by_token, ids_by_token = signatures.lookups()
    for token in present:
        kinds.update(kind for parts, kind in names_by_token.get(token, ()) if parts <= present)
        kinds.update(kind for run, kind in ids_by_token.get(token, ()) if _contains_run(tokens, run))
    if signatures.dates and any(d in signatures.dates for d in written_dates(value)):
        kinds.add("birth_date")
    return kinds


def _contains_run(tokens: list[str], run: tuple[str, ...]) -> bool:
    if len(run) == 1:
        return run[0] in tokens
    width = len(run)
    return any(tuple(tokens[i: i + width]) == run for i in range(len(tokens) - width + 1))


def mentions_identifier(text: str, values: Iterable[str | tuple[str, str]]) -> bool:
    """Whether `text` (an error message) quotes any of `values`, loosely: any part of a name or
    ID of three characters or more as a substring, or the birth date in any form. An error
    message loses only detail when this errs on the safe side."""
    lowered = text.lower()
    squeezed = _whole_cell(text)
    dates = set(written_dates(text))
    for item in values:
        keyword, value = item if isinstance(item, tuple) else (None, item)
        value = str(value).strip()
        if not value:
            continue
        whole = _whole_cell(value)
        if len(whole) >= _MIN_TOKEN and (value.lower() in lowered or whole in squeezed):
            return True
        if len(whole) < _MIN_TOKEN and re.search(rf"(?<![a-z0-9]){re.escape(value.lower())}(?![a-z0-9])", lowered):
            return True
        born = parse_dicom_date(value) if KIND_OF_KEYWORD.get(keyword or "", "birth_date") == "birth_date" else None
        if born is not None and (born in dates or born.strftime("%Y%m%d") in text):
            return True
        tokens = [t.lower() for t in _TOKEN_RE.findall(value)]
        long_tokens = [t for t in tokens if len(t) >= _MIN_TOKEN]
        if any(t in lowered for t in long_tokens):
            return True
        if not long_tokens and any(re.search(rf"\b{re.escape(t)}\b", lowered) for t in tokens):
            return True
    return False


def find_leaks(parquet_files: Iterable[Path], signatures: IdentifierSignatures | set[frozenset[str]]) -> list[dict]:
    """Scan every string column of the given Parquet files for identifier values.

    Returns one hit per file, column and kind of identifier: file, column, row, `kind` (name,
    id or birth_date) and `folder_names` (True when the cell is a path whose folder part alone
    carries the identifier: the archive's own folder names leak it, not the pipeline), never
    the value. Older callers' signatures (sets of name parts) are read as names.
    """
    if not isinstance(signatures, IdentifierSignatures):
        signatures = IdentifierSignatures(names={frozenset(s): "name" for s in signatures if len(s) >= 2},
                                          whole={"".join(sorted(s)): "name" for s in signatures if len(s) == 1})
    hits: list[dict] = []
    if not signatures:
        return hits
    for path in parquet_files:
        if not Path(path).exists():
            continue
        table = pq.read_table(path)
        for name in table.column_names:
            column = table.column(name)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                continue
            found: set[str] = set()
            for row, value in enumerate(column.to_pylist()):
                if not value:
                    continue
                for kind in sorted(cell_leaks(value, signatures) - found):
                    found.add(kind)
                    hits.append({"file": Path(path).name, "column": name, "row": row, "kind": kind,
                                 "folder_names": _in_folder_names(value, kind, signatures)})
                if len(found) == len(KINDS):
                    break
    return hits


def _in_folder_names(value: str, kind: str, signatures: IdentifierSignatures) -> bool:
    folders, _, _ = value.replace("\\", "/").rpartition("/")
    return bool(folders) and kind in cell_leaks(folders, signatures, whole_cell=False)


def describe_leaks(hits: list[dict]) -> str:
    """One line for a failed leak check: where, which kinds, and the fix when the archive's
    folder names are the source (no pipeline setting removes an identifier from a path)."""
    if not hits:
        return "no identifier found"
    where = "; ".join(f"{h['kind']} in {h['file']} column {h['column']} (row {h['row']})" for h in hits[:5])
    more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
    line = f"patient identifiers found: {where}{more}"
    if any(h.get("folder_names") for h in hits):
        line += (". The archive's own folder names carry identifiers: rename those folders (or export the "
                 "archive with pseudonymous folder names) before ingesting it")
    return line
