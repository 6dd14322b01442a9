import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from knowledge.base import NO_FINDING, load_knowledge
from knowledge.embeddings import embed_texts, load_text_embeddings, model_digest, write_text_embeddings
from knowledge.texts import build_training_texts, compose_text

KB_YAML = """
categories:
  no finding: {description: clear lungs}
  effusion: {description: homogeneous density at the lung base with a meniscus}
  pneumothorax: {description: pleural line with absent lung markings}
  edema: {description: bilateral perihilar haziness}
"""


@pytest.fixture()
def kb(tmp_path):
    path = tmp_path / "descriptions.yaml"
    path.write_text(KB_YAML)
    return load_knowledge(path)


def triplet_rows():
    # (study, severity, location, category, negated, uncertain)
    rows = [
        ("s1", "large", "left", "effusion", False, False),
        ("s1", "na", "na", "pneumothorax", True, False),
        ("s1", "Large ", "LEFT", "Effusion", False, False),  # same text after normalising
        ("s2", "small", "right", "effusion", False, True),
        ("s3", "na", "na", "edema", False, True),  # only uncertain finding of s3
        ("s9", "mild", "na", "edema", False, False),  # study without image
    ]
    return [
        dict(study_id=s, severity=sev, location=loc, category=c, negated=n, uncertain=u, sentence=f"{s} {c}")
        for s, sev, loc, c, n, u in rows
    ]


def image_rows(n_patients: int = 40):
    rows = [
        dict(dicom_id="d1", study_id="s1", patient_key="p1", view_position="PA"),
        dict(dicom_id="d2", study_id="s1", patient_key="p1", view_position="LATERAL"),
        dict(dicom_id="d3", study_id="s2", patient_key="p2", view_position="AP"),
        dict(dicom_id="d4", study_id="s3", patient_key="p3", view_position="PA"),
    ]
    # Studies without any triplet: the no-finding rule, and enough patients for a real split.
    rows += [
        dict(dicom_id=f"x{i:03d}-{k}", study_id=f"e{i}", patient_key=f"q{i}", view_position="PA")
        for i in range(n_patients) for k in range(2)
    ]
    return rows


def write_parquet(rows, path: Path, order=None) -> Path:
    if order is not None:
        rows = [rows[i] for i in order]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def build(tmp_path, kb, name, order_seed=None, **kwargs):
    triplets, images = triplet_rows(), image_rows()
    rng = np.random.default_rng(order_seed)
    t_order = rng.permutation(len(triplets)) if order_seed is not None else None
    i_order = rng.permutation(len(images)) if order_seed is not None else None
    inputs = tmp_path / f"in_{name}"
    inputs.mkdir()
    return build_training_texts(
        write_parquet(triplets, inputs / "triplets.parquet", t_order),
        write_parquet(images, inputs / "dicom_index.parquet", i_order),
        kb, tmp_path / f"out_{name}", **kwargs,
    )


def texts_by_id(result) -> dict[int, str]:
    table = pq.read_table(result.texts_path)
    return dict(zip(table["text_id"].to_pylist(), table["text"].to_pylist()))


def image_texts(result) -> dict[str, dict]:
    return {r["dicom_id"]: r for r in pq.read_table(result.image_texts_path).to_pylist()}


def test_compose_text_drops_na_fields_and_phrases_negations_as_no_category():
    assert compose_text("large", "left", "effusion", False, "fluid") == "large left effusion. fluid"
    assert compose_text("na", "Left  Lower", "Effusion", False, "fluid") == "left lower effusion. fluid"
    assert compose_text("no", "left", "effusion", True, "fluid") == "no effusion. fluid"
    assert compose_text(None, "na", "nodule", False, "") == "nodule."


def test_texts_and_image_lists_follow_the_triplets(tmp_path, kb):
    result = build(tmp_path, kb, "a")
    texts = texts_by_id(result)
    ids = {text: i for i, text in texts.items()}
    images = image_texts(result)
    assert sorted(texts[i] for i in images["d1"]["text_ids"]) == [
        "large left effusion. homogeneous density at the lung base with a meniscus",
        "no pneumothorax. pleural line with absent lung markings",
    ]
    assert images["d1"]["text_ids"] == images["d2"]["text_ids"]  # images of one study share texts
    assert [texts[i] for i in images["d3"]["text_ids"]] == ["small right effusion. homogeneous density at the lung base with a meniscus"]
    assert "mild edema. bilateral perihilar haziness" not in ids  # s9 has no image
    assert result.triplets == 6 and result.triplets_used == 5 and result.triplets_without_image == 1
    assert result.images == len(image_rows()) and result.texts == len(texts)
    assert result.texts_per_category == {"edema": 1, "effusion": 2, NO_FINDING: 1, "pneumothorax": 1}
    assert sorted(texts) == list(range(len(texts)))  # dense ids index the SSM directly


