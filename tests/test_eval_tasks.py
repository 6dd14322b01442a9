"""Each evaluation end to end on a small generated eval set with the tiny model (untrained weights
are enough for the plumbing), pre-trained weights loaded and kept, and the report outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from corpus.eval_sets import write_eval_sets
from evaluation.datasets import generated_eval_sets
from evaluation.encode import image_tensor, load_pretrained
from evaluation.finetune import FinetuneConfig, build_encoder, fit_and_score, run_finetune
from evaluation.report import markdown_table, plot_roc, write_json
from evaluation.retrieval import evaluate_retrieval, prompt_gallery, retrieval_metrics, with_no_finding
from evaluation.splits import patient_split
from evaluation.segmentation import SegmentationConfig, build_segmenter, dice_iou, run_segmentation, train_segmenter
from evaluation.zero_shot import evaluate_zero_shot, unseen_categories
from knowledge.base import load_knowledge
from medfilip_model.dual_encoder import create_model


# One torch thread: small models run faster, and results do not depend on the core count.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_eval_sets(root, seed=3, count=32, image_size=64)
    return generated_eval_sets(root)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny-model checkpoint in training.loop's format, with weights no fresh init would have."""
    torch.manual_seed(1234)
    model = create_model("tiny")
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model": model.state_dict(), "model_config": model.config}, path)
    return path


def _visual_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=False)["model"]
    return {k.removeprefix("clip.visual."): v for k, v in state.items() if k.startswith("clip.visual.")}


def test_zero_shot_reports_seen_and_unseen_apart(sets, checkpoint, tmp_path):
    model, tokenizer = load_pretrained(checkpoint)
    kb = load_knowledge()
    texts = tmp_path / "texts.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"category": ["effusion", "cardiomegaly", "pneumothorax", "nodule", "consolidation",
                                          "atelectasis", "no finding"]}), texts)
    unseen = unseen_categories(kb, tmp_path)
    assert "edema" in unseen and "effusion" not in unseen
    report = evaluate_zero_shot(model, tokenizer, sets["nih"], kb, unseen=unseen, n_boot=100)
    assert report["seen"]["evaluable"] and "edema" in report["unseen"]["categories"]
    assert not set(report["seen"]["categories"]) & set(report["unseen"]["categories"])
    assert report["prompts"]["effusion"] == f"effusion. {kb.description('effusion')}"
    assert report["split"]["val"] + report["split"]["test"] == len(sets["nih"])
    for entry in report["per_class"].values():
        assert 0.0 <= entry["auc"] <= 1.0 and entry["auc_ci"][0] <= entry["auc_ci"][1]
    assert 0.0 <= report["mean_auc"] <= 1.0 and report["roc"]


def test_retrieval_counts_relevance_by_shared_categories():
    images = np.eye(3)[[0, 1, 2, 0]]  # image 3 looks like image 0
    texts = np.eye(3)
    image_labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    text_labels = np.array([[1, 0], [0, 1], [1, 0]])
    result = retrieval_metrics(images, texts, image_labels, text_labels, ks=(1, 2))
    i2t = result["image_to_text"]
    # Top-1 texts: 0, 1, 2, 0 -> relevant for images 0, 1, 2; not for image 3 (label 1 vs text 0).
    assert i2t["hit@1"] == pytest.approx(3 / 4) and i2t["precision@1"] == pytest.approx(3 / 4)
    # Relevant counts: image0 {t0,t2}, image1 {t1}, image2 {t0,t1,t2}, image3 {t1}.
    assert i2t["recall@1"] == pytest.approx(np.mean([1 / 2, 1, 1 / 3, 0]))
    assert "share at least one positive category" in result["relevance"]


def test_retrieval_runs_on_a_generated_set(sets, checkpoint):
    model, tokenizer = load_pretrained(checkpoint)
    data = with_no_finding(sets["nih"])
    texts, labels = prompt_gallery(load_knowledge(), data.categories)
    result = evaluate_retrieval(model, tokenizer, data, texts, labels)
    assert result["images"] == len(data) and result["texts"] == len(texts)
    for direction in ("image_to_text", "text_to_image"):
        assert all(0.0 <= result[direction][f"recall@{k}"] <= 1.0 for k in (1, 5, 10))
        assert result[direction]["recall@1"] <= result[direction]["recall@10"]


def test_finetune_encoder_starts_from_the_pretrained_weights(checkpoint):
    expected = _visual_state(checkpoint)
    pretrained = build_encoder("pretrained", "tiny", checkpoint).visual.state_dict()
    random = build_encoder("random", "tiny").visual.state_dict()
    assert pretrained.keys() == expected.keys()
    assert all(torch.equal(pretrained[k], expected[k]) for k in expected)
    assert not all(torch.equal(random[k], expected[k]) for k in expected)


