import numpy as np
import pyarrow as pa
import pytest
import torch

from knowledge.base import load_knowledge
from knowledge.ssm import (
    SSM,
    VALUES_FILE,
    batch_targets,
    build_ssm,
    check_symmetric,
    check_unit_diagonal,
    check_value_range,
    check_zero_across_categories,
    plot_block_heatmap,
    run_checks,
)
from knowledge.embeddings import embed_texts
from knowledge.texts import compose_text

CATEGORIES = ["effusion", "pneumothorax", "edema", "nodule", "no finding"]


def random_texts(n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """Texts with shuffled (non-contiguous) ids, random categories/negations and unit vectors."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(3 * n)[:n]
    categories = rng.choice(CATEGORIES, size=n).tolist()
    negated = (rng.random(n) < 0.3).tolist()
    vectors = rng.normal(size=(n, 12)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.table({"text_id": pa.array(ids, pa.int32()), "category": categories, "negated": negated})
    return table, vectors


def paper_target(batch, columns, table, vectors, separate_negations):
    """target[b, j] = max over texts i of image b of [cat(i) == cat(j)] * cos(e_i, e_j), written out."""
    row = {t: k for k, t in enumerate(table["text_id"].to_pylist())}
    cats, negs = table["category"].to_pylist(), table["negated"].to_pylist()

    def cat(t):
        k = row[t]
        return (cats[k], negs[k]) if separate_negations else cats[k]

    def cos(a, b):
        if a == b:
            return 1.0
        return float(vectors[row[a]] @ vectors[row[b]])

    out = np.zeros((len(batch), len(columns)))
    for b, texts in enumerate(batch):
        for j, col in enumerate(columns):
            out[b, j] = max((cat(i) == cat(col)) * cos(i, col) for i in texts)
    return out


@pytest.mark.parametrize("separate_negations", [False, True])
def test_batch_targets_equal_the_paper_formula(tmp_path, separate_negations):
    table, vectors = random_texts(120, seed=1)
    build_ssm(table, vectors, tmp_path, separate_negations=separate_negations)
    ssm = SSM.load(tmp_path)
    ids = table["text_id"].to_numpy()
    rng = np.random.default_rng(2)
    for _ in range(5):
        batch = [rng.choice(ids, size=rng.integers(1, 6), replace=False).tolist() for _ in range(16)]
        concatenated = [t for texts in batch for t in texts]
        got = batch_targets(batch, ssm)
        assert got.dtype == torch.float32 and got.shape == (16, len(concatenated))
        expected = paper_target(batch, concatenated, table, vectors, separate_negations)
        assert np.abs(got.numpy() - expected).max() < 1e-5
        sampled = [rng.choice(texts) for texts in batch]  # one text per image: N == B
        got_sampled = batch_targets(batch, ssm, column_text_ids=sampled)
        expected_sampled = paper_target(batch, sampled, table, vectors, separate_negations)
        assert got_sampled.shape == (16, 16)
        assert np.abs(got_sampled.numpy() - expected_sampled).max() < 1e-5
        assert torch.all(torch.diagonal(got_sampled) == 1.0)  # an image's own text scores 1


def test_separate_negations_puts_no_effusion_apart_from_effusion(tmp_path):
    table = pa.table({"text_id": pa.array([0, 1, 2], pa.int32()),
                      "category": ["effusion", "effusion", "edema"], "negated": [False, True, False]})
    vectors = np.array([[1, 0], [0.6, 0.8], [0.6, 0.8]], dtype=np.float32)
    faithful = SSM.load(build_ssm(table, vectors, tmp_path / "paper").out_dir)
    separated = SSM.load(build_ssm(table, vectors, tmp_path / "sep", separate_negations=True).out_dir)
    assert faithful.pairwise([0], [1, 2])[0].tolist() == pytest.approx([0.6, 0.0])
    assert separated.pairwise([0], [1, 2])[0].tolist() == [0.0, 0.0]
    assert sorted(separated.groups) == ["edema", "effusion", "no effusion"]


@pytest.fixture(scope="module")
def real_ssm(tmp_path_factory):
    """SSM over texts composed from the shipped knowledge base and embedded by the real MiniLM."""
    kb = load_knowledge()
    specs = [("large", "left", "effusion", False), ("small", "right", "effusion", False),
             ("na", "bilateral", "effusion", False), ("no", "na", "effusion", True),
             ("moderate", "na", "cardiomegaly", False), ("no", "na", "cardiomegaly", True),
             ("small", "apical", "pneumothorax", False), ("no", "na", "pneumothorax", True),
             ("na", "na", "pacemaker", False), ("na", "na", "no finding", False)]
    texts = [compose_text(s, l, c, n, kb.description(c)) for s, l, c, n in specs]
    table = pa.table({"text_id": pa.array(range(len(texts)), pa.int32()), "text": texts,
                      "category": [c for _, _, c, _ in specs], "negated": [n for *_, n in specs]})
    out = tmp_path_factory.mktemp("ssm")
    summary = build_ssm(table, embed_texts(texts), out)
    return SSM.load(out), table, summary


def test_checks_pass_on_a_real_build(real_ssm):
    ssm, table, summary = real_ssm
    results = run_checks(ssm, table)
    assert all(passed for passed, _ in results.values()), results
    assert summary.n_blocks == 5 and summary.n_values == 4 * 4 + 2 * 2 + 2 * 2 + 1 + 1
    members, block = ssm.block("effusion")
    assert members.tolist() == [0, 1, 2, 3]
    assert 0.5 < block[0, 1] < 1.0  # two effusions with the same description are close


def test_checks_fail_on_a_corrupted_matrix(tmp_path):
    table, vectors = random_texts(40, seed=3)
    build_ssm(table, vectors, tmp_path)
    values = np.load(tmp_path / VALUES_FILE, mmap_mode="r+")
    values[1] = 1.5  # first block, row 0 column 1: breaks range and symmetry
    values[0] = 0.5  # first block diagonal
    values.flush()
    ssm = SSM.load(tmp_path)
    assert not check_symmetric(ssm)[0]
    assert not check_unit_diagonal(ssm)[0]
    passed, meta = check_value_range(ssm)
    assert not passed and meta["max"] == 1.5
    shuffled = table.set_column(1, "category", pa.array(table["category"].to_pylist()[::-1]))
    assert not check_zero_across_categories(ssm, shuffled)[0]


def test_float16_storage_stays_within_half_precision_error(tmp_path):
    table, vectors = random_texts(200, seed=4)
    exact = SSM.load(build_ssm(table, vectors, tmp_path / "fp32").out_dir)
    summary = build_ssm(table, vectors, tmp_path / "fp16", dtype="float16")
    half = SSM.load(tmp_path / "fp16")
    assert 0 < summary.max_abs_quantisation_error < 5e-4
    batch = [table["text_id"].to_numpy()[i : i + 3].tolist() for i in range(0, 60, 3)]
    diff = (batch_targets(batch, exact) - batch_targets(batch, half)).abs().max().item()
    assert diff <= summary.max_abs_quantisation_error
    assert half.values.dtype == np.float16 and summary.bytes_on_disk < exact.manifest["bytes_on_disk"]


def test_incomplete_or_unknown_inputs_are_refused(tmp_path):
    table, vectors = random_texts(20, seed=5)
    build_ssm(table, vectors, tmp_path)
    ssm = SSM.load(tmp_path)
    with pytest.raises(KeyError, match="not in the SSM"):
        batch_targets([[int(table["text_id"][0])], [10_000]], ssm)
    with pytest.raises(ValueError, match="no texts"):
        batch_targets([[int(table["text_id"][0])], []], ssm)
    (tmp_path / "ssm.json").unlink()
    with pytest.raises(FileNotFoundError, match="never completed"):
        SSM.load(tmp_path)
    with pytest.raises(ValueError, match="20 texts but 19 embeddings"):
        build_ssm(table, vectors[:19], tmp_path / "bad")


def test_block_heatmap_is_written_as_png(real_ssm, tmp_path):
    ssm, _, _ = real_ssm
    path = plot_block_heatmap(ssm, "effusion", tmp_path / "effusion.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    with pytest.raises(KeyError, match="hernia"):
        plot_block_heatmap(ssm, "hernia", tmp_path / "hernia.png")
