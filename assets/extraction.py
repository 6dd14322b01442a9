"""GPT-IE assets: reports -> llm_extractions (cached backend answers) -> triplets.

The `prompts` source asset's data version is the extraction backend's version (the prompt
files' hash, or the rules + vocabulary hash). When it changes, `llm_extractions` and all
downstream show as unsynced, and `prompt_change_sensor` (pipeline/sensors.py) re-runs them;
the cache makes that re-run ask the backend only for misses.

These assets let Dagster derive their data versions (code version + input versions) so a
prompt change propagates as "unsynced" through every downstream asset; file digests are
recorded as `sha256` metadata for lineage.
"""

from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from assets.metadata import md_table, preview
from assets.plots import bar_chart_markdown
from extraction.extract import LLM_EXTRACTIONS_SCHEMA, ExtractionStats, extract_reports
from extraction.to_triplets import to_triplets
from extraction.vocabulary import load_vocabulary
from ingestion.layout import SHARDS
from pipeline.resources import ExtractorResource, StorageResource
from pipeline.storage import file_sha256, write_table


@dg.observable_source_asset(group_name="sources", description=(
    "The extraction instruction (prompts/) or, for the rules backend, its rule and vocabulary "
    "files. Its data version is their content hash: a change makes extraction stale."))
def prompts(extractor: ExtractorResource) -> dg.DataVersion:
    return dg.DataVersion(extraction_version(extractor))


def extraction_version(extractor: ExtractorResource) -> str:
    return extractor.make_backend().version[:16]


class ExtractionConfig(dg.Config):
    max_parse_failure_rate: float = 0.02


class TripletsConfig(dg.Config):
    min_share_with_triplets: float = 0.5
    max_reject_rate: float = 0.05


@dg.asset(
    deps=["reports", prompts],
    group_name="extraction",
    kinds={"parquet", "duckdb"},
    code_version="1",
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
    backend = extractor.make_backend()
    cache_path = storage.layout().cache / "extraction.duckdb"
    out_path = storage.asset_path("llm_extractions", "llm_extractions.parquet")
    total = ExtractionStats()
    tables = []
    for shard in SHARDS:
        path = storage.asset_path("reports", f"{shard}.parquet")
        if not path.exists():
            continue
        reports = pq.read_table(path, columns=["study_id", "extraction_text", "text_sha256"])
        reports = reports.rename_columns(["study_id", "text", "text_sha256"])
        result = extract_reports(reports, backend, cache_path,
                                 progress=_progress_logger(context, shard))
        tables.append(result.table)
        add_stats(total, result.stats)
        context.log.info(f"{shard}: {result.stats.reports} reports, {result.stats.calls} calls, "
                         f"{result.stats.cache_hits} cache hits, {result.stats.errors} errors")
    table = pa.concat_tables(tables) if tables else LLM_EXTRACTIONS_SCHEMA.empty_table()
    write_table(table, out_path)

    answered = table.num_rows - total.empty_reports - total.errors
    parse_rate = total.parse_errors / answered if answered > 0 else 0.0
    failed = [r for r in table.select(["study_id", "error"]).to_pylist()
              if r["error"] and r["error"] != "empty report"]
    digest = file_sha256(out_path)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            **{k: v for k, v in total.as_dict().items() if v is not None},
            "total_tokens": total.prompt_tokens + total.completion_tokens,
            "backend": backend.name,
            "model": backend.model or "(rules)",
            "prompt_version": backend.version,
            "cache": dg.MetadataValue.path(str(cache_path)),
            "path": dg.MetadataValue.path(str(out_path)),
            "sha256": digest,
            "preview": preview(table, ["study_id", "answer", "parse_error", "cached", "error"]),
        },
        check_results=[
            dg.AssetCheckResult(check_name="parse_failure_rate", passed=parse_rate <= config.max_parse_failure_rate,
                                metadata={"rate": round(parse_rate, 4), "parse_errors": total.parse_errors,
                                          "answers": answered, "limit": config.max_parse_failure_rate}),
            dg.AssetCheckResult(check_name="no_backend_errors", passed=not failed,
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"errors": len(failed), "examples": md_table(failed[:10])}),
        ],
    )


@dg.asset(
    deps=[llm_extractions],
    group_name="extraction",
    kinds={"parquet"},
    code_version="1",
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
    extractions = pq.read_table(storage.asset_path("llm_extractions", "llm_extractions.parquet"))
    vocab = load_vocabulary()
    table, rejects = to_triplets(extractions, vocab)
    out_path = storage.asset_path("triplets", "triplets.parquet")
    rejects_path = storage.asset_path("triplets", "triplet_rejects.parquet")
    write_table(table, out_path)
    write_table(rejects, rejects_path)

    answered = sum(1 for a in extractions.column("answer").to_pylist() if a is not None)
    with_triplets = len(set(table.column("study_id").to_pylist()))
    share = with_triplets / answered if answered else 0.0
    outside = [r for r in rejects.to_pylist() if "unknown category" in (r["reason"] or "")]
    findings = table.num_rows + len(rejects)
    reject_rate = len(outside) / findings if findings else 0.0
    positive = Counter(c for c, n in zip(table.column("category").to_pylist(), table.column("negated").to_pylist()) if not n)
    negated = Counter(c for c, n in zip(table.column("category").to_pylist(), table.column("negated").to_pylist()) if n)
    digest = file_sha256(out_path)
    context.log.info(f"{table.num_rows} triplets from {with_triplets} reports; {len(rejects)} rejects")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "rejects": len(rejects),
            "reports_with_triplets": with_triplets,
            "negated": sum(negated.values()),
            "uncertain": sum(table.column("uncertain").to_pylist()),
            "categories": len(positive | negated),
            "category_histogram": dg.MetadataValue.md(bar_chart_markdown(positive, "positive findings by category")),
            "negated_histogram": dg.MetadataValue.md(bar_chart_markdown(negated, "negated findings by category")),
            "reject_reasons": md_table([{"reason": k, "count": v} for k, v in
                                        Counter(r["reason"] for r in rejects.to_pylist()).most_common()]),
            "path": dg.MetadataValue.path(str(out_path)),
            "rejects_path": dg.MetadataValue.path(str(rejects_path)),
            "sha256": digest,
            "preview": preview(table, ["study_id", "severity", "location", "category", "negated", "uncertain", "sentence"], 10),
        },
        check_results=[
            dg.AssetCheckResult(check_name="share_of_reports_with_triplets", passed=share >= config.min_share_with_triplets,
                                metadata={"share": round(share, 4), "reports_with_triplets": with_triplets,
                                          "answered_reports": answered, "minimum": config.min_share_with_triplets}),
            dg.AssetCheckResult(check_name="categories_in_vocabulary", passed=reject_rate <= config.max_reject_rate,
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"outside_vocabulary": len(outside), "findings": findings,
                                          "rate": round(reject_rate, 4),
                                          "examples": md_table(outside[:10], ["study_id", "raw_category", "sentence"])}),
        ],
    )


def add_stats(total: ExtractionStats, part: ExtractionStats) -> None:
    for name, value in part.as_dict().items():
        if name == "cost_usd":
            if value is not None:
                total.cost_usd = (total.cost_usd or 0.0) + value
        else:
            setattr(total, name, getattr(total, name) + value)


def _progress_logger(context: dg.AssetExecutionContext, shard: str):
    last = {"logged": -1}

    def log(done: int, total: int) -> None:
        step = max(1, total // 5)
        if done // step != last["logged"] and (done == total or done % step == 0):
            last["logged"] = done // step
            context.log.info(f"{shard}: {done}/{total} reports extracted")

    return log
