"""The training input pipeline against a bare loop, images/s per loader worker.

    .venv/bin/python benchmarks/loader.py [--images 5000] [--sizes 224 448] [--workers 1 2 N]
        [--repeat 3] [--seed-studies 100] [--source-size 512] [--data DIR]

Data: a corpus from the project's generator (`--seed-studies` studies, `--source-size` px DICOM)
run through the project's own ingestion (`build_cxr_images` at each `--sizes`, row groups of 64
as `ImagesConfig`) and texts (rules extraction, `build_training_texts`). Its distinct images are
then written again under new ids until the table holds `--images` rows, in the ingestion's
Parquet schema and write options; a row group never holds one image twice (copies are a whole
number of row groups apart), so compression is that of distinct images.

Measured, each as one epoch through torch's DataLoader with `w` worker processes:
- ours: `CxrTextStream` as `training.loop` builds it for the paper preset (batch 32, the
  default augmentation, tokenised texts, text ids that index the SSM); the batch as the loop
  receives it, before it goes to the device;
- bare: the same row groups dealt to the same workers, each one's `pixels` column read, every
  image `torch.frombuffer` and every 32 of them stacked; nothing else;
- in both, the consumer reads one byte of every page of a batch's pixels, as the copy to the
  device would (a batch in shared memory pays its page faults where it is first read);
- device: what the loop does with a batch on arrival (uint8 to float, the augmentation, batched
  in `Batch.images`), on one CPU thread and on CUDA when there is one.
Ours and bare take turns `--repeat` times; a figure is the median of the repeats and the
ratio the median of the per-turn ratios, so a machine shared with other jobs moves both sides
of a ratio together. Beside wall-clock images/s, the CPU seconds of the epoch (this process and
its workers) per image: on a busy machine the CPU ratio (bare CPU per image / ours) is the
steadier comparison. Results go to benchmarks/results/loader.json.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset, get_worker_info  # noqa: E402

from common.tables import markdown_table  # noqa: E402
from testkit.results import cpu_seconds, run_start, write_result  # noqa: E402

BATCH = 32  # the paper preset's batch
SALT = b"loader-benchmark"
SHARDS = 8  # the table is split over shards as ingestion writes it (one file per shard)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, 2, os.cpu_count() or 1}))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed-studies", type=int, default=100)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--data", type=Path, help="keep the generated data here (reused when present)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    started = run_start()
    torch.set_num_threads(1)  # as in a loader worker; the device figure says its own threads
    root = args.data or Path(tempfile.mkdtemp(prefix="medfilip-loader-"))
    try:
        for size in args.sizes:
            if not (root / f"images_{size}").is_dir():
                prepare(root, args.images, args.sizes, args.seed_studies, args.source_size)
                break
        runs, figures = measure(root, args)
    finally:
        if args.data is None:
            shutil.rmtree(root, ignore_errors=True)
    print(markdown_table(runs))
    # Figures are medians of interleaved repeats: absolute images/s depend on how busy the machine
    # was (the record's cpu load), the ratios much less.
    write_result("loader", args, figures, started=started)  # prints where the record went
    print("\nfigures:")
    for key, value in figures.items():
        print(f"  {key}: {value}")


# -- data ------------------------------------------------------------------------------------------

def prepare(root: Path, images: int, sizes: list[int], seed_studies: int, source_size: int) -> None:
    """cxr_images at every size (`root/images_<size>/`) and the texts (`root/texts/`)."""
    from common.storage import write_table
    from corpus.generate import generate_corpus
    from extraction.backends import make_backend
    from extraction.extract import extract_reports
    from extraction.to_triplets import to_triplets
    from extraction.vocabulary import load_vocabulary
    from ingestion.images import build_cxr_images
    from ingestion.layout import SHARDS as ARCHIVE_SHARDS
    from ingestion.shards import index_shard, reports_shard
    from knowledge.base import load_knowledge
    from knowledge.texts import IMAGE_TEXTS_FILE, build_training_texts

    work = root / "work"
    corpus = work / "corpus"
    generate_corpus(corpus, studies=seed_studies, seed=0, image_size=source_size, eval_images=1,
                    workers=os.cpu_count() or 1)
    seeds: dict[int, list[pa.Table]] = {size: [] for size in sizes}
    reports = []
    for shard in ARCHIVE_SHARDS:
        index = index_shard(corpus, shard, SALT, work / f"index-{shard}.parquet", work / f"q-{shard}.parquet").index
        if not index.num_rows:
            continue
        for size in sizes:
            out = work / f"images-{size}-{shard}.parquet"
            build_cxr_images(index, corpus, out, work / f"dq-{shard}.parquet", size=size, workers=os.cpu_count() or 1)
            seeds[size].append(pq.read_table(out))
        reports.append(reports_shard(corpus, shard, SALT, work / f"reports-{shard}.parquet"))
    report_table = pa.concat_tables(reports)
    extracted = extract_reports(pa.table({"study_id": report_table.column("study_id"),
                                          "text": report_table.column("extraction_text"),
                                          "text_sha256": report_table.column("text_sha256")}),
                                make_backend(), work / "extraction.duckdb").table
    triplets, _ = to_triplets(extracted, load_vocabulary())
    write_table(triplets, work / "triplets.parquet")
    first = pa.concat_tables(seeds[sizes[0]])
    texts = build_training_texts(triplets, first.select(["dicom_id", "study_id", "patient_key", "view_position"]),
                                 load_knowledge(), root / "texts")
    links = pq.read_table(texts.image_texts_path)
    copies = -(-images // first.num_rows)
    if first.num_rows < 64:
        raise SystemExit(f"{first.num_rows} distinct images: give --seed-studies so that there are at least 64 "
                         f"(one row group), or copies of one image would share a row group")
    for size in sizes:
        write_copies(pa.concat_tables(seeds[size]), copies, images, root / f"images_{size}")
    ids = links.column("dicom_id").to_pylist()
    replicated = pa.concat_tables([
        links.set_column(0, "dicom_id", pa.array([f"{d}-{c:03d}" for d in ids]))
             .set_column(3, "split", pa.array(["train"] * len(ids)))
        for c in range(copies)])
    write_table(replicated.cast(links.schema), root / "texts" / IMAGE_TEXTS_FILE)
    shutil.rmtree(work)


def write_copies(seed: pa.Table, copies: int, images: int, out_dir: Path) -> None:
    """`images` rows: copy c of seed row i is `<dicom_id>-<c>`; copies follow each other whole, so
    that two copies of one image are `len(seed)` >= 64 rows apart, never in one row group."""
    from ingestion.images import IMAGE_SCHEMA, WRITE_OPTIONS

    ids = seed.column("dicom_id").to_pylist()
    table = pa.concat_tables([seed.set_column(0, "dicom_id", pa.array([f"{d}-{c:03d}" for d in ids]))
                              for c in range(copies)]).slice(0, images)
    out_dir.mkdir(parents=True)
    per_shard = -(-images // SHARDS)
    for shard in range(SHARDS):
        part = table.slice(shard * per_shard, per_shard)
        with pq.ParquetWriter(out_dir / f"p{10 + shard}.parquet", IMAGE_SCHEMA, **WRITE_OPTIONS) as writer:
            writer.write_table(part.cast(IMAGE_SCHEMA), row_group_size=64)


# -- the two loops ---------------------------------------------------------------------------------

class BareStream(IterableDataset):
    """Row groups dealt to workers in turn; pixels column -> torch.frombuffer -> stack."""

    def __init__(self, units: list[tuple[str, int]], size: int):
        self.units, self.size = units, size

    def __iter__(self):
        worker = get_worker_info()
        mine = self.units[worker.id::worker.num_workers] if worker else self.units
        pending: list[torch.Tensor] = []
        for path, group in mine:
            for value in pq.ParquetFile(path).read_row_group(group, columns=["pixels"]).column("pixels").to_pylist():
                pending.append(torch.frombuffer(value, dtype=torch.uint8).view(1, self.size, self.size))
                if len(pending) == BATCH:
                    yield torch.stack(pending)
                    pending = []
        if pending:
            yield torch.stack(pending)


def timed_epoch(loader) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds of this process and its loader workers) of one epoch."""
    cpu_before = cpu_seconds()
    start, count = time.perf_counter(), 0
    batches = iter(loader)
    for batch in batches:
        count += len(batch)
        _touch(batch if isinstance(batch, torch.Tensor) else batch.pixels if hasattr(batch, "pixels") else batch.images)
    seconds = time.perf_counter() - start
    del batches, batch
    gc.collect()  # the workers exit and are waited for: their CPU time is then counted
    return count, seconds, cpu_seconds() - cpu_before


