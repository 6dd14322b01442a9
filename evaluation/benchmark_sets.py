"""The field's standard zero-shot benchmarks, read from the label files as published.

CheXpert (`train.csv` / `valid.csv` / `test.csv`: `Path, Sex, Age, Frontal/Lateral, AP/PA,
No Finding, ...` with 1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned) and
MIMIC-CXR (`mimic-cxr-2.0.0-chexpert.csv`: subject_id, study_id and the same 14 observations
per study; `mimic-cxr-2.0.0-split.csv`: dicom_id, study_id, subject_id, split with train /
validate / test; optionally `mimic-cxr-2.0.0-metadata.csv` for ViewPosition).

5x200, as GLoRIA defines it (and CheXzero/MedCLIP-style papers reuse): the five CheXpert
competition tasks (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion), 200
frontal images per task, each positive for that observation and negative for every other
observation except "No Finding", blanks counting as negative and an uncertain (-1) label
anywhere disqualifying the image. So each image is positive for exactly one of the five. The
200 are a seeded random draw among the qualifying images (GLoRIA draws from CheXpert's
train.csv, which a model evaluated on it must not have seen). For MIMIC-CXR the same rule runs
on the study labels of one official split (default test), one frontal image per study.

MIMIC-CXR retrieval: every image of the official test split against its own study's report
(FINDINGS + IMPRESSION, as ingestion parses them); Recall@K both ways, exact pairs only
(evaluation.retrieval.paired_retrieval_metrics).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from evaluation.datasets import EVAL_DATASETS, LabelledImages, _label_matrix, _read_csv, load_eval_dataset, load_label_mapping

CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
COMPETITION_TASKS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
FIVE_BY_200_RULE = ("positive for the task, negative (0 or blank) for every other observation but No Finding, "
                    "no uncertain label; frontal; seeded draw of per_class images per task")
Uncertain = Literal["negative", "positive"]
_FRONTAL_VIEWS = {"PA", "AP"}
BENCHMARKS = ("chexpert", "chexpert_5x200", "mimic_cxr_5x200")
ALL_EVAL_SETS = (*EVAL_DATASETS, *BENCHMARKS)


@dataclass
class ReportPairs:
    """Images and reports of one split; `text_of_image[i]` is the index of image i's report."""

    images: LabelledImages
    texts: list[str]
    study_ids: list[str]  # one per text
    text_of_image: np.ndarray


def chexpert(labels_csv: str | Path, images_dir: str | Path | None = None, *, uncertain: Uncertain = "negative",
             frontal_only: bool = False) -> LabelledImages:
    """Every row of a CheXpert label file; uncertain (-1) labels count as `uncertain` (U-Zeros /
    U-Ones); the patient is the `patientNNNNN` folder of Path."""
    rows = [row for row in _read_csv(labels_csv) if not frontal_only or _chexpert_frontal(row)]
    _require_columns(labels_csv, rows, ("Path", *CHEXPERT_OBSERVATIONS))
    names = [_positive_observations(row, uncertain) for row in rows]
    categories, labels = _label_matrix(names, load_label_mapping("chexpert"), "chexpert")
    ids = [row["Path"] for row in rows]
    data = LabelledImages("chexpert", ids, [_chexpert_patient(p) for p in ids], categories, labels,
                          label_rule=f"1.0 positive; blank and 0.0 negative; -1.0 (uncertain) {uncertain}")
    return _with_paths(data, images_dir, [_chexpert_candidates(p) for p in ids])


def chexpert_5x200(labels_csv: str | Path, images_dir: str | Path | None = None, *, per_class: int = 200,
                   seed: int = 0) -> LabelledImages:
    """The CheXpert 5x200 set from a CheXpert label file (GLoRIA: train.csv); columns = the five tasks."""
    rows = list(_read_csv(labels_csv))
    _require_columns(labels_csv, rows, ("Path", "Frontal/Lateral", *CHEXPERT_OBSERVATIONS))
    frontal = [i for i, row in enumerate(rows) if _chexpert_frontal(row)]
    chosen = _five_by_200([rows[i] for i in frontal], per_class, seed, str(labels_csv))
    picked = [(rows[frontal[i]], task) for i, task in chosen]
    ids = [row["Path"] for row, _ in picked]
    data = _five_class_set("chexpert_5x200", ids, [_chexpert_patient(p) for p in ids], [t for _, t in picked])
    return _with_paths(data, images_dir, [_chexpert_candidates(p) for p in ids])


def mimic_cxr(chexpert_csv: str | Path, split_csv: str | Path, images_dir: str | Path | None = None, *,
              split: str = "test", metadata_csv: str | Path | None = None,
              uncertain: Uncertain = "negative") -> LabelledImages:
    """Every image (dicom_id) of one official split with its study's 14 labels; frontal only when
    metadata_csv is given. A study without a label row is negative for all (as a blank row)."""
    images = _mimic_split_images(split_csv, split, metadata_csv)
    studies = _mimic_study_labels(chexpert_csv)
    names = [_positive_observations(studies.get(study, {}), uncertain) for _, study, _ in images]
    categories, labels = _label_matrix(names, load_label_mapping("mimic_cxr"), "mimic_cxr")
    data = LabelledImages("mimic_cxr", [d for d, _, _ in images], [s for _, _, s in images], categories, labels,
                          label_rule=f"study labels; 1.0 positive; blank and 0.0 negative; -1.0 {uncertain}")
    return _with_paths(data, images_dir, [_mimic_candidates(*image) for image in images])


