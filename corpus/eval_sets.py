"""Held-out evaluation sets in the public datasets' own layouts (NIH ChestX-ray14, RSNA
Pneumonia, SIIM-ACR Pneumothorax), rendered for patients that are not in the archive.

Labels come from the renderer's masks, so a box or an RLE covers exactly what was drawn.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from common.parallel import ordered_map
from common.rle import EMPTY, rle_encode
from common.storage import atomic_path, write_text
from corpus.anatomy import FRONTAL, sample_geometry
from corpus.dicom_writer import Identity, eight_bit_style, write_dicom
from corpus.findings import Finding, sample_findings
from corpus.ids import make_patient, uid
from corpus.render import render_view

NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]
NIH_LABELS = {"effusion": "Effusion", "cardiomegaly": "Cardiomegaly", "pneumothorax": "Pneumothorax",
              "nodule": "Nodule", "consolidation": "Consolidation", "atelectasis": "Atelectasis", "edema": "Edema"}
# Streams distinct from the archive's (1), so eval patients never coincide with archive ones.
_STREAMS = {"nih": 11, "rsna": 12, "siim": 13}
# Enrich each set's target finding to a usable positive rate.
_PREVALENCE = {"nih": {}, "rsna": {"consolidation": 0.35}, "siim": {"pneumothorax": 0.35}}
SIIM_ROOT = "1.2.276.0.7230010.3.1"


@dataclass
class _Case:
    name: str
    index: int
    findings: list[Finding]
    image: np.ndarray
    masks: dict[str, np.ndarray]
    view: str
    age: int
    sex: str


def write_eval_sets(root: Path, seed: int, count: int, image_size: int, workers: int = 1,
                    progress: bool = False) -> dict[str, int]:
    """Write eval/nih, eval/rsna and eval/siim with `count` images each; returns the counts."""
    counts = {}
    for name, writer in (("nih", _write_nih_case), ("rsna", _write_rsna_case), ("siim", _write_siim_case)):
        task = partial(_render_and_write, name=name, root=root / name, seed=seed, size=image_size, writer=writer)
        rows = list(tqdm(ordered_map(task, range(count), workers), total=count, desc=f"eval {name}", disable=not progress))
        _FINISHERS[name](root / name, [r for case_rows in rows for r in case_rows])
        counts[name] = count
    return counts


def _render_and_write(index: int, name: str, root: Path, seed: int, size: int, writer) -> list[list[object]]:
    key = (seed, _STREAMS[name], index)
    findings = sample_findings(np.random.default_rng((*key, 1)), _PREVALENCE[name])
    geometry = sample_geometry(np.random.default_rng((*key, 2)))
    rng = np.random.default_rng((*key, 3))
    view = "AP" if rng.random() < 0.35 else "PA"
    rendered = render_view(geometry, FRONTAL, findings, size, size, key, exposure=rng.uniform(0.9, 1.1))
    patient = make_patient(0, rng)
    case = _Case(name, index, findings, rendered.image, rendered.masks, view, patient.age, patient.sex)
    return writer(case, root, seed, rng)


# --- NIH ChestX-ray14 -----------------------------------------------------------------------


def _write_nih_case(case: _Case, root: Path, seed: int, rng: np.random.Generator) -> list[list[object]]:
    name = f"{case.index + 1:08d}_000.png"
    pixels = np.clip(np.rint(case.image * 255), 0, 255).astype(np.uint8)
    with atomic_path(root / "images" / name) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    labels = sorted({NIH_LABELS[f.category] for f in case.findings if f.category in NIH_LABELS}
                    | ({"Pneumonia"} if any(f.pneumonia for f in case.findings) else set()))
    height, width = pixels.shape
    return [[name, "|".join(labels) or "No Finding", 0, case.index + 1, case.age, case.sex, case.view,
             width, height, 0.143, 0.143, ""]]


def _finish_nih(root: Path, rows: list[list[object]]) -> None:
    _write_rows(root / "Data_Entry_2017.csv", NIH_COLUMNS, rows)


# --- RSNA Pneumonia -------------------------------------------------------------------------


def _write_rsna_case(case: _Case, root: Path, seed: int, rng: np.random.Generator) -> list[list[object]]:
    patient_id = _uuid(rng)
    identity = Identity(
        patient_name=patient_id, patient_id=patient_id, birth_date="", sex=case.sex,
        study_uid=uid(seed, "rsna-study", case.index), series_uid=uid(seed, "rsna-series", case.index),
        sop_uid=uid(seed, "rsna-image", case.index), study_date="19010101", study_time="000000.00",
        view_position=case.view, study_description="view: " + case.view)
    write_dicom(root / "stage_2_train_images" / f"{patient_id}.dcm", case.image, eight_bit_style(), identity)
    boxes = _boxes(case.masks.get("consolidation"))
    if boxes:
        return [[patient_id, *box, 1, "Lung Opacity"] for box in boxes]
    label = "Normal" if not case.findings else "No Lung Opacity / Not Normal"
    return [[patient_id, "", "", "", "", 0, label]]


def _finish_rsna(root: Path, rows: list[list[object]]) -> None:
    _write_rows(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"],
                [row[:6] for row in rows])
    _write_rows(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], [[row[0], row[6]] for row in rows])


def _boxes(mask: np.ndarray | None) -> list[list[float]]:
    """x, y, width, height of each connected opacity, in pixels (RSNA convention)."""
    if mask is None or not mask.any():
        return []
    labelled, _ = ndimage.label(mask)
    boxes = []
    for rows, cols in ndimage.find_objects(labelled):
        boxes.append([float(cols.start), float(rows.start), float(cols.stop - cols.start),
                      float(rows.stop - rows.start)])
    return boxes


# --- SIIM-ACR Pneumothorax -----------------------------------------------------------------


def _write_siim_case(case: _Case, root: Path, seed: int, rng: np.random.Generator) -> list[list[object]]:
    image_id = uid(seed, "siim-image", case.index, prefix=f"{SIIM_ROOT}.4.")
    study_uid = uid(seed, "siim-study", case.index, prefix=f"{SIIM_ROOT}.2.")
    series_uid = uid(seed, "siim-series", case.index, prefix=f"{SIIM_ROOT}.3.")
    identity = Identity(
        patient_name=_uuid(rng), patient_id=_uuid(rng), birth_date="", sex=case.sex, study_uid=study_uid,
        series_uid=series_uid, sop_uid=image_id, study_date="19010101", study_time="000000.00",
        view_position=case.view, study_description="view: " + case.view)
    write_dicom(root / "dicom-images-train" / study_uid / series_uid / f"{image_id}.dcm", case.image,
                eight_bit_style(), identity)
    mask = case.masks.get("pneumothorax")
    if mask is None or not mask.any():
        return [[image_id, " " + EMPTY]]
    labelled, regions = ndimage.label(mask)
    return [[image_id, " " + rle_encode(labelled == region)] for region in range(1, regions + 1)]


def _finish_siim(root: Path, rows: list[list[object]]) -> None:
    # The real file's header and values carry a space after the comma; keep it.
    lines = ["ImageId, EncodedPixels"] + [f"{image_id},{encoded}" for image_id, encoded in rows]
    write_text(root / "train-rle.csv", "\n".join(lines) + "\n")


# --- helpers --------------------------------------------------------------------------------

_FINISHERS = {"nih": _finish_nih, "rsna": _finish_rsna, "siim": _finish_siim}


def _uuid(rng: np.random.Generator) -> str:
    h = rng.bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _write_rows(path: Path, header: list[str], rows: list[list[object]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