def test_images_without_triplets_get_the_no_finding_text(tmp_path, kb):
    result = build(tmp_path, kb, "a")
    texts = texts_by_id(result)
    no_finding = [i for i, t in texts.items() if t.startswith("no finding.")]
    assert len(no_finding) == 1
    images = image_texts(result)
    empty_studies = [r for r in images.values() if r["study_id"].startswith("e")]
    assert empty_studies and all(r["text_ids"] == no_finding for r in empty_studies)
    assert result.images_no_finding == len(empty_studies)
    assert set(images) == {r["dicom_id"] for r in image_rows()}  # nothing dropped


def test_uncertain_findings_are_kept_unless_dropped(tmp_path, kb):
    kept = build(tmp_path, kb, "kept")
    dropped = build(tmp_path, kb, "dropped", drop_uncertain=True)
    assert "edema" in kept.texts_per_category and "edema" not in dropped.texts_per_category
    assert dropped.uncertain_dropped == 2
    # s3 only had an uncertain finding: it falls back to no finding instead of vanishing.
    d4 = image_texts(dropped)["d4"]["text_ids"]
    assert [texts_by_id(dropped)[i][:11] for i in d4] == ["no finding."]
    assert dropped.images_no_finding == kept.images_no_finding + 2


def test_text_ids_are_stable_across_reruns_and_row_order(tmp_path, kb):
    first = build(tmp_path, kb, "first")
    again = build(tmp_path, kb, "again")
    shuffled = build(tmp_path, kb, "shuffled", order_seed=7)
    assert texts_by_id(first) == texts_by_id(again) == texts_by_id(shuffled)
    assert image_texts(first) == image_texts(shuffled)
    assert first.texts_path.read_bytes() == again.texts_path.read_bytes()


