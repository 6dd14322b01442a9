"""Training texts: triplets joined to the knowledge base (IKI), one text list per image.

Rules (ours, the default `wording="ours"`; `wording="reference"` below):
- A triplet's text is "<severity> <location> <category>. <description>"; fields that are `na`
  (or empty) are left out of the wording.
- A negated triplet reads "no <category>. <description>": the paper writes negations with severity
  `no`, and the location of an absent finding carries no information, so both are dropped. A
  triplet with severity `no` counts as negated even when its `negated` flag is false.
- An image whose study has no triplet gets the single "no finding" text (category `no finding`)
  instead of being dropped; the result counts such images.
- Uncertain findings ("possible pneumonia") are kept as positive texts by default, as the paper
  does; `drop_uncertain=True` removes them first (an image left without triplets then falls under
  the no-finding rule, counted in `images_no_finding`).
- `drop_negated=True` trains on present findings only: with a frozen sentence encoder,
  "no edema. <what edema looks like>" embeds next to the zero-shot prompt for edema, so
  pairing it with edema-free images teaches the inverse of what zero-shot asks (measured on
  the demo corpus: zero-shot AUC falls with more epochs when negations are kept, rises when
  they are dropped). An image left without triplets gets the no-finding text.
- `wording="reference"` writes what the published code writes (train.py, `Mimic_CXR`):
  `" ".join([severity, location, category]) + ". " + description`, keeping `na` and the location
  of a negated finding, whose severity is `no` ("no left effusion. <description>", "na na
  atelectasis. <description>"); a category without a description gives the bare head, no period.
- `report_filter="reference"` keeps, as the published data preparation, only images of reports
  whose CheXpert "No Finding" label (the report_labels asset) is blank and that yield at least one
  triplet; the others are dropped, not given the no-finding text (counted in `images_filtered_out`).
- text_id is the rank of sha256(text) among the distinct texts: dense (0..N-1, so it indexes the
  SSM directly), identical across re-runs and insensitive to input row order.
- The train/val split is by patient: sha256("<seed>:<patient_key>") read as a number in [0, 1)
  below `val_fraction` means val. A patient's images never straddle the split.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import write_table
from knowledge.base import NO_FINDING, KnowledgeBase, canonical_category, category_prompts, missing_descriptions

NOT_AVAILABLE = "na"
NO_FINDING_LABEL = "No Finding"  # the CheXpert column of report_labels
Wording = Literal["ours", "reference"]
ReportFilter = Literal["none", "reference"]
TEXTS_FILE = "texts.parquet"
IMAGE_TEXTS_FILE = "image_texts.parquet"

TEXTS_SCHEMA = pa.schema(
    [
        pa.field("text_id", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("location", pa.string(), nullable=False),
        pa.field("negated", pa.bool_(), nullable=False),
        pa.field("text_sha256", pa.string(), nullable=False),
        pa.field("n_triplets", pa.int64(), nullable=False),  # 0 for the no-finding fallback
    ]
)
IMAGE_TEXTS_SCHEMA = pa.schema(
    [
        pa.field("dicom_id", pa.string(), nullable=False),
        pa.field("study_id", pa.string(), nullable=False),
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("text_ids", pa.list_(pa.int32()), nullable=False),
    ]
)


@dataclass(frozen=True)
class TrainingTextsResult:
    texts_path: Path
    image_texts_path: Path
    images: int
    texts: int
    triplets: int  # rows read
    triplets_used: int  # rows whose study has an image (after the uncertainty rule)
    triplets_without_image: int
    uncertain_dropped: int
    images_no_finding: int
    images_train: int
    images_val: int
    images_filtered_out: int
    patients_train: int
    patients_val: int
    texts_per_category: dict[str, int] = field(default_factory=dict)

    def metadata(self) -> dict:
        """Flat, JSON-friendly numbers for Dagster/MLflow metadata."""
        out = asdict(self)
        out["texts_path"], out["image_texts_path"] = str(self.texts_path), str(self.image_texts_path)
        return out


def compose_text(
    severity: str | None, location: str | None, category: str, negated: bool, description: str,
    wording: Wording = "ours",
) -> str:
    """The IKI training text of one triplet (see the module docstring for the rules)."""
    category = canonical_category(category)
    if wording == "reference":
        fields = ["no" if negated else _field(severity) or NOT_AVAILABLE, _field(location) or NOT_AVAILABLE, category]
        head = " ".join(fields)
        description = " ".join(description.split())
        return f"{head}. {description}" if description else head
    if wording != "ours":
        raise ValueError(f"unknown wording {wording!r}; expected 'ours' or 'reference'")
    if negated:
        head = f"no {category}"
    else:
        head = " ".join(word for word in (_field(severity), _field(location), category) if word)
    description = " ".join(description.split())
    return f"{head}. {description}" if description else f"{head}."


def build_training_texts(
    triplets: Path | str | pa.Table,
    images: Path | str | pa.Table,
    kb: KnowledgeBase,
    out_dir: Path | str,
    val_fraction: float = 0.1,
    seed: int = 0,
    drop_uncertain: bool = False,
    allow_missing_descriptions: bool = False,
    drop_negated: bool = False,
    wording: Wording = "ours",
    report_filter: ReportFilter = "none",
    report_labels: Path | str | pa.Table | None = None,
) -> TrainingTextsResult:
    """Join triplets (per study) to images (per DICOM) and the knowledge base; write
    texts.parquet and image_texts.parquet under out_dir atomically.

    A triplet category without a description is an error listing every such category, unless
    `allow_missing_descriptions`, in which case its text is the head alone ("large effusion.").
    `report_filter="reference"` needs `report_labels` (study_id and a "No Finding" column).
    """
    if report_filter not in ("none", "reference"):
        raise ValueError(f"unknown report_filter {report_filter!r}; expected 'none' or 'reference'")
    if report_filter == "reference" and report_labels is None:
        raise ValueError("report_filter='reference' needs report_labels (the report_labels asset's table)")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        _register(con, "raw_triplets", triplets)
        _register(con, "all_images", images)
        n_filtered = _filter_images(con, report_filter, report_labels)
        _check_images(con)
        n_triplets_read, n_uncertain_dropped = _stage_triplets(con, drop_uncertain, drop_negated, wording)
        _stage_texts(con, kb, allow_missing_descriptions, wording)
        _stage_splits(con, val_fraction, seed)
        texts_table = _texts_table(con)
        image_texts_table = _image_texts_table(con)
        counts = _counts(con)
    finally:
        con.close()
    texts_path = out_dir / TEXTS_FILE
    image_texts_path = out_dir / IMAGE_TEXTS_FILE
    write_table(texts_table, texts_path, row_group_size=65536)
    write_table(image_texts_table, image_texts_path, row_group_size=65536)
    return TrainingTextsResult(
        texts_path=texts_path,
        image_texts_path=image_texts_path,
        triplets=n_triplets_read,
        uncertain_dropped=n_uncertain_dropped,
        texts=texts_table.num_rows,
        texts_per_category=_texts_per_category(texts_table),
        images_filtered_out=n_filtered,
        **counts,
    )


# --- helpers -------------------------------------------------------------------------------


def _field(value: str | None) -> str:
    text = " ".join((value or "").lower().split())
    return "" if text == NOT_AVAILABLE else text


def _register(con: duckdb.DuckDBPyConnection, name: str, source: Path | str | pa.Table) -> None:
    if isinstance(source, pa.Table):
        con.register(name, source)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{name}: {path} does not exist")
        con.read_parquet(str(path)).create_view(name)


def _filter_images(con: duckdb.DuckDBPyConnection, report_filter: ReportFilter,
                   report_labels: Path | str | pa.Table | None) -> int:
    """raw_images = the images that pass the report filter; returns how many were dropped."""
    if report_filter == "none":
        con.execute("CREATE VIEW raw_images AS SELECT * FROM all_images")
        return 0
    _register(con, "report_labels", report_labels)
    columns = [row[0] for row in con.execute("DESCRIBE report_labels").fetchall()]
    if NO_FINDING_LABEL not in columns or "study_id" not in columns:
        raise ValueError(f"report_labels needs columns study_id and {NO_FINDING_LABEL!r}, has {columns}")
    # A valid triplet: one with a category (what the reference's parser needs to build a label).
    con.execute(
        f"""
        CREATE TABLE raw_images AS
        SELECT * FROM all_images
        WHERE CAST(study_id AS VARCHAR) IN (
                SELECT CAST(study_id AS VARCHAR) FROM report_labels WHERE "{NO_FINDING_LABEL}" IS NULL)
          AND CAST(study_id AS VARCHAR) IN (
                SELECT CAST(study_id AS VARCHAR) FROM raw_triplets
                WHERE category IS NOT NULL AND trim(category) <> '')
        """
    )
    total, kept = con.execute("SELECT (SELECT count(*) FROM all_images), (SELECT count(*) FROM raw_images)").fetchone()
    return int(total) - int(kept)


def _check_images(con: duckdb.DuckDBPyConnection) -> None:
    bad = con.execute(
        "SELECT count(*) FILTER (WHERE patient_key IS NULL OR study_id IS NULL OR dicom_id IS NULL),"
        " count(*) - count(DISTINCT dicom_id) FROM raw_images"
    ).fetchone()
    if bad[0]:
        raise ValueError(f"images: {bad[0]} rows lack dicom_id, study_id or patient_key")
    if bad[1]:
        raise ValueError(f"images: {bad[1]} duplicate dicom_id rows")


def _stage_triplets(con: duckdb.DuckDBPyConnection, drop_uncertain: bool, drop_negated: bool = False,
                    wording: Wording = "ours") -> tuple[int, int]:
    """Normalise the fields the text is built from; keep only triplets of imaged studies."""
    n_read, n_uncertain = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE coalesce(uncertain, false)) FROM raw_triplets"
    ).fetchone()
    # Our wording: negated triplets keep neither severity nor location (they are not in the text);
    # the reference wording keeps the location (its severity reads "no").
    negated_fields = "na" if wording == "ours" else "no"
    con.execute(
        f"""
        CREATE TABLE triplets AS
        SELECT CAST(t.study_id AS VARCHAR) AS study_id,
               CASE WHEN t.negated THEN '{negated_fields}' ELSE {_sql_field('t.severity')} END AS severity,
               CASE WHEN t.negated AND '{wording}' = 'ours' THEN 'na' ELSE {_sql_field('t.location')} END AS location,
               regexp_replace(lower(trim(t.category)), '\\s+', ' ', 'g') AS category,
               t.negated
        FROM (SELECT * REPLACE (coalesce(negated, false) OR {_sql_field('severity')} = 'no' AS negated)
              FROM raw_triplets) t
        WHERE CAST(t.study_id AS VARCHAR) IN (SELECT CAST(study_id AS VARCHAR) FROM raw_images)
          AND t.category IS NOT NULL AND trim(t.category) <> ''
          {"AND NOT coalesce(t.uncertain, false)" if drop_uncertain else ""}
          {"AND NOT t.negated" if drop_negated else ""}
        """
    )
    return int(n_read), int(n_uncertain) if drop_uncertain else 0


def _sql_field(column: str) -> str:
    cleaned = f"regexp_replace(lower(trim(coalesce({column}, ''))), '\\s+', ' ', 'g')"
    return f"CASE WHEN {cleaned} IN ('', 'na') THEN 'na' ELSE {cleaned} END"


def _stage_texts(con: duckdb.DuckDBPyConnection, kb: KnowledgeBase, allow_missing: bool,
                 wording: Wording = "ours") -> None:
    """Compose the text of each distinct (severity, location, category, negated) in Python - there
    are few of them - and let DuckDB rank texts by sha256 for the stable id."""
    keys = con.execute(
        "SELECT severity, location, category, negated, count(*) FROM triplets GROUP BY ALL"
    ).fetchall()
    missing = missing_descriptions(kb, {k[2] for k in keys} | {NO_FINDING})
    if missing and not allow_missing:
        raise ValueError(f"knowledge base has no description for categories: {missing}")
    rows = [
        (sev, loc, cat, neg, n, compose_text(sev, loc, cat, neg, _description(kb, cat), wording))
        for sev, loc, cat, neg, n in keys
    ]
    # The no-finding text always exists, so the id set does not depend on whether some image
    # happens to lack triplets.
    no_finding_text = compose_text(None, None, NO_FINDING, False, _description(kb, NO_FINDING), wording)
    rows.append(("na", "na", NO_FINDING, False, 0, no_finding_text))
    key_table = pa.Table.from_pylist(
        [dict(zip(("severity", "location", "category", "negated", "n", "text"), r)) for r in rows]
    )
    con.register("text_keys", key_table)
    con.execute(
        """
        CREATE TABLE texts AS
        SELECT CAST(row_number() OVER (ORDER BY sha) - 1 AS INTEGER) AS text_id, *
        FROM (SELECT text, sha256(text) AS sha, min(category) AS category, min(severity) AS severity,
                     min(location) AS location, bool_or(negated) AS negated, sum(n) AS n_triplets
              FROM text_keys GROUP BY text)
        """
    )
    con.execute("CREATE TABLE no_finding AS SELECT text_id FROM texts WHERE text = ?", [no_finding_text])
    con.execute(
        """
        CREATE TABLE study_texts AS
        SELECT DISTINCT t.study_id, x.text_id
        FROM triplets t
        JOIN text_keys k USING (severity, location, category, negated)
        JOIN texts x ON x.text = k.text
        """
    )


def _description(kb: KnowledgeBase, category: str) -> str:
    entry = kb.categories.get(canonical_category(category))
    return entry.description if entry else ""


def _stage_splits(con: duckdb.DuckDBPyConnection, val_fraction: float, seed: int) -> None:
    # First 15 hex digits of sha256 (60 bits) as a fraction: stable across DuckDB versions,
    # unlike DuckDB's own hash().
    con.execute(
        f"""
        CREATE TABLE patient_split AS
        SELECT patient_key,
               CASE WHEN CAST(('0x' || substr(sha256('{int(seed)}:' || patient_key), 1, 15)) AS UBIGINT)
                         / CAST(1152921504606846976 AS DOUBLE) < {float(val_fraction)!r}
                    THEN 'val' ELSE 'train' END AS split
        FROM (SELECT DISTINCT CAST(patient_key AS VARCHAR) AS patient_key FROM raw_images)
        """
    )


def _texts_table(con: duckdb.DuckDBPyConnection) -> pa.Table:
    table = con.sql(
        "SELECT text_id, text, category, severity, location, negated, sha AS text_sha256,"
        " CAST(n_triplets AS BIGINT) AS n_triplets FROM texts ORDER BY text_id"
    ).to_arrow_table()
    return table.cast(TEXTS_SCHEMA)


def _image_texts_table(con: duckdb.DuckDBPyConnection) -> pa.Table:
    table = con.sql(
        """
        WITH per_study AS (
            SELECT study_id, list(text_id ORDER BY text_id) AS text_ids FROM study_texts GROUP BY study_id
        )
        SELECT CAST(i.dicom_id AS VARCHAR) AS dicom_id, CAST(i.study_id AS VARCHAR) AS study_id,
               CAST(i.patient_key AS VARCHAR) AS patient_key, p.split,
               coalesce(s.text_ids, [(SELECT text_id FROM no_finding)]) AS text_ids
        FROM raw_images i
        JOIN patient_split p ON p.patient_key = CAST(i.patient_key AS VARCHAR)
        LEFT JOIN per_study s ON s.study_id = CAST(i.study_id AS VARCHAR)
        ORDER BY dicom_id
        """
    ).to_arrow_table()
    return table.cast(IMAGE_TEXTS_SCHEMA)


def _counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    row = con.execute(
        """
        SELECT (SELECT count(*) FROM raw_images),
               (SELECT count(*) FROM triplets),
               (SELECT count(*) FROM raw_triplets
                 WHERE CAST(study_id AS VARCHAR) NOT IN (SELECT CAST(study_id AS VARCHAR) FROM raw_images)),
               (SELECT count(*) FROM raw_images
                 WHERE CAST(study_id AS VARCHAR) NOT IN (SELECT study_id FROM study_texts)),
               (SELECT count(*) FROM raw_images i JOIN patient_split p
                   ON p.patient_key = CAST(i.patient_key AS VARCHAR) WHERE p.split = 'train'),
               (SELECT count(*) FROM patient_split WHERE split = 'train'),
               (SELECT count(*) FROM patient_split WHERE split = 'val')
        """
    ).fetchone()
    images, used, without_image, no_finding, train, p_train, p_val = (int(v) for v in row)
    return {
        "images": images,
        "triplets_used": used,
        "triplets_without_image": without_image,
        "images_no_finding": no_finding,
        "images_train": train,
        "images_val": images - train,
        "patients_train": p_train,
        "patients_val": p_val,
    }


def _texts_per_category(texts: pa.Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for category in texts.column("category").to_pylist():
        counts[category] = counts.get(category, 0) + 1
    return dict(sorted(counts.items()))


def text_categories(texts_dir: str | Path) -> list[str]:
    """The categories (sorted, unique) of a training-texts folder's texts."""
    table = pq.read_table(Path(texts_dir) / TEXTS_FILE, columns=["category"])
    return sorted(set(table.column("category").to_pylist()))


def zero_shot_prompts(kb: KnowledgeBase, texts_dir: str | Path) -> dict[str, str]:
    """A prompt for every category the training texts use that the knowledge base describes."""
    return category_prompts(kb, text_categories(texts_dir))

