"""The generated corpus: determinism, MIMIC layout, DICOM variety, reports that match the
pixels, findings visible in the pixels, and the held-out evaluation sets."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from corpus.anatomy import FRONTAL, draw_anatomy, make_canvas, sample_geometry
from corpus.findings import Finding
from corpus.generate import generate_corpus
from corpus.lesions import adjust_geometry
from corpus.render import render_view
from common.rle import rle_decode, rle_encode

SMALL = dict(studies=12, image_size=128, eval_images=6)
# Words that must appear in a report for each drawn category (any one of them).
MENTIONS = {
    "effusion": ("effusion", "fluid"),
    "cardiomegaly": ("cardiomegaly", "enlarged", "enlargement"),
    "pneumothorax": ("pneumothorax",),
    "nodule": ("nodule", "nodular"),
    "consolidation": ("consolidation", "airspace opacity", "opacity"),
    "pneumonia": ("pneumonia",),
    "atelectasis": ("atelectasis",),
    "edema": ("edema",),
    "pacemaker": ("pacemaker", "pacer"),
    "endotracheal tube": ("endotracheal tube", "et tube"),
}
NEGATION = re.compile(r"\bno\b|\bnormal\b|within normal limits|\bclear\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(out, seed=0, **SMALL)
    return out


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> Path:
    """A moderate corpus with tiny images, enough to see the DICOM variety."""
    out = tmp_path_factory.mktemp("varied")
    generate_corpus(out, studies=90, seed=3, image_size=64, eval_images=0)
    return out


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _reports(root: Path) -> dict[int, str]:
    return {int(p.stem[1:]): p.read_text() for p in root.glob("files/p*/p*/s*.txt")}


# --- determinism and layout -------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_and_workers_do_not_matter(corpus, tmp_path):
    again = tmp_path / "again"
    generate_corpus(again, seed=0, workers=2, **SMALL)
    assert _digests(again) == _digests(corpus)


def test_different_seed_gives_different_files(corpus, tmp_path):
    other = tmp_path / "other"
    generate_corpus(other, seed=1, **SMALL)
    first, second = _digests(corpus), _digests(other)
    assert set(first) != set(second)
    assert first["ground_truth/findings.csv"] != second["ground_truth/findings.csv"]


def test_layout_and_ids_follow_mimic(corpus):
    images = list(corpus.glob("files/p*/p*/s*/*.dcm"))
    reports = list(corpus.glob("files/p*/p*/s*.txt"))
    assert len(reports) == 12 and len(images) >= 12
    for image in images:
        shard, subject, study = image.parts[-4], image.parts[-3], image.parts[-2]
        assert re.fullmatch(r"p1\d", shard) and re.fullmatch(r"p1\d{7}", subject) and subject[:3] == shard
        assert re.fullmatch(r"s5\d{7}", study)
        assert (image.parent.parent / f"{study}.txt").exists()
        assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", image.stem)
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["studies"] == 12 and manifest["seed"] == 0 and manifest["format"] == "dicom"
    assert manifest["images"] == len(images)


def test_subjects_spread_over_shards_and_some_have_several_studies(varied):
    studies_by_subject: dict[str, int] = {}
    for report in varied.glob("files/p*/p*/s*.txt"):
        studies_by_subject[report.parent.name] = studies_by_subject.get(report.parent.name, 0) + 1
    assert {name[:3] for name in studies_by_subject} == {f"p1{i}" for i in range(10)}
    assert max(studies_by_subject.values()) >= 2


# --- DICOM ------------------------------------------------------------------------------


def test_every_dicom_reads_back_with_pixels_matching_ground_truth(corpus):
    truth = {row["dicom_id"]: row for row in _read_csv(corpus / "ground_truth" / "images.csv")}
    for path in corpus.glob("files/p*/p*/s*/*.dcm"):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        row = truth[path.stem]
        assert pixels.shape == (int(row["rows"]), int(row["columns"]))
        assert ds.PhotometricInterpretation == row["photometric"]
        assert int(ds.BitsStored) == int(row["bits_stored"])
        assert pixels.max() < 2 ** int(ds.BitsStored) and pixels.std() > 0
        assert ds.PatientID != row["subject_id"] and "^" in str(ds.PatientName)
        assert ds.ViewPosition == row["view_position"]


def test_archive_has_the_dicom_variety_ingestion_must_cope_with(varied):
    datasets = [pydicom.dcmread(p) for p in varied.glob("files/p*/p*/s*/*.dcm")]
    seen = lambda attr: {str(getattr(ds, attr, None)) for ds in datasets}  # noqa: E731
    assert {"MONOCHROME1", "MONOCHROME2"} <= seen("PhotometricInterpretation")
    assert {"12", "15", "16"} <= seen("BitsStored")
    assert {"PA", "AP", "LATERAL"} <= seen("ViewPosition")
    assert {"DX", "CR"} <= seen("Modality")
    assert any("RescaleSlope" in ds for ds in datasets) and any("RescaleSlope" not in ds for ds in datasets)
    assert any("WindowCenter" in ds for ds in datasets)
    assert any("VOILUTSequence" in ds for ds in datasets)
    assert any(ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless for ds in datasets)
    assert len({ds.Rows for ds in datasets}) > 3


def test_monochrome1_and_luts_still_show_lungs_darker_than_the_mediastinum(varied):
    """After modality LUT, VOI and MONOCHROME1 inversion every frontal has dark lungs."""
    for path in varied.glob("files/p*/p*/s*/*.dcm"):
        ds = pydicom.dcmread(path)
        if ds.ViewPosition not in ("PA", "AP"):
            continue
        shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(float)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            shown = shown.max() - shown
        rows, cols = shown.shape
        lung = shown[rows * 4 // 10 : rows // 2, cols // 5 : cols * 3 // 10].mean()
        centre = shown[rows * 4 // 10 : rows // 2, cols * 47 // 100 : cols * 53 // 100].mean()
        assert lung < centre, path.name


# --- reports ----------------------------------------------------------------------------


def test_reports_mention_every_drawn_finding_and_negate_some_absent_ones(varied):
    reports = _reports(varied)
    by_study: dict[int, list[str]] = {}
    for row in _read_csv(varied / "ground_truth" / "findings.csv"):
        by_study.setdefault(int(row["study_id"]), []).append(row["category"])
    negated = 0
    for study_id, text in reports.items():
        lower = " ".join(text.lower().split())  # reports wrap lines mid-phrase
        for category in by_study.get(study_id, []):
            assert any(word in lower for word in MENTIONS[category]), (category, text)
        negated += bool(NEGATION.search(text))
    assert negated > len(reports) // 2
    assert all("final report" in t.lower() for t in reports.values() if t.strip(" _\n"))


def test_reports_hedge_uncertain_findings_and_contain_no_identifiers(varied):
    rows = _read_csv(varied / "ground_truth" / "findings.csv")
    reports = _reports(varied)
    hedges = re.compile(r"possible|cannot be excluded|cannot exclude|may (be|represent)|concerning for", re.I)
    uncertain = [r for r in rows if r["uncertain_in_report"] == "true"]
    assert uncertain
    for row in uncertain:
        assert hedges.search(reports[int(row["study_id"])])
    for row in rows:
        assert row["subject_id"] not in reports[int(row["study_id"])]


# --- pixels carry the findings ------------------------------------------------------------


def _render(findings: list[Finding], seed: int = 5) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    geometry = sample_geometry(np.random.default_rng(seed))
    rendered = render_view(geometry, FRONTAL, findings, 160, 160, (seed, 1))
    return rendered.image, rendered.masks


def test_large_right_effusion_brightens_the_lower_right_lung_field():
    plain, _ = _render([])
    with_fluid, masks = _render([Finding("effusion", "large", "right")])
    mask = masks["effusion"]
    assert mask.sum() > 200
    assert mask[:, :80].sum() > 10 * mask[:, 80:].sum()  # patient's right is the image's left
    lower_right = (slice(95, 115), slice(30, 60))
    assert with_fluid[lower_right].mean() > plain[lower_right].mean() + 0.1
    assert np.allclose(with_fluid[:, 100:], plain[:, 100:])  # the other lung is untouched


def test_effusion_severity_raises_the_fluid_level():
    areas = [_render([Finding("effusion", s, "left")])[1]["effusion"].sum() for s in ("small", "moderate", "large")]
    assert areas[0] < areas[1] < areas[2]


def _heart_width(findings: list[Finding]) -> int:
    geometry = adjust_geometry(sample_geometry(np.random.default_rng(5)), findings)
    canvas = make_canvas(160, 160, geometry, FRONTAL)
    draw_anatomy(canvas)
    cols = np.flatnonzero((canvas.heart > 0.5).any(axis=0))
    return int(cols[-1] - cols[0])


def test_cardiomegaly_widens_the_heart_with_severity():
    widths = [_heart_width([])] + [_heart_width([Finding("cardiomegaly", s, "na")]) for s in ("mild", "moderate", "severe")]
    assert widths == sorted(widths) and len(set(widths)) == 4
    assert widths[-1] > 1.3 * widths[0]
    plain, _ = _render([])
    enlarged, masks = _render([Finding("cardiomegaly", "severe", "na")])
    assert masks["cardiomegaly"].sum() > 1.3 * _render([Finding("cardiomegaly", "mild", "na")])[1]["cardiomegaly"].sum() / 1.3
    assert enlarged[masks["cardiomegaly"]].mean() > plain[masks["cardiomegaly"]].mean()


def test_pneumothorax_darkens_the_apex_and_removes_markings():
    plain, _ = _render([])
    collapsed, masks = _render([Finding("pneumothorax", "large", "left")])
    band = masks["pneumothorax"]
    assert band.sum() > 100 and band[:, 80:].sum() > 10 * band[:, :80].sum()
    assert collapsed[band].mean() < plain[band].mean() - 0.03


def test_each_finding_changes_pixels_inside_its_mask():
    plain, _ = _render([])
    for finding in (Finding("nodule", "large", "right upper lobe"), Finding("consolidation", "severe", "left lower lobe"),
                    Finding("atelectasis", "moderate", "bibasilar"), Finding("edema", "severe", "bilateral"),
                    Finding("pacemaker", "na", "left chest"), Finding("endotracheal tube", "na", "na")):
        image, masks = _render([finding])
        mask = masks[finding.category]
        assert mask.sum() > 20, finding
        assert image[mask].mean() > plain[mask].mean() + 0.02, finding


# --- RLE --------------------------------------------------------------------------------


def test_rle_round_trips_and_reads_columns_first():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 23)) < 0.3
    assert np.array_equal(rle_decode(rle_encode(mask), 37, 23), mask)
    assert rle_encode(np.zeros((4, 4), bool)) == "-1" and not rle_decode("-1", 4, 4).any()
    # First column holds pixels 0..3: rows 1-2 of column 0, then row 0 of column 1.
    small = np.zeros((4, 3), bool)
    small[1:3, 0] = True
    small[0, 1] = True
    assert rle_encode(small) == "1 2 1 1"


# --- evaluation sets and jpg ----------------------------------------------------------------


def test_eval_csvs_parse_and_match_images_on_disk(corpus):
    nih = _read_csv(corpus / "eval" / "nih" / "Data_Entry_2017.csv")
    assert len(nih) == 6
    for row in nih:
        image = Image.open(corpus / "eval" / "nih" / "images" / row["Image Index"])
        assert image.mode == "L" and image.size == (int(row["OriginalImage[Width"]), int(row["Height]"]))
        labels = row["Finding Labels"].split("|")
        assert labels == ["No Finding"] or set(labels) <= {"Effusion", "Cardiomegaly", "Pneumothorax", "Nodule",
                                                           "Consolidation", "Pneumonia", "Atelectasis", "Edema"}
    rsna = _read_csv(corpus / "eval" / "rsna" / "stage_2_train_labels.csv")
    for row in rsna:
        ds = pydicom.dcmread(corpus / "eval" / "rsna" / "stage_2_train_images" / f"{row['patientId']}.dcm")
        assert ds.BitsStored == 8 and ds.PhotometricInterpretation == "MONOCHROME2"
        if row["Target"] == "1":
            x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
            assert w > 0 and h > 0 and x + w <= ds.Columns and y + h <= ds.Rows
        else:
            assert row["x"] == ""
    assert len({r["patientId"] for r in rsna}) == 6
    classes = _read_csv(corpus / "eval" / "rsna" / "stage_2_detailed_class_info.csv")
    assert len(classes) == len(rsna)
    siim_lines = (corpus / "eval" / "siim" / "train-rle.csv").read_text().splitlines()
    assert siim_lines[0] == "ImageId, EncodedPixels"
    dicoms = {p.stem: p for p in (corpus / "eval" / "siim" / "dicom-images-train").glob("*/*/*.dcm")}
    for line in siim_lines[1:]:
        image_id, encoded = line.split(",")
        ds = pydicom.dcmread(dicoms[image_id])
        mask = rle_decode(encoded, ds.Rows, ds.Columns)
        assert (encoded.strip() == "-1") == (not mask.any())
    assert len(dicoms) == 6


def test_eval_positives_match_their_drawings(tmp_path):
    generate_corpus(tmp_path, studies=4, image_size=96, eval_images=24, seed=2)
    siim = (tmp_path / "eval" / "siim" / "train-rle.csv").read_text().splitlines()[1:]
    positives = [line for line in siim if line.split(",")[1].strip() != "-1"]
    assert positives  # enriched prevalence gives positives even in a small set
    rsna = _read_csv(tmp_path / "eval" / "rsna" / "stage_2_train_labels.csv")
    assert any(r["Target"] == "1" for r in rsna)
    for row in _read_csv(tmp_path / "eval" / "rsna" / "stage_2_detailed_class_info.csv"):
        assert row["class"] in {"Lung Opacity", "Normal", "No Lung Opacity / Not Normal"}


def test_jpg_format_writes_images_and_mimic_jpg_metadata(tmp_path):
    summary = generate_corpus(tmp_path, image_format="jpg", **SMALL)
    jpgs = {p.stem: p for p in tmp_path.glob("files/p*/p*/s*/*.jpg")}
    assert jpgs and not list(tmp_path.glob("files/**/*.dcm"))
    rows = _read_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv")
    assert list(rows[0]) == ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                             "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
                             "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                             "PatientOrientationCodeSequence_CodeMeaning"]
    assert {r["dicom_id"] for r in rows} == set(jpgs) and summary.images == len(rows)
    for row in rows:
        image = Image.open(jpgs[row["dicom_id"]])
        assert image.mode == "L" and image.size == (int(row["Columns"]), int(row["Rows"]))
        assert jpgs[row["dicom_id"]].parts[-2] == f"s{row['study_id']}"


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        generate_corpus(tmp_path, image_format="png")
