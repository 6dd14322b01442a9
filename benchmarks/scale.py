"""Scale run: the demo pipeline, stage by stage, on generated archives of growing size, with
wall time, CPU time and peak RSS per stage, disk per asset, and the ratios between sizes.

    .venv/bin/python benchmarks/scale.py [--images 5000 50000] [--root DIR] [--keep]

Each archive is a generated corpus (distinct images and reports: hard links of a seed would be
quarantined as duplicate pixel data and answered from the extraction cache) in its own
MEDFILIP_HOME, rendered at the demo's 192 px and decoded to 96 px, ten pNN shards as in
`make demo`, so each shard holds a tenth of the archive: memory that grows with a shard's size
shows up here as well as memory that grows with the archive. Every stage is one
`pipeline.runner.materialise(...)` (the code path of `medfilip run`) in a fresh process, so its
peak RSS is its own; the peak PSS of its whole process tree (cxr_images' decode pool, Dagster's
log watchers) is sampled beside it.
Training is one epoch of the demo preset. The figures feed the MIMIC-CXR extrapolation in
docs/operations.md ("MIMIC-CXR scale").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.tables import markdown_table  # noqa: E402
from testkit.results import flat_numbers, run_start, write_result  # noqa: E402

STAGES = ("dicom_index", "cxr_images", "reports", "llm_extractions", "triplets", "report_labels",
          "knowledge_base", "training_texts", "text_embeddings", "ssm", "pretrained_model")
IMAGES_PER_STUDY = 1.5  # the generator's mix of frontal and lateral views (measured: 748 / 500)
ONE_EPOCH = {"pretrained_model": {"config": {"overrides_json": json.dumps({"epochs": 1})}}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--root", type=Path, help="where the homes go (default: a temp folder, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the homes")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="run only these (their inputs must be in the homes already: --root of a kept run)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = run_start()
    root = args.root or Path(tempfile.mkdtemp(prefix="medfilip-scale-"))
    results: dict[int, dict] = {}
    try:
        for count in args.images:
            home = root / f"n{count}"
            results[count] = run_scale(home, count, args.stages)
            print(json.dumps({"images": count, **results[count]}), flush=True)
            if not args.keep:
                shutil.rmtree(home, ignore_errors=True)
    finally:
        if not args.keep and args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print_tables(results)
    write_result("scale", args, flat_numbers({f"n{count}": result for count, result in results.items()}),
                 started=started)


def run_scale(home: Path, count: int, stages: list[str]) -> dict:
    from corpus.generate import generate_corpus
    from pipeline.demo import DEMO_CORPUS

    home.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    manifest = home / "corpus" / "manifest.json"
    if not manifest.exists():  # else a kept home: the same archive, its stages again
        generate_corpus(home / "corpus", studies=round(count / IMAGES_PER_STUDY), seed=7, workers=2,
                        eval_images=16, progress=sys.stderr.isatty(), **DEMO_CORPUS)
    summary = json.loads(manifest.read_text())
    out = {"archive_images": summary["images"], "archive_studies": summary["studies"],
           "corpus_s": round(time.perf_counter() - tick, 1), "stages": {}}
    for stage in stages:
        figures = run_stage(home, stage)
        out["stages"][stage] = figures
        print(json.dumps({"images": count, "stage": stage, **figures}), flush=True)
        if not figures["ok"]:
            raise SystemExit(f"scale run: {stage} failed at {count} images: {figures.get('error')}")
    out["disk_mb"] = {path.name: round(du(path) / 2**20, 1) for path in sorted((home / "data").iterdir())
                      if path.is_dir()}
    out["disk_mb"]["archive"] = round(du(home / "corpus") / 2**20, 1)
    return out


def run_stage(home: Path, stage: str) -> dict:
    env = dict(os.environ, MEDFILIP_HOME=str(home))
    for name in ("MEDFILIP_CONFIG", "DAGSTER_HOME"):
        env.pop(name, None)
    process = subprocess.Popen([sys.executable, __file__, "--child", stage], env=env, cwd=home,
                               stdout=subprocess.PIPE, text=True)
    # A walk of the tree is not atomic: a fork between two reads (Dagster and ctypes start
    # helper processes) counts the parent's pages twice in that one sample. A peak counts only
    # if the next sample, 0.2 s later, is as high: the smaller of each consecutive pair.
    peak_tree, peak_parts, previous = 0, [], (0, [])
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(process.stdout.read)
        while process.poll() is None:
            current = tree_pss(process.pid)
            confirmed = min(previous, current, key=lambda sample: sample[0])
            if confirmed[0] > peak_tree:
                peak_tree, peak_parts = confirmed
            previous = current
            time.sleep(0.2)
        stdout = reading.result()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    figures = json.loads(lines[-1]) if lines else {"ok": False, "error": f"exit {process.returncode}"}
    figures["peak_tree_pss_mb"] = round(peak_tree / 1024, 1)
    # What the tree held at its peak, largest first: which process grows, if one does.
    figures["peak_tree"] = [f"{kb / 1024:.0f} MB {command}" for kb, command in sorted(peak_parts, reverse=True)[:6]]
    return figures


def tree_pss(pid: int) -> tuple[int, list[tuple[int, str]]]:
    """Proportional set size (kB) of a process and all its descendants, now, and each one's
    (kB, command): shared pages (a forked process's copy of its parent) counted once, unlike RSS."""
    total, parts, todo = 0, [], [pid]
    while todo:
        current = todo.pop()
        try:
            pss = _pss_kb(current)
            command = Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError, StopIteration):
            continue  # ended between the listing and the read (a zombie has no VmRSS)
        total += pss
        parts.append((pss, command[:120]))
    return total, parts