def test_split_is_by_patient_and_near_the_requested_fraction(tmp_path, kb):
    result = build(tmp_path, kb, "split", val_fraction=0.3)
    rows = pq.read_table(result.image_texts_path).to_pylist()
    splits_per_patient: dict[str, set] = {}
    for row in rows:
        splits_per_patient.setdefault(row["patient_key"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_per_patient.values())
    val = sum(s == {"val"} for s in splits_per_patient.values())
    assert result.patients_val == val and 0 < val < len(splits_per_patient)
    assert 0.1 < val / len(splits_per_patient) < 0.5
    other_seed = build(tmp_path, kb, "seed", val_fraction=0.3, seed=1)
    assert image_texts(other_seed).keys() == image_texts(result).keys()
    assert [r["split"] for r in image_texts(other_seed).values()] != [r["split"] for r in rows]


def test_missing_description_is_an_error_unless_allowed(tmp_path, kb):
    triplets = triplet_rows() + [dict(study_id="s1", severity="na", location="na", category="hernia",
                                      negated=False, uncertain=False, sentence="hernia")]
    images = pa.Table.from_pylist(image_rows(2))
    with pytest.raises(ValueError, match=r"\['hernia'\]"):
        build_training_texts(pa.Table.from_pylist(triplets), images, kb, tmp_path / "strict")
    result = build_training_texts(pa.Table.from_pylist(triplets), images, kb, tmp_path / "lenient",
                                  allow_missing_descriptions=True)
    assert "hernia." in texts_by_id(result).values()
    assert sorted(os.listdir(tmp_path / "lenient")) == ["image_texts.parquet", "texts.parquet"]  # no temp files


def test_embed_texts_places_similar_findings_closer_than_dissimilar_ones():
    texts = [
        "large left effusion. homogeneous density at the lung base with a meniscus",
        "small right effusion. homogeneous density at the lung base with a meniscus",
        "pacemaker. a metallic generator box in the upper chest wall with leads",
    ]
    seen = []
    vectors = embed_texts(texts, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 1] > sims[1, 2] + 0.2
    assert seen == [(2, 3), (3, 3)]
    # Row order follows the input even though encoding runs in length order.
    np.testing.assert_allclose(embed_texts(texts[::-1])[::-1], vectors, atol=1e-5)


def test_model_digest_covers_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights-v1")
    (tmp_path / "README.md").write_text("doc")
    first = model_digest(tmp_path)
    (tmp_path / "README.md").write_text("edited doc")
    assert model_digest(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights-v2")
    assert model_digest(tmp_path) != first
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    with pytest.raises(FileNotFoundError):
        model_digest(tmp_path)


def test_severity_no_counts_as_a_negation(tmp_path, kb):
    triplets = pa.Table.from_pylist([dict(study_id="s1", severity="No", location="left", category="effusion",
                                          negated=False, uncertain=False, sentence="no effusion")])
    result = build_training_texts(triplets, pa.Table.from_pylist(image_rows(1)), kb, tmp_path / "out")
    table = pq.read_table(result.texts_path).to_pylist()
    effusion = [r for r in table if r["category"] == "effusion"]
    assert [(r["text"][:12], r["negated"], r["location"]) for r in effusion] == [("no effusion.", True, "na")]


def test_text_embeddings_file_is_tied_to_its_texts(tmp_path):
    texts = pa.table({"text_id": pa.array([1, 0], pa.int32()), "text": ["pacemaker. metal box", "no finding. clear lungs"]})
    result = write_text_embeddings(texts, tmp_path / "emb" / "text_embeddings.npy")
    vectors = load_text_embeddings(result.path, texts)
    assert vectors.shape == (2, result.dim) and result.model_digest == model_digest()
    np.testing.assert_allclose(vectors[0], embed_texts(["no finding. clear lungs"])[0], atol=1e-5)  # text_id order
    other = texts.set_column(1, "text", pa.array(["pacemaker. metal box", "effusion. fluid"]))
    with pytest.raises(ValueError, match="other texts"):
        load_text_embeddings(result.path, other)


def test_drop_negated_keeps_present_findings_and_falls_back_to_no_finding(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from knowledge.base import load_knowledge
    from knowledge.texts import build_training_texts

    triplets = pa.table({"study_id": ["1", "1", "2"], "severity": ["small", "no", "no"],
                         "location": ["left", "na", "na"], "category": ["effusion", "edema", "effusion"],
                         "negated": [False, True, True], "uncertain": [False, False, False], "sentence": ["", "", ""]})
    images = pa.table({"dicom_id": ["a", "b"], "study_id": ["1", "2"], "patient_key": ["p", "q"],
                       "view_position": ["PA", "PA"]})
    result = build_training_texts(triplets, images, load_knowledge(), tmp_path, drop_negated=True)
    texts = {r["text_id"]: r for r in pq.read_table(result.texts_path).to_pylist()}
    per_image = {r["dicom_id"]: [texts[i]["category"] for i in r["text_ids"]]
                 for r in pq.read_table(result.image_texts_path).to_pylist()}
    assert per_image == {"a": ["effusion"], "b": ["no finding"]}
    assert not any(t["negated"] for t in texts.values())


def test_reference_wording_keeps_na_and_the_location_of_a_negated_finding():
    # The published code: " ".join([severity, location, category]) + ". " + description.
    assert compose_text("large", "left", "effusion", False, "fluid", "reference") == "large left effusion. fluid"
    assert compose_text("na", "na", "Effusion", False, "fluid", "reference") == "na na effusion. fluid"
    assert compose_text("na", "left", "effusion", True, "fluid", "reference") == "no left effusion. fluid"
    assert compose_text(None, None, "nodule", False, "", "reference") == "na na nodule"  # no description: head only


def test_reference_wording_in_the_built_texts(tmp_path, kb):
    result = build(tmp_path, kb, "ref", wording="reference")
    texts = texts_by_id(result)
    d1 = sorted(texts[i] for i in image_texts(result)["d1"]["text_ids"])
    assert d1 == ["large left effusion. homogeneous density at the lung base with a meniscus",
                  "no na pneumothorax. pleural line with absent lung markings"]


def test_reference_report_filter_keeps_reports_with_findings_and_a_triplet(tmp_path, kb):
    # s1: a finding (No Finding blank) -> kept; s2: No Finding blank -> kept; s3: No Finding 1 ->
    # dropped; e0: No Finding blank but no triplet -> dropped; other e*: not in report_labels -> dropped.
    labels = pa.table({"study_id": ["s1", "s2", "s3", "e0"], "No Finding": pa.array([None, None, 1, None], pa.int8())})
    result = build(tmp_path, kb, "filter", report_filter="reference", report_labels=labels)
    assert set(image_texts(result)) == {"d1", "d2", "d3"}
    assert result.images == 3 and result.images_filtered_out == len(image_rows()) - 3
    assert result.images_no_finding == 0
    with pytest.raises(ValueError, match="report_labels"):
        build(tmp_path, kb, "nolabels", report_filter="reference")
