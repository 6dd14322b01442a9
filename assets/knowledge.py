"""IKI and SSM assets: knowledge_base -> training_texts -> text_embeddings -> ssm.

The sentence encoder runs once, here; training reads the materialised SSM and never loads it.
"""

from pathlib import Path
from typing import Literal

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from assets.automation import DERIVED_FROM_EXTRACTION
from assets.metadata import first_reasons, md_table, preview, rounded
from assets.plots import bar_chart_markdown, png_markdown
from common.storage import file_sha256, write_table
from extraction.vocabulary import load_vocabulary
from ingestion.dicom_index import duplicates_across_shards
from ingestion.layout import shard_outputs
from assets.resources import StorageResource
from knowledge.base import load_knowledge, missing_descriptions
from knowledge.ssm import SSM, build_ssm, plot_block_heatmap, run_checks
from knowledge.embeddings import default_sentence_model_path, write_text_embeddings
from knowledge.texts import TEXTS_FILE, build_training_texts

IMAGE_COLUMNS = ["dicom_id", "study_id", "patient_key", "view_position"]


@dg.asset(group_name="knowledge", kinds={"yaml", "parquet"}, code_version="1")
def knowledge_base(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """Every canonical category with its radiographic visual description (knowledge/descriptions.yaml)."""
    kb = load_knowledge()
    table = kb.to_arrow()
    out_path = storage.asset_path("knowledge_base", "knowledge_base.parquet")
    write_table(table, out_path)
    undescribed = missing_descriptions(kb, load_vocabulary().category_names)
    context.log.info(f"{table.num_rows} categories; vocabulary categories without description: {undescribed or 'none'}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "digest": kb.digest,
            "sha256": file_sha256(out_path),
            "vocabulary_categories_without_description": ", ".join(undescribed) or "none",
            "path": dg.MetadataValue.path(str(out_path)),
            "preview": preview(table, ["category", "description"], 60),
        },
        data_version=dg.DataVersion(kb.digest[:16]),
    )


class TrainingTextsConfig(dg.Config):
    val_fraction: float = 0.1
    split_seed: int = 0
    drop_uncertain: bool = False
    drop_negated: bool = False  # True: train on present findings only (see knowledge/texts.py)
    # "reference": the published code's wording (keeps `na` and a negated finding's location).
    wording: Literal["ours", "reference"] = "ours"
    # "reference": only reports whose CheXpert "No Finding" (report_labels) is blank and that have
    # a triplet, as the published data preparation; "none": every image (no-finding text if empty).
    report_filter: Literal["none", "reference"] = "none"


@dg.asset(deps=["triplets", knowledge_base, "cxr_images", "dicom_index", "report_labels"], group_name="knowledge",
          kinds={"duckdb", "parquet"}, code_version="1", automation_condition=DERIVED_FROM_EXTRACTION)
def training_texts(context: dg.AssetExecutionContext, config: TrainingTextsConfig,
                   storage: StorageResource) -> dg.MaterializeResult:
    """Per image its list of texts "{severity} {location} {category}. {description}", each
    distinct text with a stable text_id; images without a triplet get the "no finding" text;
    train/validation split by patient."""
    images = decoded_images(storage)
    # Where the shards meet: the same image in two shards (under two patients) would sit on
    # both sides of the split. Later copies are left out and recorded, never trained on.
    duplicates, dropped = duplicates_across_shards(shard_outputs(storage.asset_path("dicom_index")))
    duplicates_path = storage.asset_path("quarantine", "cross_shard", "duplicates.parquet")
    write_table(duplicates, duplicates_path)
    if dropped:
        images = images.filter(pc.invert(pc.is_in(images.column("dicom_id"), pa.array(sorted(dropped), pa.string()))))
        context.log.warning(f"{len(dropped)} images left out: their pixels or SOPInstanceUID are in an earlier shard "
                            f"(first: {first_reasons(duplicates)}); see {duplicates_path}")
    out_dir = storage.layout().asset_dir("training_texts")
    result = build_training_texts(
        storage.asset_path("triplets", "triplets.parquet"), images, load_knowledge(), out_dir,
        val_fraction=config.val_fraction, seed=config.split_seed, drop_uncertain=config.drop_uncertain,
        drop_negated=config.drop_negated, wording=config.wording, report_filter=config.report_filter,
        report_labels=(storage.asset_path("report_labels", "report_labels.parquet")
                       if config.report_filter == "reference" else None),
    )
    texts = pq.read_table(result.texts_path)
    numbers = {k: v for k, v in result.metadata().items() if isinstance(v, int)}
    context.log.info(f"{result.images} images, {result.texts} distinct texts from {result.triplets} triplets")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": result.images,
            **numbers,
            "duplicates_across_shards": len(dropped),
            "duplicates_path": dg.MetadataValue.path(str(duplicates_path)),
            "triplets_per_distinct_text": round(result.triplets_used / max(result.texts, 1), 2),
            "texts_per_category": dg.MetadataValue.md(bar_chart_markdown(result.texts_per_category, "distinct texts per category")),
            "path": dg.MetadataValue.path(str(result.texts_path)),
            "sha256": file_sha256(result.texts_path),
            "image_texts_path": dg.MetadataValue.path(str(result.image_texts_path)),
            "image_texts_sha256": file_sha256(result.image_texts_path),
            "preview": preview(texts, ["text_id", "category", "negated", "text"], 8),
        },
    )


