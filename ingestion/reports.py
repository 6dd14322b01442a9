"""Free-text radiology reports: split into sections, keep FINDINGS and IMPRESSION.

Real archives (MIMIC-CXR) have reports with only an IMPRESSION, headers in any case, a
"FINAL REPORT" banner, and some with no usable text at all. None of them is dropped: a report
that yields no text for extraction is kept with a flag saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from common.storage import text_sha256
from ingestion.identifiers import patient_key
from ingestion.layout import parse_report_path, relative_to_root

REPORT_SCHEMA = pa.schema(
    [
        ("study_id", pa.string()),
        ("shard", pa.string()),
        ("patient_key", pa.string()),
        ("source_path", pa.string()),
        ("text", pa.string()),
        ("findings", pa.string()),
        ("impression", pa.string()),
        ("extraction_text", pa.string()),
        ("sections", pa.list_(pa.string())),
        ("usable", pa.bool_()),
        ("flag", pa.string()),
        ("text_sha256", pa.string()),
    ]
)

# Headers that name the section holding the observations; anything else is context.
_SECTION_ALIASES = {
    "findings": "findings",
    "finding": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "summary": "impression",
}
_HEADER_RE = re.compile(r"^\s*([A-Za-z][A-Za-z /&()-]{1,40}?)\s*:\s*(.*)$")
_PLACEHOLDER_RE = re.compile(r"_{2,}")


@dataclass(frozen=True)
class ParsedReport:
    findings: str
    impression: str
    sections: tuple[str, ...]
    flag: str | None

    @property
    def extraction_text(self) -> str:
        """What the extractor reads: FINDINGS then IMPRESSION, as in the paper."""
        return "\n".join(part for part in (self.findings, self.impression) if part)


def parse_report(text: str) -> ParsedReport:
    sections: dict[str, list[str]] = {}
    order: list[str] = []
    current: str | None = None
    preamble: list[str] = []
    for line in text.splitlines():
        header = _HEADER_RE.match(line)
        if header and _looks_like_header(header.group(1)):
            current = header.group(1).strip().lower()
            order.append(current)
            sections.setdefault(current, [])
            rest = header.group(2).strip()
            if rest:
                sections[current].append(rest)
        elif current is None:
            preamble.append(line)
        else:
            sections[current].append(line)

    found = {_SECTION_ALIASES[name]: _clean(" ".join(body)) for name, body in sections.items()
             if name in _SECTION_ALIASES}
    findings, impression = found.get("findings", ""), found.get("impression", "")
    flag = None
    if not findings and not impression:
        # No observation section: fall back to the last paragraph of free text, as the
        # MIMIC-CXR section parser does, and say so.
        fallback = _last_paragraph(text)
        if fallback:
            findings, flag = fallback, "no FINDINGS/IMPRESSION section; used last paragraph"
        else:
            flag = "no usable text"
    elif not findings:
        flag = "no FINDINGS section"
    return ParsedReport(findings, impression, tuple(order), flag)


# A report with more than this share of characters that are no text (control bytes, invalid
# UTF-8) is a binary file under a .txt name: sending it to an LLM only buys a garbage answer.
MAX_NON_TEXT_SHARE = 0.05


def non_text_share(text: str) -> float:
    """Share of characters that are neither printable nor ordinary whitespace."""
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch == "\ufffd" or (not ch.isprintable() and ch not in "\n\r\t\f\v"))
    return bad / len(text)


def report_row(path: Path, root: Path, shard: str, salt: bytes) -> dict:
    """One `reports` row. Unreadable bytes are replaced, not fatal: the flag records it."""
    raw = path.read_bytes()
    decoded = raw.decode("utf-8", errors="replace")
    binary = non_text_share(decoded)
    # Nothing of a binary file is worth keeping or sending; its hash still identifies it.
    text = "" if binary > MAX_NON_TEXT_SHARE else decoded
    parsed = parse_report(text)
    ids = parse_report_path(path)
    flag = parsed.flag
    if binary > MAX_NON_TEXT_SHARE:
        flag = f"not text: {binary:.0%} of the characters are control bytes or invalid UTF-8"
    elif "\ufffd" in text:
        flag = "; ".join(f for f in (flag, "invalid UTF-8 replaced") if f)
    return {
        "study_id": ids.study_id if ids else path.stem,
        "shard": shard,
        "patient_key": patient_key(ids.subject_id if ids else path.stem, salt),
        "source_path": relative_to_root(path, root),
        "text": text,
        "findings": parsed.findings,
        "impression": parsed.impression,
        "extraction_text": parsed.extraction_text,
        "sections": list(parsed.sections),
        "usable": bool(parsed.extraction_text),
        "flag": flag,
        "text_sha256": text_sha256(decoded),
    }


def _looks_like_header(name: str) -> bool:
    words = name.strip().split()
    return 0 < len(words) <= 4 and (name.isupper() or name.strip().lower() in _KNOWN_HEADERS)


_KNOWN_HEADERS = set(_SECTION_ALIASES) | {
    "examination", "indication", "history", "comparison", "technique", "clinical history",
    "reason for exam", "final report", "wet read", "procedure", "recommendation", "recommendations",
    "notification", "addendum", "type of examination",
}


def _clean(text: str) -> str:
    text = _PLACEHOLDER_RE.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if re.search(r"[A-Za-z]{2,}", text) else ""


def _last_paragraph(text: str) -> str:
    paragraphs = [_clean(p) for p in re.split(r"\n\s*\n", text)]
    body = [p for p in paragraphs if p and not _HEADER_RE.match(p) and "FINAL REPORT" not in p.upper()]
    return body[-1] if body else ""
