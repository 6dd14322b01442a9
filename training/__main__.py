"""`python -m training --config CFG --images DIR --texts DIR --ssm DIR --out DIR [--resume]`

Runs alone or under `torchrun --nproc_per_node N` (DDP); no Dagster. CFG is a TrainConfig JSON
file or a preset name (`demo`, `paper`); `--set key=value` overrides single fields.
Zero-shot prompts are "<category>. <description>" for the categories of texts.parquet that the
knowledge base describes (`--knowledge`), or a JSON {category: prompt} file (`--prompts`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.config import PRESETS, TrainConfig, resolve_train_config
from training.distributed import init_distributed, shutdown_distributed
from training.loop import train
from training.pipes_reporting import pipes_callback
from knowledge.texts import zero_shot_prompts


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_train_config(args.config, args.set)
    env = init_distributed(config.device)
    try:
        from knowledge.ssm import SSM, ssm_targets_fn

        targets_fn = ssm_targets_fn(SSM.load(args.ssm))
        prompts = _prompts(args, Path(args.texts))
        with pipes_callback(env.is_main) as report:
            def callback(kind: str, step: int, metrics: dict) -> None:
                _print_metrics(kind, step, metrics)
                if report:
                    report(kind, step, metrics)

            result = train(config, args.images, args.texts, args.out, targets_fn, prompts=prompts,
                           resume=args.resume, callback=callback if env.is_main else None, env=env,
                           weights_dir=Path(args.weights_dir) if args.weights_dir else None)
        if env.is_main:
            print(json.dumps({"last": str(result.last_checkpoint), "best": str(result.best_checkpoint),
                              "steps": result.steps, "epochs": result.epochs_completed,
                              "history": result.history}, indent=1))
    finally:
        shutdown_distributed()
    return 0


def load_train_config(config: str, overrides: list[str] | None = None) -> TrainConfig:
    """CFG plus `--set key=value` items (values parsed as JSON where they are JSON)."""
    values = {}
    for item in overrides or []:
        key, _, value = item.partition("=")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return resolve_train_config(config, values)


def _prompts(args: argparse.Namespace, texts_dir: Path) -> dict[str, str] | None:
    if args.prompts:
        return json.loads(Path(args.prompts).read_text())
    if args.no_zero_shot:
        return None
    from knowledge.base import load_knowledge

    kb = load_knowledge(args.knowledge) if args.knowledge else load_knowledge()
    return zero_shot_prompts(kb, texts_dir)


def _print_metrics(kind: str, step: int, metrics: dict) -> None:
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if not k.startswith("auc/")}
    print(f"[{kind} {step}] {shown}", flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TrainConfig JSON file or preset: " + ", ".join(PRESETS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--images", required=True, help="folder of cxr_images Parquet shards")
    parser.add_argument("--texts", required=True, help="folder with texts.parquet and image_texts.parquet")
    parser.add_argument("--ssm", required=True, help="SSM folder (knowledge.ssm)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    parser.add_argument("--prompts", help="JSON {category: prompt} for the zero-shot AUC")
    parser.add_argument("--knowledge", help="knowledge base YAML for the default prompts")
    parser.add_argument("--no-zero-shot", action="store_true")
    parser.add_argument("--weights-dir", help="folder where relative weight file names are looked up "
                                              "(default ~/.cache/medfilip/weights)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
