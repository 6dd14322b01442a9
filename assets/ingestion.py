"""Ingestion assets: DICOM (or MIMIC-CXR-JPG) archive and reports -> Parquet, per shard.

Each asset is thin: it resolves paths, calls the plain functions in `ingestion/`, and turns
their results into metadata and check results.
"""


from pathlib import Path
from typing import Optional

import dagster as dg
import pyarrow.parquet as pq

from assets.ingestion_checks import leak_check, leaks_in, quarantine_rate_check
from assets.metadata import counts, md_table, preview
from assets.partitions import shard_partitions
from assets.resources import ArchiveResource, StorageResource
from common.storage import file_sha256
from ingestion.dicom_index import choose_id_rule, header_identifiers, index_ids
from ingestion.identifiers import identifier_signatures
from ingestion.images import DECODER_VERSION, build_cxr_images, contact_sheet_markdown
from ingestion.layout import archive_problem, has_shard, shard_problem
from ingestion.shards import index_shard, reports_shard

dicom_files = dg.AssetSpec(
    "dicom_files",
    group_name="sources",
    partitions_def=shard_partitions,
    description="The image archive (DICOM, or MIMIC-CXR-JPG) in the MIMIC-CXR folder layout; "
    "one partition per shard (subject-folder prefix, e.g. p1004). Configured by the `archive` resource.",
)
report_files = dg.AssetSpec(
    "report_files",
    group_name="sources",
    partitions_def=shard_partitions,
    description="Free-text radiology reports, files/pNN/p{subject}/s{study}.txt.",
)


class IndexConfig(dg.Config):
    # Above this share of quarantined files the shard fails (blocking check): an archive that
    # is mostly unreadable is a wrong root or a broken copy, not something to train on. None: the
    # archive resource's value (archive.max_quarantine_rate in medfilip.yaml).
    max_quarantine_rate: Optional[float] = None
    # A shard with fewer files than this fails the rate only when none is usable, and warns
    # otherwise: one bad file of two newly arrived is no broken copy. None: the archive resource's.
    quarantine_rate_min_files: Optional[int] = None
    # Read and hash every file again instead of keeping the rows of files whose size and mtime
    # are unchanged (e.g. after restoring an archive with tools that keep timestamps).
    reread_all: bool = False


class ImagesConfig(dg.Config):
    image_size: int = 448
    workers: int = 2
    row_group_size: int = 64
    pad_to_square: bool = False
    # Decode JPEG 2000 one resolution level down where that keeps >= 99.9% of pixels within one
    # grey level of the full decode (448 px from MIMIC-CXR-size images: 3x faster; smaller
    # sources and 224 px decode in full, see ingestion.decode.j2k_level_for). False: always in full.
    reduce_jpeg2000: bool = True


