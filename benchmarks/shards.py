"""How many shards, of what size, at each subject-id prefix length, for a MIMIC-CXR-size archive.

    .venv/bin/python benchmarks/shards.py [--subjects 65379 --images 377110 --seed 0]

Subject ids are drawn without replacement, uniformly over 10000000-19999999 (MIMIC-CXR's are
spread over that range); each subject gets one image and the rest are spread uniformly over
subjects (a multinomial draw). A shard is the prefix of `p<subject>` with that many subject-id
digits (ingestion/layout.py). Prints the README's table and writes benchmarks/results/shards.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.tables import markdown_table  # noqa: E402
from testkit.results import run_start, write_result  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=65_379)
    parser.add_argument("--images", type=int, default=377_110)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, nargs="+", default=[2, 3, 4, 5])
    return parser


def shard_sizes(subject_ids: np.ndarray, images: np.ndarray, digits: int) -> np.ndarray:
    """Images per non-empty shard when shards are the first `digits` digits of the subject id."""
    prefix = subject_ids // 10 ** (8 - digits)
    _, inverse = np.unique(prefix, return_inverse=True)
    return np.bincount(inverse, weights=images).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = run_start()
    rng = np.random.default_rng(args.seed)
    subject_ids = 10_000_000 + rng.choice(10_000_000, size=args.subjects, replace=False)
    images = 1 + rng.multinomial(args.images - args.subjects, np.full(args.subjects, 1 / args.subjects))
    rows, figures = [], {}
    for digits in args.digits:
        sizes = shard_sizes(subject_ids, images, digits)
        example = f"p{'10042345'[:digits]}"  # the shard of subject 10042345
        rows.append({"subject-id digits": digits, "shard example": example, "shards": f"{len(sizes):,}",
                     "images per shard: mean (min-max)": f"{sizes.mean():,.0f} ({sizes.min():,}-{sizes.max():,})"})
        figures.update({f"digits_{digits}.shards": len(sizes), f"digits_{digits}.mean_images": float(sizes.mean()),
                        f"digits_{digits}.min_images": int(sizes.min()), f"digits_{digits}.max_images": int(sizes.max())})
    print(markdown_table(rows))
    write_result("shards", args, figures, started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
