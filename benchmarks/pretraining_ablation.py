"""Why does the pre-trained encoder lose (segmentation) or full fine-tuning trail the probe? Runs
the pre-trained-vs-random comparisons under the settings that could explain it, each over seeds
with the paired interval, and prints one table.

    python benchmarks/pretraining_ablation.py --checkpoint CKPT --eval-root CORPUS/eval [--seeds 3]
        [--only segmentation|finetune] [--max-images N] [--json out.json]

Segmentation: encoder learning rate (0.1x / 1x the decoder's), encoder BatchNorm statistics
(re-estimated / frozen at the pre-trained ones), frozen encoder, and the published protocol's
single learning rate with four times the epochs. Fine-tuning at 100% labels:
full fine-tuning from a random head vs from the probe's head (LP-FT), BatchNorm train / frozen.
Also the scale of each encoder level's features on the SIIM images, pre-trained vs random.
Run by hand, never in the test suite.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from evaluation.datasets import generated_eval_sets
from evaluation.encode import as_float, image_tensor
from evaluation.finetune import FinetuneConfig, run_finetune
from evaluation.segmentation import SegmentationConfig, build_segmenter, run_segmentation
from testkit.results import evaluation_figures, run_start, write_result

SEGMENTATION_VARIANTS = {
    "default (enc lr 0.1x, BN re-estimated)": {},
    "enc lr 1x": {"encoder_lr_scale": 1.0},
    "BN frozen": {"encoder_bn": "frozen"},
    "encoder frozen": {"freeze_encoder": True},
    # Closer to the published protocol (downstream/segment.py: one learning rate for encoder and
    # decoder, 32 epochs at 512 px): the encoder at the decoder's rate, four times the epochs.
    "enc lr 1x, 4x epochs": {"encoder_lr_scale": 1.0, "epochs_factor": 4},
}
FINETUNE_VARIANTS = {
    "full, random head (before)": {"full_from_probe": False},
    "full, from probe head (LP-FT)": {},
    "full, LP-FT + BN frozen": {"encoder_bn": "frozen"},
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = run_start()
    torch.set_num_threads(args.threads)
    config = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model_config"]
    sets = {name: data.subset(range(min(args.max_images, len(data))))
            for name, data in generated_eval_sets(Path(args.eval_root)).items()}
    seeds = list(range(args.seeds))
    out: dict = {}
    if args.only in (None, "segmentation"):
        out["feature_scale"] = feature_scale(sets["siim"], config, args.checkpoint)
        for name, level in out["feature_scale"].items():
            print(f"feature std {name}: " + ", ".join(f"{v:.3f}" for v in level))
        for name, overrides in _chosen(SEGMENTATION_VARIANTS, args.variants):
            tick, cpu = time.perf_counter(), time.process_time()
            fields = {k: v for k, v in overrides.items() if k != "epochs_factor"}
            epochs = args.epochs * overrides.get("epochs_factor", 1)
            report = run_segmentation(sets["siim"], config, args.checkpoint, seeds=seeds, n_boot=args.n_boot,
                                      config=SegmentationConfig(epochs=epochs, **fields))
            out[f"segmentation: {name}"] = report
            _print_comparison(f"segmentation: {name}", report, time.perf_counter() - tick, time.process_time() - cpu)
    if args.only in (None, "finetune"):
        for name, overrides in _chosen(FINETUNE_VARIANTS, args.variants):
            tick, cpu = time.perf_counter(), time.process_time()
            report = run_finetune(sets["nih"], config, args.checkpoint, fractions=(1.0,), seeds=seeds,
                                  n_boot=args.n_boot, config=FinetuneConfig(epochs=args.epochs, **overrides))
            out[f"finetune: {name}"] = report
            _print_comparison(f"finetune: {name}", report, time.perf_counter() - tick, time.process_time() - cpu)
    if args.json:
        from evaluation.report import write_json

        write_json(out, args.json)
    figures = {f"feature_std.{init}.{i}": v for init, level in out.get("feature_scale", {}).items()
               for i, v in enumerate(level)}
    for name, report in out.items():
        if name != "feature_scale":
            figures.update(evaluation_figures(report, f"{name}: "))
    write_result(f"pretraining_ablation_{args.only or 'all'}" + (f"_{args.tag}" if args.tag else ""), args, figures,
                 started=started)


def feature_scale(data, model_config: dict, checkpoint: str, count: int = 64) -> dict[str, list[float]]:
    """Standard deviation of each encoder level's map on `count` images, per init."""
    images = as_float(image_tensor(data.subset(range(min(count, len(data)))), int(model_config["vision_cfg"]["image_size"])))
    scales = {}
    for init in ("pretrained", "random"):
        torch.manual_seed(0)
        net = build_segmenter(init, model_config, checkpoint).eval()
        with torch.no_grad():
            scales[init] = [float(m.std()) for m in net.encoder_maps(images)]
    return scales


def _chosen(variants: dict, names: list[str] | None) -> list[tuple[str, dict]]:
    return [(name, v) for name, v in variants.items() if not names or any(n in name for n in names)]


def _print_comparison(name: str, report: dict, seconds: float, cpu_seconds: float) -> None:
    for arm in report["arms"]:
        metric = "mean_dice" if "mean_dice" in arm else "mean_auc"
        label = arm["init"] + (f" {arm['mode']}" if "mode" in arm else "")
        print(f"{name:<45} {label:<18} {metric} {arm[metric]:.3f} ± {arm[f'{metric}_sd']:.3f}")
    for c in report["comparisons"]:
        low, high = c["difference"]["ci"]
        print(f"{name:<45} pretrained - {c['baseline_init']} {c.get('mode', '')}{c.get('subset', '')}: "
              f"{c['difference']['mean']:+.3f} "
              f"({low:+.3f} to {high:+.3f}) {c['verdict']}   [{seconds:.0f} s wall, {cpu_seconds:.0f} s CPU]", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--eval-root", required=True, help="the generated corpus's eval/ folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=10**9, help="first N images of each set (a quicker run)")
    parser.add_argument("--only", choices=("segmentation", "finetune"))
    parser.add_argument("--variants", nargs="*", help="names of the variants to run (default: all)")
    parser.add_argument("--json")
    parser.add_argument("--tag", help="results file benchmarks/results/pretraining_ablation_<only>_TAG.json")
    return parser


if __name__ == "__main__":
    main()
