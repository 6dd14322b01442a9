"""Evaluation assets over the latest `pretrained_model`: zero-shot classification (seen and
unseen categories), retrieval, fine-tuning at 1/10/100% labels and segmentation. Each is an
MLflow run nested under the model's run, with metrics, CIs, ROC curves and example images as
artifacts, and a markdown results table in Dagster metadata.

Unlike the reference code: thresholds are chosen on a validation split, never the test split;
AUC is scikit-learn's; fine-tuning and segmentation load the pre-trained weights and are
compared with the same architecture from random (and ImageNet) initialisation.
"""

import json
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import field_validator

from assets.metadata import format_interval
from assets.plots import png_markdown
from assets.resources import ArchiveResource, MLflowResource, StorageResource
from tracking.store import DAGSTER_ASSET_TAG, DAGSTER_RUN_TAG


class EvalConfig(dg.Config):
    eval_root: str = ""  # folder with nih/, rsna/, siim/ in published layouts; default: <archive root>/eval
    dataset: str = "nih"  # one of evaluation.benchmark_sets.ALL_EVAL_SETS
    labels_csv: str = ""  # a real dataset's label file (overrides eval_root for nih/rsna/siim/vinbigdata)
    split_csv: str = ""  # MIMIC-CXR: mimic-cxr-2.0.0-split.csv (5x200 drawn from its test split)
    images_dir: str = ""  # its images (for covid: the root with class folders)
    n_boot: int = 500
    paper_protocol: bool = True  # also report the paper's test-tuned threshold sweep, labelled as such
    epochs: int = 3  # fine-tuning / segmentation training epochs
    seed: int = 0
    # Fine-tuning and segmentation run on seeds seed .. seed+seeds-1; their verdicts need >= 3.
    seeds: int = 3
    # Fine-tuning / segmentation on the set's first N images (0: all): seeds multiply their cost,
    # a smaller set per seed keeps it bounded (the intervals widen accordingly, they do not lie).
    max_images: int = 0
    # retrieval_eval: "shared_category" (ours) or "identical_labels" (the published code's rule)
    retrieval_relevance: Literal["shared_category", "identical_labels"] = "shared_category"

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from evaluation.benchmark_sets import ALL_EVAL_SETS

        if value not in ALL_EVAL_SETS:
            raise ValueError(f"unknown evaluation dataset {value!r}: use one of {', '.join(ALL_EVAL_SETS)}")
        return value


EVAL_DEPS = ["pretrained_model", "training_texts"]


@dg.asset(deps=EVAL_DEPS, group_name="evaluation", kinds={"pytorch", "mlflow"}, code_version="1")
def zero_shot_eval(context: dg.AssetExecutionContext, config: EvalConfig, storage: StorageResource,
                   archive: ArchiveResource, mlflow_tracking: MLflowResource) -> dg.MaterializeResult:
    """Zero-shot multi-label classification with prompts "{category}. {description}": per-class
    and mean AUC with 95% bootstrap CIs, F1/accuracy at validation thresholds; categories unseen
    in pre-training reported apart."""
    from evaluation.encode import load_pretrained
    from evaluation.zero_shot import evaluate_zero_shot, unseen_categories
    from knowledge.base import load_knowledge

    model_info = latest_model(context)
    data = load_eval_dataset(config, archive.image_root(storage))
    kb = load_knowledge()
    unseen = unseen_categories(kb, storage.layout().asset_dir("training_texts"))
    model, tokenizer = load_pretrained(model_info["checkpoint"])
    report = evaluate_zero_shot(model, tokenizer, data, kb, unseen=unseen, n_boot=config.n_boot,
                                seed=config.seed, paper_protocol=config.paper_protocol)
    results = {"zero_shot": {data.name: report}}
    summary = {"mean_auc": report["mean_auc"], "mean_f1": report["mean_f1"], "mean_acc": report["mean_acc"],
               **{f"auc_{c.replace(' ', '_')}": v["auc"] for c, v in report["per_class"].items()}}
    for group in ("seen", "unseen"):
        if report.get(group, {}).get("evaluable"):
            summary[f"{group}_mean_auc"] = report[group]["mean_auc"]
    return record_evaluation(context, "zero_shot_eval", results, summary, model_info, mlflow_tracking, storage,
                             roc=report.get("roc"), examples=data, config=config, data=data,
                             extra={"mean_auc_ci": format_interval(report.get("mean_auc_ci")),
                                    "unseen_categories": ", ".join(unseen)})


