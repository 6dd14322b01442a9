"""Input of the comparators: the IU gold reports' texts and, per convention, the phrases that name
each label, taken from knowledge/vocabulary.yaml through knowledge/label_maps.yaml.

Run with the project's Python (it reads the IU archive and the vocabulary); the comparators run
in their own environment and read only the JSON written here (benchmarks/comparators/README.md):

    python benchmarks/comparators/export.py [OUT_JSON]

A label's phrases are every synonym (and plural) of the vocabulary categories its map lists under
`labels`; `hedged_by` categories become hedged phrases (at most -1); `no_finding_also` categories
become the phrases that stop a derived No Finding. Organ + condition statements ("heart size is
normal", knowledge/vocabulary.yaml `states`) have no phrase: the comparators cannot read them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from extraction.labels import load_label_map  # noqa: E402
from extraction.vocabulary import Vocabulary, load_vocabulary, plural_forms  # noqa: E402
from testkit.iu_gold import CONVENTIONS, SPLITS, load_gold, load_iu_texts  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "out" / "comparators" / "input.json"


def phrases_of(vocabulary: Vocabulary, categories: tuple[str, ...]) -> list[str]:
    found = {phrase for phrase, canonical in vocabulary.categories.items() if canonical in categories}
    return sorted(found | {p for phrase in found for p in plural_forms(phrase)})


def convention_rules(name: str, vocabulary: Vocabulary) -> dict[str, object]:
    label_map = load_label_map(name, vocabulary=vocabulary)
    return {
        "labels": {label: phrases_of(vocabulary, cats) for label, cats in label_map.categories.items()},
        "hedged": {label: phrases_of(vocabulary, cats) for label, cats in label_map.hedged_by.items()},
        "no_finding": label_map.no_finding,
        "no_finding_ignores": list(label_map.no_finding_ignores),
        "no_finding_also": phrases_of(vocabulary, label_map.no_finding_also),
    }


def export(out: Path) -> Path:
    ids = {rid for convention in CONVENTIONS for split in SPLITS for rid in load_gold(convention, split)}
    vocabulary = load_vocabulary()
    payload = {"reports": load_iu_texts(ids),
               "conventions": {name: convention_rules(name, vocabulary) for name in CONVENTIONS}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, sort_keys=True))
    return out


if __name__ == "__main__":
    path = export(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
    print(f"wrote {path}")
