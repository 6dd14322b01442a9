"""SSM benchmark (run by hand, never in the test suite).

1. Per-batch target time: the materialised SSM (`batch_targets`) against the reference way of
   the original code - a sentence-encoder forward over the batch's texts at every step, then the
   category-masked cosine max - on the same batches, asserting the targets agree.
2. Growth: distinct texts against triplets drawn from a simulated report vocabulary.
3. MIMIC-CXR scale: ~227k reports / >1M triplets -> distinct texts -> SSM build time and size
   (random unit vectors stand in for embeddings; encoder time is extrapolated from part 1).

    .venv/bin/python benchmarks/ssm.py            # full run
    .venv/bin/python benchmarks/ssm.py --quick    # seconds, smaller everything
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from knowledge.base import load_knowledge
from knowledge.ssm import SSM, batch_targets, build_ssm, run_checks
from knowledge.embeddings import embed_texts
from knowledge.texts import compose_text
from testkit.results import flat_numbers, run_start, write_result

SIDES = ["na", "left", "right", "bilateral"]
ZONES = ["na", "lower", "upper", "mid", "basilar", "apical", "perihilar", "retrocardiac"]
REGIONS = ["na", "lobe", "lung", "base", "hemithorax", "costophrenic angle", "lingula", "hilum", "zone"]
SEVERITIES = ["na", "small", "mild", "moderate", "large", "minimal", "trace", "severe", "mild to moderate",
              "moderate to severe", "tiny", "increased", "decreased", "new", "worsening", "improving",
              "stable", "persistent", "layering", "loculated", "subsegmental", "patchy", "diffuse", "focal"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reports", type=int, default=227_000)
    parser.add_argument("--triplets-per-report", type=float, default=5.3)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = run_start()
    torch.set_num_threads(2)
    figures = {
        "per_batch": bench_per_batch(args.batch_size, n_texts=150 if args.quick else 600, steps=3 if args.quick else 10),
        "growth": bench_growth(args.triplets_per_report, max_reports=20_000 if args.quick else args.reports),
    }
    figures["mimic_scale"] = bench_mimic_scale(
        reports=20_000 if args.quick else args.reports,
        triplets_per_report=args.triplets_per_report,
        encode_texts_per_second=figures["per_batch"]["encoder_texts_per_second"],
    )
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    write_result("ssm_quick" if args.quick else "ssm", args, flat_numbers(figures), started=started)


def bench_per_batch(batch_size: int, n_texts: int, steps: int) -> dict:
    kb = load_knowledge()
    rng = np.random.default_rng(0)
    keys = sorted(set(simulate_triplets(rng, 20 * n_texts, list(kb.categories))))[: n_texts * 3]
    keys = [keys[i] for i in sorted(rng.choice(len(keys), size=min(n_texts, len(keys)), replace=False))]
    texts = sorted({compose_text(s, l, c, n, kb.description(c)) for s, l, c, n in keys})
    category_of = {compose_text(s, l, c, n, kb.description(c)): c for s, l, c, n in keys}
    table = pa.table({"text_id": pa.array(range(len(texts)), pa.int32()), "text": texts,
                      "category": [category_of[t] for t in texts], "negated": [t.startswith("no ") for t in texts]})
    started = time.perf_counter()
    embeddings = embed_texts(texts)
    encode_rate = len(texts) / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as out:
        build_ssm(table, embeddings, out)
        ssm = SSM.load(out)
        assert all(passed for passed, _ in run_checks(ssm, table).values())
        categories = np.asarray(table["category"].to_pylist())
        batches = [[rng.choice(len(texts), size=rng.integers(1, 7), replace=False).tolist() for _ in range(batch_size)]
                   for _ in range(steps)]
        embed_texts(texts[:8])  # warm the encoder so its load is not timed
        started = time.perf_counter()
        reference = [reference_targets(batch, texts, categories) for batch in batches]
        reference_s = (time.perf_counter() - started) / steps
        repeats = 20
        started = time.perf_counter()
        for _ in range(repeats):
            ours = [batch_targets(batch, ssm) for batch in batches]
        ours_s = (time.perf_counter() - started) / (steps * repeats)
    max_diff = max(float((a - b).abs().max()) for a, b in zip(ours, reference))
    assert max_diff < 1e-4, max_diff
    mean_texts = float(np.mean([sum(map(len, b)) for b in batches]))
    return {
        "batch_size": batch_size, "distinct_texts": len(texts), "mean_texts_per_batch": mean_texts,
        "reference_ms_per_batch": 1e3 * reference_s, "materialised_ms_per_batch": 1e3 * ours_s,
        "speedup": reference_s / ours_s, "max_abs_diff": max_diff, "encoder_texts_per_second": encode_rate,
    }


def reference_targets(batch: list[list[int]], texts: list[str], categories: np.ndarray) -> torch.Tensor:
    """The original code's way: encode every text of the batch, then the masked cosine max."""
    flat = [t for ids in batch for t in ids]
    vectors = torch.from_numpy(embed_texts([texts[t] for t in flat]))
    cats = categories[flat]
    same = torch.from_numpy(cats[:, None] == cats[None, :])
    sims = (vectors @ vectors.T) * same
    owner = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor([len(ids) for ids in batch]))
    target = torch.full((len(batch), len(flat)), -2.0)  # below any cosine: the max replaces it
    return target.scatter_reduce(0, owner[:, None].expand_as(sims), sims, reduce="amax")


