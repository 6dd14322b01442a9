"""The Dagster code location: every asset, check, job and resource, chosen in one place."""

import dagster as dg

from assets.ingestion import cxr_images, dicom_files, dicom_index, report_files, reports
from pipeline.jobs import jobs
from pipeline.resources import ArchiveResource, StorageResource

defs = dg.Definitions(
    assets=[dicom_files, report_files, dicom_index, cxr_images, reports],
    jobs=jobs,
    resources={
        "storage": StorageResource(),
        "archive": ArchiveResource(),
    },
)