def _pss_kb(pid: int) -> int:
    """Pss of one process; its RSS where the kernel has no smaps_rollup (before Linux 4.14, some
    sandboxes): shared pages then count once per process, an overestimate."""
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        return sum(int(line.split()[1]) for line in rollup.read_text().splitlines() if line.startswith("Pss:"))
    return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:"))


def child(stage: str) -> None:
    """One stage in this fresh process; prints its figures as the last line."""
    from pipeline.demo import DEMO_OPS_CONFIG, DEMO_PARTITION_DIGITS
    from pipeline.runner import materialise
    from pipeline.settings import prepare_home

    prepare_home(os.environ["MEDFILIP_HOME"])
    start = time.perf_counter()
    summary = materialise(stage, ops_config={**DEMO_OPS_CONFIG, **ONE_EPOCH}, partition_digits=DEMO_PARTITION_DIGITS)
    seconds = time.perf_counter() - start
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "ok": summary["failed"] == 0, "runs": len(summary["runs"]), "rows": summary["rows"].get(stage),
        "wall_s": round(seconds, 1), "cpu_s": round(own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime, 1),
        "peak_rss_mb": round(own.ru_maxrss / 1024, 1), "peak_child_rss_mb": round(workers.ru_maxrss / 1024, 1),
        "error": "; ".join(f["error"][:200] for f in summary["failures"])[:400] or None,
    }))


def du(path: Path) -> int:
    """Bytes of the files under `path`, each inode once (hard links count once)."""
    seen, total = set(), 0
    for file in path.rglob("*"):
        stat = file.lstat()
        if file.is_file() and (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


def print_tables(results: dict[int, dict]) -> None:
    counts = sorted(results)
    if not counts:
        return
    rows = []
    for stage in [s for s in STAGES if all(s in results[c]["stages"] for c in counts)]:
        row = {"stage": stage}
        for count in counts:
            figures = results[count]["stages"][stage]
            row[f"{count}: wall s"] = figures["wall_s"]
            row[f"{count}: CPU s"] = figures["cpu_s"]
            row[f"{count}: peak RSS / tree PSS MB"] = f"{figures['peak_rss_mb']:.0f} / {figures['peak_tree_pss_mb']:.0f}"
        if len(counts) > 1:
            small, large = (results[c]["stages"][stage] for c in (counts[0], counts[-1]))
            row["RSS ratio"] = f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x"
            row["PSS ratio"] = f"{large['peak_tree_pss_mb'] / max(small['peak_tree_pss_mb'], 1):.2f}x"
            row["CPU ratio"] = f"{large['cpu_s'] / max(small['cpu_s'], 0.1):.1f}x"
        rows.append(row)
    print("\nper stage: peak RSS of the stage's process (exact) / peak PSS of its process tree (sampled")
    print("every 0.2 s, held for two samples: decode workers and other children included, pages shared")
    print("by a fork counted once)")
    print(markdown_table(rows))
    print("\narchives and disk per asset (MB)")
    names = sorted({name for c in counts for name in results[c]["disk_mb"]})
    print(markdown_table([{"": "images", **{str(c): results[c]["archive_images"] for c in counts}}]
                         + [{"": name, **{str(c): results[c]["disk_mb"].get(name, 0) for c in counts}} for name in names]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
