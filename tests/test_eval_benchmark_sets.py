"""CheXpert and MIMIC-CXR adapters against label files laid out exactly as published (headers
and value conventions of the releases: 1.0 / 0.0 / -1.0 / blank), the 5x200 selection as GLoRIA
defines it, and image<->report retrieval on the official test split."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.benchmark_sets import (CHEXPERT_OBSERVATIONS, COMPETITION_TASKS, chexpert, chexpert_5x200, mimic_cxr,
                                       mimic_cxr_5x200, mimic_cxr_report_pairs)
from evaluation.retrieval import evaluate_report_retrieval, paired_retrieval_metrics

CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
MIMIC_LABEL_HEADER = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                      "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                      "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
MIMIC_SPLIT_HEADER = ["dicom_id", "study_id", "subject_id", "split"]
MIMIC_METADATA_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                         "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                         "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in header})
    return path


def _jpg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 32), shade, dtype=np.uint8)).save(path)


def _chexpert_row(patient: int, view: str = "Frontal", **labels: str) -> dict[str, str]:
    name = "frontal" if view == "Frontal" else "lateral"
    row = {"Path": f"CheXpert-v1.0-small/train/patient{patient:05d}/study1/view1_{name}.jpg", "Sex": "Female",
           "Age": "61", "Frontal/Lateral": view, "AP/PA": "AP" if view == "Frontal" else ""}
    row.update({k.replace("_", " "): v for k, v in labels.items()})
    return row


def test_chexpert_valid_labels_uncertainty_policy_and_images(tmp_path):
    rows = [
        _chexpert_row(64541, No_Finding="0.0", Cardiomegaly="1.0", Pleural_Effusion="-1.0", Support_Devices="1.0"),
        _chexpert_row(64542, No_Finding="1.0", Cardiomegaly="0.0", Edema=""),
        _chexpert_row(64542, view="Lateral", Edema="1.0"),
    ]
    labels_csv = _write_csv(tmp_path / "CheXpert-v1.0-small" / "valid.csv", CHEXPERT_HEADER, rows)
    for i, row in enumerate(rows):
        _jpg(tmp_path / row["Path"], 50 * (i + 1))
    zeros = chexpert(labels_csv)
    column = {c: j for j, c in enumerate(zeros.categories)}
    assert zeros.patient_ids == ["patient64541", "patient64542", "patient64542"]
    assert zeros.labels[0, column["cardiomegaly"]] == 1 and zeros.labels[0, column["support device"]] == 1
    assert zeros.labels[0, column["effusion"]] == 0  # uncertain, U-Zeros
    assert zeros.labels[1].sum() == 0  # No Finding carries no category
    ones = chexpert(labels_csv, uncertain="positive")
    assert ones.labels[0, column["effusion"]] == 1
    assert len(chexpert(labels_csv, frontal_only=True)) == 2
    # Images found whether images_dir holds the release folder or is the release folder.
    for root in (tmp_path, tmp_path / "CheXpert-v1.0-small"):
        data = chexpert(labels_csv, root)
        assert data.paths == [tmp_path / row["Path"] for row in rows]
        assert data.image(1, 16)[8, 8] == 100
    with pytest.raises(ValueError, match="Support Devices"):
        _write_csv(tmp_path / "bad.csv", CHEXPERT_HEADER[:-1], rows[:1])
        chexpert(tmp_path / "bad.csv")


def test_chexpert_5x200_takes_images_positive_for_exactly_one_task(tmp_path):
    rows, patient = [], 0
    for task in COMPETITION_TASKS:
        for k in range(4):  # qualifying: the task 1.0, others 0.0 or blank, No Finding ignored
            patient += 1
            rows.append(_chexpert_row(patient, **{task.replace(" ", "_"): "1.0", "Fracture": "0.0" if k else ""}))
    disqualified = [
        _chexpert_row(900, view="Lateral", Edema="1.0"),  # lateral
        _chexpert_row(901, Edema="1.0", Pneumonia="-1.0"),  # an uncertain label elsewhere
        _chexpert_row(902, Edema="-1.0"),  # uncertain for the task itself
        _chexpert_row(903, Edema="1.0", Cardiomegaly="1.0"),  # two of the five
        _chexpert_row(904, Edema="1.0", Support_Devices="1.0"),  # another observation positive
    ]
    labels_csv = _write_csv(tmp_path / "train.csv", CHEXPERT_HEADER, rows + disqualified)
    data = chexpert_5x200(labels_csv, per_class=3, seed=0)
    assert len(data) == 15 and data.categories == ["atelectasis", "cardiomegaly", "consolidation", "edema", "effusion"]
    assert (data.labels.sum(axis=1) == 1).all() and data.labels.sum(axis=0).tolist() == [3] * 5
    qualifying = {row["Path"] for row in rows}
    assert set(data.image_ids) <= qualifying
    by_task = {task: {r["Path"] for r in rows if r.get(task) == "1.0"} for task in COMPETITION_TASKS}
    for image_id, row in zip(data.image_ids, data.labels):
        assert image_id in by_task[COMPETITION_TASKS[int(row.argmax())]]
    assert chexpert_5x200(labels_csv, per_class=3, seed=0).image_ids == data.image_ids  # seeded
    with pytest.raises(ValueError, match=r"too few images for 5x5.*'Edema': 4"):
        chexpert_5x200(labels_csv, per_class=5)


def _mimic_archive(tmp_path: Path) -> dict[str, Path]:
    """Six test studies (one per task + a normal one, the first with a lateral image too) and a
    train study, with JPGs and reports in the published folder layout."""
    labels, splits, metadata = [], [], []
    studies = [(COMPETITION_TASKS[i % 5], f"1000000{i}", f"5000000{i}") for i in range(5)] + [
        ("No Finding", "10000005", "50000005")]
    for n, (finding, subject, study) in enumerate(studies):
        labels.append({"subject_id": subject, "study_id": study, finding: "1.0"})
        dicoms = [(f"d{n}-frontal", "PA")] + ([(f"d{n}-lateral", "LATERAL")] if n == 0 else [])
        for dicom, view in dicoms:
            splits.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": "test"})
            metadata.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view})
            _jpg(tmp_path / "mimic-cxr-jpg" / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg",
                 20 + 30 * n)
        report = tmp_path / "reports" / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
                          f" FINDINGS:  Study {n} shows {finding.lower()}.\n\n IMPRESSION:  {finding}.\n")
    labels.append({"subject_id": "10000099", "study_id": "50000099", "Edema": "1.0"})
    splits.append({"dicom_id": "d99", "study_id": "50000099", "subject_id": "10000099", "split": "train"})
    return {
        "chexpert": _write_csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv", MIMIC_LABEL_HEADER, labels),
        "split": _write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv", MIMIC_SPLIT_HEADER, splits),
        "metadata": _write_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", MIMIC_METADATA_HEADER, metadata),
        "images": tmp_path / "mimic-cxr-jpg", "reports": tmp_path / "reports",
    }


def test_mimic_cxr_labels_follow_the_study_and_the_official_split(tmp_path):
    files = _mimic_archive(tmp_path)
    data = mimic_cxr(files["chexpert"], files["split"], files["images"])
    assert data.image_ids == ["d0-frontal", "d0-lateral", "d1-frontal", "d2-frontal", "d3-frontal", "d4-frontal",
                              "d5-frontal"]  # test split only: the train study d99 is not there
    column = {c: j for j, c in enumerate(data.categories)}
    assert data.labels[0, column["atelectasis"]] == data.labels[1, column["atelectasis"]] == 1  # per study
    assert data.labels[-1].sum() == 0 and data.patient_ids[0] == "10000000"
    assert data.paths[2].name == "d1-frontal.jpg"
    frontal = mimic_cxr(files["chexpert"], files["split"], metadata_csv=files["metadata"])
    assert "d0-lateral" not in frontal.image_ids and len(frontal) == 6
    with pytest.raises(ValueError, match="no split 'validation'"):
        mimic_cxr(files["chexpert"], files["split"], split="validation")


def test_mimic_cxr_5x200_one_frontal_image_per_study(tmp_path):
    files = _mimic_archive(tmp_path)
    data = mimic_cxr_5x200(files["chexpert"], files["split"], files["images"], metadata_csv=files["metadata"],
                           per_class=1)
    assert data.image_ids == ["d0-frontal", "d1-frontal", "d2-frontal", "d3-frontal", "d4-frontal"]
    assert (data.labels == np.eye(5, dtype=np.int8)).all()
    with pytest.raises(ValueError, match="too few images"):
        mimic_cxr_5x200(files["chexpert"], files["split"], per_class=2)  # d99 (train) must not count


def test_mimic_cxr_report_pairs_join_images_to_their_own_report(tmp_path):
    files = _mimic_archive(tmp_path)
    pairs = mimic_cxr_report_pairs(files["split"], files["reports"], files["images"])
    assert len(pairs.images) == 7 and len(pairs.texts) == 6
    assert pairs.text_of_image.tolist() == [0, 0, 1, 2, 3, 4, 5]  # both images of study 0 share its report
    assert pairs.texts[1] == "Study 1 shows cardiomegaly.\nCardiomegaly."  # FINDINGS then IMPRESSION
    (files["reports"] / "files" / "p10" / "p10000003" / "s50000003.txt").unlink()
    with pytest.raises(FileNotFoundError, match="s50000003"):
        mimic_cxr_report_pairs(files["split"], files["reports"])


def test_paired_retrieval_recall_counts_only_the_own_report():
    texts = np.array([[1.0, 0.0], [0.0, 1.0]])
    images = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])  # images 0, 1 -> report 0; image 2 -> report 1
    result = paired_retrieval_metrics(images, texts, np.array([0, 0, 1]), ks=(1, 2))
    # image->text: image 0 finds its report first; images 1 and 2 rank the other report first.
    assert result["image_to_text"] == {"recall@1": pytest.approx(1 / 3), "recall@2": 1.0}
    # text->image: report 0's best own image (0) comes first; report 1's image 2 (0.6) is behind image 1 (0.8).
    assert result["text_to_image"] == {"recall@1": 0.5, "recall@2": 1.0}
    tied = paired_retrieval_metrics(np.eye(2), np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0, 1]), ks=(1,))
    assert tied["image_to_text"]["recall@1"] == 0.0  # a tie counts against the query


def test_report_retrieval_runs_a_model_on_the_pairs(tmp_path):
    from medfilip_model.dual_encoder import create_model, create_tokenizer

    files = _mimic_archive(tmp_path)
    pairs = mimic_cxr_report_pairs(files["split"], files["reports"], files["images"])
    model = create_model("tiny").eval()
    result = evaluate_report_retrieval(model, create_tokenizer(model.config), pairs.images, pairs.texts,
                                       pairs.text_of_image)
    assert result["images"] == 7 and result["texts"] == 6
    for direction in ("image_to_text", "text_to_image"):
        recalls = [result[direction][f"recall@{k}"] for k in (1, 5, 10)]
        assert recalls == sorted(recalls) and recalls[-1] == 1.0  # 6 reports: all within the top 10


def test_evaluation_assets_reach_the_benchmarks_by_name(tmp_path):
    from evaluation.benchmark_sets import load_named_eval_set as load_eval_dataset

    files = _mimic_archive(tmp_path)
    # The published size: our six-study archive cannot fill 5x200, and says so.
    with pytest.raises(ValueError, match=r"too few images for 5x200.*'Atelectasis': 1"):
        load_eval_dataset("mimic_cxr_5x200", eval_root=tmp_path, labels_csv=str(files["chexpert"]),
                          split_csv=str(files["split"]))
    with pytest.raises(ValueError, match="needs split_csv"):
        load_eval_dataset("mimic_cxr_5x200", eval_root=tmp_path, labels_csv=str(files["chexpert"]))
    with pytest.raises(ValueError, match="no generated stand-in"):
        load_eval_dataset("chexpert_5x200", eval_root=tmp_path)
