"""GPT-IE assets: reports -> llm_extractions (cached backend answers) -> triplets -> report_labels.

The `prompts` source asset's data version is the extraction backend's version (the prompt
files' hash, or the rules + vocabulary hash). When it changes, `llm_extractions` and all
downstream show as unsynced, and `prompt_change_sensor` (pipeline/sensors.py) re-runs them;
the cache makes that re-run ask the backend only for misses.

These assets let Dagster derive their data versions (code version + input versions) so a
prompt change propagates as "unsynced" through every downstream asset; file digests are
recorded as `sha256` metadata for lineage.
"""

import dagster as dg
import pyarrow.parquet as pq

from assets.automation import DERIVED_FROM_EXTRACTION
from assets.metadata import md_table, preview, rounded
from assets.plots import bar_chart_markdown
from common.storage import file_sha256, write_table
from extraction.batch import BatchPending
from extraction.cache import CacheBusy
from extraction.extract import backend_failures, extract_shards, failure_summary
from extraction.interface import EndpointUnavailable
from extraction.labels import default_label_maps_path, label_counts, load_label_map, report_labels_table
from extraction.to_triplets import answered_reports, summarise_triplets, to_triplets
from extraction.vocabulary import load_vocabulary
from ingestion.layout import shard_outputs
from assets.resources import ExtractorResource, StorageResource


@dg.observable_source_asset(group_name="sources", description=(
    "The extraction instruction (prompts/) or, for the rules backend, its rule and vocabulary "
    "files. Its data version is their content hash: a change makes extraction stale."))
def prompts(extractor: ExtractorResource) -> dg.ObserveResult:
    # The UI shows which files are "the prompt" of the configured backend, beside their version.
    version = extractor.prompt_version()
    return dg.ObserveResult(data_version=dg.DataVersion(version),
                            metadata={"prompt_version": version,
                                      "backend": extractor.backend_config().kind,
                                      "prompt_files": ", ".join(extractor.prompt_files())})


class ExtractionConfig(dg.Config):
    max_parse_failure_rate: float = 0.02
    # Above this share of reports without an answer the run fails and the previous table stays.
    max_error_rate: float = 0.2


class TripletsConfig(dg.Config):
    min_share_with_triplets: float = 0.5
    max_reject_rate: float = 0.05


@dg.asset(
    deps=["reports", prompts],
    group_name="extraction",
    kinds={"parquet", "duckdb"},
    code_version="2",
    # One extraction at a time per instance: the second run queues for the DuckDB cache.
    pool="extraction_cache",
    check_specs=[
        dg.AssetCheckSpec("parse_failure_rate", asset="llm_extractions",
                          description="Share of answers the parser could not read stays under the limit."),
        dg.AssetCheckSpec("no_backend_errors", asset="llm_extractions",
                          description="No report is left without an answer after retries."),
    ],
)
def llm_extractions(
    context: dg.AssetExecutionContext, config: ExtractionConfig, storage: StorageResource, extractor: ExtractorResource
) -> dg.MaterializeResult:
    """One row per report: the backend's raw answer, prompt version, backend, model, usage,
    latency, attempts and error. Answers come from the DuckDB cache when the key (prompt
    version + backend + model + parameters + report text) was asked before."""
    try:
        backend = extractor.make_backend()
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from None
    cache_path = storage.layout().cache / "extraction.duckdb"
    out_path = storage.asset_path("llm_extractions", "llm_extractions.parquet")
    try:
        shard_paths = shard_outputs(storage.asset_path("reports"))
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from None
    if not shard_paths:
        raise dg.Failure(description="no `reports` shard has been materialised: run the ingestion job first")

    try:
        result = extract_shards(shard_paths, backend, cache_path, _progress_logger(context), context.log.warning,
                                on_notice=context.log.warning, on_info=context.log.info)
    except (EndpointUnavailable, CacheBusy, BatchPending) as exc:
        raise dg.Failure(description=str(exc)) from None
    table, total = result.table, result.stats
    unusable = failure_summary(table, config.max_error_rate)
    if unusable:  # before the write: the previous table stays for downstream assets
        raise dg.Failure(description=unusable, metadata={"reports": table.num_rows, "errors": total.errors})
    write_table(table, out_path)
    answered, parse_rate = total.answered(), total.parse_failure_rate()
    failed = backend_failures(table)
    digest = file_sha256(out_path)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            **{k: v for k, v in rounded(total.as_dict()).items() if v is not None},
            "total_tokens": total.prompt_tokens + total.completion_tokens,
            "backend": backend.name,
            "model": backend.model or "(rules)",
            "prompt_version": backend.version,
            **_llm_metadata(backend, result),
            "cache": dg.MetadataValue.path(str(cache_path)),
            "path": dg.MetadataValue.path(str(out_path)),
            "sha256": digest,
            "preview": preview(table, ["study_id", "answer", "parse_error", "cached", "error"]),
        },
        check_results=[
            dg.AssetCheckResult(check_name="parse_failure_rate", passed=parse_rate <= config.max_parse_failure_rate,
                                description=None if parse_rate <= config.max_parse_failure_rate else
                                f"{total.parse_errors} of {answered} answers of {backend.name} ({backend.model or 'rules'}) "
                                f"could not be parsed ({parse_rate:.1%} > max_parse_failure_rate "
                                f"{config.max_parse_failure_rate:g}); rows with parse_error in {out_path}",
                                metadata={"rate": round(parse_rate, 4), "parse_errors": total.parse_errors,
                                          "answers": answered, "limit": config.max_parse_failure_rate}),
            dg.AssetCheckResult(check_name="no_backend_errors", passed=not failed,
                                severity=dg.AssetCheckSeverity.WARN,
                                description=f"{len(failed)} reports got no answer from {backend.name}; first: study "
                                            f"{failed[0]['study_id']}: {failed[0]['error'][:200]}" if failed else None,
                                metadata={"errors": len(failed), "examples": md_table(failed[:10])}),
        ],
    )