# Rough MIMIC-CXR frequency order; the rest of the knowledge base follows in file order.
COMMON_FIRST = ["effusion", "atelectasis", "opacity", "cardiomegaly", "edema", "pneumothorax",
                "consolidation", "pneumonia", "endotracheal tube", "central venous catheter",
                "nasogastric tube", "pacemaker", "enlarged cardiomediastinum", "fracture", "nodule"]
NO_ATTRIBUTES = {"no finding", "pacemaker", "endotracheal tube", "central venous catheter", "nasogastric tube",
                 "chest tube", "sternotomy wires", "tracheostomy tube", "surgical clips", "prosthetic valve"}


def simulate_triplets(rng: np.random.Generator, n: int, categories: list[str]) -> list[tuple[str, str, str, bool]]:
    """Triplet keys from a heavy-tailed vocabulary: Zipf-like weights on every field, as in reports
    where "effusion" and "left" are common and "loculated lingula" is rare. Devices and
    "no finding" carry no severity or location; "no finding" is never negated."""
    def zipf(k: int, exponent: float) -> np.ndarray:
        weights = 1.0 / np.arange(1, k + 1) ** exponent
        return weights / weights.sum()

    ordered = [c for c in COMMON_FIRST if c in categories] + [c for c in categories if c not in COMMON_FIRST]
    cat = rng.choice(len(ordered), size=n, p=zipf(len(ordered), 1.0))
    sev = rng.choice(len(SEVERITIES), size=n, p=zipf(len(SEVERITIES), 1.3))
    side = rng.choice(len(SIDES), size=n, p=zipf(len(SIDES), 1.2))
    zone = rng.choice(len(ZONES), size=n, p=zipf(len(ZONES), 1.2))
    region = rng.choice(len(REGIONS), size=n, p=zipf(len(REGIONS), 1.2))
    negated = rng.random(n) < 0.35
    out = []
    for c, s, a, z, r, neg in zip(cat.tolist(), sev.tolist(), side.tolist(), zone.tolist(), region.tolist(), negated.tolist()):
        category = ordered[c]
        if category == "no finding":
            out.append(("na", "na", category, False))
        elif neg or category in NO_ATTRIBUTES:
            out.append(("na", "na", category, neg))
        else:
            location = " ".join(w for w in (SIDES[a], ZONES[z], REGIONS[r]) if w != "na") or "na"
            out.append((SEVERITIES[s], location, category, False))
    return out


def bench_growth(triplets_per_report: float, max_reports: int) -> list[dict]:
    categories = list(load_knowledge().categories)
    rng = np.random.default_rng(1)
    total = int(max_reports * triplets_per_report)
    keys = simulate_triplets(rng, total, categories)
    rows, seen, checkpoint = [], set(), 1000
    for i, key in enumerate(keys, 1):
        seen.add(key)
        if i == checkpoint or i == total:
            rows.append({"triplets": i, "distinct_texts": len(seen), "ratio": i / len(seen)})
            checkpoint *= 4
    return rows


def bench_mimic_scale(reports: int, triplets_per_report: float, encode_texts_per_second: float) -> dict:
    categories = list(load_knowledge().categories)
    rng = np.random.default_rng(2)
    n_triplets = int(reports * triplets_per_report)
    keys = sorted(set(simulate_triplets(rng, n_triplets, categories)))
    table = pa.table({"text_id": pa.array(range(len(keys)), pa.int32()),
                      "category": [k[2] for k in keys], "negated": [k[3] for k in keys]})
    vectors = rng.normal(size=(len(keys), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    result = {"reports": reports, "triplets": n_triplets, "distinct_texts": len(keys),
              "encoder_minutes_estimate_cpu": len(keys) / encode_texts_per_second / 60}
    for dtype in ("float32", "float16"):
        for separate in (False, True):
            with tempfile.TemporaryDirectory() as out:
                summary = build_ssm(table, vectors, out, separate_negations=separate, dtype=dtype)
                ssm = SSM.load(out)
                batch = [rng.choice(len(keys), size=rng.integers(1, 9), replace=False).tolist() for _ in range(256)]
                batch_targets(batch, ssm)
                started = time.perf_counter()
                for _ in range(10):
                    batch_targets(batch, ssm)
                per_batch_ms = (time.perf_counter() - started) / 10 * 1e3
            result[f"{dtype}{'_separate_negations' if separate else ''}"] = {
                "build_seconds": summary.build_seconds, "blocks": summary.n_blocks,
                "largest_block": [summary.largest_block_group, summary.largest_block_size],
                "stored_values": summary.n_values, "dense_values": summary.dense_values,
                "mib_on_disk": summary.bytes_on_disk / 2**20,
                "dense_fp32_mib": summary.dense_values * 4 / 2**20,
                "max_abs_quantisation_error": summary.max_abs_quantisation_error,
                "batch_targets_ms_b256": per_batch_ms,
            }
    return result


if __name__ == "__main__":
    main()