def _touch(pixels: torch.Tensor) -> None:
    """Read one byte per page, as the copy to the device would: a batch arriving in shared
    memory costs its page faults where it is first read, in the bare loop as in ours."""
    flat = pixels.view(-1) if pixels.is_contiguous() else pixels.reshape(-1)
    int(flat[::4096].sum())


def measure(root: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    from knowledge.texts import IMAGE_TEXTS_FILE, TEXTS_FILE
    from medfilip_model.dual_encoder import create_tokenizer
    from training.data import Augmentation, CxrTextStream, TextTokens, build_split_index, make_loader

    tokens = TextTokens(root / "texts" / TEXTS_FILE, create_tokenizer("paper"))
    pin = torch.cuda.is_available()  # as training.loop: pinned only where a CUDA device takes the batch
    runs, figures = [], {}
    warnings.filterwarnings("ignore", message="The given buffer is not writable")
    for size in args.sizes:
        index = build_split_index(root / f"images_{size}", root / "texts" / IMAGE_TEXTS_FILE, "train")
        units = [(u.path, u.row_group) for u in index.units]
        for workers in args.workers:
            ours, bare, ratios, cpu_ratios, cpu_ms = [], [], [], [], []
            for _ in range(args.repeat):
                stream = CxrTextStream(index, tokens, BATCH, size, augmentation=Augmentation(), seed=0)
                n_ours, s_ours, c_ours = timed_epoch(make_loader(stream, workers, pin_memory=pin))
                n_bare, s_bare, c_bare = timed_epoch(DataLoader(BareStream(units, size), batch_size=None,
                                                                num_workers=workers, pin_memory=pin))
                ours.append(n_ours / s_ours)
                bare.append(n_bare / s_bare)
                ratios.append(ours[-1] / bare[-1])
                cpu_ms.append(1000 * c_ours / n_ours)
                cpu_ratios.append((c_bare / n_bare) / (c_ours / n_ours))
                print(f"{size} px, {workers} workers: ours {ours[-1]:.1f} img/s ({n_ours} images, {cpu_ms[-1]:.2f} CPU ms "
                      f"each), bare {bare[-1]:.1f} img/s ({n_bare}, {1000 * c_bare / n_bare:.2f} CPU ms)", flush=True)
            row = {"size": size, "workers": workers, "images": n_ours,
                   "ours_img_s": round(statistics.median(ours), 1), "bare_img_s": round(statistics.median(bare), 1),
                   "ours_img_s_per_worker": round(statistics.median(ours) / workers, 1),
                   "ratio_to_bare": round(statistics.median(ratios), 3),
                   "ours_cpu_ms_per_image": round(statistics.median(cpu_ms), 3),
                   "cpu_ratio_to_bare": round(statistics.median(cpu_ratios), 3)}
            runs.append(row)
        one = next(r for r in runs if r["size"] == size and r["workers"] == min(args.workers))
        figures[f"images_per_s_per_worker_{size}"] = one["ours_img_s_per_worker"]
        figures[f"ratio_to_bare_{size}"] = one["ratio_to_bare"]
        figures[f"cpu_ratio_to_bare_{size}"] = one["cpu_ratio_to_bare"]
        figures[f"bare_images_per_s_per_worker_{size}"] = round(one["bare_img_s"] / one["workers"], 1)
        top = next(r for r in runs if r["size"] == size and r["workers"] == max(args.workers))
        figures[f"images_per_s_{top['workers']}_workers_{size}"] = top["ours_img_s"]
        stream = CxrTextStream(index, tokens, BATCH, size, augmentation=Augmentation(), seed=0)
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            figures[f"device_images_per_s_{device}_{size}"] = device_rate(stream, device, args.repeat)
    return runs, figures


def device_rate(stream, device: str, repeat: int, batches: int = 8) -> float:
    """Images/s of what the loop does on a batch's arrival (to the device, uint8 -> float, the
    augmentation), median of `repeat` passes over `batches` batches; one thread on the CPU."""
    loaded = [batch for _, batch in zip(range(batches), stream)]
    if device == "cuda":
        loaded = [batch.to(device) for batch in loaded]  # the copy overlaps compute in training
    rates = []
    for _ in range(repeat + 1):  # the first pass warms up (CUDA kernels, allocator)
        start = time.perf_counter()
        for batch in loaded:
            fresh = batch.to(device)  # a new Batch: `images` is computed again
            fresh.images
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(sum(len(b) for b in loaded) / (time.perf_counter() - start))
    return round(statistics.median(rates[1:]), 1)
    return runs, figures


if __name__ == "__main__":
    main()