def mimic_cxr_5x200(chexpert_csv: str | Path, split_csv: str | Path, images_dir: str | Path | None = None, *,
                    split: str = "test", metadata_csv: str | Path | None = None, per_class: int = 200,
                    seed: int = 0) -> LabelledImages:
    """MIMIC-CXR 5x200 on one official split: the 5x200 rule on study labels, one image per study
    (the first of the study in the split file, frontal when metadata_csv is given)."""
    studies = _mimic_study_labels(chexpert_csv)
    first_image: dict[str, tuple[str, str, str]] = {}
    for image in _mimic_split_images(split_csv, split, metadata_csv):
        first_image.setdefault(image[1], image)
    candidates = [s for s in first_image if s in studies]
    chosen = _five_by_200([studies[s] for s in candidates], per_class, seed, str(chexpert_csv))
    images = [first_image[candidates[i]] for i, _ in chosen]
    data = _five_class_set("mimic_cxr_5x200", [d for d, _, _ in images], [s for _, _, s in images],
                           [task for _, task in chosen])
    return _with_paths(data, images_dir, [_mimic_candidates(*image) for image in images])


def mimic_cxr_report_pairs(split_csv: str | Path, reports_dir: str | Path, images_dir: str | Path | None = None,
                           *, split: str = "test", metadata_csv: str | Path | None = None) -> ReportPairs:
    """Images of one official split and their studies' reports (`files/pXX/p<subject>/s<study>.txt`
    under reports_dir, as mimic-cxr-reports.zip unpacks). A study whose report is missing or has
    no FINDINGS/IMPRESSION text is an error: dropping it would change the benchmark."""
    from ingestion.reports import parse_report

    images = _mimic_split_images(split_csv, split, metadata_csv)
    reports_dir = Path(reports_dir)
    texts, study_ids, index = [], [], {}
    for _, study, subject in images:
        if study in index:
            continue
        path = _first_existing(_mimic_report_candidates(reports_dir, subject, study))
        if path is None:
            raise FileNotFoundError(f"mimic_cxr: no report for study s{study} under {reports_dir} "
                                    f"(expected files/p{subject[:2]}/p{subject}/s{study}.txt)")
        text = parse_report(path.read_text(encoding="utf-8", errors="replace")).extraction_text.strip()
        if not text:
            raise ValueError(f"mimic_cxr: report {path} has no FINDINGS or IMPRESSION text")
        index[study] = len(texts)
        texts.append(text)
        study_ids.append(study)
    data = LabelledImages("mimic_cxr_reports", [d for d, _, _ in images], [s for _, _, s in images], [],
                          np.zeros((len(images), 0), dtype=np.int8), label_rule="image <-> own study's report")
    data = _with_paths(data, images_dir, [_mimic_candidates(*image) for image in images])
    return ReportPairs(data, texts, study_ids, np.array([index[study] for _, study, _ in images], dtype=np.int64))


def load_named_eval_set(dataset: str, *, eval_root: str | Path, labels_csv: str = "", images_dir: str = "",
                        split_csv: str = "") -> LabelledImages:
    """evaluation.datasets.load_eval_dataset, plus the benchmarks of this module by name. These
    exist only as real data; MIMIC-CXR also needs its split file (`split_csv`)."""
    if dataset not in BENCHMARKS:
        return load_eval_dataset(dataset, eval_root=eval_root, labels_csv=labels_csv, images_dir=images_dir)
    if not labels_csv:
        raise ValueError(f"{dataset} has no generated stand-in: set labels_csv (and images_dir)")
    if dataset == "mimic_cxr_5x200":
        if not split_csv:
            raise ValueError("mimic_cxr_5x200 needs split_csv (mimic-cxr-2.0.0-split.csv)")
        return mimic_cxr_5x200(labels_csv, split_csv, images_dir or None)
    return (chexpert if dataset == "chexpert" else chexpert_5x200)(labels_csv, images_dir or None)


# --- helpers -------------------------------------------------------------------------------


def _five_by_200(label_rows: Sequence[dict[str, str]], per_class: int, seed: int, source: str) -> list[tuple[int, str]]:
    """(row index, task) pairs, tasks in COMPETITION_TASKS order, rows ascending within a task."""
    others = [o for o in CHEXPERT_OBSERVATIONS if o != "No Finding"]
    values = np.array([[_value(row.get(o, "")) for o in others] for row in label_rows]).reshape(len(label_rows),
                                                                                                len(others))
    rng = np.random.default_rng(seed)
    chosen, short = [], {}
    for task in COMPETITION_TASKS:
        wanted = np.array([1.0 if o == task else 0.0 for o in others])
        qualifying = np.flatnonzero((values == wanted).all(axis=1))
        if len(qualifying) < per_class:
            short[task] = len(qualifying)
            continue
        chosen += [(int(i), task) for i in np.sort(rng.choice(qualifying, size=per_class, replace=False))]
    if short:
        raise ValueError(f"{source}: too few images for 5x{per_class} (positive for only that task, no uncertain "
                         f"label): {short}")
    return chosen


