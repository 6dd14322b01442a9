"""Evaluate a checkpoint on the generated corpus's held-out sets and print the results table.

    python benchmarks/evaluate.py --checkpoint OUT/checkpoints/best.pt [--corpus DIR] [--texts texts.parquet]
    python benchmarks/evaluate.py --config tiny          # untrained tiny model: plumbing and timing

Zero-shot (NIH + RSNA layouts; unseen categories from --texts when given), retrieval (NIH images
vs the category prompts), linear/full fine-tuning at 1/10/100% (NIH), segmentation Dice (SIIM).
The corpus is generated into a temporary folder when --corpus is not given. Run by hand, never
in the test suite.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from corpus.generate import generate_corpus
from evaluation.datasets import generated_eval_sets
from evaluation.encode import load_pretrained
from evaluation.finetune import FinetuneConfig, run_finetune
from evaluation.report import markdown_table, write_json
from evaluation.retrieval import evaluate_retrieval, prompt_gallery, with_no_finding
from evaluation.segmentation import SegmentationConfig, run_segmentation
from evaluation.zero_shot import evaluate_zero_shot, unseen_categories
from knowledge.base import load_knowledge
from testkit.results import evaluation_figures, run_start, write_result


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = run_start()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(args.corpus) if args.corpus else Path(scratch) / "corpus"
        if not (corpus / "eval").is_dir():
            generate_corpus(corpus, studies=args.studies, seed=args.seed, image_size=args.image_size,
                            image_format="jpg", eval_images=args.eval_images)
        results, timings = run_all(args, corpus / "eval")
    print(markdown_table(results))
    print("wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + f", total {time.perf_counter() - started:.1f}")
    if args.json:
        write_json({**results, "timings_s": timings}, args.json)
    figures = {f"wall_s.{task}": seconds for task, seconds in timings.items()}
    for task, by_set in results.items():
        for name, report in by_set.items():
            figures.update(evaluation_figures(report, f"{task}.{name}."))
    write_result("evaluate", args, figures, started=started)


def run_all(args: argparse.Namespace, eval_root: Path) -> tuple[dict, dict]:
    kb = load_knowledge()
    model, tokenizer = load_pretrained(args.checkpoint, None if args.checkpoint else args.config)
    model_config = model.config
    sets = generated_eval_sets(eval_root)
    unseen = unseen_categories(kb, args.texts) if args.texts else []
    results: dict = {}
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    results["zero_shot"] = {name: evaluate_zero_shot(model, tokenizer, sets[name], kb, unseen=unseen,
                                                     n_boot=args.n_boot, paper_protocol=True)
                            for name in ("nih", "rsna")}
    timings["zero_shot"] = time.perf_counter() - tick

    tick = time.perf_counter()
    nih = with_no_finding(sets["nih"])
    texts, labels = prompt_gallery(kb, nih.categories)
    results["retrieval"] = {"nih": evaluate_retrieval(model, tokenizer, nih, texts, labels)}
    timings["retrieval"] = time.perf_counter() - tick

    tick = time.perf_counter()
    seeds = list(range(args.seed, args.seed + args.seeds))
    results["finetune"] = {"nih": run_finetune(sets["nih"], model_config, args.checkpoint, seeds=seeds,
                                               config=FinetuneConfig(epochs=args.epochs), n_boot=args.n_boot)}
    timings["finetune"] = time.perf_counter() - tick

    tick = time.perf_counter()
    results["segmentation"] = {"siim": run_segmentation(sets["siim"], model_config, args.checkpoint, seeds=seeds,
                                                        config=SegmentationConfig(epochs=args.epochs),
                                                        n_boot=args.n_boot)}
    timings["segmentation"] = time.perf_counter() - tick
    return results, timings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="training.loop checkpoint (its model_config is used)")
    parser.add_argument("--config", default="tiny", help="model config when no checkpoint is given")
    parser.add_argument("--corpus", help="generated corpus root (with eval/); generated when absent")
    parser.add_argument("--texts", help="pre-training texts.parquet, to tell unseen categories")
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning / segmentation seeds (from --seed)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    return parser


if __name__ == "__main__":
    main()