def test_finetune_runs_every_seed_fraction_mode_and_init_and_compares_paired(sets, checkpoint):
    result = run_finetune(sets["rsna"], "tiny", checkpoint, fractions=(0.01, 1.0), seeds=(0, 1),
                          config=FinetuneConfig(epochs=1, probe_steps=30), n_boot=50)
    combos = {(r["seed"], r["mode"], r["init"], r["fraction"]) for r in result["runs"]}
    assert combos == {(s, m, i, f) for s in (0, 1) for m in ("linear", "full") for i in ("pretrained", "random")
                      for f in (0.01, 1.0)}
    for seed in (0, 1):
        split = result["splits"][str(seed)]
        sizes = {r["fraction"]: r["train_images"] for r in result["runs"] if r["seed"] == seed}
        assert sizes[0.01] < sizes[1.0] == split["train"]
        for run in (r for r in result["runs"] if r["seed"] == seed):
            assert run["report"]["n_test"] == split["test"]
    assert {(c["mode"], c["fraction"], c["baseline_init"]) for c in result["comparisons"]} == {
        (m, f, "random") for m in ("linear", "full") for f in (0.01, 1.0)}
    arms = {(a["mode"], a["init"], a["fraction"]): a for a in result["arms"]}
    for comparison in result["comparisons"]:
        assert comparison["seeds"] == [0, 1]
        assert comparison["verdict"] in ("better", "worse", "no detectable difference")
        low, high = comparison["difference"]["ci"]
        assert low <= high
        # The comparison's arms are the runs' mean AUCs (same classes, same test images).
        for side, init in (("candidate", "pretrained"), ("baseline", comparison["baseline_init"])):
            arm = arms[(comparison["mode"], init, comparison["fraction"])]
            assert comparison[side]["per_seed"] == pytest.approx(arm["per_seed"], abs=1e-9)


def test_full_finetuning_starts_from_the_probe_head(sets, checkpoint):
    """LP-FT: with no fine-tuning epochs, full fine-tuning scores exactly what the probe scores;
    from a random head it does not."""
    data = sets["rsna"]
    split = patient_split(data.labels, data.patient_ids, (0.6, 0.2, 0.2), seed=0)
    images = image_tensor(data, 64)
    scores = {}
    for mode, from_probe in (("linear", True), ("full", True), ("full", False)):
        encoder = build_encoder("pretrained", "tiny", checkpoint)
        config = FinetuneConfig(epochs=0, probe_steps=30, full_from_probe=from_probe)
        scores[(mode, from_probe)] = fit_and_score(encoder, images, data.labels, split["train"], split["val"],
                                                   split["test"], mode, config, torch.device("cpu"))[1]
    # Same weights, same float32 operations in the same order: the probe's scores reappear.
    np.testing.assert_allclose(scores[("full", True)], scores[("linear", True)], rtol=1e-5, atol=1e-6)
    assert not np.allclose(scores[("full", False)], scores[("linear", True)], atol=1e-3)


