"""Generate the embedded chest X-ray archive: MIMIC-CXR layout, DICOM or JPG, reports, ground
truth and three held-out evaluation sets.

Every study draws from its own generators keyed by (seed, stream, study index), so the files
are byte-identical for a seed whatever `workers` is.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.parallel import ordered_map
from common.storage import atomic_path, write_text
from corpus.anatomy import FRONTAL, LATERAL, sample_geometry
from corpus.dicom_writer import Identity, sample_pixel_style, write_dicom
from corpus.eval_sets import write_eval_sets
from corpus.findings import CATEGORIES, ground_truth_rows, sample_findings
from corpus.ids import StudyPlan, dicom_id, plan_archive, uid
from corpus.render import render_view
from corpus.reports import write_report

GENERATOR_VERSION = "1.0.0"
IMAGE_FORMATS = ("dicom", "jpg")
ARCHIVE_STREAM = 1
FINDINGS_COLUMNS = ["subject_id", "study_id", "category", "severity", "location", "uncertain_in_report"]
IMAGES_COLUMNS = ["dicom_id", "subject_id", "study_id", "view_position", "photometric", "bits_stored",
                  "transfer_syntax", "has_voi", "rows", "columns"]
METADATA_COLUMNS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


@dataclass
class CorpusSummary:
    out: Path
    seed: int
    image_size: int
    image_format: str
    studies: int
    subjects: int
    images: int
    frontal_images: int
    lateral_images: int
    normal_studies: int
    findings: dict[str, int] = field(default_factory=dict)  # category -> studies with it
    eval_images: dict[str, int] = field(default_factory=dict)  # nih / rsna / siim -> images
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


def generate_corpus(
    out: Path,
    studies: int = 200,
    seed: int = 0,
    image_size: int = 512,
    image_format: str = "dicom",
    eval_images: int | None = None,
    workers: int = 1,
    progress: bool = False,
) -> CorpusSummary:
    """Write the archive under `out` (created if needed) and return what was written."""
    started = time.perf_counter()
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if studies < 1 or image_size < 64:
        raise ValueError(f"need studies >= 1 and image_size >= 64, got {studies} and {image_size}")
    out = Path(out)
    per_eval_set = max(16, studies // 4) if eval_images is None else eval_images
    plans = plan_archive(studies, seed)
    make = partial(_make_study, root=out, seed=seed, image_size=image_size, image_format=image_format)
    results = list(tqdm(ordered_map(make, plans, workers), total=len(plans), desc="studies", disable=not progress))
    _write_ground_truth(out, results, image_format)
    eval_counts = write_eval_sets(out / "eval", seed, per_eval_set, image_size, workers, progress)
    summary = _summarise(out, seed, image_size, image_format, plans, results, eval_counts)
    _write_manifest(out, summary)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


@dataclass
class _StudyResult:
    findings: list[dict[str, object]]
    images: list[dict[str, object]]
    metadata: list[dict[str, object]]
    categories: list[str]


def _make_study(plan: StudyPlan, root: Path, seed: int, image_size: int, image_format: str) -> _StudyResult:
    key = (seed, ARCHIVE_STREAM, plan.index)
    findings = sample_findings(np.random.default_rng((*key, 1)))
    geometry = sample_geometry(np.random.default_rng((*key, 2)))
    rng = np.random.default_rng((*key, 3))
    has_tube = any(f.category == "endotracheal tube" for f in findings)
    frontal_view = "AP" if rng.random() < (0.8 if has_tube else 0.3) else "PA"
    with_lateral = rng.random() < (0.7 if frontal_view == "PA" else 0.2)
    views = [(FRONTAL, frontal_view)] + ([(LATERAL, "LATERAL" if rng.random() < 0.85 else "LL")] if with_lateral else [])
    patient = plan.patient
    study_dir = root / "files" / f"p{str(patient.subject_id)[:2]}" / f"p{patient.subject_id}"
    description = _procedure(frontal_view, with_lateral)
    study_uid = uid(seed, "study", plan.study_id)
    images, metadata = [], []
    for number, (view, position) in enumerate(views, start=1):
        height, width = (int(round(image_size * rng.uniform(0.9, 1.1))) for _ in range(2))
        rendered = render_view(geometry, view, findings, height, width, key, exposure=rng.uniform(0.9, 1.1))
        image_id = dicom_id(rng)
        ids = {"dicom_id": image_id, "subject_id": patient.subject_id, "study_id": plan.study_id}
        target = study_dir / f"s{plan.study_id}" / f"{image_id}.{'dcm' if image_format == 'dicom' else 'jpg'}"
        if image_format == "dicom":
            identity = Identity(
                patient_name=patient.name, patient_id=patient.mrn, birth_date=patient.birth_date, sex=patient.sex,
                study_uid=study_uid, series_uid=uid(seed, "series", plan.study_id, number),
                sop_uid=uid(seed, "image", image_id), study_date=plan.study_date, study_time=plan.study_time,
                view_position=position, accession=str(plan.study_id)[1:] + str(number),
                study_description=description, series_number=number)
            stored = write_dicom(target, rendered.image, sample_pixel_style(rng), identity)
        else:
            stored = _write_jpg(target, rendered.image)
        images.append({**ids, "view_position": position, **stored})
        metadata.append({**ids, "PerformedProcedureStepDescription": description, "ViewPosition": position,
                         "Rows": height, "Columns": width, "StudyDate": plan.study_date,
                         "StudyTime": plan.study_time, "ProcedureCodeSequence_CodeMeaning": description,
                         "ViewCodeSequence_CodeMeaning": _VIEW_MEANING[position],
                         "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if position == "AP" else "Erect"})
    report = write_report(findings, np.random.default_rng((*key, 4)), frontal_view, with_lateral)
    write_text(study_dir / f"s{plan.study_id}.txt", report)
    rows = [{"subject_id": patient.subject_id, "study_id": plan.study_id, **row} for row in ground_truth_rows(findings)]
    return _StudyResult(rows, images, metadata, [f.category for f in findings])


def _procedure(frontal_view: str, lateral: bool) -> str:
    if frontal_view == "AP":
        return "CHEST (PORTABLE AP)" if not lateral else "CHEST (AP AND LAT)"
    return "CHEST (PA AND LAT)" if lateral else "CHEST (PA)"


def _write_jpg(path: Path, image: np.ndarray) -> dict[str, object]:
    pixels = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="JPEG", quality=95)
    return {"photometric": "MONOCHROME2", "bits_stored": 8, "transfer_syntax": "", "has_voi": False,
            "rows": pixels.shape[0], "columns": pixels.shape[1]}


def write_csv(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    """Atomic CSV with a fixed column order; booleans as 'true'/'false'."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (str(v).lower() if isinstance(v, bool) else v) for k, v in row.items()})
    write_text(path, buffer.getvalue())


