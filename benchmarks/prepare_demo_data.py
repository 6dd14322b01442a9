"""Training inputs from a generated corpus, without Dagster: the demo pipeline's plain functions
called in order, timed stage by stage.

    .venv/bin/python benchmarks/prepare_demo_data.py --studies 1500 --out /tmp/demo --image-size 128

Writes under OUT:
    corpus/                      the generated archive (corpus.generate)
    cxr_images/pNN.parquet       decoded images per shard (ingestion.images)
    reports/pNN.parquet          parsed reports per shard
    triplets.parquet             rules-backend extraction folded onto the vocabulary
    texts/                       texts.parquet + image_texts.parquet (knowledge.texts)
    embeddings.npy               MiniLM embedding of every distinct text
    ssm/  ssm_separated/         the SSM with the paper's negation rule and with negations apart
    texts_reference/ ssm_reference/  the published code's wording and report filter (preset `reference`)
    prepare.json                 row counts and seconds per stage
Then `python -m training --config demo --images OUT/cxr_images --texts OUT/texts --ssm OUT/ssm_separated ...`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_ID_COLUMNS = ["dicom_id", "study_id", "patient_key", "view_position"]
DEMO_SALT = b"prepare-demo-data"  # fixed: patient keys (and so the split) are stable across runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=1500)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--image-size", type=int, default=128, help="corpus and cxr_images side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="decode processes (default: the CPU count)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from testkit.results import flat_numbers, run_start, write_result

    args = build_parser().parse_args(argv)
    started = run_start()
    report = prepare_demo_data(args.out, args.studies, args.image_size, args.seed, args.workers or os.cpu_count() or 1)
    print(json.dumps(report, indent=1))
    write_result("prepare_demo_data", args, flat_numbers(report), started=started)
    return 0


def prepare_demo_data(out: Path, studies: int, image_size: int = 128, seed: int = 0, workers: int = 1) -> dict:
    """Runs every stage from corpus to SSM under `out`; returns counts and seconds per stage."""
    from corpus.generate import generate_corpus
    from extraction.backends import make_backend
    from extraction.extract import extract_reports
    from extraction.to_triplets import to_triplets
    from extraction.vocabulary import load_vocabulary
    from ingestion.images import build_cxr_images
    from ingestion.layout import SHARDS
    from ingestion.shards import index_shard, reports_shard
    from common.storage import write_table
    from knowledge.base import load_knowledge
    from knowledge.ssm import build_ssm
    from knowledge.embeddings import write_text_embeddings
    from knowledge.texts import build_training_texts

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"studies": studies, "image_size": image_size, "seed": seed, "seconds": {}}
    clock = _StageClock(report["seconds"])

    corpus = out / "corpus"
    summary = generate_corpus(corpus, studies=studies, seed=seed, image_size=image_size, workers=workers)
    report["corpus_images"] = summary.images
    clock.lap("corpus")

    images, reports = [], []
    for shard in SHARDS:
        index = index_shard(corpus, shard, DEMO_SALT, out / "dicom_index" / f"{shard}.parquet",
                            out / "quarantine" / f"index-{shard}.parquet").index
        if index.num_rows:
            build_cxr_images(index, corpus, out / "cxr_images" / f"{shard}.parquet",
                             out / "quarantine" / f"images-{shard}.parquet", size=image_size, workers=workers)
            images.append(pq.read_table(out / "cxr_images" / f"{shard}.parquet", columns=IMAGE_ID_COLUMNS))
        reports.append(reports_shard(corpus, shard, DEMO_SALT, out / "reports" / f"{shard}.parquet"))
    image_ids = pa.concat_tables(images)
    report_table = pa.concat_tables(reports)
    report["images"], report["reports"] = image_ids.num_rows, report_table.num_rows
    clock.lap("ingestion")

    extraction_input = pa.table({
        "study_id": report_table.column("study_id"),
        "text": report_table.column("extraction_text"),
        "text_sha256": report_table.column("text_sha256"),
    })
    extracted = extract_reports(extraction_input, make_backend(), out / "extraction_cache.duckdb").table
    triplets, rejects = to_triplets(extracted, load_vocabulary())
    write_table(triplets, out / "triplets.parquet")
    report["triplets"], report["rejected_findings"] = triplets.num_rows, rejects.num_rows
    clock.lap("extraction")

    texts = build_training_texts(triplets, image_ids, load_knowledge(), out / "texts")
    report.update(texts=texts.texts, images_train=texts.images_train, images_val=texts.images_val)
    embeddings = write_text_embeddings(texts.texts_path, out / "embeddings.npy")
    clock.lap("texts_and_embeddings")

    import numpy as np

    text_table = pq.read_table(texts.texts_path).sort_by("text_id")
    vectors = np.load(embeddings.path)
    build_ssm(text_table, vectors, out / "ssm", separate_negations=False)
    build_ssm(text_table, vectors, out / "ssm_separated", separate_negations=True)
    clock.lap("ssm")

    # The `reference` preset's inputs: wording and report filter of the published code.
    from extraction.labels import load_label_map, report_labels_table

    labels = report_labels_table(extracted, triplets, load_label_map("chexpert", vocabulary=load_vocabulary()))
    reference = build_training_texts(triplets, image_ids, load_knowledge(), out / "texts_reference",
                                     wording="reference", report_filter="reference", report_labels=labels)
    reference_vectors = write_text_embeddings(reference.texts_path, out / "embeddings_reference.npy")
    build_ssm(pq.read_table(reference.texts_path).sort_by("text_id"), np.load(reference_vectors.path),
              out / "ssm_reference")
    report.update(reference_images=reference.images, reference_images_filtered_out=reference.images_filtered_out,
                  reference_texts=reference.texts)
    clock.lap("reference_texts_and_ssm")
    report["seconds"]["total"] = round(sum(report["seconds"].values()), 1)
    _write_json(out / "prepare.json", report)
    return report


class _StageClock:
    def __init__(self, seconds: dict):
        self.seconds, self.last = seconds, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self.last, 1)
        self.last = now
        print(f"{stage}: {self.seconds[stage]} s", file=sys.stderr, flush=True)


def _write_json(path: Path, data: dict) -> None:
    from common.storage import write_text

    write_text(path, json.dumps(data, indent=1))


if __name__ == "__main__":
    sys.exit(main())
