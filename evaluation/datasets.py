"""Evaluation datasets in their published layouts, read into one common `LabelledImages`.

Every adapter maps the dataset's own label names to our canonical categories through
`knowledge/dataset_labels.yaml` (a label missing there is an error naming it), keeps the patient
of every image (splits are patient-wise, see evaluation.splits) and, where the dataset has them,
boxes (RSNA, VinBigData) or masks (SIIM). `images_dir=None` reads the labels alone, which is
how the tests check the parsers against the real label files shipped by torchxrayvision.

Label rules worth knowing:
- NIH ChestX-ray14: "Finding Labels" split on "|"; "No Finding" is negative for every column.
- RSNA Pneumonia: one row per box; an image is positive when any of its rows has Target 1.
- SIIM-ACR: one row per pneumothorax region; the mask is the union of the image's RLE rows
  ("-1" = empty). The CSV header is "ImageId, EncodedPixels" with a leading space, and the
  generated set also puts one before each value; both are stripped.
- VinBigData: several radiologists read each image (one row per finding and reader). `rule="any"`
  (default) labels a class positive when any reader marked it; `rule="majority"` when more than
  half of the image's readers did. Boxes are kept from every reader.
- COVID-19 Radiography: the class is the folder (COVID, Normal, Lung_Opacity, Viral Pneumonia);
  every image is its own patient (the database publishes no patient ids).
"""
from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import yaml

from common.paths import KNOWLEDGE_DIR
from common.rle import rle_decode

DEFAULT_LABELS_PATH = KNOWLEDGE_DIR / "dataset_labels.yaml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


@dataclass(frozen=True)
class Box:
    category: str
    x: float  # left, in original pixels
    y: float  # top
    width: float
    height: float


@dataclass
class LabelledImages:
    """N images, their [N, C] 0/1 labels over `categories`, and what is needed to split and load."""

    name: str
    image_ids: list[str]
    patient_ids: list[str]
    categories: list[str]
    labels: np.ndarray  # [N, C] int8
    paths: list[Path] | None = None  # None: labels only
    boxes: list[list[Box]] | None = None
    mask_rles: list[list[str]] | None = None  # SIIM: RLE strings per image, in original pixels
    label_rule: str = ""
    arrays: np.ndarray | None = field(default=None, repr=False)  # [N, H, W] uint8, in-memory sets

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def has_images(self) -> bool:
        return self.paths is not None or self.arrays is not None

    def image(self, index: int, size: int) -> np.ndarray:
        """uint8 [size, size], bright = dense; DICOM through ingestion's decoder (LUTs,
        MONOCHROME1), PNG/JPG as stored; padded to square so the anatomy keeps its proportions."""
        if self.arrays is not None:
            from ingestion.decode import resize_uint8

            return resize_uint8(self.arrays[index], size, pad_to_square=True)
        if self.paths is None:
            raise ValueError(f"{self.name}: read without images (images_dir=None)")
        from ingestion.decode import decode_dicom, decode_jpeg

        path = self.paths[index]
        decode = decode_dicom if path.suffix.lower() == ".dcm" else decode_jpeg
        return decode(path, size, pad_to_square=True)

    def mask(self, index: int, size: int) -> np.ndarray:
        """bool [size, size] segmentation mask (SIIM), padded and resized like `image`."""
        if self.mask_rles is None:
            raise ValueError(f"{self.name} has no masks")
        height, width = self.original_shape(index)
        full = np.zeros((height, width), dtype=bool)
        for rle in self.mask_rles[index]:
            full |= rle_decode(rle, height, width)
        from ingestion.decode import resize_uint8

        return resize_uint8(full.astype(np.uint8) * 255, size, pad_to_square=True) >= 128

    def original_shape(self, index: int) -> tuple[int, int]:
        if self.arrays is not None:
            return tuple(self.arrays[index].shape)  # type: ignore[return-value]
        path = self.paths[index] if self.paths is not None else None
        if path is None:
            raise ValueError(f"{self.name}: no image to take the shape from")
        if path.suffix.lower() == ".dcm":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        from PIL import Image

        with Image.open(path) as image:
            return image.height, image.width

    def subset(self, indices: Sequence[int] | np.ndarray) -> "LabelledImages":
        idx = np.asarray(indices, dtype=np.int64)
        pick = lambda values: None if values is None else [values[i] for i in idx]  # noqa: E731
        return replace(
            self, image_ids=pick(self.image_ids), patient_ids=pick(self.patient_ids), labels=self.labels[idx],
            paths=pick(self.paths), boxes=pick(self.boxes), mask_rles=pick(self.mask_rles),
            arrays=None if self.arrays is None else self.arrays[idx],
        )

    def select_categories(self, categories: Sequence[str]) -> "LabelledImages":
        columns = [self.categories.index(c) for c in categories]
        return replace(self, categories=list(categories), labels=self.labels[:, columns])


