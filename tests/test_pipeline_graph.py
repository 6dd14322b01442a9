"""The whole graph on a small archive in a real Dagster instance and a real MLflow SQLite
store: knowledge, SSM, pre-training (tiny model) and the model's lineage."""

import json

import dagster as dg
import mlflow
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from assets.partitions import register_shards
from pipeline.definitions import defs
from assets.resources import ArchiveResource, ExtractorResource, MLflowResource, StorageResource, TrainingResource
from corpus.generate import generate_corpus
from ingestion.layout import SHARDS

pytestmark = pytest.mark.slow  # > 30 s: see pyproject's markers

TRAIN = {"model": "tiny", "epochs": 1, "batch_size": 4, "val_batch_size": 4, "loss": "ssm_scaled"}
EVALS = ("zero_shot_eval", "retrieval_eval", "finetune_eval", "segmentation_eval")
EVAL = {"config": {"n_boot": 50, "epochs": 1}}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph")
    home, archive = tmp / "home", tmp / "archive"
    generate_corpus(archive, studies=30, seed=3, image_size=96, eval_images=24)
    resources = {"storage": StorageResource(home=str(home)), "archive": ArchiveResource(root=str(archive)),
                 "extractor": ExtractorResource(), "mlflow_tracking": MLflowResource(),
                 "training": TrainingResource()}
    graph_defs = dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, resources=resources)
    ingest = dg.define_asset_job("ingest", selection=dg.AssetSelection.groups("ingestion"))
    rest = dg.define_asset_job("rest", selection=dg.AssetSelection.groups("extraction", "knowledge", "training",
                                                                          "evaluation")
                               | dg.AssetSelection.assets("prompts"))
    graph_defs = dg.Definitions.merge(graph_defs, dg.Definitions(jobs=[ingest, rest]))
    config = {"ops": {"cxr_images": {"config": {"image_size": 64, "workers": 1}},
                      "training_texts": {"config": {"val_fraction": 0.3}},
                      "pretrained_model": {"config": {"overrides_json": json.dumps(TRAIN)}}}}
    with dg.instance_for_test() as instance:
        register_shards(instance, list(SHARDS))
        for shard in SHARDS:
            run = graph_defs.resolve_job_def("ingest").execute_in_process(
                instance=instance, partition_key=shard,
                run_config={"ops": {"cxr_images": config["ops"]["cxr_images"]}})
            assert run.success
        result = graph_defs.resolve_job_def("rest").execute_in_process(
            instance=instance, run_config={"ops": {**{k: config["ops"][k] for k in ("training_texts", "pretrained_model")},
                                                   **{k: EVAL for k in EVALS}}})
        yield {"home": home, "result": result, "instance": instance, "defs": graph_defs}


def test_graph_materialises_with_passing_ssm_checks(graph):
    result = graph["result"]
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    for name in ("symmetric", "unit_diagonal", "value_range", "zero_across_categories"):
        assert checks[name], name
    assert checks["every_triplet_category_described"]