@dg.asset(
    deps=[dicom_files],
    partitions_def=shard_partitions,
    group_name="ingestion",
    kinds={"parquet", "dicom"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec("no_identifier_leaks", asset="dicom_index", blocking=True,
                          description="No PatientName/PatientID/birth date value seen in headers appears in outputs."),
        dg.AssetCheckSpec("quarantine_rate", asset="dicom_index", blocking=True,
                          description="Share of files quarantined stays under the configured rate."),
    ],
)
def dicom_index(
    context: dg.AssetExecutionContext, config: IndexConfig, storage: StorageResource, archive: ArchiveResource
) -> dg.MaterializeResult:
    """One row per image instance: ids, view, geometry, encoding, file sha256, salted patient key.
    Unusable files go to the `quarantine` table with the reason."""
    shard = context.partition_key
    root = checked_root(context, archive.image_root(storage), shard)
    id_rule = archive_id_rule(context.instance, archive, root)
    index_path = storage.asset_path("dicom_index", f"{shard}.parquet")
    quarantine_path = storage.asset_path("quarantine", "index", f"{shard}.parquet")
    result = index_shard(
        root, shard, storage.patient_salt(), index_path, quarantine_path,
        source_format=archive.source_format(), metadata_csv=archive.metadata_path(),
        progress=lambda n: n % 500 == 0 and context.log.info(f"{shard}: indexed {n} files"),
        reuse=not config.reread_all, colour=archive.colour_mode(), id_rule=id_rule, max_pixels=archive.max_image_pixels,
        # Read under the shards' id lock, once this shard's files are read: a shard indexed at
        # the same moment has then written its ids, or waits to read this one's.
        taken_ids=lambda: index_ids(other_shard_indexes(context, storage, shard), id_rule),
    )
    total = result.index.num_rows + result.quarantine.num_rows
    leaks = leaks_in(storage, [index_path, quarantine_path], identifier_signatures(result.identifier_values))
    digest = file_sha256(index_path)
    context.log.info(f"{shard}: {result.index.num_rows} indexed ({result.reused} unchanged since the last run, "
                     f"not read again), {result.quarantine.num_rows} quarantined from {root}")
    limit = archive.max_quarantine_rate if config.max_quarantine_rate is None else config.max_quarantine_rate
    floor = (archive.quarantine_rate_min_files if config.quarantine_rate_min_files is None
             else config.quarantine_rate_min_files)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": result.index.num_rows,
            "quarantined": result.quarantine.num_rows,
            "files_read": total - result.reused,
            "rows_reused": result.reused,
            # The archive's id rule, recorded with the instance: every later run reads it back.
            "id_rule": id_rule,
            "colour": archive.colour_mode(),
            "quarantine_reasons": md_table(result.quarantine.select(["source_path", "reason"]).to_pylist()),
            "views": counts(result.index.column("view_position").to_pylist(), "view"),
            "photometric": counts(result.index.column("photometric_interpretation").to_pylist(), "photometric"),
            "transfer_syntax": counts(result.index.column("transfer_syntax_uid").to_pylist(), "transfer syntax"),
            "archive_root": dg.MetadataValue.path(str(root)),
            "path": dg.MetadataValue.path(str(index_path)),
            "sha256": digest,
            "seconds": round(result.seconds, 2),
            "preview": preview(result.index, ["dicom_id", "study_id", "view_position", "rows", "columns",
                                              "photometric_interpretation", "bits_stored"]),
        },
        data_version=dg.DataVersion(digest[:16]),
        check_results=[
            leak_check(shard, leaks, len(result.identifier_values)),
            quarantine_rate_check(shard, result.quarantine, total, limit, floor, storage, quarantine_path),
        ],
    )


def archive_id_rule(instance: dg.DagsterInstance, archive: ArchiveResource, root: Path) -> str:
    """The archive's id rule: the one recorded with the instance (the `id_rule` of dicom_index's
    latest materialisation, any shard), else the configured one, else detected from the archive's
    file names on this, its first ingestion. A configured rule contradicting the record fails the
    run in one line. MIMIC-CXR-JPG ids are its metadata CSV's own (the file stem)."""
    configured = archive.configured_id_rule()
    if archive.source_format() == "jpg":
        if configured not in ("auto", "stem"):
            raise dg.Failure(description=f"archive.id_rule {configured!r} applies to DICOM archives; "
                                         "MIMIC-CXR-JPG images keep the dicom_id of its metadata CSV: set auto or stem")
        return "stem"
    event = instance.get_latest_materialization_event(dg.AssetKey("dicom_index"))
    recorded = None
    if event is not None and event.asset_materialization is not None:
        value = event.asset_materialization.metadata.get("id_rule")
        recorded = value.value if value is not None else "stem"  # indexed before id rules: ids were stems
    try:
        return choose_id_rule(configured, recorded, root)
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from None


def other_shard_indexes(context: dg.AssetExecutionContext, storage: StorageResource, shard: str) -> list[Path]:
    """The index files of the instance's other shards, whose ids this shard must not give again.
    Registered shards only, and none nested in this one (p10 beside p1004, from another granularity,
    would hold the same files)."""
    shards = context.instance.get_dynamic_partitions(shard_partitions.name)
    return [storage.asset_path("dicom_index", f"{other}.parquet") for other in shards
            if not (other.startswith(shard) or shard.startswith(other))]