def load_label_mapping(dataset: str, path: str | Path = DEFAULT_LABELS_PATH) -> dict[str, list[str]]:
    """Published label -> canonical categories for one dataset of dataset_labels.yaml."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    datasets = raw.get("datasets", {}) if isinstance(raw, dict) else {}
    if dataset not in datasets:
        raise KeyError(f"{path}: no mapping for dataset {dataset!r}; has {sorted(datasets)}")
    return {str(label): [str(c).lower() for c in (cats or [])] for label, cats in datasets[dataset].items()}


# --- adapters ------------------------------------------------------------------------------


def nih_chestxray14(labels_csv: str | Path, images_dir: str | Path | None = None) -> LabelledImages:
    """Data_Entry_2017*.csv (plain, .gz or .zip); images found by name anywhere under images_dir
    (the release spreads them over images_001/images ... images_012/images)."""
    mapping = load_label_mapping("nih")
    ids, patients, names = [], [], []
    for row in _read_csv(labels_csv):
        ids.append(row["Image Index"])
        patients.append(row["Patient ID"].strip())
        names.append([n.strip() for n in row["Finding Labels"].split("|") if n.strip()])
    categories, labels = _label_matrix(names, mapping, "nih")
    data = LabelledImages("nih", ids, patients, categories, labels, label_rule="'|'-separated Finding Labels")
    return _attach_images(data, images_dir)


def rsna_pneumonia(labels_csv: str | Path, images_dir: str | Path | None = None) -> LabelledImages:
    """stage_2_train_labels.csv (+ <images_dir>/<patientId>.dcm); boxes from Target-1 rows."""
    mapping = load_label_mapping("rsna")
    targets: dict[str, set[str]] = {}
    boxes: dict[str, list[Box]] = defaultdict(list)
    for row in _read_csv(labels_csv):
        patient = row["patientId"]
        target = str(int(float(row["Target"])))
        targets.setdefault(patient, set()).add(target)
        if target == "1":
            box = [float(row[k]) for k in ("x", "y", "width", "height")]
            for category in mapping["1"]:
                boxes[patient].append(Box(category, *box))
    ids = list(targets)
    categories, labels = _label_matrix([sorted(targets[i]) for i in ids], mapping, "rsna")
    data = LabelledImages("rsna", ids, ids, categories, labels, boxes=[boxes.get(i, []) for i in ids],
                          label_rule="positive when any row of the patient has Target 1")
    return _attach_images(data, images_dir, name_of=lambda image_id: f"{image_id}.dcm")


def siim_pneumothorax(rle_csv: str | Path, images_dir: str | Path | None = None) -> LabelledImages:
    """train-rle.csv (+ DICOMs named <ImageId>.dcm anywhere under images_dir); masks by RLE."""
    mapping = load_label_mapping("siim")
    rles: dict[str, list[str]] = {}
    for row in _read_csv(rle_csv):
        row = {key.strip(): value.strip() for key, value in row.items()}
        runs = rles.setdefault(row["ImageId"], [])
        if row["EncodedPixels"] not in ("", "-1"):
            runs.append(row["EncodedPixels"])
    ids = list(rles)
    categories, labels = _label_matrix([["Pneumothorax"] if rles[i] else [] for i in ids], mapping, "siim")
    data = LabelledImages("siim", ids, ids, categories, labels, mask_rles=[rles[i] for i in ids],
                          label_rule="positive when the image has a non-empty RLE; mask = union of its RLEs")
    data = _attach_images(data, images_dir)
    if data.paths is not None:
        data.patient_ids = [_dicom_patient(p) for p in data.paths]
    return data


def vinbigdata(labels_csv: str | Path, images_dir: str | Path | None = None,
               rule: Literal["any", "majority"] = "any") -> LabelledImages:
    """train.csv (image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max)."""
    if rule not in ("any", "majority"):
        raise ValueError(f"rule must be 'any' or 'majority', got {rule!r}")
    mapping = load_label_mapping("vinbigdata")
    readers: dict[str, set[str]] = {}
    votes: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    boxes: dict[str, list[Box]] = defaultdict(list)
    for row in _read_csv(labels_csv):
        image_id, name, reader = row["image_id"], row["class_name"], row["rad_id"]
        readers.setdefault(image_id, set()).add(reader)
        votes[image_id][name].add(reader)
        if row.get("x_min"):
            x0, y0, x1, y1 = (float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            for category in mapping.get(name, []):
                boxes[image_id].append(Box(category, x0, y0, x1 - x0, y1 - y0))
    ids = list(readers)
    names = []
    for image_id in ids:
        needed = 1 if rule == "any" else len(readers[image_id]) // 2 + 1
        names.append([name for name, who in votes[image_id].items() if len(who) >= needed])
    categories, labels = _label_matrix(names, mapping, "vinbigdata")
    label_rule = "any reader" if rule == "any" else "more than half of the image's readers"
    data = LabelledImages("vinbigdata", ids, ids, categories, labels, boxes=[boxes.get(i, []) for i in ids],
                          label_rule=f"positive when {label_rule} marked the class")
    return _attach_images(data, images_dir)


def covid_radiography(root: str | Path) -> LabelledImages:
    """<root>/<class>/**/*.png for the classes of the mapping (COVID, Normal, Lung_Opacity,
    Viral Pneumonia); masks folders of the v4 release are skipped."""
    mapping = load_label_mapping("covid")
    root = Path(root)
    ids, paths, names = [], [], []
    for name in mapping:
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.png")):
            if "masks" in path.relative_to(folder).parts:
                continue
            ids.append(path.stem)
            paths.append(path)
            names.append([name])
    if not ids:
        raise FileNotFoundError(f"{root}: no class folders {sorted(mapping)} with PNG images")
    categories, labels = _label_matrix(names, mapping, "covid")
    return LabelledImages("covid", ids, list(ids), categories, labels, paths=paths,
                          label_rule="class folder; each image its own patient")


def generated_eval_sets(root: str | Path) -> dict[str, LabelledImages]:
    """The generated corpus's <out>/eval/{nih,rsna,siim} in their published layouts."""
    root = Path(root)
    return {
        "nih": nih_chestxray14(root / "nih" / "Data_Entry_2017.csv", root / "nih" / "images"),
        "rsna": rsna_pneumonia(root / "rsna" / "stage_2_train_labels.csv", root / "rsna" / "stage_2_train_images"),
        "siim": siim_pneumothorax(root / "siim" / "train-rle.csv", root / "siim" / "dicom-images-train"),
    }