@dg.asset(deps=EVAL_DEPS, group_name="evaluation", kinds={"pytorch", "mlflow"}, code_version="1")
def retrieval_eval(context: dg.AssetExecutionContext, config: EvalConfig, storage: StorageResource,
                   archive: ArchiveResource, mlflow_tracking: MLflowResource) -> dg.MaterializeResult:
    """Image->text and text->image Recall@K and Precision@K (K = 1, 5, 10); a text is relevant to
    an image when they share a positive category (stated in the results)."""
    from evaluation.encode import load_pretrained
    from evaluation.retrieval import evaluate_retrieval, prompt_gallery, with_no_finding
    from knowledge.base import load_knowledge

    model_info = latest_model(context)
    data = with_no_finding(load_eval_dataset(config, archive.image_root(storage)))
    texts, labels = prompt_gallery(load_knowledge(), data.categories)
    model, tokenizer = load_pretrained(model_info["checkpoint"])
    report = evaluate_retrieval(model, tokenizer, data, texts, labels, relevance_rule=config.retrieval_relevance)
    summary = {f"{direction}_{key.replace('@', '_at_')}": value for direction in ("image_to_text", "text_to_image")
               for key, value in report[direction].items() if "@" in key}
    return record_evaluation(context, "retrieval_eval", {"retrieval": {data.name: report}}, summary, model_info,
                             mlflow_tracking, storage, config=config, data=data,
                             extra={"relevance": str(report.get("relevance", ""))})


@dg.asset(deps=EVAL_DEPS, group_name="evaluation", kinds={"pytorch", "mlflow"}, code_version="1")
def finetune_eval(context: dg.AssetExecutionContext, config: EvalConfig, storage: StorageResource,
                  archive: ArchiveResource, mlflow_tracking: MLflowResource) -> dg.MaterializeResult:
    """Linear probe and full fine-tuning with 1%, 10% and 100% of the labelled training split
    (stratified, fixed seeds), pre-trained against random / ImageNet initialisation."""
    from evaluation.finetune import FinetuneConfig, run_finetune

    model_info = latest_model(context)
    data = first_images(load_eval_dataset(config, archive.image_root(storage)), config.max_images)
    report = run_finetune(data, model_info["model_config"], model_info["checkpoint"], seeds=seed_list(config),
                          config=FinetuneConfig(epochs=config.epochs, seed=config.seed), n_boot=config.n_boot,
                          weights_dir=storage.weights_folder())
    summary = {}
    for arm in report["arms"]:
        key = f"auc_{arm['mode']}_{arm['init']}_{int(arm['fraction'] * 100)}pct"
        summary.update({key: arm["mean_auc"], f"{key}_sd": arm["mean_auc_sd"]})
    verdicts = {f"{c['mode']}_{int(c['fraction'] * 100)}pct_vs_{c['baseline_init']}": c for c in report["comparisons"]}
    return record_evaluation(context, "finetune_eval", {"finetune": {data.name: report}}, summary, model_info,
                             mlflow_tracking, storage, config=config, data=data, comparisons=verdicts)


@dg.asset(deps=EVAL_DEPS, group_name="evaluation", kinds={"pytorch", "mlflow"}, code_version="1")
def segmentation_eval(context: dg.AssetExecutionContext, config: EvalConfig, storage: StorageResource,
                      archive: ArchiveResource, mlflow_tracking: MLflowResource) -> dg.MaterializeResult:
    """U-Net decoder on the pre-trained image encoder, trained on pneumothorax masks (SIIM
    layout): Dice and IoU per image and mean with CIs, against the same net without pre-training."""
    from evaluation.segmentation import SUBSET_METRICS, SegmentationConfig, run_segmentation

    model_info = latest_model(context)
    siim = config.model_copy(update={"dataset": "siim"}) if config.dataset != "siim" else config
    data = first_images(load_eval_dataset(siim, archive.image_root(storage)), config.max_images)
    report = run_segmentation(data, model_info["model_config"], model_info["checkpoint"], seeds=seed_list(config),
                              config=SegmentationConfig(epochs=config.epochs, seed=config.seed), n_boot=config.n_boot,
                              weights_dir=storage.weights_folder())
    summary = {f"{metric}_{arm['init']}{suffix}": arm[f"{metric}{suffix}"] for arm in report["arms"]
               for metric in ("mean_dice", "mean_iou", *SUBSET_METRICS) for suffix in ("", "_sd")}
    # "dice_vs_random" (all test images), "dice_with_mask_vs_random", "dice_without_mask_vs_random"
    verdicts = {f"dice{'' if c['subset'] == 'all' else '_' + c['subset']}_vs_{c['baseline_init']}": c
                for c in report["comparisons"]}
    return record_evaluation(context, "segmentation_eval", {"segmentation": {data.name: report}}, summary,
                             model_info, mlflow_tracking, storage, examples=data, config=siim, data=data,
                             comparisons=verdicts)


def first_images(data, max_images: int):
    return data.subset(range(max_images)) if 0 < max_images < len(data) else data


