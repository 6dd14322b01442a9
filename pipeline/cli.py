"""`medfilip`: the command line. Thin over Dagster so every run lands in the same instance
(and shows in the UI) as runs launched from there."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from common.errors import UserError, one_line
from pipeline.demo import DEMO_STUDIES
from pipeline.settings import CONFIG_NAME, Settings, load_settings, prepare_home, template, use_config_file

CORPUS_STUDIES = 200
# Extraction assets: a run that selects one builds the extractor first, so a missing key or
# endpoint is one line before any work starts, not a trace out of a failed step.
EXTRACTION_ASSETS = {"prompts", "llm_extractions"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    if not debug:
        # Dagster's own Python log records (instance and daemon warnings) would reach stderr through
        # logging's last-resort handler; a run's failure is our one line, --debug shows them all.
        logging.getLogger("dagster").addHandler(logging.NullHandler())
    try:
        use_config_file(getattr(args, "config", None))
        return int(args.handler(args) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"medfilip: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        if debug or not isinstance(exc.code, str):
            raise
        print(f"medfilip: error: {exc.code}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medfilip: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (anything else still gets the short form)
        if debug:
            raise
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"medfilip: {type(exc).__name__}: {one_line(exc)}\n"
              f"  at {Path(where.filename).name}:{where.lineno}; rerun with --debug for the traceback",
              file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    # The shared options work before or after the subcommand (`medfilip --debug run x` and
    # `medfilip run x --debug`); SUPPRESS keeps a subparser from resetting what the main set.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="settings file (default: $MEDFILIP_CONFIG, else ./medfilip.yaml if present)")
    shared.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    parser = argparse.ArgumentParser(prog="medfilip", description=__doc__, parents=[shared])
    sub = parser.add_subparsers()

    init = sub.add_parser("init", parents=[shared],
                          help="create the data root and a medfilip.yaml here (nothing else creates one silently)")
    init.add_argument("--home", help="data root to create (default: the configured one, else ./.medfilip)")
    init.add_argument("--print", action="store_true", dest="print_only",
                      help="print a commented medfilip.yaml and create nothing")
    init.set_defaults(handler=cmd_init)

    corpus = sub.add_parser("corpus", parents=[shared], help="generate the synthetic DICOM + report corpus")
    corpus.add_argument("--out", type=Path, required=True)
    corpus.add_argument("--studies", type=int, default=CORPUS_STUDIES)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--image-size", type=int, default=512)
    corpus.add_argument("--format", choices=["dicom", "jpg"], default="dicom")
    corpus.add_argument("--workers", type=int, default=1)
    corpus.set_defaults(handler=cmd_corpus)

    demo = sub.add_parser("demo", parents=[shared],
                          help="generate a corpus (if needed) and materialise the pipeline")
    demo.add_argument("--studies", type=int, default=DEMO_STUDIES)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=cmd_demo)

    run = sub.add_parser("run", parents=[shared],
                         help="materialise one asset, group or job (runs show in the UI)")
    run.add_argument("target", help="asset key, group name or job name")
    run.add_argument("--partition", action="append", help="shard (pNN); repeatable; default all")
    run.add_argument("--json", action="store_true",
                     help="print the run summary as JSON (counts, metadata, failed checks, failures)")
    run.set_defaults(handler=cmd_run)

    lineage = sub.add_parser("lineage", parents=[shared],
                             help="print what a model was built from, flagging inputs that changed since")
    lineage.add_argument("model", help="registered model version (3, medfilip/3, models:/medfilip/3), "
                                       "MLflow run id, checkpoint path, or a file of the registered model")
    lineage.add_argument("--json", action="store_true", help="machine-readable output")
    lineage.set_defaults(handler=cmd_lineage)

    ui = sub.add_parser("ui", parents=[shared], help="start `dagster dev` on 127.0.0.1 over MEDFILIP_HOME's instance")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=cmd_ui)
    return parser


def data_root(create: str = "never", settings: Settings | None = None):
    """The data root this command uses, announced on stderr. An existing one is used as is. A
    missing one is created only when `create` allows: "configured" (MEDFILIP_HOME or `home:`
    named it) or "always" (`medfilip init` / `medfilip demo`, the commands that ask for it):
    nothing else silently makes a ./.medfilip in whatever folder it was run from."""
    settings = settings or load_settings()
    home, source = settings.home, settings.home_source
    exists = home.is_dir()
    configured = not source.startswith("default")
    if not exists and not (create == "always" or (create == "configured" and configured)):
        if not configured:
            raise UserError(f"no data root configured and none at {home}",
                            "run `medfilip init` (creates ./.medfilip and ./medfilip.yaml), "
                            "or set MEDFILIP_HOME / `home:` in medfilip.yaml to your data root")
        raise UserError(f"data root {home} (from {source}) does not exist",
                        "check the path, or create it with `medfilip init`")
    lay = prepare_home(home)
    print(f"medfilip: data root {home} (from {source}){'' if exists else ', created'}", file=sys.stderr)
    return lay


def cmd_init(args: argparse.Namespace) -> int:
    if args.print_only:
        print(template(args.home or ".medfilip"), end="")
        return 0
    settings = load_settings()
    home = Path(args.home).expanduser().resolve() if args.home else settings.home
    lay = prepare_home(home)
    print(f"data root {lay.home} ready")
    config = Path.cwd() / CONFIG_NAME
    if settings.config_file is None and not config.exists():
        shown = os.path.relpath(lay.home) if lay.home.is_relative_to(Path.cwd()) else str(lay.home)
        from common.storage import write_text

        write_text(config, template(shown))
        print(f"wrote {config}: set archive: there to read your own archive")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from corpus.generate import generate_corpus

    summary = generate_corpus(
        args.out, studies=args.studies, seed=args.seed, image_size=args.image_size,
        image_format=args.format, workers=args.workers, progress=sys.stderr.isatty(),
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
    settings = load_settings()
    lay = data_root(create="always", settings=settings)
    archive = settings.archive.root
    if archive:  # a configured archive is the demo's input; no corpus is generated beside it
        print(f"Using the archive at {archive} (archive.root of the settings)")
    elif not (lay.corpus / "manifest.json").exists():
        print(f"Generating {args.studies} studies into {lay.corpus} ...", flush=True)
        generate_corpus(lay.corpus, studies=args.studies, seed=args.seed, progress=sys.stderr.isatty(),
                        **DEMO_CORPUS)
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
    from pipeline.runner import current_definitions, mlflow_uri

    print_demo_summary(lay, summaries, timings, sensor, mlflow_uri(current_definitions()))
    return 0 if all(s["failed"] == 0 for s in summaries) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import materialise

    check_run_request(args.target, args.partition)
    data_root(create="configured")
    if args.partition:
        check_partitions(args.partition)
    summary = materialise(args.target, partitions=args.partition, quiet=not getattr(args, "debug", False))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(run_summary_line(summary))
    failed = {(f["partition"], f["step"]) for f in summary["failures"]}
    # The JSON is for scripts; these lines are for the person at the terminal. A blocking check
    # that stopped its step is named in that step's FAILED line, the last one.
    for check in summary["failed_checks"]:
        if check["severity"] == "ERROR" and (check["partition"], check["asset"]) in failed:
            continue
        print(f"check {check['severity']}: {check['asset']}.{check['check']}"
              f"{' [' + check['partition'] + ']' if check['partition'] else ''} {check['description']}".rstrip(),
              file=sys.stderr)
    for failure in summary["failures"]:
        print(f"FAILED {failure['step']}{' [' + failure['partition'] + ']' if failure['partition'] else ''}: "
              f"{failure['error']}", file=sys.stderr)
    return 0 if summary["failed"] == 0 else 1


def run_summary_line(summary: dict) -> str:
    """What a run made, in one line: rows per asset, runs that succeeded and failed."""
    rows = ", ".join(f"{asset} {count:,} rows" for asset, count in summary["rows"].items()) or "no rows"
    return (f"{summary['target']}: {summary['succeeded']} run(s) succeeded, {summary['failed']} failed; {rows} "
            "(--json for the full summary)")


def cmd_lineage(args: argparse.Namespace) -> int:
    from pipeline.definitions import build_definitions
    from pipeline.runner import mlflow_uri
    from tracking.lineage import check_lineage, format_lineage, resolve_lineage

    settings = load_settings()
    lay = data_root(settings=settings)
    defs = build_definitions(settings)
    store = mlflow_uri(defs)
    if not lay.mlflow_db.is_file() and not settings.mlflow.tracking_uri:
        raise UserError(f"no MLflow store at {lay.mlflow_db}: no model has been trained in this data root",
                        "materialise pretrained_model (`medfilip demo`), or point MEDFILIP_HOME at the right root")
    record = resolve_lineage(args.model, store, defs.resources["mlflow_tracking"].registered_model_name)
    record["inputs"] = check_lineage(record["inputs"])
    if args.json:
        from tracking.digests import dataset_digests

        record["datasets"] = dataset_digests(record["inputs"])
        print(json.dumps(record, indent=2, default=str))
    else:
        print(format_lineage(record))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    lay = data_root(create="configured")
    print(f"Dagster UI on http://127.0.0.1:{args.port}  (DAGSTER_HOME={lay.dagster_home})")
    # -m, not a workspace file: the code location is the installed package, wherever that is.
    command = [str(Path(sys.executable).with_name("dagster")), "dev", "-m", "pipeline.definitions",
               "-h", "127.0.0.1", "-p", str(args.port)]
    # exec, not a child: a signal to `medfilip ui` then reaches dagster dev itself.
    os.execve(command[0], command, dict(os.environ, DAGSTER_HOME=str(lay.dagster_home)))


def check_partitions(partitions: list[str]) -> None:
    """Shards must exist in the archive (or be registered already), at the granularity the
    instance uses: p10 beside p1004 would count the same studies twice."""
    import dagster as dg

    from assets.partitions import discover_shards, shard_digits, shard_partitions
    from pipeline.runner import current_definitions

    defs = current_definitions()
    instance = dg.DagsterInstance.get()
    registered = set(instance.get_dynamic_partitions(shard_partitions.name))
    digits = shard_digits(instance, None)
    for shard in partitions:
        if registered and len(shard) - 1 != digits:
            example = next(iter(sorted(registered)))
            raise UserError(f"partition {shard} has {len(shard) - 1} subject-id digits but this instance's shards have "
                            f"{digits} (e.g. {example}); mixing them would count studies twice",
                            f"name a shard like {example}, or use another MEDFILIP_HOME")
    unknown = [shard for shard in partitions if shard not in registered]
    found: list[str] = []
    if unknown:
        found = discover_shards(defs.resources["storage"], defs.resources["archive"], len(unknown[0]) - 1)
        unknown = [shard for shard in unknown if shard not in found]
    if unknown:
        shown = ", ".join(found[:20]) + (f" ... ({len(found)} in all)" if len(found) > 20 else "")
        raise UserError(f"unknown partition {', '.join(unknown)}: no such shard in the archive",
                        f"use one of {shown or '(none: the archive has no shards yet)'} (or no --partition for all)")


def check_run_request(target: str, partitions: list[str] | None) -> None:
    """Refuse, in one line, what would fail only after Dagster started: a partition the target
    does not have, a partition of an unpartitioned target, an extractor that cannot be built."""
    from pipeline.runner import current_definitions, resolve_job

    defs = current_definitions()
    job = resolve_job(defs, target)
    if partitions:
        if job.partitions_def is None:
            raise UserError(f"{target} is not partitioned", "drop --partition")
        from ingestion.layout import shard_problem

        problem = next(filter(None, map(shard_problem, partitions)), None)
        if problem:
            raise UserError(problem, "see `medfilip run --help`")
    selected = {key.to_user_string() for key in job.asset_layer.selected_asset_keys}
    if selected & EXTRACTION_ASSETS:
        try:
            defs.resources["extractor"].make_backend()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  (pydantic, a missing key, an unreadable prompt)
            errors = getattr(exc, "errors", None)
            cause = ("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors())
                     if callable(errors) else one_line(exc))
            raise UserError(f"the extractor cannot be built: {cause}",
                            ("export that variable with the key, or " if "is not set" in cause else "")
                            + "fix the extractor settings (medfilip.yaml `extractor:` or MEDFILIP_EXTRACTOR / "
                            "MEDFILIP_LLM_*), or use the offline default: MEDFILIP_EXTRACTOR=rules") from exc
