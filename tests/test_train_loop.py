"""The training loop on small real Parquet fixtures: learning, exact resume, data order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from training.data import Augmentation, CxrTextStream, TextTokens, build_split_index, make_loader, prepare_image
from training.config import TrainConfig
from training.loop import train
from training.optim import lr_factor
from medfilip_model.dual_encoder import create_model, create_tokenizer

CATEGORIES = ["effusion", "cardiomegaly", "pneumothorax", "no finding"]
PROMPTS = {c: f"{c}. finding" for c in CATEGORIES[:3]}


# -- fixture: images whose pixels show their findings, texts that name them -----------------------

def write_fixture(root: Path, n_train: int = 48, n_val: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Two shards (3 row groups each) of 72x80 grey images + texts.parquet / image_texts.parquet.

    Each category draws its own shape, so that image and text agree and a model can learn.
    """
    rng = np.random.default_rng(seed)
    texts = []
    for c in CATEGORIES:
        texts.append((c, False, f"moderate {c}. a visible {c} pattern"))
        texts.append((c, False, f"small {c}. faint {c} sign"))
        if c != "no finding":
            texts.append((c, True, f"no {c}. absent {c}"))
    texts_table = pa.table({
        "text_id": pa.array(range(len(texts)), pa.int32()),
        "text": [t[2] for t in texts],
        "category": [t[0] for t in texts],
        "severity": ["no" if t[1] else "moderate" for t in texts],
        "location": ["na"] * len(texts),
        "negated": [t[1] for t in texts],
    })
    text_dir = root / "texts"
    text_dir.mkdir(parents=True)
    pq.write_table(texts_table, text_dir / "texts.parquet")

    rows, links = [], []
    for i in range(n_train + n_val):
        found = sorted(set(rng.choice(3, size=int(rng.integers(0, 3)), replace=False).tolist()))
        image = rng.integers(0, 40, size=(72, 80)).astype(np.uint8)
        if 0 in found:
            image[50:, :] = 220  # effusion: bright base
        if 1 in found:
            image[25:55, 25:55] = 200  # cardiomegaly: big central blob
        if 2 in found:
            image[:20, 60:] = 255  # pneumothorax: bright apex corner
        ids = []
        for k, c in enumerate(CATEGORIES[:3]):
            if k in found:
                ids.append(next(j for j, t in enumerate(texts) if t[0] == c and not t[1]) + int(rng.integers(2)))
            elif rng.random() < 0.3:
                ids.append(next(j for j, t in enumerate(texts) if t[0] == c and t[1]))
        if not found:
            ids.append(next(j for j, t in enumerate(texts) if t[0] == "no finding"))
        dicom_id = f"d{i:04d}"
        rows.append({"dicom_id": dicom_id, "study_id": f"s{i}", "patient_key": f"p{i}", "view_position": "PA",
                     "height": 72, "width": 80, "pixels": image.tobytes()})
        links.append({"dicom_id": dicom_id, "study_id": f"s{i}", "patient_key": f"p{i}",
                      "split": "train" if i < n_train else "val", "text_ids": ids})
    image_dir = root / "images"
    image_dir.mkdir()
    schema = pa.schema([("dicom_id", pa.string()), ("study_id", pa.string()), ("patient_key", pa.string()),
                        ("view_position", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
                        ("pixels", pa.binary())])
    half = len(rows) // 2
    for shard, part in enumerate([rows[:half], rows[half:]]):
        order = rng.permutation(len(part))  # val images spread over the shards
        pq.write_table(pa.Table.from_pylist([part[j] for j in order], schema=schema),
                       image_dir / f"shard-{shard}.parquet", row_group_size=-(-len(part) // 3))
    pq.write_table(pa.Table.from_pylist(links, schema=pa.schema([
        ("dicom_id", pa.string()), ("study_id", pa.string()), ("patient_key", pa.string()),
        ("split", pa.string()), ("text_ids", pa.list_(pa.int32()))])), text_dir / "image_texts.parquet")
    return image_dir, text_dir


def category_targets(texts_dir: Path):
    """Stand-in for the SSM: 1 where the column text's (category, negation) is among the image's."""
    table = pq.read_table(texts_dir / "texts.parquet")
    key = dict(zip(table.column("text_id").to_pylist(),
                   zip(table.column("category").to_pylist(), table.column("negated").to_pylist())))

    def targets(image_text_ids, column_text_ids) -> torch.Tensor:
        return torch.tensor([[float(key[c] in {key[i] for i in ids}) for c in column_text_ids]
                             for ids in image_text_ids])
    return targets


def tiny_config(**overrides) -> TrainConfig:
    base = dict(model="tiny", optimizer="adamw", lr=2e-3, batch_size=8, epochs=2, schedule="cosine",
                warmup_steps=2, device="cpu", log_every=1, val_batch_size=16)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    return write_fixture(tmp_path_factory.mktemp("corpus"))


# One torch thread: small models run faster, and results do not depend on the core count.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- tests -------------------------------------------------------------------------------------

def test_tiny_model_learns_and_keeps_best_checkpoint(corpus, tmp_path):
    images, texts = corpus
    steps = []
    result = train(tiny_config(epochs=3), images, texts, tmp_path, category_targets(texts), prompts=PROMPTS,
                   callback=lambda kind, step, m: steps.append((kind, step, dict(m))))
    losses = [m["loss"] for kind, _, m in steps if kind == "step"]
    assert result.steps == 18 and len(losses) == 18
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    history = result.history
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(0.0 <= h["zero_shot_mean_auc"] <= 1.0 for h in history)
    assert result.best_checkpoint and result.best_checkpoint.is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp files
    epoch_events = [m for kind, _, m in steps if kind == "epoch"]
    assert len(epoch_events) == 3 and "val_loss" in epoch_events[0]


def test_resume_after_stop_equals_uninterrupted_run(corpus, tmp_path):
    images, texts = corpus
    targets = category_targets(texts)
    full = train(tiny_config(), images, texts, tmp_path / "full", targets, prompts=PROMPTS)
    stopped = train(tiny_config(max_steps=4), images, texts, tmp_path / "cut", targets, prompts=PROMPTS)
    assert stopped.stopped_early and stopped.steps == 4
    resumed = train(tiny_config(), images, texts, tmp_path / "cut", targets, prompts=PROMPTS, resume=True)
    assert resumed.steps == full.steps == 12
    a = torch.load(full.last_checkpoint, weights_only=False)["model"]
    b = torch.load(resumed.last_checkpoint, weights_only=False)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_batch_order_is_the_same_for_any_rank_split_and_worker_count(corpus):
    images, texts = corpus
    index = build_split_index(images, texts / "image_texts.parquet", "train")
    tokens = TextTokens(texts / "texts.parquet", create_tokenizer("tiny"))

    def stream(**kw):
        s = CxrTextStream(index, tokens, 4, 32, seed=3, data_lanes=2, **kw)
        s.set_epoch(1)
        return s

    single = list(make_loader(stream()))
    ranks = [list(make_loader(stream(rank=r, world_size=2))) for r in range(2)]
    workers = list(make_loader(stream(), num_workers=2))
    # Lanes are cut to the shortest one, so a few of the 48 images may wait for another epoch.
    assert len(single) == len(ranks[0]) == len(ranks[1]) == len(workers) >= 5
    for k, batch in enumerate(single):
        assert batch.dicom_ids == ranks[0][k].dicom_ids + ranks[1][k].dicom_ids
        assert torch.equal(batch.images, torch.cat([ranks[0][k].images, ranks[1][k].images]))
        assert torch.equal(batch.images, workers[k].images) and torch.equal(batch.tokens, workers[k].tokens)
    assert len({d for b in single for d in b.dicom_ids}) == 8 * len(single)  # no image twice
    other_epoch = stream()
    other_epoch.set_epoch(2)
    assert [b.dicom_ids for b in make_loader(other_epoch)] != [b.dicom_ids for b in single]
    resumed = stream()
    resumed.set_start_batch(4)
    assert [b.dicom_ids for b in make_loader(resumed)] == [b.dicom_ids for b in single[4:]]


def test_sampled_text_belongs_to_its_image_and_all_texts_are_kept(corpus):
    images, texts = corpus
    index = build_split_index(images, texts / "image_texts.parquet", "val")
    tokenizer = create_tokenizer("tiny")
    tokens = TextTokens(texts / "texts.parquet", tokenizer)
    text_of = dict(zip(*(pq.read_table(texts / "texts.parquet").column(c).to_pylist() for c in ("text_id", "text"))))
    batch = next(iter(CxrTextStream(index, tokens, 16, 32)))
    assert batch.images.shape == (16, 1, 32, 32) and float(batch.images.min()) >= 0 and float(batch.images.max()) <= 1
    for i, (sampled, ids) in enumerate(zip(batch.text_ids.tolist(), batch.image_text_ids)):
        assert sampled in ids and ids == index.text_ids[batch.dicom_ids[i]]
        assert torch.equal(batch.tokens[i], tokenizer([text_of[sampled]])[0])


def test_augmentation_keeps_left_and_right():
    image = torch.zeros(1, 60, 80)
    image[:, :, :30] = 1.0  # bright on the image's left
    for seed in range(20):
        out = prepare_image(image, 48, Augmentation(), np.random.default_rng(seed))
        assert out[:, :, :20].mean() > out[:, :, 28:].mean() + 0.3


def test_batched_augmentation_gives_each_image_its_own_draw():
    from training.data import apply_augmentation, augmentation_draws

    images = torch.rand(5, 1, 32, 32)
    draws = augmentation_draws(Augmentation(), np.random.default_rng(0).random((5, 7)))
    batched = apply_augmentation(images, draws)
    for i in range(5):
        torch.testing.assert_close(batched[i], apply_augmentation(images[i:i + 1], draws[i:i + 1])[0])
    assert not torch.allclose(batched[0], batched[1])


def test_identity_draw_keeps_the_image_and_a_shift_moves_it_right_and_down():
    from training.data import apply_augmentation

    image = torch.zeros(1, 1, 40, 40)
    image[..., 10:14, 10:14] = 1.0
    identity = (0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0)
    torch.testing.assert_close(apply_augmentation(image, [identity]), image, atol=1e-5, rtol=0)
    shifted = apply_augmentation(image, [(0.0, 1.0, 0.1, 0.2, 1.0, 1.0, 0.0)])  # 4 px right, 8 px down
    # brightness/contrast about the mean are identities here, so the square simply moves
    torch.testing.assert_close(shifted[..., 18:22, 14:18], torch.ones(1, 1, 4, 4), atol=1e-4, rtol=0)
    assert float(shifted[..., 10:14, 10:14].max()) < 1e-4


def test_sgdr_schedule_restarts_each_period():
    factors = [lr_factor(s, schedule="cosine_restarts", warmup=0, total=100, period=10, mult=1, min_ratio=0.0)
               for s in range(25)]
    assert factors[0] == factors[10] == factors[20] == 1.0
    assert factors[9] < 0.05 and all(a > b for a, b in zip(factors[:9], factors[1:10]))


def test_locked_text_tower_runs_once_per_run_and_trains_like_the_token_path(corpus, tmp_path):
    """With lock_text the frozen encoder's outputs are computed once (then read from the run's cache
    file) and only the projection sees each step; the result equals running the tower every step."""
    import json

    from test_model import LOCKED_MINILM

    images, texts = corpus
    model_path = tmp_path / "locked.json"
    model_path.write_text(json.dumps(LOCKED_MINILM))
    targets = category_targets(texts)
    calls = {"n": 0}

    def count_encoder_calls(module, args, output):
        calls["n"] += type(module).__name__ == "BertModel"

    def run(out: str, **overrides) -> tuple[dict, int]:
        calls["n"] = 0
        handle = torch.nn.modules.module.register_module_forward_hook(count_encoder_calls)
        try:
            result = train(tiny_config(model=str(model_path), optimizer="sgd", lr=0.2, epochs=1, **overrides),
                           images, texts, tmp_path / out, targets, prompts=PROMPTS)
        finally:
            handle.remove()
        return torch.load(result.last_checkpoint, weights_only=False), calls["n"]

    cached, cached_calls = run("cached")
    tokens, token_calls = run("tokens", cache_frozen_text=False)
    assert cached["step"] == tokens["step"] == 6
    assert cached_calls == 1 + 1  # one encoding of all texts + the prompts at the validation
    assert token_calls >= 6 + 1
    assert len(list((tmp_path / "cached" / "frozen_text").glob("*.pt"))) == 1
    # The two paths differ only in how the frozen encoder is batched (all texts at once vs each
    # batch's texts), i.e. float32 rounding of the same sums (~1e-6 relative), which six SGD steps
    # at lr 0.2 amplify by an amount that depends on the CPU's kernels. Element-wise tolerances fail
    # on small weights on other CPUs; the size of the whole difference per tensor does not. The
    # worst case is a zero-initialised BatchNorm bias, whose whole value is six noisy updates: up to
    # 1.0e-2 relative on the CPUs we have seen (typical tensors: < 1e-3). Wrong text rows move
    # trained tensors by O(1), so 5e-2 per tensor and 5e-3 for the median still tell the two apart.
    relatives = []
    for name, value in tokens["model"].items():
        if value.is_floating_point() and value.norm() > 0:
            relative = float((cached["model"][name].double() - value.double()).norm() / value.double().norm())
            assert relative < 5e-2, f"{name}: relative difference {relative:.2e}"
            relatives.append(relative)
    assert sorted(relatives)[len(relatives) // 2] < 5e-3
    for a, b in zip(cached["history"], tokens["history"]):
        assert abs(a["zero_shot_mean_auc"] - b["zero_shot_mean_auc"]) < 0.02
    projection = "clip.text.proj.weight"
    initial = create_model(LOCKED_MINILM).state_dict()[projection]
    assert (cached["model"][projection] - initial).abs().max() > 1e-3  # the projection did train

    _, again_calls = run("cached")  # same texts, same frozen weights: read from the cache file
    assert again_calls == 1


def test_positive_first_sampling_picks_a_present_finding_whenever_the_image_has_one(corpus):
    images, texts = corpus
    index = build_split_index(images, texts / "image_texts.parquet", "train")
    tokens = TextTokens(texts / "texts.parquet", create_tokenizer("tiny"))
    table = pq.read_table(texts / "texts.parquet")
    negated = frozenset(i for i, n in zip(table.column("text_id").to_pylist(), table.column("negated").to_pylist()) if n)
    stream = CxrTextStream(index, tokens, 8, 32, text_sampling="positive_first", negated_text_ids=negated)
    uniform = CxrTextStream(index, tokens, 8, 32)
    mixed = 0
    for epoch in range(3):
        stream.set_epoch(epoch)
        for batch in make_loader(stream):
            for sampled, ids in zip(batch.text_ids.tolist(), batch.image_text_ids):
                assert sampled in ids
                if any(i not in negated for i in ids):
                    assert sampled not in negated
                    mixed += any(i in negated for i in ids)
    assert mixed > 5  # images with both kinds exist, so the rule was exercised
    uniform_sampled = [t for b in make_loader(uniform) for t in b.text_ids.tolist()]
    assert any(t in negated for t in uniform_sampled)  # the paper's uniform draw does pick negations


def test_every_epoch_splits_its_time_into_data_wait_and_compute(corpus, tmp_path):
    images, texts = corpus
    events = []
    result = train(tiny_config(num_workers=1), images, texts, tmp_path, category_targets(texts),
                   callback=lambda kind, step, m: events.append((kind, dict(m))))
    logged = [m for kind, m in events if kind == "epoch"]
    assert len(result.history) == len(logged) == 2
    for metrics in result.history + logged:
        wait, compute, wall = metrics["data_wait_s"], metrics["compute_s"], metrics["epoch_train_s"]
        # Disjoint intervals of one clock inside the loop's own span: exact up to float addition.
        assert wait > 0 and compute > 0 and wait + compute <= wall * (1 + 1e-9)
    steps = [m for kind, m in events if kind == "step"]
    assert steps and all(m["input_s"] >= 0 and m["data_s"] > 0 for m in steps)


def _square_images(root: Path, sizes: list[int], pixel_bytes: int | None = None) -> tuple[Path, Path]:
    """One shard of square images (value of image i: i * 7 + row, known by hand) and their texts."""
    texts = pa.table({"text_id": pa.array([0], pa.int32()), "text": ["small effusion. fluid"]})
    (root / "texts").mkdir(parents=True)
    pq.write_table(texts, root / "texts" / "texts.parquet")
    rows = []
    for i, side in enumerate(sizes):
        image = (np.arange(side, dtype=np.uint8)[:, None] + np.uint8(i * 7)).repeat(side, 1)
        data = image.tobytes()[: pixel_bytes] if pixel_bytes is not None and i == 1 else image.tobytes()
        rows.append({"dicom_id": f"d{i}", "height": side, "width": side, "pixels": data})
    (root / "images").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "images" / "p10.parquet", row_group_size=2)
    pq.write_table(pa.table({"dicom_id": [r["dicom_id"] for r in rows], "split": ["train"] * len(rows),
                             "text_ids": [[0]] * len(rows)}), root / "texts" / "image_texts.parquet")
    return root / "images", root / "texts"


def test_without_augmentation_a_batch_is_the_stored_pixels_over_255(tmp_path):
    images, texts = _square_images(tmp_path, [16] * 6)
    index = build_split_index(images, texts / "image_texts.parquet", "train")
    tokens = TextTokens(texts / "texts.parquet", create_tokenizer("tiny"))
    batch = next(iter(CxrTextStream(index, tokens, 6, 16, augmentation=None, shuffle=False)))
    assert batch.pixels.dtype == torch.uint8 and batch.draws is None  # the worker sends bytes, not floats
    for k, dicom_id in enumerate(batch.dicom_ids):
        i = int(dicom_id[1:])
        expected = (torch.arange(16, dtype=torch.float32)[:, None] + i * 7).expand(16, 16) / 255
        assert torch.equal(batch.images[k, 0], expected)


def test_a_row_with_the_wrong_number_of_pixel_bytes_names_its_image(tmp_path):
    images, texts = _square_images(tmp_path, [16] * 4, pixel_bytes=100)
    index = build_split_index(images, texts / "image_texts.parquet", "train")
    tokens = TextTokens(texts / "texts.parquet", create_tokenizer("tiny"))
    with pytest.raises(ValueError, match=r"image d1: 100 pixel bytes, expected 16x16=256"):
        list(CxrTextStream(index, tokens, 4, 16, shuffle=False))


def test_each_row_group_is_read_once_per_epoch_by_one_worker(corpus, tmp_path, monkeypatch):
    from training.data import StoredImages

    images, texts = corpus
    index = build_split_index(images, texts / "image_texts.parquet", "train")
    tokens = TextTokens(texts / "texts.parquet", create_tokenizer("tiny"))
    log = tmp_path / "reads.txt"
    read = StoredImages.read.__func__

    def counted(cls, unit):  # the workers fork with this in place and append to one file
        with log.open("a") as out:
            out.write(f"{unit.path}:{unit.row_group}\n")
        return read(cls, unit)

    monkeypatch.setattr(StoredImages, "read", classmethod(counted))
    for workers in (0, 2):
        log.write_text("")
        stream = CxrTextStream(index, tokens, 4, 32, seed=1, shuffle_window=2)
        batches = list(make_loader(stream, num_workers=workers))
        used = {(index.units[u].path, index.units[u].row_group) for u in range(len(index.units))
                if set(index.units[u].dicom_ids) & {d for b in batches for d in b.dicom_ids}}
        reads = log.read_text().split()
        assert len(reads) == len(set(reads)) == len(used)  # 6 row groups, each read once


def test_an_images_draws_depend_on_seed_epoch_and_id_only():
    from training.data import image_uniforms

    ids = [f"img{i}" for i in range(20000)]
    everything = image_uniforms(3, 1, ids)
    assert torch.equal(torch.from_numpy(image_uniforms(3, 1, ids[7:9])), torch.from_numpy(everything[7:9]))
    assert not np.allclose(image_uniforms(3, 2, ids[:50]), everything[:50])
    assert not np.allclose(image_uniforms(4, 1, ids[:50]), everything[:50])
    assert everything.min() >= 0 and everything.max() < 1
    # 20,000 uniforms per column: the mean's standard error is 0.29 / sqrt(20000) = 0.002, and
    # neighbouring columns (the draws of one image) must be uncorrelated to the same order.
    assert np.abs(everything.mean(axis=0) - 0.5).max() < 0.01
    assert np.abs(np.corrcoef(everything.T)[np.triu_indices(8, 1)]).max() < 0.04