def seed_list(config: EvalConfig) -> list[int]:
    if config.seeds < 3:
        raise dg.Failure(f"seeds={config.seeds}: a pre-trained-vs-baseline verdict needs at least 3 seeds")
    return list(range(config.seed, config.seed + config.seeds))


def latest_model(context: dg.AssetExecutionContext) -> dict:
    """Checkpoint, MLflow run and config of the latest `pretrained_model` materialisation."""
    import torch

    event = context.instance.get_latest_materialization_event(dg.AssetKey("pretrained_model"))
    if event is None or event.asset_materialization is None:
        raise dg.Failure("pretrained_model has not been materialised: evaluation needs a checkpoint")
    metadata = event.asset_materialization.metadata
    checkpoint = str(metadata["path"].value)
    if not Path(checkpoint).is_file():
        raise dg.Failure(f"the pretrained_model checkpoint {checkpoint} is missing: re-materialise pretrained_model")
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return {"checkpoint": checkpoint, "sha256": metadata["sha256"].value,
            "mlflow_run_id": metadata["mlflow_run_id"].value, "model_config": payload["model_config"]}


def load_eval_dataset(config: EvalConfig, archive_root: Path):
    from evaluation.benchmark_sets import load_named_eval_set as load

    try:
        return load(config.dataset, eval_root=config.eval_root or archive_root / "eval",
                    labels_csv=config.labels_csv, images_dir=config.images_dir, split_csv=config.split_csv)
    except (FileNotFoundError, ValueError) as exc:
        raise dg.Failure(str(exc)) from exc


def record_evaluation(context, name: str, results: dict, summary: dict, model_info: dict,
                      tracking: MLflowResource, storage: StorageResource, roc: dict | None = None,
                      examples=None, extra: dict | None = None, config: EvalConfig | None = None,
                      data=None, comparisons: dict[str, dict] | None = None) -> dg.MaterializeResult:
    """The evaluation's MLflow run (nested under the model's run) and its Dagster materialisation.
    The run carries the config as params and the evaluation set and checkpoint as dataset inputs,
    with the digests the Dagster metadata shows. `comparisons` (name -> evaluation.compare result)
    become metrics (difference and its interval) and a verdict each, as MLflow tags
    `medfilip.verdict.{name}` and as metadata."""
    from evaluation.compare import describe
    from tracking.digests import eval_set_digest
    from tracking.evaluation_runs import log_evaluation

    experiment_id = tracking.activate(storage)
    tags = {DAGSTER_RUN_TAG: context.run.run_id, DAGSTER_ASSET_TAG: name,
            "medfilip.checkpoint_sha256": model_info["sha256"]}
    params = {**(config.model_dump() if config else {}), "checkpoint": model_info["checkpoint"]}
    datasets = [("pretrained_model", str(model_info["sha256"])[:16], str(Path(model_info["checkpoint"]).parent))]
    data_digest = None
    if data is not None:
        data_digest = eval_set_digest(data)
        params["eval_dataset"] = data.name
        params["eval_images"] = len(data.image_ids)
        location = str(Path(data.paths[0]).parent) if data.paths else data.name
        datasets.append((f"eval_{data.name}", data_digest, location))
    summary, extra = dict(summary), dict(extra or {})
    for key, comparison in (comparisons or {}).items():
        difference = comparison["difference"]
        summary.update({f"diff_{key}": difference["mean"], f"diff_{key}_ci_low": difference["ci"][0],
                        f"diff_{key}_ci_high": difference["ci"][1]})
        tags[f"medfilip.verdict.{key}"] = comparison["verdict"]
        extra[f"verdict_{key}"] = describe(comparison, comparison["metric"], comparison["candidate_init"],
                                           comparison["baseline_init"])
    record = log_evaluation(name, results, summary, storage.layout().asset_dir(name), experiment_id=experiment_id,
                            parent_run_id=model_info["mlflow_run_id"], tags=tags, roc=roc, examples=examples,
                            params=params, datasets=datasets)
    metadata = {"results": dg.MetadataValue.md(record.table), **{k: round(v, 4) for k, v in record.metrics.items()},
                **extra, "model_checkpoint_sha256": model_info["sha256"],
                **({"eval_dataset_digest": data_digest} if data_digest else {}),
                "mlflow_run_id": record.run_id,
                "mlflow_run": dg.MetadataValue.url(tracking.run_url(experiment_id, record.run_id)),
                "path": dg.MetadataValue.path(str(record.files["results"]))}
    for key in ("roc", "examples"):
        if key in record.files:
            metadata[key] = dg.MetadataValue.md(png_markdown(record.files[key], key))
    context.log.info(f"{name}: " + json.dumps({k: round(v, 3) for k, v in list(record.metrics.items())[:6]}))
    return dg.MaterializeResult(metadata=metadata)
