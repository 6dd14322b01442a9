"""benchmarks/ingest.py end to end on a tiny archive: every mode decodes every file, and the
results file carries the figures the README quotes (ratios to the bare loop, CPU per image)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from testkit.results import REPO


def test_ingest_benchmark_decodes_distinct_copies_and_records_its_ratios(tmp_path):
    # 3 studies give fewer seeds than --images: the rest are one-pixel-different copies, which
    # the index must not quarantine as duplicates (else only the seeds would be decoded).
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ingest.py"), "--images", "9",
                           "--seed-studies", "3", "--repeat", "1", "--size", "64"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MEDFILIP_RESULTS_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert sorted((r["mode"], r["workers"]) for r in runs) == [("bare", 1), ("cxr_images", 1), ("cxr_images", 2)]
    assert all(r["decoded"] == 9 for r in runs), runs
    figures = json.loads((tmp_path / "ingest_512_uncompressed.json").read_text())["figures"]
    assert figures["bare_x1_9.ratio vs bare"] == 1.0
    for mode in ("cxr_images_x1_9", "cxr_images_x2_9"):
        # The recorded ratio is the ratio of the recorded speeds (not a constant or a string).
        expected = figures[f"{mode}.img/s"] / figures["bare_x1_9.img/s"]
        assert abs(figures[f"{mode}.ratio vs bare"] - expected) < 1e-3
        assert figures[f"{mode}.cpu ms / image"] > 0 and figures[f"{mode}.index cpu ms / image"] > 0
        # The file over the images it holds: more than nothing, less than twice the raw 64 x 64 bytes.
        assert 0 < figures[f"{mode}.stored KiB / image"] < 2 * 64 * 64 / 1024