@dg.asset(
    deps=[llm_extractions],
    group_name="extraction",
    kinds={"parquet"},
    code_version="1",
    automation_condition=DERIVED_FROM_EXTRACTION,
    check_specs=[
        dg.AssetCheckSpec("share_of_reports_with_triplets", asset="triplets",
                          description="Enough usable reports yield at least one finding."),
        dg.AssetCheckSpec("categories_in_vocabulary", asset="triplets",
                          description="Findings outside the vocabulary (kept in triplet_rejects) stay rare."),
    ],
)
def triplets(context: dg.AssetExecutionContext, config: TripletsConfig, storage: StorageResource) -> dg.MaterializeResult:
    """One row per finding: severity, location, canonical category (synonyms folded), negated,
    uncertain, source sentence. Findings failing the vocabulary go to `triplet_rejects.parquet`
    with the reason."""
    # Read a batch at a time: the answers of a whole archive are gigabytes as Python strings.
    extractions = storage.asset_path("llm_extractions", "llm_extractions.parquet")
    vocab = load_vocabulary()
    table, rejects = to_triplets(extractions, vocab)
    if table.num_rows == 0:  # before the writes: training on no findings is never what was meant
        rows = pq.ParquetFile(extractions).metadata.num_rows
        raise dg.Failure(description=f"no triplet from {rows} extraction rows ({len(rejects)} rejected "
                                     f"by the vocabulary): look at llm_extractions' answers and parse errors")
    out_path = storage.asset_path("triplets", "triplets.parquet")
    rejects_path = storage.asset_path("triplets", "triplet_rejects.parquet")
    write_table(table, out_path)
    write_table(rejects, rejects_path)

    summary = summarise_triplets(answered_reports(extractions), table, rejects)
    with_triplets, positive, negated = summary.with_triplets, summary.positive, summary.negated
    outside, findings = summary.outside_vocabulary, summary.findings
    digest = file_sha256(out_path)
    context.log.info(f"{table.num_rows} triplets from {with_triplets} reports; {len(rejects)} rejects")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "rejects": len(rejects),
            "reports_with_triplets": with_triplets,
            "negated": sum(negated.values()),
            "uncertain": summary.uncertain,
            "categories": len(positive | negated),
            "category_histogram": dg.MetadataValue.md(bar_chart_markdown(positive, "positive findings by category")),
            "negated_histogram": dg.MetadataValue.md(bar_chart_markdown(negated, "negated findings by category")),
            "reject_reasons": md_table([{"reason": k, "count": v} for k, v in summary.reject_reasons.most_common()]),
            "path": dg.MetadataValue.path(str(out_path)),
            "rejects_path": dg.MetadataValue.path(str(rejects_path)),
            "sha256": digest,
            "preview": preview(table, ["study_id", "severity", "location", "category", "negated", "uncertain", "sentence"], 10),
        },
        check_results=[
            dg.AssetCheckResult(check_name="share_of_reports_with_triplets", passed=summary.share_with_triplets >= config.min_share_with_triplets,
                                description=None if summary.share_with_triplets >= config.min_share_with_triplets else
                                f"only {with_triplets} of {summary.answered} answered reports gave a triplet "
                                f"({summary.share_with_triplets:.0%} < min_share_with_triplets "
                                f"{config.min_share_with_triplets:g}); rejects and their reasons in {rejects_path}",
                                metadata={"share": round(summary.share_with_triplets, 4), "reports_with_triplets": with_triplets,
                                          "answered_reports": summary.answered, "minimum": config.min_share_with_triplets}),
            dg.AssetCheckResult(check_name="categories_in_vocabulary", passed=summary.outside_rate <= config.max_reject_rate,
                                severity=dg.AssetCheckSeverity.WARN,
                                description=None if summary.outside_rate <= config.max_reject_rate else
                                f"{len(outside)} of {findings} findings name a category outside the vocabulary "
                                f"({summary.outside_rate:.1%} > max_reject_rate {config.max_reject_rate:g}), e.g. "
                                f"{', '.join(sorted({str(o['raw_category']) for o in outside})[:5])}",
                                metadata={"outside_vocabulary": len(outside), "findings": findings,
                                          "rate": round(summary.outside_rate, 4),
                                          "examples": md_table(outside[:10], ["study_id", "raw_category", "sentence"])}),
        ],
    )


