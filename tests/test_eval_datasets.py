"""Dataset adapters on the real published label files (shipped by torchxrayvision) and on the
generated eval sets; patient-wise splits and label fractions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torchxrayvision
from PIL import Image

from corpus.eval_sets import write_eval_sets
from common.rle import rle_decode
from evaluation.datasets import (
    covid_radiography, generated_eval_sets, load_label_mapping, nih_chestxray14, rsna_pneumonia,
    siim_pneumothorax, vinbigdata,
)
from evaluation.splits import label_fraction, patient_split
from knowledge.base import load_knowledge

REAL = Path(torchxrayvision.__file__).parent / "data"


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    write_eval_sets(root, seed=0, count=24, image_size=64)
    return root


# -- real label files: the published counts --------------------------------------------------

def test_nih_real_labels_have_the_published_counts():
    nih = nih_chestxray14(REAL / "Data_Entry_2017_v2020.csv.gz")
    assert len(nih) == 112_120 and len(set(nih.patient_ids)) == 30_805
    assert len(nih.categories) == 14 and not nih.has_images
    counts = dict(zip(nih.categories, nih.labels.sum(axis=0)))
    assert counts["effusion"] == 13_317 and counts["hernia"] == 227
    assert (nih.labels.sum(axis=1) == 0).sum() == 60_361  # "No Finding" rows are all-negative


def test_rsna_real_labels_one_row_per_patient_with_boxes():
    rsna = rsna_pneumonia(REAL / "kaggle_stage_2_train_labels.csv.zip")
    assert len(rsna) == 26_684 and rsna.categories == ["pneumonia", "consolidation"]
    positive = rsna.labels[:, 0] == 1
    assert positive.sum() == 6_012 and (rsna.labels[:, 0] == rsna.labels[:, 1]).all()
    assert all(len(b) > 0 for b, p in zip(rsna.boxes, positive) if p)
    assert all(len(b) == 0 for b, p in zip(rsna.boxes, positive) if not p)
    assert sum(len(b) for b in rsna.boxes) == 2 * 9_555  # 9,555 boxes, one per category column


def test_siim_real_rles_decode_to_1024_masks():
    siim = siim_pneumothorax(REAL / "siim-pneumothorax-train-rle.csv.gz")
    assert len(siim) == 12_047 and siim.labels.sum() == 2_669
    positives = [i for i in range(len(siim)) if siim.labels[i, 0]][:20]
    for i in positives:
        for rle in siim.mask_rles[i]:
            mask = rle_decode(rle, 1024, 1024)
            numbers = np.array(rle.split(), dtype=int)
            assert mask.shape == (1024, 1024) and mask.sum() == numbers[1::2].sum() > 0


def test_vinbigdata_majority_is_stricter_than_any_reader():
    any_reader = vinbigdata(REAL / "vinbigdata-train.csv.gz", rule="any")
    majority = vinbigdata(REAL / "vinbigdata-train.csv.gz", rule="majority")
    assert len(any_reader) == 15_000 and any_reader.categories == majority.categories
    assert (majority.labels <= any_reader.labels).all()
    assert majority.labels.sum() < any_reader.labels.sum()
    assert "lung lesion" in any_reader.categories  # Nodule/Mass
    with_boxes = [i for i, b in enumerate(any_reader.boxes) if b]
    assert with_boxes and all(box.width > 0 and box.height > 0 for box in any_reader.boxes[with_boxes[0]])


def test_every_mapped_category_has_a_knowledge_description():
    kb = load_knowledge()
    for dataset in ("nih", "rsna", "siim", "vinbigdata", "covid"):
        for label, categories in load_label_mapping(dataset).items():
            assert all(c in kb.categories for c in categories), (dataset, label)


def test_unknown_published_label_is_refused(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("Image Index,Finding Labels,Patient ID\na.png,Effusion|Alien,1\n")
    with pytest.raises(ValueError, match="Alien"):
        nih_chestxray14(path)


# -- generated eval sets ------------------------------------------------------------------------

def test_generated_sets_load_with_images_labels_and_masks(eval_root):
    sets = generated_eval_sets(eval_root)
    assert {name: len(d) for name, d in sets.items()} == {"nih": 24, "rsna": 24, "siim": 24}
    for data in sets.values():
        image = data.image(0, 32)
        assert image.shape == (32, 32) and image.dtype == np.uint8 and image.max() > image.min()
    siim = sets["siim"]
    for i in range(len(siim)):
        mask = siim.mask(i, 64)
        assert mask.shape == (64, 64) and bool(mask.any()) == bool(siim.labels[i, 0])
    rsna = sets["rsna"]
    assert rsna.labels[:, 0].sum() > 0 and all(bool(b) == bool(p) for b, p in zip(rsna.boxes, rsna.labels[:, 0]))
    assert len(set(siim.patient_ids)) == len(siim)  # patients from the DICOM headers


def test_covid_class_folders(tmp_path):
    for name, count in (("COVID", 3), ("Normal", 4), ("Viral Pneumonia", 2)):
        folder = tmp_path / name / "images"
        folder.mkdir(parents=True)
        for k in range(count):
            Image.fromarray(np.full((20, 20), 40 * k, np.uint8)).save(folder / f"{name}-{k}.png")
    (tmp_path / "COVID" / "masks").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "COVID" / "masks" / "COVID-0.png")
    covid = covid_radiography(tmp_path)
    assert len(covid) == 9
    counts = dict(zip(covid.categories, covid.labels.sum(axis=0)))
    assert counts == {"covid-19": 3, "opacity": 0, "pneumonia": 2}
    assert (covid.labels.sum(axis=1) == 0).sum() == 4  # Normal


# -- splits --------------------------------------------------------------------------------------

def test_patient_split_keeps_patients_together_and_is_seeded():
    rng = np.random.default_rng(0)
    patients = [f"p{i // 3}" for i in range(300)]
    labels = (rng.random((300, 4)) < [0.4, 0.2, 0.1, 0.05]).astype(np.int8)
    split = patient_split(labels, patients, seed=1)
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(300))
    owners = {name: {patients[i] for i in rows} for name, rows in split.items()}
    assert not (owners["train"] & owners["test"]) and not (owners["val"] & owners["test"])
    assert not (owners["train"] & owners["val"])
    assert 0.6 < len(split["train"]) / 300 < 0.8
    for j in range(4):  # stratified: each split sees the class's positives
        assert all(labels[rows, j].sum() > 0 for rows in split.values())
    again = patient_split(labels, patients, seed=1)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["test"], patient_split(labels, patients, seed=2)["test"])


def test_label_fractions_are_nested_stratified_and_have_positives():
    rng = np.random.default_rng(1)
    labels = (rng.random((1000, 3)) < [0.3, 0.1, 0.02]).astype(np.int8)
    pool = np.arange(100, 1000)
    one, ten, full = (label_fraction(labels, f, seed=5, indices=pool) for f in (0.01, 0.1, 1.0))
    assert set(one) <= set(ten) <= set(full) == set(pool)
    assert 9 <= len(one) <= 12 and abs(len(ten) - 90) <= 3
    assert all(labels[one, j].sum() >= 1 for j in range(3))
    assert abs(labels[ten, 0].mean() - labels[pool, 0].mean()) < 0.05
    assert np.array_equal(one, label_fraction(labels, 0.01, seed=5, indices=pool))
