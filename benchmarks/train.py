"""Training benchmark on the generated corpus: step time against the reference loop, and the ablation.

    .venv/bin/python benchmarks/prepare_demo_data.py --studies 4000 --out /tmp/demo --image-size 96
    .venv/bin/python benchmarks/train.py speed --data /tmp/demo --steps 12
    .venv/bin/python benchmarks/train.py ablation --data /tmp/demo --epochs 2
    .venv/bin/python benchmarks/train.py speed --data /tmp/demo --preset reference --texts texts_reference \
        --ssm ssm_reference --loop-only --set batch_size=8 --steps 4 --warmup 1

`speed` runs, on the same model and the same batches, our step (the locked text tower's outputs
cached once per run, SSM targets looked up) and a re-implementation of the reference loop (the
text tower run on the batch's tokens and the targets recomputed by the sentence encoder every
step), and reports per batch: data loading, target construction and compute seconds, images/s
and the ratio. It also reports the images/s that `training.loop.train` itself logs.

`ablation` trains the demo preset for a fixed budget for every loss x negation rule x text tower
(frozen MiniLM + trained projection, or a randomly initialised CLIP text transformer) and prints
the best zero-shot mean AUC on the validation split with wall and CPU minutes. InfoNCE ignores
the SSM, so it runs once per tower. The last row, `reference/ssm_scaled/reference`, is the
`reference` preset's recipe (the published wording and report filter from `texts_reference/`,
B x sum T batches, SGD without momentum, warm restarts, no augmentation) on the demo CLIP tower
(`--reference-model reference` for ResNet-50 + CLIP ViT-B/32 on a GPU box). `--text-sampling uniform` draws batch columns as the paper
does (the demo preset draws a present finding first). The negation rule only matters where the
texts keep negated findings: prepare the data without `drop_negated` for it. Run by hand, never
in the test suite.

Every run writes benchmarks/results/train_speed_<preset>[_loop].json or
train_ablation[_TAG].json (testkit/results.py); the README quotes those files only. The loss
comparison over seeds with paired intervals is benchmarks/loss_claim.py.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.__main__ import load_train_config  # noqa: E402
from training.data import CxrTextStream, TextTokens, build_split_index, make_loader  # noqa: E402
from knowledge.base import load_knowledge  # noqa: E402
from knowledge.texts import zero_shot_prompts  # noqa: E402
from common.tables import markdown_table  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.frozen_text import load_or_encode_frozen_texts  # noqa: E402
from training.loop import train  # noqa: E402
from training.loss import MedFilipLoss  # noqa: E402
from medfilip_model.dual_encoder import MedFilipModel, create_model, create_tokenizer  # noqa: E402
from knowledge.ssm import SSM, batch_targets, group_names, ssm_targets_fn  # noqa: E402
from testkit.results import flat_numbers, run_start, write_result  # noqa: E402

CLIP_TEXT_MODEL = "demo_cliptext"  # medfilip_model/configs/demo_cliptext.json
TOWERS = {"minilm_frozen": "demo", "clip_random": CLIP_TEXT_MODEL}
NEGATION_SSM = {"paper": "ssm", "separated": "ssm_separated"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed", help="our step vs the reference step, same model and batches")
    speed.add_argument("--data", type=Path, required=True, help="folder written by prepare_demo_data.py")
    speed.add_argument("--steps", type=int, default=12)
    speed.add_argument("--warmup", type=int, default=2, help="steps left out of the figures")
    speed.add_argument("--preset", default="demo")
    speed.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    speed.add_argument("--texts", default="texts", help="texts folder under DATA (texts_reference for `reference`)")
    speed.add_argument("--ssm", default="ssm", help="SSM folder under DATA (ssm_reference for `reference`)")
    speed.add_argument("--loop-only", action="store_true",
                       help="only the images/s the product's loop logs (large models on a CPU)")
    ablation = sub.add_parser("ablation", help="loss x negation rule x text tower, fixed budget")
    ablation.add_argument("--data", type=Path, required=True)
    ablation.add_argument("--epochs", type=int, default=2)
    ablation.add_argument("--max-steps", type=int, default=None, help="cap per run (optimiser steps)")
    ablation.add_argument("--out", type=Path, default=Path("/tmp/medfilip-ablation"))
    ablation.add_argument("--only", nargs="*", help="run only these row names (tower/loss/negation)")
    ablation.add_argument("--text-sampling", choices=["uniform", "positive_first"], default=None,
                          help="override the demo preset's batch-column draw (uniform = the paper)")
    ablation.add_argument("--reference-model", default=CLIP_TEXT_MODEL,
                          help="model of the `reference` row: the demo CLIP tower by default (CPU); "
                               "`reference` for ResNet-50 + CLIP ViT-B/32 (GPU)")
    ablation.add_argument("--tag", help="results file benchmarks/results/train_ablation_TAG.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = run_start()
    torch.manual_seed(0)
    if args.command == "speed":
        if args.loop_only:
            config = _without_weight_files(load_train_config(args.preset, args.set))
            figures = {"batch": config.batch_size, "threads": torch.get_num_threads(),
                       "steps_measured": args.steps - args.warmup,
                       "train_loop_images_per_s": _loop_images_per_s(
                           args.data, config, args.steps, args.warmup, args.texts, args.ssm)}
            print(json.dumps({"preset": args.preset, "model": config.model, **figures}, indent=1))
        else:
            result = compare_step_time(args.data, args.preset, args.steps, args.warmup, args.set, args.texts, args.ssm)
            print(json.dumps(result, indent=1))
            figures = flat_numbers(result)
        write_result(f"train_speed_{args.preset}" + ("_loop" if args.loop_only else ""), args, figures,
                     started=started)
    else:
        rows = run_ablation(args.data, args.epochs, args.max_steps, args.out, args.only, args.text_sampling,
                            args.reference_model)
        print(format_table(rows))
        figures = {}
        for row in rows:
            name = f"{row['tower']}/{row['loss']}/{row['negation']}"
            figures.update({f"{name}.zero_shot_auc": row["zero_shot_auc"], f"{name}.steps": row["steps"],
                            f"{name}.wall_min": row["wall_min"], f"{name}.cpu_min": row["cpu_min"],
                            **{f"{name}.auc_epoch_{i + 1}": a for i, a in enumerate(row["auc_by_epoch"])}})
        write_result("train_ablation" + (f"_{args.tag}" if args.tag else ""), args, figures, started=started)
    return 0


# -- speed: our step vs the reference step ----------------------------------------------------------

def compare_step_time(data: Path, preset: str, steps: int, warmup: int, overrides: list[str] | None = None,
                      texts_dir: str = "texts", ssm_dir: str = "ssm") -> dict:
    """Per-batch seconds (data / targets / compute) of both steps over the same `steps` batches."""
    config = _without_weight_files(load_train_config(preset, overrides))
    model = create_model(config.model).train()
    texts = pq.read_table(data / texts_dir / "texts.parquet").sort_by("text_id")
    tokens = TextTokens(data / texts_dir / "texts.parquet", create_tokenizer(model.config))
    ssm = SSM.load(data / ssm_dir)
    index = build_split_index(data / "cxr_images", data / texts_dir / "image_texts.parquet", "train")
    stream = CxrTextStream(index, tokens, config.batch_size, model.image_size, seed=config.seed,
                           batch_layout=config.batch_layout)
    loss_fn = MedFilipLoss(config.loss)

    started = time.perf_counter()
    frozen = load_or_encode_frozen_texts(model, tokens.tokens, _CpuEnv(), None) if model.text_locked else None
    setup_s = time.perf_counter() - started
    ours = _Stepper(copy.deepcopy(model), config, loss_fn)
    reference = _Stepper(copy.deepcopy(model), config, loss_fn)
    encoder = ReferenceTargets(texts, ssm.separate_negations)

    times = {"ours": [], "reference": []}
    loader = iter(make_loader(stream))
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(loader)
        data_s = time.perf_counter() - t0
        column_ids = batch.text_ids.tolist()

        def our_targets(b=batch, c=column_ids):
            return batch_targets(b.image_text_ids, ssm, c)

        def our_text(b=batch):
            if frozen is None:
                return {"tokens": b.tokens}
            return {"frozen_text": frozen[tokens.rows(b.text_ids)]}

        times["ours"].append({"data_s": data_s, **ours.step(batch.images, our_text, our_targets)})
        times["reference"].append({"data_s": data_s, **reference.step(
            batch.images, lambda b=batch: {"tokens": b.tokens},
            lambda b=batch, c=column_ids: encoder(b.image_text_ids, c))})

    summary = {"preset": preset, "model": config.model, "batch": config.batch_size, "image_size": model.image_size,
               "threads": torch.get_num_threads(), "steps_measured": steps - warmup,
               "frozen_text_setup_s": round(setup_s, 2)}
    for name, rows in times.items():
        measured = rows[warmup:]
        split = {k: float(np.mean([r[k] for r in measured])) for k in ("data_s", "targets_s", "compute_s")}
        summary[name] = {**{f"{k}_per_batch": round(v, 4) for k, v in split.items()},
                         "images_per_s": round(config.batch_size / sum(split.values()), 1)}
    summary["speedup"] = round(summary["ours"]["images_per_s"] / summary["reference"]["images_per_s"], 2)
    summary["train_loop_images_per_s"] = _loop_images_per_s(data, config, steps, warmup, texts_dir, ssm_dir)
    return summary


def _without_weight_files(config: TrainConfig) -> TrainConfig:
    # Step time does not depend on the weights' values: time the architecture without the files.
    return config.model_copy(update=dict(image_weights=None, text_weights=None))


class ReferenceTargets:
    """The reference loop's targets: embed every text of the batch with the sentence encoder, then
    target[b, j] = max over texts i of image b of [group(i) == group(j)] * cos(e_i, e_j)."""

    def __init__(self, texts, separate_negations: bool):
        from knowledge.embeddings import load_sentence_encoder, default_sentence_model_path

        self.encoder = load_sentence_encoder(str(default_sentence_model_path()), "cpu")
        ids = texts.column("text_id").to_pylist()
        self.text = dict(zip(ids, texts.column("text").to_pylist()))
        groups = group_names(texts.column("category").to_pylist(), texts.column("negated").to_pylist(),
                             separate_negations)
        self.group = dict(zip(ids, groups))

    def __call__(self, image_text_ids: list[list[int]], column_ids: list[int]) -> torch.Tensor:
        rows = [i for ids in image_text_ids for i in ids]
        vectors = self.encoder.encode([self.text[i] for i in rows + column_ids], convert_to_tensor=True,
                                      normalize_embeddings=True, show_progress_bar=False)
        row_vectors, column_vectors = vectors[:len(rows)], vectors[len(rows):]
        same = torch.tensor([[self.group[r] == self.group[c] for c in column_ids] for r in rows])
        cosine = (row_vectors @ column_vectors.T).clamp(-1, 1) * same
        for k, r in enumerate(rows):
            if r in column_ids:  # a text of the image itself scores exactly 1
                cosine[k, [j for j, c in enumerate(column_ids) if c == r]] = 1.0
        out, start = [], 0
        for ids in image_text_ids:
            out.append(cosine[start:start + len(ids)].max(dim=0).values)
            start += len(ids)
        return torch.stack(out).float()


class _Stepper:
    """One optimiser step, timed as target construction / compute."""

    def __init__(self, model: MedFilipModel, config: TrainConfig, loss_fn: MedFilipLoss):
        self.model, self.loss_fn = model, loss_fn
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def step(self, images: torch.Tensor, text_input: Callable[[], dict], targets: Callable[[], torch.Tensor]) -> dict:
        t0 = time.perf_counter()
        image_features, text_features, scale = self.model(images, **text_input())
        t1 = time.perf_counter()
        target = targets()
        t2 = time.perf_counter()
        loss = self.loss_fn(image_features, text_features, scale, target)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        return {"targets_s": t2 - t1, "compute_s": (t1 - t0) + (t3 - t2)}


class _CpuEnv:
    device, is_main = torch.device("cpu"), True


def _loop_images_per_s(data: Path, config: TrainConfig, steps: int, warmup: int, texts_dir: str = "texts",
                       ssm_dir: str = "ssm") -> float:
    """What the product's loop logs for the same preset: mean of its per-step images/s."""
    import tempfile

    ssm = SSM.load(data / ssm_dir)
    logged: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        train(config.model_copy(update=dict(max_steps=steps, log_every=1, epochs=1, device=config.device or "cpu")),
              data / "cxr_images", data / texts_dir, out, ssm_targets_fn(ssm),
              callback=lambda kind, step, m: logged.append(m["images_per_s"]) if kind == "step" else None)
    return float(f"{np.mean(logged[warmup:]):.3g}")  # 3 significant digits: large models run < 1 img/s on a CPU


