import pytest

from ingestion.reports import parse_report, report_row
from tests.archive_factory import GOOD_REPORT
from tests.dicom_factory import write_report


def test_mimic_report_splits_into_findings_and_impression():
    parsed = parse_report(GOOD_REPORT)
    assert parsed.findings == "There is a small right pleural effusion. No pneumothorax."
    assert parsed.impression == "Small right effusion."
    assert parsed.flag is None
    assert parsed.extraction_text.splitlines() == [parsed.findings, parsed.impression]


@pytest.mark.parametrize("header", ["FINDINGS:", "Findings:", "findings :", "FINDING:"])
def test_header_case_and_spacing_do_not_matter(header):
    assert parse_report(f"{header} Heart size is normal.\nIMPRESSION: Normal.").findings == "Heart size is normal."


def test_impression_only_report_is_flagged_but_kept():
    parsed = parse_report("IMPRESSION:\n\nNo acute cardiopulmonary process.")
    assert parsed.findings == "" and parsed.impression == "No acute cardiopulmonary process."
    assert parsed.flag == "no FINDINGS section"
    assert parsed.extraction_text == "No acute cardiopulmonary process."


def test_conclusion_counts_as_impression():
    assert parse_report("CONCLUSION: Small left effusion.").impression == "Small left effusion."


def test_headerless_report_falls_back_to_last_paragraph():
    parsed = parse_report("Portable AP chest.\n\nThe heart is enlarged. Mild edema.")
    assert parsed.findings == "The heart is enlarged. Mild edema."
    assert "last paragraph" in parsed.flag


@pytest.mark.parametrize("text", ["", "   \n", "___\n", "FINDINGS: ___\nIMPRESSION: ___"])
def test_report_without_usable_text_is_kept_with_a_flag(tmp_path, text):
    path = write_report(tmp_path, 10000001, 50000001, text)
    row = report_row(path, tmp_path, "p10", b"salt")
    assert row["study_id"] == "50000001" and row["usable"] is False
    assert row["flag"] and len(row["text_sha256"]) == 64


def test_de_identification_placeholders_are_not_text():
    parsed = parse_report("FINDINGS: Compared to ___, the effusion is smaller.")
    assert "___" not in parsed.findings
    assert parsed.findings.endswith("the effusion is smaller.")