# Each convention's table: the CheXpert one keeps the asset's main file (training_texts reads its
# "No Finding"); docs/labelling_guideline.md says what each convention counts.
LABEL_CONVENTIONS = {
    "chexpert": ("report_labels.parquet", "the 14 CheXpert observations as the CheXpert labeler's phrase "
                 "lists define them; No Finding derived as the labeler derives it; -1 kept"),
    "chestxray14": ("report_labels_chestxray14.parquet", "the 14 ChestX-ray14 findings as text-mined: a label "
                    "is the finding named, never a sign; binary rule: -1 (hedged) counts as absent"),
}


# The label map is part of this asset's code: editing it marks report_labels stale.
@dg.asset(deps=[llm_extractions, triplets], group_name="extraction", kinds={"parquet"},
          code_version="1-" + file_sha256(default_label_maps_path())[:12],
          automation_condition=DERIVED_FROM_EXTRACTION)
def report_labels(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """One row per report whose answer was read, in each convention of knowledge/label_maps.yaml
    (LABEL_CONVENTIONS): every label as 1 (present), 0 (negated), -1 (uncertain) or null (not
    mentioned), from `triplets`. report_labels.parquet (`chexpert`) is to compare with the
    CheXpert labeler's CSV and to filter reports for training; report_labels_chestxray14.parquet
    (`chestxray14`) to compare with ChestX-ray14's labels."""
    vocabulary = load_vocabulary()
    metadata: dict[str, object] = {"label_map_sha256": file_sha256(default_label_maps_path())}
    for convention, (file_name, meaning) in LABEL_CONVENTIONS.items():
        label_map = load_label_map(convention, vocabulary=vocabulary)
        table = report_labels_table(storage.asset_path("llm_extractions", "llm_extractions.parquet"),
                                    storage.asset_path("triplets", "triplets.parquet"), label_map)
        out_path = storage.asset_path("report_labels", file_name)
        write_table(table, out_path)
        prefix = "" if convention == "chexpert" else f"{convention}_"
        metadata.update({
            f"{prefix}convention": f"{convention}: {meaning}",
            f"{prefix}label_counts": md_table(label_counts(table, label_map), ["label", "1", "0", "-1", "blank"]),
            f"{prefix}path": dg.MetadataValue.path(str(out_path)),
            f"{prefix}sha256": file_sha256(out_path),
        })
        if convention == "chexpert":
            metadata.update({"dagster/row_count": table.num_rows, "preview": preview(table, table.column_names[:8])})
        context.log.info(f"{convention} labels for {table.num_rows} reports: {out_path}")
    return dg.MaterializeResult(metadata=metadata)


def _llm_metadata(backend, result) -> dict:
    """What an LLM run adds: mode, structured outputs and whether the server followed them, the
    context window, the estimate made before the first request."""
    if backend.name != "openai":
        return {}
    metadata = {"mode": backend.mode, "structured_output": backend.params.get("structured_output", "none"),
                "schema_followed": result.stats.schema_violations == 0,
                "notices": "\n".join(result.notices) or "none"}
    if backend.context_tokens:
        metadata["context_tokens"] = backend.context_tokens
    if result.estimate is not None:
        metadata.update(rounded(result.estimate.as_metadata()))
    return metadata


def _progress_logger(context: dg.AssetExecutionContext):
    last = {"logged": -1}

    def log(done: int, total: int) -> None:
        step = max(1, total // 10)
        if done // step != last["logged"] and (done == total or done % step == 0):
            last["logged"] = done // step
            context.log.info(f"{done}/{total} reports extracted")

    return log