# --- helpers -------------------------------------------------------------------------------


def _label_matrix(names: list[list[str]], mapping: dict[str, list[str]], dataset: str) -> tuple[list[str], np.ndarray]:
    unknown = sorted({n for row in names for n in row} - set(mapping))
    if unknown:
        raise ValueError(f"{dataset}: labels {unknown} are not in {DEFAULT_LABELS_PATH.name}; add them")
    categories = list(dict.fromkeys(c for cats in mapping.values() for c in cats))
    column = {c: j for j, c in enumerate(categories)}
    labels = np.zeros((len(names), len(categories)), dtype=np.int8)
    for i, row in enumerate(names):
        for name in row:
            for category in mapping[name]:
                labels[i, column[category]] = 1
    return categories, labels


def _attach_images(data: LabelledImages, images_dir: str | Path | None, name_of=None) -> LabelledImages:
    """Keep the rows whose image file exists under images_dir (found by file name)."""
    if images_dir is None:
        return data
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{data.name}: images folder {images_dir} does not exist")
    found = {p.name: p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    found.update({p.stem: p for p in found.values() if p.suffix.lower() == ".dcm"})
    keep, paths = [], []
    for i, image_id in enumerate(data.image_ids):
        path = found.get(name_of(image_id) if name_of else image_id)
        if path is not None:
            keep.append(i)
            paths.append(path)
    if not keep:
        raise FileNotFoundError(f"{data.name}: none of {len(data)} labelled images found under {images_dir}")
    subset = data.subset(keep)
    subset.paths = paths
    return subset


def _dicom_patient(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", path.stem))


def _read_csv(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV that may be plain, gzip or a one-member zip (as the published files come)."""
    path = Path(path)
    if path.suffix == ".gz":
        handle = io.TextIOWrapper(gzip.open(path), encoding="utf-8", newline="")
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith(".csv"))
            handle = io.TextIOWrapper(io.BytesIO(archive.read(member)), encoding="utf-8", newline="")
    else:
        handle = open(path, encoding="utf-8", newline="")
    with handle:
        yield from csv.DictReader(handle)


EVAL_DATASETS = ("nih", "rsna", "siim", "vinbigdata", "covid")


def load_eval_dataset(dataset: str, *, eval_root: str | Path, labels_csv: str = "",
                      images_dir: str = "") -> "LabelledImages":
    """An evaluation set by name: a real dataset's label file (and images) when given, else the
    generated set of that name under `eval_root`."""
    if dataset not in EVAL_DATASETS:
        raise ValueError(f"unknown evaluation dataset {dataset!r}: use one of {', '.join(EVAL_DATASETS)}")
    if dataset == "covid":
        return covid_radiography(images_dir)
    if labels_csv or dataset == "vinbigdata":
        adapters = {"nih": nih_chestxray14, "rsna": rsna_pneumonia, "siim": siim_pneumothorax,
                    "vinbigdata": vinbigdata}
        return adapters[dataset](labels_csv, images_dir or None)
    root = Path(eval_root)
    if not root.is_dir():
        raise FileNotFoundError(f"evaluation sets not found in {root}: set eval_root, or generate the corpus")
    return generated_eval_sets(root)[dataset]

