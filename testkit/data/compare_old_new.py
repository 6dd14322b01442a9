"""How far the old IU dev labels (iu_gold_labels.csv, the project's earlier rules) are from the relabelling under the
written `chestxray14` convention (iu_dev_chestxray14.csv, docs/labelling_guideline.md).

The new labels are the reference and the old labels are scored against them with the project scorer
(testkit/iu_gold.py::score). A cell counts as positive when it is 1 ("uncertain as negative") or 1 / -1 ("uncertain as
positive"). 0 and empty count as negative. Also printed: how many cells changed value (1 / 0 / -1 / empty).

    python testkit/data/compare_old_new.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from testkit.iu_gold import CLASSES, POLICIES, load_gold, load_legacy_gold, score  # noqa: E402

NEW_CSV = Path(__file__).parent / "iu_dev_chestxray14.csv"


def load(path: Path, columns: tuple[str, ...]) -> dict[str, dict[str, int | None]]:
    with path.open() as f:
        return {r["report_id"]: {c: int(r[c]) if r[c] else None for c in columns} for r in csv.DictReader(f)}


def main() -> None:
    old = load_legacy_gold()
    new = load_gold("chestxray14", "dev")
    assert set(old) == set(new), "the two files must hold the same reports"
    print(f"{len(new)} reports; reference = new labels ({NEW_CSV.name}), scored = old labels (iu_gold_labels.csv)\n")
    for policy in POLICIES:
        s = score(new, old, policy)
        print(f"== {policy}")
        print(f"{'class':20s} {'new+':>5s} {'old+':>5s} {'both':>5s} {'F1':>6s}")
        for c in CLASSES:
            tp, fp, fn = s.counts[c]
            f1 = f"{s.prf(c)[2]:.3f}" if tp + fn else "  n/a"
            print(f"{c:20s} {tp + fn:5d} {tp + fp:5d} {tp:5d} {f1:>6s}")
        print(f"micro F1 {s.micro[2]:.3f}   macro F1 {s.macro_f1:.3f} (classes with a new positive)\n")
    old_nf = load(Path(__file__).parent / "iu_gold_labels.csv", ("No_Finding",))
    new_nf = load(NEW_CSV, ("No_Finding",))
    changed = {c: sum(old[r][c] != new[r][c] for r in new) for c in CLASSES}
    print("changed cells (any of 1 / 0 / -1 / empty), per class:")
    print("  " + ", ".join(f"{c} {n}" for c, n in changed.items() if n))
    print(f"  total {sum(changed.values())} of {len(new) * len(CLASSES)} class cells; "
          f"No_Finding changed in {sum(old_nf[r] != new_nf[r] for r in new)} reports")


if __name__ == "__main__":
    main()