def decoded_images(storage: StorageResource) -> pa.Table:
    """Ids of every image that made it into cxr_images (decoded), read without the pixels."""
    tables = [pq.read_table(path, columns=IMAGE_COLUMNS) for path in shard_outputs(storage.asset_path("cxr_images"))]
    return pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in IMAGE_COLUMNS})


class TextEmbeddingsConfig(dg.Config):
    model_path: str = ""  # any sentence-transformers directory; empty: the packaged all-MiniLM-L6-v2
    batch_size: int = 64


@dg.asset(deps=[training_texts], group_name="knowledge", kinds={"pytorch", "numpy"}, code_version="1",
          automation_condition=DERIVED_FROM_EXTRACTION)
def text_embeddings(context: dg.AssetExecutionContext, config: TextEmbeddingsConfig,
                    storage: StorageResource) -> dg.MaterializeResult:
    """One embedding per distinct text from a frozen sentence encoder loaded from a local path."""
    texts_path = storage.layout().asset_dir("training_texts") / TEXTS_FILE
    out_path = storage.asset_path("text_embeddings", "embeddings.npy")

    def progress(done: int, total: int) -> None:
        context.log.info(f"embedded {done}/{total} texts")

    result = write_text_embeddings(texts_path, out_path, config.model_path or None, config.batch_size, progress)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": result.n_texts,
            "dim": result.dim,
            "model_path": result.model_path,
            "model_name": Path(config.model_path or default_sentence_model_path()).name,
            "model_digest": result.model_digest,
            "texts_digest": result.texts_digest,
            "seconds": round(result.seconds, 2),
            "sha256": file_sha256(out_path),
            "path": dg.MetadataValue.path(str(out_path)),
        },
    )


class SSMConfig(dg.Config):
    separate_negations: bool = False  # False is the paper: "no effusion" shares effusion's block
    dtype: str = "float32"


SSM_CHECKS = ("symmetric", "unit_diagonal", "value_range", "zero_across_categories")


@dg.asset(
    deps=[training_texts, text_embeddings], group_name="knowledge", kinds={"numpy"}, code_version="1",
    automation_condition=DERIVED_FROM_EXTRACTION,
    check_specs=[dg.AssetCheckSpec(name, asset="ssm", blocking=True) for name in SSM_CHECKS],
)
def ssm(context: dg.AssetExecutionContext, config: SSMConfig, storage: StorageResource) -> dg.MaterializeResult:
    """Cosine similarity between distinct texts within each category block (zero across
    categories): everything the loss needs to build the paper's soft targets for any batch."""
    import numpy as np

    texts = pq.read_table(storage.layout().asset_dir("training_texts") / TEXTS_FILE).sort_by("text_id")
    embeddings = np.load(storage.asset_path("text_embeddings", "embeddings.npy"))
    out_dir = storage.layout().asset_dir("ssm")
    summary = build_ssm(texts, embeddings, out_dir, separate_negations=config.separate_negations, dtype=config.dtype)
    loaded = SSM.load(out_dir)
    checks = run_checks(loaded, texts)
    blocks = pq.read_table(out_dir / "ssm_blocks.parquet").sort_by([("size", "descending")])
    heatmap = plot_block_heatmap(loaded, summary.largest_block_group, out_dir / "largest_block.png")
    context.log.info(f"{summary.n_blocks} blocks, {summary.n_texts} texts, {summary.bytes_on_disk} bytes")
    return dg.MaterializeResult(
        metadata={
            **rounded({k: v for k, v in summary.metadata().items() if k != "out_dir"}),
            "dagster/row_count": summary.n_texts,
            "block_sizes": md_table(blocks.select(["group", "size"]).to_pylist(), ["group", "size"], 40),
            "largest_block_heatmap": dg.MetadataValue.md(png_markdown(heatmap, summary.largest_block_group)),
            "path": dg.MetadataValue.path(str(out_dir / "ssm.json")),
            "sha256": file_sha256(out_dir / "ssm.json"),
        },
        check_results=[
            dg.AssetCheckResult(check_name=name, passed=bool(checks[name][0]),
                                description=None if checks[name][0] else
                                f"SSM in {out_dir / 'ssm.json'} is not {name.replace('_', ' ')}: " + ", ".join(
                                    f"{k} {v}" for k, v in checks[name][1].items() if isinstance(v, (int, float, str))),
                                metadata={k: v for k, v in checks[name][1].items() if isinstance(v, (int, float, str, bool))})
            for name in SSM_CHECKS
        ],
    )
