"""The rules backend on the IU gold standards: real IU sentences per convention, the label
maps, and dev-set F1 floors.

Sentences are copied from torchxrayvision's data/NLMCXR_reports.tgz; the test checks each is
really there. Expected labels follow docs/labelling_guideline.md: under `chestxray14` a label
is the finding named, never a sign; under `chexpert` the CheXpert labeler's phrase lists
decide (Lung Opacity gathers opacity, airspace disease, infiltrate, interstitial markings and
scar; No Finding is stopped by any asserted or hedged mention, its own list included).
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from extraction.labels import LabelMapError, labels_table, load_label_map, study_labels
from extraction.rules import RulesBackend
from extraction.vocabulary import load_vocabulary
from ingestion.reports import parse_report
from testkit.iu_gold import CONVENTIONS, load_gold, load_iu_texts, rules_labels, score


@pytest.fixture(scope="module")
def backend() -> RulesBackend:
    return RulesBackend()


@pytest.fixture(scope="module")
def iu_text() -> str:
    pytest.importorskip("torchxrayvision")
    return "\n".join(load_iu_texts().values())


def labels(backend: RulesBackend, text: str, convention: str = "chestxray14") -> dict[str, int]:
    """The labels a text gets under one label map, blank ones left out."""
    rows = [{"category": f.category, "negated": f.severity == "no", "uncertain": f.uncertain}
            for f in backend.extractor.extract(text)]
    found = study_labels(rows, load_label_map(convention))
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
    # signs are not the finding they suggest: blunting, airspace disease, scarring,
    # hyperinflation, vascular congestion name no ChestX-ray14 finding
    ("Costophrenic XXXX are blunted.", {}),
    ("Blunting of the bilateral costophrenic XXXX.", {}),
    ("Right lower lobe airspace disease.", {}),
    ("There is biapical scarring.", {}),
    ("Severe hyperinflation.", {}),
    ("Mild central vascular congestion.", {}),
    ("Mildly hyperexpanded lungs, suggestive of emphysema.", {"Emphysema": -1}),
    ("Considerations would include pericardial effusion or dilated cardiomyopathy.", {}),
    # resolved / cleared findings are absent
    ("Interval resolution of bibasilar airspace disease.", {}),
    ("There is a moderate hiatal hernia.", {"Hernia": 1}),
    # hedges and alternatives ("versus", "or", "and/or") are uncertain
    ("There is blunting of the right lateral costophrenic sulcus which could be secondary to a small effusion versus scarring.",
     {"Effusion": -1}),
    ("There is minimal XXXX scarring or atelectasis in the right midlung.", {"Atelectasis": -1}),
    ("Small bilateral pleural effusions with bibasilar atelectasis and/or airspace disease, left greater than right.",
     {"Effusion": 1, "Atelectasis": -1}),
    ("Borderline enlarged heart.", {"Cardiomegaly": -1}),
    # XXXX hiding the linking word after a comma ("opacity, XXXX atelectasis") is a hedge
    ("Mild streaky left basilar airspace disease, XXXX atelectasis.", {"Atelectasis": -1}),
    # the nodule is named, also when the sentence calls it granulomatous
    ("Nodular opacities consistent with chronic granulomatous disease.", {"Nodule": 1}),
    # "or" inside the second finding's words is no alternative
    ("Improved right lower lobe consolidation with mild residual or recurrent pneumonia.",
     {"Consolidation": 1, "Pneumonia": 1}),
]

CHEXPERT_CASES = [
    ("Right lower lobe airspace disease.", {"Lung Opacity": 1}),
    ("There is biapical scarring.", {"Lung Opacity": 1}),
    ("Stable chronic coarse interstitial markings, without focal airspace disease or consolidation.",
     {"Lung Opacity": 1, "Consolidation": 0}),
    # vascular congestion is an uncertain Edema unless negated
    ("Mild central vascular congestion.", {"Edema": -1}),
    ("There is stable mild cardiomegaly without significant pulmonary vascular congestion.",
     {"Cardiomegaly": 1, "Edema": 0}),
    # words of the labeler's No Finding list stop No Finding and make no label
    ("Severe hyperinflation.", {}),
    ("There is a moderate hiatal hernia.", {}),
    ("Emphysema.", {}),
    ("Bibasilar airspace disease may represent infection or mild edema.",
     {"Lung Opacity": 1, "Pneumonia": -1, "Edema": -1}),
    ("Nodular opacities consistent with chronic granulomatous disease.",
     {"Lung Lesion": 1, "Lung Opacity": 1}),
    # negated findings leave No Finding at 1
    ("No focal consolidation, pneumothorax or large pleural effusion.",
     {"No Finding": 1, "Consolidation": 0, "Pneumothorax": 0, "Pleural Effusion": 0}),
]


@pytest.mark.parametrize("sentence, expected", CASES, ids=[c[0][:50] for c in CASES])
def test_chestxray14_on_real_iu_sentences(backend, iu_text, sentence, expected):
    assert sentence in iu_text, "case must be a real IU sentence"
    assert labels(backend, sentence) == expected


@pytest.mark.parametrize("sentence, expected", CHEXPERT_CASES, ids=[c[0][:50] for c in CHEXPERT_CASES])
def test_chexpert_on_real_iu_sentences(backend, iu_text, sentence, expected):
    assert sentence in iu_text, "case must be a real IU sentence"
    assert labels(backend, sentence, "chexpert") == expected


def test_broad_map_keeps_the_earlier_reading(backend):
    """The opt-in broad map counts signs as the finding they suggest; the default does not."""
    text = ("Costophrenic XXXX are blunted. Right lower lobe airspace disease. Severe hyperinflation. "
            "Mild central vascular congestion.")
    assert labels(backend, text, "chestxray14_broad") == {
        "Effusion": -1, "Infiltration": 1, "Emphysema": -1, "Edema": -1}
    assert labels(backend, text) == {}


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
    # hedged_by: vascular congestion is at most an uncertain Edema, and negated it rules Edema out
    congestion = {"category": "vascular congestion", "negated": False, "uncertain": False}
    assert study_labels([congestion], chexpert)["Edema"] == -1
    assert study_labels([{**congestion, "negated": True}], chexpert)["Edema"] == 0
    # no_finding_also: a word of the labeler's No Finding list stops No Finding, negated it does not
    emphysema = {"category": "emphysema", "negated": False, "uncertain": True}
    assert study_labels([emphysema], chexpert)["No Finding"] is None
    assert study_labels([{**emphysema, "negated": True}], chexpert)["No Finding"] == 1


def test_labels_table_has_a_row_per_study_and_maps_name_vocabulary_categories(tmp_path):
    vocabulary = load_vocabulary()
    for name in ("chestxray14", "chexpert", "chestxray14_broad"):
        load_label_map(name, vocabulary=vocabulary)
    triplets = pa.table({"study_id": ["a"], "category": ["hernia"], "negated": [False],
                         "uncertain": [False]})
    table = labels_table(triplets, load_label_map("chestxray14"), ["a", "b"])
    assert table.column("Hernia").to_pylist() == [1, None]
    broken = tmp_path / "maps.yaml"
    broken.write_text("chestxray14:\n  labels:\n    Hernia: [hiatus thing]\n")
    with pytest.raises(LabelMapError, match="hiatus thing"):
        load_label_map("chestxray14", broken, vocabulary)


# Micro-F1 on the 600 dev reports the rules are tuned on, measured with `python
# benchmarks/extract.py --quality`: chestxray14 0.998 / 0.997 and chexpert 0.983 / 0.987
# (uncertain as positive / negative). The floors sit at what the same path measured on the 300
# held-out reports nobody tuned on (chestxray14 1.000 / 0.970, chexpert 0.967 / 0.957, rounded
# down), i.e. at the level of unseen reports: a change that makes real reports worse than that
# fails here, while dev's near-perfect figure (the rules were written on it) is not required to
# hold exactly. The held-out set is never read by tests.
DEV_FLOORS = {
    ("chestxray14", "uncertain as negative"): 0.97,
    ("chestxray14", "uncertain as positive"): 0.97,
    ("chexpert", "uncertain as negative"): 0.95,
    ("chexpert", "uncertain as positive"): 0.95,
}


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_dev_set_f1_floor(backend, convention):
    pytest.importorskip("torchxrayvision")
    gold = load_gold(convention, "dev")
    predicted = rules_labels(backend, load_iu_texts(set(gold)), convention)
    for (name, policy), floor in DEV_FLOORS.items():
        if name == convention:
            assert score(gold, predicted, policy, CONVENTIONS[convention]).micro[2] >= floor, policy