def _write_ground_truth(out: Path, results: list[_StudyResult], image_format: str) -> None:
    write_csv(out / "ground_truth" / "findings.csv", FINDINGS_COLUMNS, [r for res in results for r in res.findings])
    write_csv(out / "ground_truth" / "images.csv", IMAGES_COLUMNS, [r for res in results for r in res.images])
    if image_format == "jpg":
        write_csv(out / "mimic-cxr-2.0.0-metadata.csv", METADATA_COLUMNS, [r for res in results for r in res.metadata])


def _summarise(out: Path, seed: int, image_size: int, image_format: str, plans: list[StudyPlan],
               results: list[_StudyResult], eval_counts: dict[str, int]) -> CorpusSummary:
    images = [row for res in results for row in res.images]
    lateral = sum(row["view_position"] in ("LATERAL", "LL") for row in images)
    return CorpusSummary(
        out=out, seed=seed, image_size=image_size, image_format=image_format, studies=len(plans),
        subjects=len({p.patient.subject_id for p in plans}), images=len(images),
        frontal_images=len(images) - lateral, lateral_images=lateral,
        normal_studies=sum(not res.categories for res in results),
        findings={c: sum(c in res.categories for res in results) for c in CATEGORIES},
        eval_images=eval_counts,
    )


def _write_manifest(out: Path, summary: CorpusSummary) -> None:
    """manifest.json: everything but the timing, so it is byte-identical per seed."""
    data = {"generator": "medfilip-corpus", "generator_version": GENERATOR_VERSION, "format": summary.image_format}
    data.update({k: v for k, v in summary.to_dict().items() if k not in ("out", "seconds")})
    write_text(out / "manifest.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