def test_every_image_gets_texts_and_a_patient_wise_split(graph):
    rows = pq.read_table(graph["home"] / "data" / "training_texts" / "image_texts.parquet").to_pylist()
    images = sum(pq.read_metadata(p).num_rows for p in (graph["home"] / "data" / "cxr_images").glob("*.parquet"))
    assert len(rows) == images > 30 and all(r["text_ids"] for r in rows)
    assert {r["split"] for r in rows} == {"train", "val"}
    splits = {}
    for r in rows:
        splits.setdefault(r["patient_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())


def test_pretrained_model_is_an_mlflow_run_with_lineage_and_a_registered_version(graph):
    meta = graph["result"].asset_materializations_for_node("pretrained_model")[0].metadata
    run = MlflowClient().get_run(meta["mlflow_run_id"].value)
    assert run.data.params["model"] == "tiny" and run.data.params["loss"] == "ssm_scaled"
    assert run.data.tags["dagster.run_id"] == graph["result"].run_id
    assert run.data.tags["medfilip.extraction_backend"] == "rules"
    assert len(run.data.tags["medfilip.prompt_version"]) >= 12
    assert "val_loss" in run.data.metrics and "zero_shot_mean_auc" in run.data.metrics
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"cxr_images", "training_texts", "ssm"} and all(inputs.values())
    version = MlflowClient().get_model_version("medfilip", str(meta["model_version"].value))
    assert version.run_id == run.info.run_id
    assert mlflow.get_tracking_uri().startswith("sqlite:///") and str(graph["home"]) in mlflow.get_tracking_uri()

    lineage = json.loads(open(meta["lineage_path"].value).read())
    assets = {e["asset"] for e in lineage["inputs"]}
    assert {"ssm", "training_texts", "triplets", "llm_extractions", "reports", "cxr_images", "dicom_index"} <= assets
    assert lineage["checkpoint_sha256"] == meta["sha256"].value

    # One digest per dataset: MLflow's input, the Dagster metadata and `medfilip lineage` agree.
    from tracking.lineage import dataset_digests

    printed = dataset_digests(lineage["inputs"])
    assert inputs == {name: printed[name] for name in inputs}
    assert all(meta[f"input_digest_{name}"].value == digest for name, digest in inputs.items())
    ssm_meta = graph["result"].asset_materializations_for_node("ssm")[0].metadata
    assert inputs["ssm"] == ssm_meta["sha256"].value[:16]

    # The registered model has a signature and an input example, and is logged from code.
    info = mlflow.models.get_model_info(f"models:/medfilip/{meta['model_version'].value}")
    assert info.signature is not None and "text" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None
    assert "model_code_path" in info.flavors["python_function"]
    assert run.info.run_id and "training_curves.png" in {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}


def test_registered_model_loads_outside_the_repository_from_its_own_code(graph, tmp_path):
    """A fresh interpreter in another folder, without our packages on PYTHONPATH: the model's
    code paths provide them, and predict answers text and images."""
    import os
    import subprocess
    import sys

    meta = graph["result"].asset_materializations_for_node("pretrained_model")[0].metadata
    script = f"""
import io, sys, warnings
warnings.simplefilter("default")
import mlflow, numpy as np, pandas as pd
from PIL import Image
mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r})
model = mlflow.pyfunc.load_model("models:/medfilip/{meta['model_version'].value}")
text = model.predict(pd.DataFrame({{"text": ["small left effusion", "no pneumothorax"]}}))
png = io.BytesIO(); Image.fromarray(np.full((80, 80), 128, np.uint8)).save(png, format="PNG")
image = model.predict(pd.DataFrame({{"image": [png.getvalue()]}}))
import medfilip_model.dual_encoder
print(text.shape, image.shape, text.dtype, medfilip_model.dual_encoder.__file__)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    module = done.stdout.strip().split()[-1]
    assert "(2, 64)" in done.stdout and "(1, 64)" in done.stdout and "float32" in done.stdout
    assert "/code/medfilip_model/dual_encoder.py" in module, module  # the model's own copy, not the repository's
    assert "cloudpickle" not in done.stderr and "type hint" not in done.stderr


def test_lineage_accepts_a_file_of_the_registered_model(graph, capsys, monkeypatch):
    from pipeline.cli import main

    monkeypatch.setenv("MEDFILIP_HOME", str(graph["home"]))
    meta = graph["result"].asset_materializations_for_node("pretrained_model")[0].metadata
    weights = sorted((graph["home"] / "mlartifacts").rglob("model_weights.pt"))
    assert weights, "the registered model's weights should be in the artifact store"
    assert main(["lineage", str(weights[0]), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["mlflow_run_id"] in {meta["mlflow_run_id"].value} | {
        m.metadata["mlflow_run_id"].value for m in graph["result"].asset_materializations_for_node("pretrained_model")}
    assert record["datasets"]["ssm"] and record["inputs"]


def test_torchrun_launcher_trains_with_two_gloo_processes_through_pipes(graph):
    overrides = {**TRAIN, "epochs": 1, "device": "cpu"}
    job = dg.define_asset_job("torchrun_train", selection=["pretrained_model"])
    defs_ = dg.Definitions.merge(graph["defs"], dg.Definitions(jobs=[job]))
    result = defs_.resolve_job_def("torchrun_train").execute_in_process(
        instance=graph["instance"],
        run_config={"ops": {"pretrained_model": {"config": {
            "launcher": "torchrun", "nproc_per_node": 2, "overrides_json": json.dumps(overrides)}}}})
    assert result.success
    meta = result.asset_materializations_for_node("pretrained_model")[0].metadata
    assert meta["epochs"].value == 1 and meta["model_version"].value >= 2
    logs = [e.message for e in graph["instance"].all_logs(result.run_id) if e.message]
    assert any("[epoch" in message for message in logs), "epoch metrics should stream back through Pipes"


def test_a_resumed_training_continues_the_mlflow_run_of_the_interrupted_one(graph):
    """Same config and inputs -> same folder with last.pt -> resume, into the same MLflow run, so
    its curves hold every epoch (a killed run's MLflow run was ended KILLED; resuming reopens it)."""
    first = graph["result"].asset_materializations_for_node("pretrained_model")[0].metadata["mlflow_run_id"].value
    MlflowClient().set_terminated(first, "KILLED")  # what sweep_dead_runs does after kill -9
    job = dg.define_asset_job("resume_train", selection=["pretrained_model"])
    defs_ = dg.Definitions.merge(graph["defs"], dg.Definitions(jobs=[job]))
    result = defs_.resolve_job_def("resume_train").execute_in_process(
        instance=graph["instance"],
        run_config={"ops": {"pretrained_model": {"config": {"overrides_json": json.dumps(TRAIN)}}}})
    assert result.success
    meta = result.asset_materializations_for_node("pretrained_model")[0].metadata
    assert meta["mlflow_run_id"].value == first
    run = MlflowClient().get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["dagster.run_id"] == result.run_id
    assert MlflowClient().get_metric_history(first, "val_loss")  # the epochs logged before the interruption


def test_lineage_command_prints_the_chain_and_flags_changed_inputs(graph, capsys, monkeypatch):
    from pipeline.cli import main

    monkeypatch.setenv("MEDFILIP_HOME", str(graph["home"]))
    meta = graph["result"].asset_materializations_for_node("pretrained_model")[0].metadata
    assert main(["lineage", str(meta["model_version"].value), "--json"]) == 0
    by_version = json.loads(capsys.readouterr().out)
    assert by_version["mlflow_run_id"] == meta["mlflow_run_id"].value
    statuses = {(e["asset"], e["partition"]): e["status"] for e in by_version["inputs"]}
    assert statuses[("training_texts", None)] == "ok" and statuses[("ssm", None)] == "ok"
    assert all(s in ("ok", "unchecked") for s in statuses.values())

    # Re-writing one shard's reports after training: the audit names it, and only it.
    reports = graph["home"] / "data" / "reports" / "p10.parquet"
    pq.write_table(pq.read_table(reports).slice(1), reports)
    assert main(["lineage", meta["path"].value]) == 0
    text = capsys.readouterr().out
    assert "CHANGED" in text and "reports[p10]" in text and "1 input(s) changed since training" in text


def test_evaluations_are_mlflow_runs_nested_under_the_model_run(graph):
    result = graph["result"]
    model_run = result.asset_materializations_for_node("pretrained_model")[0].metadata["mlflow_run_id"].value
    for name in EVALS:
        meta = result.asset_materializations_for_node(name)[0].metadata
        assert "| task | setting | metric |" in meta["results"].value
        run = MlflowClient().get_run(meta["mlflow_run_id"].value)
        assert run.data.tags["mlflow.parentRunId"] == model_run
        artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
        assert {"results.json", "results.md"} <= artifacts
        assert run.data.params["n_boot"] == "50" and run.data.params["eval_dataset"]
        inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
        assert inputs["pretrained_model"] == meta["model_checkpoint_sha256"].value[:16]
        assert inputs[f"eval_{run.data.params['eval_dataset']}"] == meta["eval_dataset_digest"].value
    zero_shot = result.asset_materializations_for_node("zero_shot_eval")[0].metadata
    assert 0.0 <= zero_shot["mean_auc"].value <= 1.0 and "roc" in zero_shot
    assert zero_shot["mean_auc_ci"].value == "n/a" or "–" in zero_shot["mean_auc_ci"].value
    finetune = result.asset_materializations_for_node("finetune_eval")[0].metadata
    assert {"auc_linear_pretrained_1pct", "auc_linear_random_1pct"} <= set(finetune)


def test_pretraining_comparisons_carry_seeds_intervals_and_verdicts(graph):
    """finetune_eval and segmentation_eval state 'better' / 'worse' / 'no detectable difference'
    from the paired interval over 3 seeds, in the metadata and as MLflow tags beside the interval."""
    result = graph["result"]
    verdicts = ("better", "worse", "no detectable difference")
    for name, prefix in (("finetune_eval", "verdict_"), ("segmentation_eval", "verdict_dice")):
        meta = result.asset_materializations_for_node(name)[0].metadata
        keys = [k.removeprefix("verdict_") for k in meta if k.startswith(prefix)]
        assert keys, f"{name} has no verdict"
        run = MlflowClient().get_run(meta["mlflow_run_id"].value)
        for key in keys:
            tag = run.data.tags[f"medfilip.verdict.{key}"]
            assert tag in verdicts and meta[f"verdict_{key}"].value.endswith(tag)
            assert "over 3 seeds" in meta[f"verdict_{key}"].value
            low, high = run.data.metrics[f"diff_{key}_ci_low"], run.data.metrics[f"diff_{key}_ci_high"]
            assert low <= high
        assert "paired" in meta["results"].value


def test_reference_preset_trains_on_the_generated_corpus_from_local_weight_files(graph, tmp_path, monkeypatch):
    """The `reference` preset end to end: report_labels -> training_texts (the published wording and
    report filter) -> SSM -> pretrained_model, weights from files under the storage resource's
    weights_dir (training.weights_dir / MEDFILIP_WEIGHTS; random torchvision ResNet-50 and a CLIP
    dict with a narrow text tower, saved here). Runs last: it rewrites the shared home's texts."""
    import torch
    import torchvision
    from open_clip.model import CLIP

    from medfilip_model.dual_encoder import load_config

    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50-0676ba61.pth")
    torch.save(CLIP(32, {"image_size": 64, "patch_size": 32, "width": 64, "layers": 1, "head_width": 32}, text,
                    quick_gelu=True).state_dict(), tmp_path / "ViT-B-32.pt")
    model = load_config("reference")
    model["vision_cfg"]["image_size"], model["text_cfg"] = 64, text
    (tmp_path / "model.json").write_text(json.dumps(model))

    job = dg.define_asset_job("reference_train", selection=["report_labels", "training_texts", "text_embeddings",
                                                             "ssm", "pretrained_model"])
    defs_ = dg.Definitions.merge(graph["defs"], dg.Definitions(jobs=[job]))
    overrides = {"model": str(tmp_path / "model.json"), "batch_size": 4, "val_batch_size": 4, "epochs": 1,
                 "max_steps": 2, "device": "cpu"}
    result = defs_.resolve_job_def("reference_train").execute_in_process(
        instance=graph["instance"],
        run_config={"resources": {"storage": {"config": {"home": str(graph["home"]), "weights_dir": str(tmp_path)}}},
                    "ops": {"training_texts": {"config": {"val_fraction": 0.3, "wording": "reference",
                                                          "report_filter": "reference"}},
                            "pretrained_model": {"config": {"preset": "reference",
                                                            "overrides_json": json.dumps(overrides)}}}})
    assert result.success
    texts = pq.read_table(graph["home"] / "data" / "training_texts" / "texts.parquet").to_pylist()
    negated = [t for t in texts if t["negated"]]
    assert negated and all(t["text"].startswith("no ") for t in negated)
    assert all(len(t["text"].split(". ")[0].split(" ")) >= 3 for t in texts)  # severity location category
    texts_meta = result.asset_materializations_for_node("training_texts")[0].metadata
    assert texts_meta["images_filtered_out"].value > 0  # reports without findings left out
    meta = result.asset_materializations_for_node("pretrained_model")[0].metadata
    params = MlflowClient().get_run(meta["mlflow_run_id"].value).data.params
    assert params["preset"] == "reference" and params["batch_layout"] == "all_texts"
    assert params["weight_decay_scope"] == "all" and params["momentum"] == "0.0" and params["augment"] == "False"
    checkpoint = torch.load(meta["path"].value, map_location="cpu", weights_only=False)
    assert checkpoint["step"] == 2 and checkpoint["model_config"]["quick_gelu"] is True
