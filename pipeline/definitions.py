"""The Dagster code location: every asset, check, job, sensor, schedule and resource, chosen in one
place, with the resources built from the one settings object (pipeline/settings.py)."""

import dagster as dg

from assets.checks import every_triplet_category_described
from assets.evaluation import finetune_eval, retrieval_eval, segmentation_eval, zero_shot_eval
from assets.extraction import llm_extractions, prompts, report_labels, triplets
from assets.ingestion import cxr_images, dicom_files, dicom_index, report_files, reports
from assets.knowledge import knowledge_base, ssm, text_embeddings, training_texts
from assets.resources import ArchiveResource, ExtractorResource, MLflowResource, StorageResource, TrainingResource
from assets.training import pretrained_model
from pipeline.jobs import jobs
from pipeline.schedules import nightly_extraction_schedule
from pipeline.sensors import archive_arrival_sensor, dead_run_sensor, prompt_change_sensor, prompt_downstream_sensor
from pipeline.settings import SALT_ENV, Settings, load_settings


def resources_from(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources, the settings' values as their fields' defaults: a run config that sets one
    field (say the extractor's timeout_s) keeps every other field the settings chose."""
    archive = settings.archive
    training = settings.training
    chosen = {
        StorageResource: dict(home=str(settings.home), salt_env=SALT_ENV, weights_dir=str(training.weights_dir or "")),
        ArchiveResource: dict(root=str(archive.root or ""), report_root=str(archive.report_root or ""),
                              image_format=archive.image_format, metadata_csv=str(archive.metadata_csv or ""),
                              colour=archive.colour, id_rule=archive.id_rule,
                              max_quarantine_rate=archive.max_quarantine_rate,
                              quarantine_rate_min_files=archive.quarantine_rate_min_files,
                              max_image_pixels=archive.max_image_pixels),
        ExtractorResource: settings.extractor.set_values(),
        TrainingResource: dict(preset=training.preset, overrides=training.overrides, launcher=training.launcher,
                               nproc_per_node=training.nproc_per_node),
        MLflowResource: dict(tracking_uri=settings.mlflow.tracking_uri),
    }
    keys = {StorageResource: "storage", ArchiveResource: "archive", ExtractorResource: "extractor",
            TrainingResource: "training", MLflowResource: "mlflow_tracking"}
    return {keys[cls]: with_defaults(cls, values)() for cls, values in chosen.items()}


def with_defaults(cls: type[dg.ConfigurableResource], values: dict) -> type[dg.ConfigurableResource]:
    """`cls` with `values` as the defaults of its fields. Dagster resolves a run config's resource
    section against the class's defaults, not against the values an instance was built with, so
    the settings must be defaults for a partial run config to merge onto them."""
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                 "__annotations__": {name: cls.model_fields[name].annotation for name in values}, **values}
    return type(cls.__name__, (cls,), namespace)


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
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
        resources=resources_from(settings),
    )


# What `dagster dev -m pipeline.definitions`, its daemon and each run process load: every one of
# them a fresh process, so the settings are read once, here, per process.
defs = build_definitions(load_settings())
