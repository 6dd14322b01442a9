"""Answer parser, vocabulary folding, prompt versioning and answers -> triplets."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest

from extraction.parse import parse_answer
from extraction.prompts import PromptError, default_prompt_dir, load_prompt
from extraction.to_triplets import to_triplets
from extraction.vocabulary import VocabularyError, load_vocabulary

CORPUS_CATEGORIES = ["effusion", "cardiomegaly", "pneumothorax", "nodule", "consolidation",
                     "pneumonia", "atelectasis", "edema", "pacemaker", "endotracheal tube"]


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def test_paper_brace_triplets_with_bullets_numbering_and_case():
    answer = "Here are the findings:\n1. {Mild}{NA}{Cardiomegaly}\n- {no} {na} {pneumothorax}\n* {small}{left}{effusion}{uncertain}"
    parsed = parse_answer(answer)
    assert parsed.error is None
    assert [(f.severity, f.location, f.category, f.uncertain) for f in parsed.findings] == [
        ("mild", "na", "cardiomegaly", False), ("no", "na", "pneumothorax", False),
        ("small", "left", "effusion", True)]


def test_several_triplets_on_one_line_and_fenced_answer():
    parsed = parse_answer("```\n{mild}{na}{edema}, {no}{na}{effusion}{certain}\n```")
    assert [f.category for f in parsed.findings] == ["edema", "effusion"]
    assert parsed.error is None


@pytest.mark.parametrize("answer", [
    '{"findings": [{"severity": "Small", "location": "left", "category": "effusion", "certainty": "uncertain", "sentence": "Possible small left effusion."}]}',
    '```json\n[{"severity": "small", "location": "left", "category": "effusion", "uncertain": true, "sentence": "Possible small left effusion."}]\n```',
])
def test_json_answers_list_or_findings_object(answer):
    parsed = parse_answer(answer)
    assert parsed.error is None
    (finding,) = parsed.findings
    assert (finding.severity, finding.location, finding.category, finding.uncertain) == (
        "small", "left", "effusion", True)
    assert finding.sentence == "Possible small left effusion."


@pytest.mark.parametrize("answer", ["none", "None.", "[]", '{"findings": []}'])
def test_explicit_no_findings_is_not_an_error(answer):
    assert parse_answer(answer).findings == [] and parse_answer(answer).error is None


@pytest.mark.parametrize("answer, fragment", [
    (None, "empty answer"), ("   ", "empty answer"),
    ("I cannot help with that.", "no triplets found"),
    ('{"findings": [{"severity": "mild"', "invalid JSON"),
    ("{mild}{na}", "2 fields"),
    ("{a}{b}{c}{d}{e}", "5 fields"),
    ("{mild}{na}{edema}{perhaps-ish}", "unknown certainty"),
    ('{"result": []}', "without a 'findings' list"),
    ('{"findings": "effusion"}', "expected a list"),
])
def test_malformed_answers_give_an_error_string_not_an_exception(answer, fragment):
    parsed = parse_answer(answer)
    assert parsed.error is not None and fragment in parsed.error
    assert parsed.findings == []


def test_partly_malformed_answer_keeps_good_findings_and_reports_the_rest():
    parsed = parse_answer("{mild}{na}{edema}\n{broken}{x}\n{no}{na}{effusion}")
    assert [f.category for f in parsed.findings] == ["edema", "effusion"]
    assert "1 malformed item(s), 2 parsed" in parsed.error


def test_vocabulary_has_corpus_categories_and_folds_synonyms(vocab):
    assert set(CORPUS_CATEGORIES) <= set(vocab.category_names)
    assert vocab.fold_category("Pleural Effusions") == "effusion"
    assert vocab.fold_category("pneumothoraces") == "pneumothorax"
    assert vocab.fold_category("ET tube") == "endotracheal tube"
    assert vocab.fold_category("enlarged heart") == "cardiomegaly"
    assert vocab.fold_category("unicorn horn") is None
    assert vocab.fold_severity("Mildly") == "mild" and vocab.fold_severity("NA") == "na"
    assert vocab.fold_severity("stable") == "stable"  # change words are accepted
    assert vocab.fold_location("left-sided") == "left"
    assert vocab.fold_location("left lung base") == "left base"
    assert vocab.fold_location("behind the moon") is None


def test_vocabulary_rejects_a_synonym_claimed_by_two_categories(tmp_path):
    path = tmp_path / "vocabulary.yaml"
    path.write_text("categories:\n  effusion: {synonyms: [fluid]}\n  edema: {synonyms: [fluid]}\n"
                    "severities: {mild: []}\nlocations: {left: []}\n")
    with pytest.raises(VocabularyError, match="'fluid' is a synonym of both"):
        load_vocabulary(path)


def test_prompt_version_is_content_hash_and_changes_with_any_edit(tmp_path):
    copy = tmp_path / "prompt"
    shutil.copytree(default_prompt_dir(), copy)
    original = load_prompt(copy)
    assert len(original.version) == 64 and len(original.short_version) == 12
    assert load_prompt(copy).version == original.version
    (copy / "system.md").write_text((copy / "system.md").read_text() + "\nBe brief.\n")
    assert load_prompt(copy).version != original.version


def test_prompt_sends_only_instructions_and_report_and_keeps_braces(tmp_path):
    prompt = load_prompt(default_prompt_dir())
    messages = prompt.messages("Report with {braces} inside.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Report with {braces} inside." in messages[1]["content"]
    assert "{report}" not in messages[1]["content"]
    (tmp_path / "system.md").write_text("x")
    (tmp_path / "user.md").write_text("no placeholder")
    with pytest.raises(PromptError, match="placeholder"):
        load_prompt(tmp_path)


def test_to_triplets_folds_synonyms_rejects_unknowns_and_drops_repeats(vocab):
    answers = [
        "{moderate}{Right}{pleural effusions}\n{no}{na}{pneumothorax}\n{possible}{left}{effusion}\n"
        "{mild}{na}{unicorn horn}\n{moderate}{right}{effusion}{certain}\n{small}{left apex}{ptx}{uncertain}",
        "{broken",
        None,
    ]
    table = pa.table({"study_id": ["s1", "s2", "s3"], "answer": answers})
    triplets, rejects = to_triplets(table, vocab)
    rows = triplets.to_pylist()
    assert [(r["severity"], r["location"], r["category"], r["negated"], r["uncertain"]) for r in rows] == [
        ("moderate", "right", "effusion", False, False),
        ("no", "na", "pneumothorax", True, False),
        ("small", "left apex", "pneumothorax", False, True)]
    assert rows[0]["raw_category"] == "pleural effusions"
    reasons = {r["raw_category"]: r["reason"] for r in rejects.to_pylist()}
    assert "unknown severity 'possible'" in reasons["effusion"]
    assert "unknown category 'unicorn horn'" in reasons["unicorn horn"]
    assert any(r["study_id"] == "s2" and r["reason"].startswith("parse error") for r in rejects.to_pylist())
    assert "s3" not in set(rejects.column("study_id").to_pylist())


def test_triplets_and_labels_read_batch_by_batch_equal_the_whole_table(vocab, tmp_path):
    """The assets stream llm_extractions / triplets from Parquet a batch at a time (memory flat in
    the archive's size): batch boundaries inside the data change nothing."""
    import pyarrow.parquet as pq

    from common.storage import record_batches
    from extraction.labels import load_label_map, report_labels_table
    from extraction.to_triplets import answered_reports

    answers = ["{moderate}{right}{effusion}\n{no}{na}{pneumothorax}", None, "{broken",
               "{small}{left}{ptx}{uncertain}\n{mild}{na}{cardiomegaly}", "{no}{na}{effusion}"] * 3
    table = pa.table({"study_id": [f"s{i}" for i in range(len(answers))], "answer": answers,
                      "parse_error": [None if a is None or not a.startswith("{broken") else "x" for a in answers]})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=4)
    whole = to_triplets(table, vocab)
    in_batches = to_triplets(record_batches(tmp_path / "x.parquet", ["study_id", "answer"], batch_size=2), vocab)
    assert [t.to_pylist() for t in in_batches] == [t.to_pylist() for t in whole]
    assert (whole[0].num_rows, whole[1].num_rows) == (15, 3)  # 5 findings and one parse error per 5 reports
    assert answered_reports(tmp_path / "x.parquet") == answered_reports(table) == 12
    labels = load_label_map("chexpert", vocabulary=vocab)
    pq.write_table(whole[0], tmp_path / "t.parquet", row_group_size=5)
    from_files = report_labels_table(tmp_path / "x.parquet", tmp_path / "t.parquet", labels)
    assert from_files.to_pylist() == report_labels_table(table, whole[0], labels).to_pylist()
    assert from_files.num_rows == 9  # answered, no parse error
