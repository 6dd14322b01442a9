"""The Dagster code location: every asset, check, job, sensor and resource, chosen in one place."""

import dagster as dg

from assets.evaluation import finetune_eval, retrieval_eval, segmentation_eval, zero_shot_eval
from assets.extraction import llm_extractions, prompts, report_labels, triplets
from assets.ingestion import cxr_images, dicom_files, dicom_index, report_files, reports
from assets.knowledge import every_triplet_category_described, knowledge_base, ssm, text_embeddings, training_texts
from assets.training import pretrained_model
from pipeline.jobs import jobs
from pipeline.resources import ArchiveResource, ExtractorResource, MLflowResource, StorageResource
from pipeline.sensors import (
    archive_arrival_sensor,
    dead_run_sensor,
    nightly_extraction_schedule,
    prompt_change_sensor,
    prompt_downstream_sensor,
)

defs = dg.Definitions(
    assets=[
        dicom_files, report_files, dicom_index, cxr_images, reports,
        prompts, llm_extractions, triplets, report_labels,
        knowledge_base, training_texts, text_embeddings, ssm,
        pretrained_model,
        zero_shot_eval, retrieval_eval, finetune_eval, segmentation_eval,
    ],
    asset_checks=[every_triplet_category_described],
    jobs=jobs,
    sensors=[prompt_change_sensor, prompt_downstream_sensor, dead_run_sensor, archive_arrival_sensor],
    schedules=[nightly_extraction_schedule],
    resources={
        "storage": StorageResource(),
        "archive": ArchiveResource(),
        "extractor": ExtractorResource(),
        "mlflow_tracking": MLflowResource(),
    },
)