def _five_class_set(name: str, ids: list[str], patients: list[str], tasks: list[str]) -> LabelledImages:
    mapping = load_label_mapping("chexpert")
    categories = [mapping[t][0] for t in COMPETITION_TASKS]
    labels = np.zeros((len(ids), len(categories)), dtype=np.int8)
    labels[np.arange(len(ids)), [COMPETITION_TASKS.index(t) for t in tasks]] = 1
    return LabelledImages(name, ids, patients, categories, labels, label_rule=f"5x200: {FIVE_BY_200_RULE}")


def _value(text: str) -> float:
    """A label cell as a number: blank is 0 (not mentioned = negative, as GLoRIA's fillna(0))."""
    text = (text or "").strip()
    return float(text) if text else 0.0


def _positive_observations(row: dict[str, str], uncertain: Uncertain) -> list[str]:
    if uncertain not in ("negative", "positive"):
        raise ValueError(f"uncertain must be 'negative' or 'positive', got {uncertain!r}")
    positive = {1.0, -1.0} if uncertain == "positive" else {1.0}
    return [o for o in CHEXPERT_OBSERVATIONS if _value(row.get(o, "")) in positive]


def _require_columns(source: str | Path, rows: list[dict[str, str]], columns: Sequence[str]) -> None:
    if not rows:
        raise ValueError(f"{source}: no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{source}: columns {missing} missing; is this the published label file?")


def _chexpert_frontal(row: dict[str, str]) -> bool:
    return row.get("Frontal/Lateral", "").strip() == "Frontal"


def _chexpert_patient(path: str) -> str:
    return next((part for part in Path(path).parts if part.startswith("patient")), path)


def _chexpert_candidates(path: str) -> list[Path]:
    """Path as published ("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"):
    relative to the folder holding the release folder, or to the release folder itself."""
    parts = Path(path).parts
    return [Path(path), Path(*parts[1:])] if len(parts) > 1 else [Path(path)]


def _mimic_split_images(split_csv: str | Path, split: str, metadata_csv: str | Path | None) -> list[tuple[str, str, str]]:
    """(dicom_id, study_id, subject_id) of one split, in file order; frontal only with metadata."""
    rows = list(_read_csv(split_csv))
    _require_columns(split_csv, rows, ("dicom_id", "study_id", "subject_id", "split"))
    splits = {row["split"] for row in rows}
    if split not in splits:
        raise ValueError(f"{split_csv}: no split {split!r}; has {sorted(splits)}")
    views = None
    if metadata_csv is not None:
        views = {row["dicom_id"]: row.get("ViewPosition", "") for row in _read_csv(metadata_csv)}
    return [(row["dicom_id"], _bare_id(row["study_id"]), _bare_id(row["subject_id"])) for row in rows
            if row["split"] == split and (views is None or views.get(row["dicom_id"], "") in _FRONTAL_VIEWS)]


def _mimic_study_labels(chexpert_csv: str | Path) -> dict[str, dict[str, str]]:
    rows = list(_read_csv(chexpert_csv))
    _require_columns(chexpert_csv, rows, ("subject_id", "study_id", *CHEXPERT_OBSERVATIONS))
    return {_bare_id(row["study_id"]): row for row in rows}


def _bare_id(value: str) -> str:
    """"50414267", "50414267.0" or "s50414267" -> "50414267"."""
    value = value.strip().lstrip("ps")
    return value[:-2] if value.endswith(".0") else value


def _mimic_candidates(dicom_id: str, study: str, subject: str) -> list[Path]:
    folder = Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
    names = [f"{dicom_id}.dcm", f"{dicom_id}.jpg"]
    return [folder / n for n in names] + [folder.relative_to("files") / n for n in names]


def _mimic_report_candidates(root: Path, subject: str, study: str) -> list[Path]:
    relative = Path(f"p{subject[:2]}") / f"p{subject}" / f"s{study}.txt"
    return [root / "files" / relative, root / relative]


def _first_existing(paths: Sequence[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _with_paths(data: LabelledImages, images_dir: str | Path | None, candidates: list[list[Path]]) -> LabelledImages:
    """Attach every image's file; a benchmark with a missing image is an error, never a smaller set."""
    if images_dir is None:
        return data
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{data.name}: images folder {images_dir} does not exist")
    paths = []
    for image_id, options in zip(data.image_ids, candidates):
        path = _first_existing([images_dir / option for option in options])
        if path is None:
            raise FileNotFoundError(f"{data.name}: image {image_id} not found under {images_dir} "
                                    f"(looked for {', '.join(str(o) for o in options)})")
        paths.append(path)
    data.paths = paths
    return data