def test_segmentation_keeps_the_pretrained_encoder(sets, checkpoint):
    expected = _visual_state(checkpoint)
    net = build_segmenter("pretrained", "tiny", checkpoint, width=8)
    before = net.encoder.visual.state_dict()
    assert all(torch.equal(before[k], expected[k]) for k in expected)  # loaded, not overwritten
    siim = sets["siim"]
    images = image_tensor(siim, 64)
    masks = torch.from_numpy(np.stack([siim.mask(i, 64) for i in range(len(siim))]))[:, None]
    decoder_before = net.out.weight.detach().clone()
    train_segmenter(net, images, masks, SegmentationConfig(epochs=1, freeze_encoder=True, batch_size=8),
                    torch.device("cpu"))
    after = net.encoder.visual.state_dict()
    assert all(torch.equal(after[k], expected[k]) for k in expected)  # frozen: still the checkpoint's
    assert not torch.equal(net.out.weight, decoder_before)  # while the decoder did train
    assert net(torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_segmentation_end_to_end_and_dice_rules(sets, checkpoint):
    result = run_segmentation(sets["siim"], "tiny", checkpoint, config=SegmentationConfig(epochs=1, decoder_width=8),
                              n_boot=50, seeds=(0, 1))
    assert [(r["seed"], r["init"]) for r in result["runs"]] == [(s, i) for s in (0, 1) for i in ("pretrained", "random")]
    for run in result["runs"]:
        assert 0.0 <= run["mean_dice"] <= 1.0 and run["test_images"] == result["splits"][str(run["seed"])]["test"]
    by_subset = {c["subset"]: c for c in result["comparisons"]}
    assert set(by_subset) <= {"all", "with_mask", "without_mask"} and "all" in by_subset
    comparison = by_subset["all"]
    assert comparison["baseline_init"] == "random" and comparison["seeds"] == [0, 1]
    for run in result["runs"]:  # the subsets split the same per-image Dice
        dice = np.array(run["dice_per_image"])
        n = run["test_images_with_mask"]
        assert run["mean_dice"] == pytest.approx(
            (n * run["mean_dice_with_mask"] + (len(dice) - n) * run["empty_predicted_without_mask"]) / len(dice))
    arms = {a["init"]: a for a in result["arms"]}
    assert comparison["candidate"]["per_seed"] == pytest.approx(arms["pretrained"]["mean_dice_per_seed"], abs=1e-12)
    assert comparison["difference"]["mean"] == pytest.approx(
        arms["pretrained"]["mean_dice"] - arms["random"]["mean_dice"], abs=1e-12)
    table = markdown_table({"segmentation": {"siim": result}})
    assert f"siim: pretrained - random | difference of mean Dice (test), paired | " in table
    assert f": {comparison['verdict']} |" in table
    empty, full = np.zeros((1, 4, 4), bool), np.ones((1, 4, 4), bool)
    half = full.copy()
    half[:, :2] = False
    assert dice_iou(empty, empty)[0][0] == 1.0 and dice_iou(full, empty)[0][0] == 0.0
    dice, iou = dice_iou(half, full)
    assert dice[0] == pytest.approx(2 * 8 / 24) and iou[0] == pytest.approx(0.5)


def test_report_table_json_and_roc_png(sets, checkpoint, tmp_path):
    model, tokenizer = load_pretrained(checkpoint)
    zero_shot = evaluate_zero_shot(model, tokenizer, sets["rsna"], load_knowledge(), n_boot=50)
    results = {"zero_shot": {"rsna": zero_shot}}
    table = markdown_table(results)
    assert table.startswith("| task |") and "| zero-shot | rsna | mean AUC (test) |" in table
    assert f"{zero_shot['mean_auc']:.3f}" in table
    png = plot_roc(zero_shot["roc"], tmp_path / "roc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = write_json(results, tmp_path / "results.json")
    assert '"mean_auc"' in path.read_text() and sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "roc.png"]


def test_max_images_takes_the_first_images_of_the_set(sets):
    from assets.evaluation import first_images

    data = sets["nih"]
    head = first_images(data, 10)
    assert head.image_ids == data.image_ids[:10] and (head.labels == data.labels[:10]).all()
    assert first_images(data, 0) is data and first_images(data, len(data) + 5) is data


def test_the_imagenet_baseline_reads_its_weights_from_the_weights_folder(sets, tmp_path):
    """A config naming its ImageNet weights by a relative name (as `reference` does) finds them
    under the data root's weights folder (`storage.weights_dir`, passed by the assets) in
    fine-tuning and segmentation alike; without the folder the name is not found, and says so."""
    import torchvision

    from medfilip_model.dual_encoder import load_config

    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet50-test.pth")
    config = load_config("reference")
    config["vision_cfg"]["image_size"] = 64
    config["text_cfg"] = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    config["image_weights"] = "resnet50-test.pth"

    trunk = build_encoder("imagenet", config, weights_dir=tmp_path).visual.trunk.state_dict()
    assert all(torch.equal(trunk[k], state[k]) for k in trunk) and len(trunk) > 300
    tuned = run_finetune(sets["rsna"], config, None, inits=["imagenet"], fractions=(1.0,), modes=("linear",),
                         seeds=(0,), config=FinetuneConfig(epochs=1, probe_steps=5), n_boot=10, weights_dir=tmp_path)
    assert {r["init"] for r in tuned["runs"]} == {"imagenet"}
    segmented = run_segmentation(sets["siim"], config, None, inits=["imagenet"], seeds=(0,),
                                 config=SegmentationConfig(epochs=1, decoder_width=8), n_boot=10, weights_dir=tmp_path)
    assert {r["init"] for r in segmented["runs"]} == {"imagenet"}
    with pytest.raises(Exception, match="resnet50-test.pth"):
        run_finetune(sets["rsna"], config, None, inits=["imagenet"], fractions=(1.0,), modes=("linear",),
                     seeds=(0,), config=FinetuneConfig(epochs=1, probe_steps=5), n_boot=10)
