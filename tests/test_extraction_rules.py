"""Rule-based extractor on real Indiana University chest X-ray report sentences
(torchxrayvision's data/NLMCXR_reports.tgz) and on the synthetic corpus phrasing."""

from __future__ import annotations

import html
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from extraction.parse import parse_answer
from extraction.rules import RulesBackend, split_sentences
from extraction.to_triplets import to_triplets


SECTION = re.compile(r'<AbstractText Label="(?:FINDINGS|IMPRESSION)">([^<]*)</AbstractText>')


@pytest.fixture(scope="module")
def backend() -> RulesBackend:
    return RulesBackend()


@pytest.fixture(scope="module")
def iu_reports() -> list[str]:
    """FINDINGS + IMPRESSION of every IU report, read from the tarball shipped with torchxrayvision."""
    txv = pytest.importorskip("torchxrayvision")
    archive = Path(txv.__file__).parent / "data" / "NLMCXR_reports.tgz"
    reports = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".xml"):
                continue
            xml = tar.extractfile(member).read().decode("utf-8")
            reports.append(" ".join(html.unescape(m) for m in SECTION.findall(xml)))
    assert len(reports) > 3900
    return reports


def triplets(backend: RulesBackend, text: str) -> list[tuple[str, str, str, bool]]:
    """(severity, location, category, uncertain) through the same parser the LLM path uses."""
    parsed = parse_answer(backend.complete(text).text)
    assert parsed.error is None
    return [(f.severity, f.location, f.category, f.uncertain) for f in parsed.findings]


# Real sentences copied from the IU reports; the test checks each really is in the archive.
IU_CASES = [
    # negation covers every finding of a coordinated list
    ("No pleural effusion or pneumothorax.",
     [("no", "na", "effusion", False), ("no", "na", "pneumothorax", False)]),
    ("Negative for focal pulmonary consolidation, pleural effusion, or pneumothorax.",
     [("no", "na", "consolidation", False), ("no", "na", "effusion", False),
      ("no", "na", "pneumothorax", False)]),
    # "to suggest" inside a negated sentence stays negated, not uncertain
    ("There is no focal air space opacity to suggest a pneumonia.",
     [("no", "na", "airspace disease", False), ("no", "na", "pneumonia", False)]),
    # an organ stated normal negates its finding
    ("Heart size is normal.", [("no", "na", "cardiomegaly", False)]),
    ("The heart is not enlarged.", [("no", "na", "cardiomegaly", False)]),
    ("The heart is mildly enlarged.", [("mild", "na", "cardiomegaly", False)]),
    # a comma ends the organ clause: the second clause's "normal" is not about the heart
    ("Heart size is enlarged, pulmonary vascularity within normal limits.",
     [("na", "na", "cardiomegaly", False)]),
    ("Mild cardiomegaly.", [("mild", "na", "cardiomegaly", False)]),
    ("There is a small left pleural effusion.", [("small", "left", "effusion", False)]),
    ("Small bilateral pleural effusions.", [("small", "bilateral", "effusion", False)]),
    # multi-finding sentences, each with its own modifiers
    ("There is moderate left pleural effusion and small right pleural effusion.",
     [("moderate", "left", "effusion", False), ("small", "right", "effusion", False)]),
    ("There is large right-sided pleural effusion and probable underlying associated compressive atelectasis.",
     [("large", "right", "effusion", False), ("na", "na", "atelectasis", True)]),
    # uncertainty: versus, may represent, cannot be excluded, suggestive of, possible
    # plain scarring is a scar, not fibrosis (labelling guideline)
    ("Stable left basilar atelectasis versus scarring.",
     [("na", "left base", "atelectasis", True), ("na", "na", "scarring", True)]),
    ("This may represent an early pneumonia.", [("na", "na", "pneumonia", True)]),
    ("XXXX pleural reaction on the right cannot be excluded.",
     [("na", "right", "pleural thickening", True)]),
    ("Hyperexpanded lungs, suggestive of emphysema.",
     [("na", "na", "hyperinflation", False), ("na", "na", "emphysema", True)]),
    # the vocabulary names what the report says: a patchy opacity is an opacity (the label
    # maps decide what it counts for); its hedged causes stay uncertain
    ("There is patchy opacity in the left lung base which may be secondary to atelectasis and/or possible infiltrate.",
     [("patchy", "left base", "opacity", False), ("na", "na", "atelectasis", True),
      ("na", "na", "infiltration", True)]),
    # plurals and longest-phrase synonyms ("calcified granulomas" is not a calcification)
    ("Scattered calcified granulomas.", [("scattered", "na", "granuloma", False)]),
    # "right atrium / right ventricle" are anatomy, not the pacemaker's side
    ("Pacemaker generator overlying the left chest in stable position with 2 leads terminating in the right atrium and right ventricle in stable position.",
     [("na", "left chest", "pacemaker", False)]),
]


