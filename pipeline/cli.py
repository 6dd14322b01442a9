"""`medfilip`: the command line. Thin over Dagster so every run lands in the same instance
(and shows in the UI) as runs launched from there."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pipeline.demo import DEMO_STUDIES
from pipeline.settings import REPO_ROOT, prepare_home

CORPUS_STUDIES = 200


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medfilip", description=__doc__)
    sub = parser.add_subparsers()

    corpus = sub.add_parser("corpus", help="generate the synthetic DICOM + report corpus")
    corpus.add_argument("--out", type=Path, required=True)
    corpus.add_argument("--studies", type=int, default=CORPUS_STUDIES)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--image-size", type=int, default=512)
    corpus.add_argument("--format", choices=["dicom", "jpg"], default="dicom")
    corpus.add_argument("--workers", type=int, default=1)
    corpus.set_defaults(handler=cmd_corpus)

    demo = sub.add_parser("demo", help="generate a corpus (if needed) and materialise the pipeline")
    demo.add_argument("--studies", type=int, default=DEMO_STUDIES)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=cmd_demo)

    run = sub.add_parser("run", help="materialise one asset, group or job (runs show in the UI)")
    run.add_argument("target", help="asset key, group name or job name")
    run.add_argument("--partition", action="append", help="shard (pNN); repeatable; default all")
    run.set_defaults(handler=cmd_run)

    lineage = sub.add_parser("lineage", help="print what a model was built from, flagging inputs that changed since")
    lineage.add_argument("model", help="registered model version (3, medfilip/3, models:/medfilip/3), "
                                       "MLflow run id, or checkpoint path")
    lineage.add_argument("--json", action="store_true", help="machine-readable output")
    lineage.set_defaults(handler=cmd_lineage)

    ui = sub.add_parser("ui", help="start `dagster dev` on 127.0.0.1 over MEDFILIP_HOME's instance")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=cmd_ui)
    return parser


def cmd_corpus(args: argparse.Namespace) -> int:
    from corpus.generate import generate_corpus

    summary = generate_corpus(
        args.out, studies=args.studies, seed=args.seed, image_size=args.image_size,
        image_format=args.format, workers=args.workers, progress=True,
    )
    print(json.dumps(summary.to_dict(), indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole graph on the generated corpus: corpus -> ingestion -> extraction -> knowledge
    and SSM -> pre-training -> evaluations, then the prompt-change sensor is switched on."""
    from corpus.generate import generate_corpus
    from pipeline.demo import DEMO_CORPUS, DEMO_OPS_CONFIG, DEMO_PARTITION_DIGITS, print_demo_summary, start_prompt_sensor
    from pipeline.runner import materialise

    start = time.perf_counter()
    lay = prepare_home()
    if not (lay.corpus / "manifest.json").exists():
        print(f"Generating {args.studies} studies into {lay.corpus} ...", flush=True)
        generate_corpus(lay.corpus, studies=args.studies, seed=args.seed, progress=True, **DEMO_CORPUS)
    else:
        print(f"Using the corpus already in {lay.corpus}")
    timings = {"corpus": time.perf_counter() - start}
    summaries = []
    for job in ("ingestion_job", "model_job"):
        tick = time.perf_counter()
        print(f"Materialising {job} ...", flush=True)
        summaries.append(materialise(job, ops_config=DEMO_OPS_CONFIG, partition_digits=DEMO_PARTITION_DIGITS))
        timings[job] = time.perf_counter() - tick
        if summaries[-1]["failed"]:
            break
    sensor = start_prompt_sensor(lay) if not summaries[-1]["failed"] else "not started (a run failed)"
    timings["total"] = time.perf_counter() - start
    print_demo_summary(lay, summaries, timings, sensor)
    return 0 if all(s["failed"] == 0 for s in summaries) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import materialise

    prepare_home()
    summary = materialise(args.target, partitions=args.partition)
    print(json.dumps(summary, indent=2))
    # The JSON is for scripts; these lines are for the person at the terminal.
    for check in summary["failed_checks"]:
        print(f"check {check['severity']}: {check['asset']}.{check['check']}"
              f"{' [' + check['partition'] + ']' if check['partition'] else ''} {check['description']}".rstrip(),
              file=sys.stderr)
    for failure in summary["failures"]:
        print(f"FAILED {failure['step']}{' [' + failure['partition'] + ']' if failure['partition'] else ''}: "
              f"{failure['error']}", file=sys.stderr)
    return 0 if summary["failed"] == 0 else 1


def cmd_lineage(args: argparse.Namespace) -> int:
    from pipeline.lineage import check_lineage, format_lineage, resolve_lineage

    prepare_home()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    record = resolve_lineage(args.model)
    record["inputs"] = check_lineage(record["inputs"])
    if args.json:
        print(json.dumps(record, indent=2, default=str))
    else:
        print(format_lineage(record))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    lay = prepare_home()
    print(f"Dagster UI on http://127.0.0.1:{args.port}  (DAGSTER_HOME={lay.dagster_home})")
    command = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
               "-h", "127.0.0.1", "-p", str(args.port)]
    # exec, not a child: a signal to `medfilip ui` then reaches dagster dev itself.
    os.chdir(REPO_ROOT)
    os.execve(command[0], command, dict(os.environ, DAGSTER_HOME=str(lay.dagster_home)))
