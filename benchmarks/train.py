"""Training throughput: images/s and step time split into data loading, targets and compute.

    .venv/bin/python benchmarks/train.py --model demo --batch 32 --steps 12 --pixels 256

Writes a synthetic corpus (random grey images with a few drawn shapes, 4 categories) to a temp
folder, then runs `training.loop.train` for `--steps` optimiser steps with an injected target
function (same-category = 1: the SSM's structure without needing its files). The first steps are
warm-up and left out of the figures. Run by hand, never in the test suite.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from training.loop import TrainConfig, train

CATEGORIES = ["effusion", "cardiomegaly", "pneumothorax", "no finding"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the figures")
    parser.add_argument("--pixels", type=int, default=256, help="stored image side")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, texts = write_corpus(root, n_images=args.batch * (args.steps + 1), side=args.pixels)
        category = pq.read_table(texts / "texts.parquet").column("category").to_pylist()

        def targets(image_text_ids, column_text_ids) -> torch.Tensor:
            rows = [{category[i] for i in ids} for ids in image_text_ids]
            return torch.tensor([[float(category[c] in r) for c in column_text_ids] for r in rows])

        steps: list[dict] = []
        config = TrainConfig(model=args.model, optimizer="adamw", lr=1e-3, batch_size=args.batch, epochs=1,
                             schedule="constant", max_steps=args.steps, log_every=1, num_workers=args.workers,
                             device=args.device)
        started = time.perf_counter()
        train(config, images, texts, root / "out", targets,
              callback=lambda kind, step, m: steps.append(dict(m)) if kind == "step" else None)
        total = time.perf_counter() - started
    measured = steps[args.warmup:]
    summary = {
        "model": args.model, "batch": args.batch, "stored_px": args.pixels, "steps_measured": len(measured),
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"), "threads": torch.get_num_threads(),
        **{f"{k}_per_batch": round(float(np.mean([m[k] for m in measured])), 4)
           for k in ("data_s", "targets_s", "compute_s")},
        # ratio of means: occasional slow row-group reads must weigh in as they do in wall time
        "images_per_s": round(args.batch / float(np.mean([m["data_s"] + m["targets_s"] + m["compute_s"]
                                                           for m in measured])), 1),
        "wall_s_including_setup": round(total, 1),
    }
    print(json.dumps(summary, indent=1))


def write_corpus(root: Path, n_images: int, side: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    text_dir, image_dir = root / "texts", root / "images"
    text_dir.mkdir()
    image_dir.mkdir()
    pq.write_table(pa.table({
        "text_id": pa.array(range(len(CATEGORIES)), pa.int32()), "text": [f"{c}. finding {c}" for c in CATEGORIES],
        "category": CATEGORIES, "severity": ["na"] * 4, "location": ["na"] * 4, "negated": [False] * 4,
    }), text_dir / "texts.parquet")
    rows, links = [], []
    for i in range(n_images):
        found = sorted(set(rng.integers(0, 4, size=2).tolist()))
        image = rng.integers(0, 60, size=(side, side)).astype(np.uint8)
        for k in found:
            image[k * side // 4:(k + 1) * side // 4, side // 4: side // 2] = 220
        rows.append({"dicom_id": f"d{i}", "study_id": f"s{i}", "patient_key": f"p{i}", "view_position": "PA",
                     "height": side, "width": side, "pixels": image.tobytes()})
        links.append({"dicom_id": f"d{i}", "study_id": f"s{i}", "patient_key": f"p{i}", "split": "train",
                      "text_ids": found})
    pq.write_table(pa.Table.from_pylist(rows), image_dir / "shard-0.parquet", row_group_size=64)
    pq.write_table(pa.Table.from_pylist(links, schema=pa.schema([
        ("dicom_id", pa.string()), ("study_id", pa.string()), ("patient_key", pa.string()), ("split", pa.string()),
        ("text_ids", pa.list_(pa.int32()))])), text_dir / "image_texts.parquet")
    return image_dir, text_dir


if __name__ == "__main__":
    main()