@pytest.mark.parametrize("sentence, expected", IU_CASES, ids=[c[0][:50] for c in IU_CASES])
def test_real_iu_sentences(backend, iu_reports, sentence, expected):
    assert any(sentence in report for report in iu_reports), "case must be a real IU sentence"
    assert triplets(backend, sentence) == expected


SYNTHETIC_CASES = [
    ("There is a moderate right pleural effusion.", [("moderate", "right", "effusion", False)]),
    ("Possible small left effusion.", [("small", "left", "effusion", True)]),
    ("Small left apical pneumothorax.", [("small", "left apex", "pneumothorax", False)]),
    ("Patchy right lower lobe consolidation, concerning for pneumonia.",
     [("patchy", "right lower lobe", "consolidation", False), ("na", "na", "pneumonia", True)]),
    ("Plate-like atelectasis at the left base.", [("linear", "left base", "atelectasis", False)]),
    ("Mild pulmonary edema.", [("mild", "na", "edema", False)]),
    ("Left chest wall pacemaker with lead in the right ventricle.",
     [("na", "left chest", "pacemaker", False)]),
    ("ET tube terminates 4 cm above the carina.", [("na", "na", "endotracheal tube", False)]),
    # pseudo-negations: "no change" keeps the finding, "not excluded" is uncertain
    ("No change in the small left effusion.", [("small", "left", "effusion", False)]),
    ("Pneumothorax is not excluded.", [("na", "na", "pneumothorax", True)]),
    ("Previously seen right effusion has resolved.", [("no", "right", "effusion", False)]),
    ("No effusion, small left pneumothorax.",
     [("no", "na", "effusion", False), ("small", "left", "pneumothorax", False)]),
    ("Left lower lobe pneumonia?", [("na", "left lower lobe", "pneumonia", True)]),
]


@pytest.mark.parametrize("sentence, expected", SYNTHETIC_CASES, ids=[c[0][:50] for c in SYNTHETIC_CASES])
def test_synthetic_corpus_phrasing(backend, sentence, expected):
    assert triplets(backend, sentence) == expected


def test_sentence_splitting_drops_list_numbers_and_handles_missing_space():
    assert split_sentences("1. Mild cardiomegaly. 2. No acute disease.Lungs are clear.") == [
        "Mild cardiomegaly.", "No acute disease.", "Lungs are clear."]


def test_rules_answers_are_deterministic_and_version_tracks_vocabulary(backend, tmp_path):
    text = "Small left effusion. No pneumothorax."
    assert backend.complete(text).text == RulesBackend().complete(text).text
    edited = tmp_path / "vocabulary.yaml"
    edited.write_text(backend.vocabulary.path.read_text() + "\n# edited\n")
    assert RulesBackend(edited).version != backend.version


def test_iu_reports_yield_valid_in_vocabulary_triplets(backend, iu_reports):
    sample = [r for r in iu_reports[:400] if r.strip()]
    answers = [backend.complete(r).text for r in sample]
    table = pa.table({"study_id": [str(i) for i in range(len(sample))], "answer": answers})
    found, rejects = to_triplets(table, backend.vocabulary)
    assert rejects.num_rows == 0
    negated = sum(found.column("negated").to_pylist())
    # IU reports are mostly normal: negated findings dominate, but positives are found too
    assert found.num_rows > len(sample) and negated > found.num_rows / 2
    assert found.num_rows - negated > 50
