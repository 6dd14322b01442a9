"""The rules backend on the IU gold standard: one real IU sentence per error kind of issue 11,
the label maps, and a dev-set F1 floor.

Sentences are copied from torchxrayvision's data/NLMCXR_reports.tgz; the test checks each is
really there. Expected labels follow docs/labelling_guideline.md.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from extraction.labels import LabelMapError, labels_table, load_label_map, study_labels
from extraction.rules import RulesBackend
from extraction.vocabulary import load_vocabulary
from ingestion.reports import parse_report
from testkit.iu_gold import load_gold, load_iu_texts, rules_labels, score


@pytest.fixture(scope="module")
def backend() -> RulesBackend:
    return RulesBackend()


@pytest.fixture(scope="module")
def iu_text() -> str:
    pytest.importorskip("torchxrayvision")
    return "\n".join(load_iu_texts().values())


def labels(backend: RulesBackend, text: str) -> dict[str, int]:
    """The ChestX-ray14 labels a text gets, blank ones left out."""
    rows = [{"category": f.category, "negated": f.severity == "no", "uncertain": f.uncertain}
            for f in backend.extractor.extract(text)]
    found = study_labels(rows, load_label_map("chestxray14"))
    return {label: value for label, value in found.items() if value is not None}


CASES = [
    # a severity word inside a negated list ("large") does not start a new finding
    ("No focal consolidation, pneumothorax or large pleural effusion.",
     {"Consolidation": 0, "Pneumothorax": 0, "Effusion": 0}),
    ("No lobar consolidation, large pleural effusion or pneumothorax.",
     {"Consolidation": 0, "Effusion": 0, "Pneumothorax": 0}),
    # the list is negated although "is identified" closes it
    ("No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or pneumothorax is identified.",
     {"Consolidation": 0, "Effusion": 0, "Pneumothorax": 0}),
    # broad synonyms: blunting only suggests an effusion, airspace disease is an infiltrate,
    # plain scarring is not fibrosis, hyperinflation alone only suggests emphysema
    ("Costophrenic XXXX are blunted.", {"Effusion": -1}),
    ("Blunting of the bilateral costophrenic XXXX.", {"Effusion": -1}),
    ("Right lower lobe airspace disease.", {"Infiltration": 1}),
    ("There is biapical scarring.", {}),
    ("Severe hyperinflation.", {"Emphysema": -1}),
    ("Considerations would include pericardial effusion or dilated cardiomyopathy.", {}),
    # resolved / cleared findings are absent
    ("Interval resolution of bibasilar airspace disease.", {"Infiltration": 0}),
    ("Previously present left base airspace disease has cleared.", {"Infiltration": 0}),
    # hedges and alternatives ("versus", "or", "and/or") are uncertain
    ("There is blunting of the right lateral costophrenic sulcus which could be secondary to a small effusion versus scarring.",
     {"Effusion": -1}),
    ("There is minimal XXXX scarring or atelectasis in the right midlung.", {"Atelectasis": -1}),
    ("Small bilateral pleural effusions with bibasilar atelectasis and/or airspace disease, left greater than right.",
     {"Effusion": 1, "Atelectasis": -1, "Infiltration": -1}),
    ("Borderline enlarged heart.", {"Cardiomegaly": -1}),
    # a nodule the sentence calls granulomatous is a granuloma
    ("Nodular opacities consistent with chronic granulomatous disease.", {}),
]


@pytest.mark.parametrize("sentence, expected", CASES, ids=[c[0][:50] for c in CASES])
def test_error_kinds_on_real_iu_sentences(backend, iu_text, sentence, expected):
    assert sentence in iu_text, "case must be a real IU sentence"
    assert labels(backend, sentence) == expected


def test_only_findings_and_impression_are_read(backend):
    """History and indication name findings the study need not show."""
    report = ("INDICATION: XXXX-year-old with pneumonia and effusion.\n"
              "COMPARISON: None.\n"
              "FINDINGS: The heart is normal in size. The lungs are clear.\n"
              "IMPRESSION: No acute cardiopulmonary disease.\n")
    text = parse_report(report).extraction_text
    assert "pneumonia" not in text
    assert labels(backend, text) == {"Cardiomegaly": 0}


def test_label_values_follow_the_guideline_order():
    chexpert = load_label_map("chexpert", vocabulary=load_vocabulary())
    rows = [{"category": "effusion", "negated": True, "uncertain": False},
            {"category": "effusion", "negated": False, "uncertain": False},  # 1 beats 0
            {"category": "atelectasis", "negated": False, "uncertain": True},
            {"category": "atelectasis", "negated": True, "uncertain": False},  # -1 beats 0
            {"category": "costophrenic blunting", "negated": True, "uncertain": False},
            {"category": "pacemaker", "negated": False, "uncertain": False}]
    found = study_labels(rows, chexpert)
    assert list(found) == chexpert.columns and chexpert.columns[0] == "No Finding"
    assert found["Pleural Effusion"] == 1 and found["Atelectasis"] == -1
    assert found["Support Devices"] == 1 and found["No Finding"] is None
    assert found["Pneumothorax"] is None  # not mentioned stays blank
    # a negated sign says nothing; a device alone leaves No Finding at 1
    devices_only = study_labels(rows[4:], chexpert)
    assert devices_only["Pleural Effusion"] is None and devices_only["No Finding"] == 1


def test_labels_table_has_a_row_per_study_and_maps_name_vocabulary_categories(tmp_path):
    vocabulary = load_vocabulary()
    for name in ("chestxray14", "chexpert"):
        load_label_map(name, vocabulary=vocabulary)
    triplets = pa.table({"study_id": ["a"], "category": ["hernia"], "negated": [False],
                         "uncertain": [False]})
    table = labels_table(triplets, load_label_map("chestxray14"), ["a", "b"])
    assert table.column("Hernia").to_pylist() == [1, None]
    broken = tmp_path / "maps.yaml"
    broken.write_text("chestxray14:\n  labels:\n    Hernia: [hiatus thing]\n")
    with pytest.raises(LabelMapError, match="hiatus thing"):
        load_label_map("chestxray14", broken, vocabulary)


def test_dev_set_f1_floor(backend):
    """Measured on the dev half (300 reports): micro-F1 0.95 with uncertain findings counted
    positive, 0.90 counted negative. The floors sit a little under that so that a change that
    makes real reports worse fails here. The test half is not looked at in tests."""
    pytest.importorskip("torchxrayvision")
    gold = load_gold("dev")
    predicted = rules_labels(backend, load_iu_texts(set(gold)))
    assert score(gold, predicted, "uncertain as positive").micro[2] >= 0.92
    assert score(gold, predicted, "uncertain as negative").micro[2] >= 0.87