# -- ablation -------------------------------------------------------------------------------------

def ablation_grid() -> list[dict]:
    rows = []
    for tower in TOWERS:
        for loss in ("ssm_scaled", "ssm_cosine"):
            for negation in NEGATION_SSM:
                rows.append({"tower": tower, "loss": loss, "negation": negation})
        rows.append({"tower": tower, "loss": "infonce", "negation": "-"})
    # The published recipe (preset `reference`: its texts, batch layout, optimiser and schedule).
    rows.append({"tower": "reference", "loss": "ssm_scaled", "negation": "reference"})
    return rows


def run_ablation(data: Path, epochs: int, max_steps: int | None, out: Path, only: list[str] | None,
                 text_sampling: str | None = None, reference_model: str = CLIP_TEXT_MODEL) -> list[dict]:
    knowledge = load_knowledge()
    results = []
    for row in ablation_grid():
        name = f"{row['tower']}/{row['loss']}/{row['negation']}"
        if only and name not in only:
            continue
        texts_dir = data / ("texts_reference" if row["tower"] == "reference" else "texts")
        prompts = zero_shot_prompts(knowledge, texts_dir)
        if row["tower"] == "reference":
            # Weight files are not on the CPU machines: the recipe runs from random weights there.
            ssm = SSM.load(data / "ssm_reference")
            config = _without_weight_files(load_train_config("reference")).model_copy(update=dict(
                model=reference_model, epochs=epochs, max_steps=max_steps, device="cpu"))
        else:
            ssm = SSM.load(data / NEGATION_SSM.get(row["negation"], "ssm"))
            config = load_train_config("demo")
            config = config.model_copy(update=dict(
                model=TOWERS[row["tower"]], loss=row["loss"], epochs=epochs, max_steps=max_steps, device="cpu",
                text_sampling=text_sampling or config.text_sampling))
        wall, cpu = time.perf_counter(), time.process_time()
        result = train(config, data / "cxr_images", texts_dir, out / name.replace("/", "_"),
                       ssm_targets_fn(ssm), prompts=prompts)
        aucs = [h.get("zero_shot_mean_auc", float("nan")) for h in result.history]
        row = {**row, "zero_shot_auc": round(max(aucs), 4) if aucs else float("nan"),
               "auc_by_epoch": [round(a, 3) for a in aucs], "steps": result.steps,
               "wall_min": round((time.perf_counter() - wall) / 60, 2),
               "cpu_min": round((time.process_time() - cpu) / 60, 2)}
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def format_table(rows: list[dict]) -> str:
    shown = [{"text tower": r["tower"], "loss": r["loss"], "negations": r["negation"],
              "zero-shot AUC": f"{r['zero_shot_auc']:.3f}", "AUC by epoch": " ".join(map(str, r["auc_by_epoch"])),
              "wall min": r["wall_min"], "CPU min": r["cpu_min"]} for r in rows]
    return markdown_table(shown)


if __name__ == "__main__":
    sys.exit(main())
