from pathlib import Path

import pyarrow as pa
import pytest

from knowledge.base import DEFAULT_KNOWLEDGE_PATH, NO_FINDING, load_knowledge, missing_descriptions

PAPER_CATEGORIES = [
    "effusion", "cardiomegaly", "pneumothorax", "nodule", "consolidation", "pneumonia", "atelectasis",
    "edema", "pacemaker", "endotracheal tube", "opacity", "mass", "fracture", "emphysema", "fibrosis",
    "hernia", "pleural thickening", "infiltration", "granuloma", "calcification", "lung lesion",
    "enlarged cardiomediastinum", "central venous catheter", "nasogastric tube", "chest tube",
    "sternotomy wires", NO_FINDING,
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "descriptions.yaml"
    path.write_text(text)
    return path


def test_shipped_knowledge_base_describes_every_category_reports_use():
    kb = load_knowledge(DEFAULT_KNOWLEDGE_PATH)
    assert missing_descriptions(kb, PAPER_CATEGORIES) == []
    assert all(len(entry.description.split()) >= 8 for entry in kb.categories.values())


def test_missing_descriptions_lists_unknown_categories_canonically(tmp_path):
    kb = load_knowledge(write(tmp_path, "categories:\n  effusion:\n    description: fluid at the base\n"))
    assert missing_descriptions(kb, ["Effusion", "Lung  Lesion", "hernia", "hernia"]) == ["hernia", "lung lesion"]


def test_empty_description_is_rejected_naming_the_file(tmp_path):
    path = write(tmp_path, "categories:\n  effusion:\n    description: '   '\n")
    with pytest.raises(ValueError, match="descriptions.yaml"):
        load_knowledge(path)


def test_duplicate_category_is_rejected(tmp_path):
    yaml_text = "categories:\n  effusion:\n    description: a\n  effusion:\n    description: b\n"
    with pytest.raises(ValueError, match="duplicate key 'effusion'"):
        load_knowledge(write(tmp_path, yaml_text))
    case_clash = "categories:\n  Effusion:\n    description: a\n  effusion:\n    description: b\n"
    with pytest.raises(ValueError, match="listed twice"):
        load_knowledge(write(tmp_path, case_clash))


def test_unknown_entry_field_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="descripton"):
        load_knowledge(write(tmp_path, "categories:\n  effusion:\n    descripton: typo\n"))


def test_arrow_table_has_one_row_per_category_with_json_attributes(tmp_path):
    kb = load_knowledge(write(tmp_path, (
        "categories:\n"
        "  Nodule:\n    description: small round opacity\n    attributes: {shape: round, size: 2}\n"
        "  effusion:\n    description: >-\n      fluid\n      at the base\n"
    )))
    table = kb.to_arrow()
    assert table.column_names == ["category", "description", "attributes", "digest"]
    rows = table.to_pylist()
    assert [r["category"] for r in rows] == ["effusion", "nodule"]
    assert rows[0]["description"] == "fluid at the base"
    assert rows[1]["attributes"] == '{"shape": "round", "size": "2"}'
    assert table.schema.field("digest").type == pa.string() and len(rows[0]["digest"]) == 64


def test_digest_follows_content_not_formatting(tmp_path):
    base = load_knowledge(write(tmp_path, "categories:\n  effusion:\n    description: fluid at the base\n"))
    reformatted = load_knowledge(write(tmp_path, "# a comment\ncategories:\n  effusion: {description: 'fluid  at the base'}\n"))
    edited = load_knowledge(write(tmp_path, "categories:\n  effusion:\n    description: fluid at the apex\n"))
    assert base.digest == reformatted.digest
    assert base.digest != edited.digest
    assert base.to_arrow()["digest"] != edited.to_arrow()["digest"]


def test_shipped_knowledge_base_describes_every_vocabulary_category():
    # build_training_texts refuses categories without a description, so the two files must agree.
    import yaml

    vocabulary = yaml.safe_load((DEFAULT_KNOWLEDGE_PATH.parent / "vocabulary.yaml").read_text())
    assert missing_descriptions(load_knowledge(), vocabulary["categories"]) == []
