"""Draw the held-out IU set: 300 reports not in iu_gold_labels.csv, repeatably.

Eligible = every IU report with non-empty FINDINGS or IMPRESSION (tests/iu_gold.py::load_iu_texts), minus the 600 ids
of testkit/data/iu_gold_labels.csv, sorted by numeric file stem; then random.Random(20261207).sample(eligible, 300).
This script only draws (and, with --print, shows the texts to a human labeller); it assigns no label.

    python testkit/data/draw_heldout.py                  # the 300 ids, in sampled order
    python testkit/data/draw_heldout.py --print 0 25     # id + FINDINGS/IMPRESSION of sampled ids [0, 25), sorted
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from testkit.iu_gold import LEGACY_CSV, load_iu_texts  # noqa: E402

SEED = 20261207
SIZE = 300


def draw(texts: dict[str, str] | None = None) -> list[str]:
    texts = load_iu_texts() if texts is None else texts
    with LEGACY_CSV.open() as f:
        dev = {row["report_id"] for row in csv.DictReader(f)}
    eligible = sorted((rid for rid in texts if rid not in dev), key=int)
    return random.Random(SEED).sample(eligible, SIZE)


if __name__ == "__main__":
    texts = load_iu_texts()
    ids = draw(texts)
    if sys.argv[1:2] == ["--print"]:
        start, stop = int(sys.argv[2]), int(sys.argv[3])
        for rid in sorted(ids[start:stop], key=int):
            print(f"== {rid}\n{texts[rid]}\n")
    else:
        print("\n".join(ids))
