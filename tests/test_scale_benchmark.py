"""benchmarks/scale.py runs the pipeline's stages on generated archives and reports them: its
plumbing (homes, per-stage processes, memory sampling, the table) on two tiny archives."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_scale_benchmark_reports_every_stage_it_ran(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--images", "90", "180",
                           "--root", str(tmp_path), "--keep", "--stages", "dicom_index", "cxr_images"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MEDFILIP_RESULTS_DIR": str(tmp_path / "results")})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    archives = {line["images"]: line for line in lines if "archive_images" in line}
    assert sorted(archives) == [90, 180]
    for count, archive in archives.items():
        for stage in ("dicom_index", "cxr_images"):
            figures = archive["stages"][stage]
            assert figures["ok"] and figures["rows"] == archive["archive_images"], (count, stage, figures)
            # The stage's own process and its tree were measured: a live Python process is > 50 MB.
            assert figures["peak_rss_mb"] > 50 and figures["peak_tree_pss_mb"] > 50 and figures["cpu_s"] > 0
        assert archive["disk_mb"]["cxr_images"] > 0 and "pretrained_model" not in archive["stages"]
    assert archives[180]["archive_images"] > archives[90]["archive_images"]
    assert "| cxr_images |" in done.stdout and "RSS ratio" in done.stdout
    assert (tmp_path / "results" / "scale.json").is_file()  # the committed record is left alone