@dg.asset(
    deps=["dicom_index"],
    partitions_def=shard_partitions,
    group_name="ingestion",
    kinds={"parquet"},
    code_version=DECODER_VERSION,  # new pixels for the same files: stale in the UI
)
def cxr_images(
    context: dg.AssetExecutionContext, config: ImagesConfig, storage: StorageResource, archive: ArchiveResource
) -> dg.MaterializeResult:
    """Decoded pixels for training: LUTs applied, MONOCHROME1 inverted, resized, uint8,
    written row group by row group with several decoding processes."""
    shard = context.partition_key
    index = pq.read_table(storage.asset_path("dicom_index", f"{shard}.parquet"))
    out_path = storage.asset_path("cxr_images", f"{shard}.parquet")
    step = max(1, index.num_rows // 10)
    result = build_cxr_images(
        index, archive.image_root(storage), out_path,
        storage.asset_path("quarantine", "decode", f"{shard}.parquet"),
        size=config.image_size, workers=config.workers, row_group_size=config.row_group_size,
        pad_to_square=config.pad_to_square, reduce_jpeg2000=config.reduce_jpeg2000, colour=archive.colour_mode(),
        max_pixels=archive.max_image_pixels,
        progress=lambda done, total: done % step == 0 and context.log.info(f"{shard}: decoded {done}/{total}"),
    )
    digest = file_sha256(out_path)
    rate = result.images / result.seconds if result.seconds else 0.0
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": result.images,
            "quarantined_at_decode": result.quarantined,
            "reused_unchanged": result.reused,
            "image_size": config.image_size,
            "row_groups": pq.ParquetFile(out_path).num_row_groups,
            "images_per_second": round(rate, 1),
            "workers": config.workers,
            "path": dg.MetadataValue.path(str(out_path)),
            "sha256": digest,
            "sample": dg.MetadataValue.md(contact_sheet_markdown(result.sample)),
        },
        data_version=dg.DataVersion(digest[:16]),
    )


@dg.asset(
    deps=[report_files, "dicom_index"],
    partitions_def=shard_partitions,
    group_name="ingestion",
    kinds={"parquet"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec("every_imaged_study_has_a_report", asset="reports",
                          description="Every study with indexed images has a report row."),
        dg.AssetCheckSpec("no_identifier_leaks", asset="reports", blocking=True,
                          description="No patient identifier from the DICOM headers appears in report rows."),
    ],
)
def reports(context: dg.AssetExecutionContext, storage: StorageResource, archive: ArchiveResource) -> dg.MaterializeResult:
    """One row per study: full text, FINDINGS and IMPRESSION, text sha256; reports without
    usable text are kept and flagged."""
    shard = context.partition_key
    out_path = storage.asset_path("reports", f"{shard}.parquet")
    root = checked_root(context, archive.reports_root(storage), shard)
    table = reports_shard(root, shard, storage.patient_salt(), out_path)
    index_path = storage.asset_path("dicom_index", f"{shard}.parquet")
    imaged = set(pq.read_table(index_path, columns=["study_id"]).column("study_id").to_pylist()) if index_path.exists() else set()
    missing = sorted(imaged - set(table.column("study_id").to_pylist()))
    identifiers = header_identifiers(archive.image_root(storage), shard) if archive.source_format() == "dicom" else set()
    leaks = leaks_in(storage, [out_path], identifier_signatures(identifiers))
    flags = [f for f in table.column("flag").to_pylist() if f]
    digest = file_sha256(out_path)
    context.log.info(f"{shard}: {table.num_rows} reports, {len(flags)} flagged, {len(missing)} imaged studies without report")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "usable": sum(table.column("usable").to_pylist()),
            "flags": counts(flags, "flag"),
            "path": dg.MetadataValue.path(str(out_path)),
            "sha256": digest,
            "preview": preview(table, ["study_id", "findings", "impression", "flag"]),
        },
        data_version=dg.DataVersion(digest[:16]),
        check_results=[
            dg.AssetCheckResult(check_name="every_imaged_study_has_a_report", passed=not missing,
                                description=(f"shard {shard}: {len(missing)} of {len(imaged)} imaged studies have no "
                                             f"report file in {root} (e.g. {', '.join(missing[:3])})")
                                if missing else None,
                                metadata={"imaged_studies": len(imaged), "without_report": len(missing),
                                          "examples": ", ".join(missing[:10]) or "none"}),
            leak_check(shard, leaks, len(identifiers)),
        ],
    )


def checked_root(context: dg.AssetExecutionContext, root: Path, shard: str) -> Path:
    """The archive root, or a one-line failure when it cannot be one. A valid archive without
    this shard's folder gives an empty shard (MIMIC-CXR subsets often hold a few pNN only)."""
    problem = shard_problem(shard) or archive_problem(root)
    if problem:
        raise dg.Failure(description=problem)
    if not has_shard(root, shard):
        context.log.warning(f"{shard}: no folder {shard} under {root}; this shard is empty")
    return root
