"""The locked text tower's outputs, encoded once per run and cached on disk by content digest."""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch

from training.checkpoint import atomic_torch_save
from training.distributed import DistEnv
from medfilip_model.dual_encoder import MedFilipModel, encode_frozen_texts

log = logging.getLogger("training")


def load_or_encode_frozen_texts(model: MedFilipModel, tokens: torch.Tensor, env: DistEnv,
                                cache_dir: Path | None) -> torch.Tensor:
    """The locked text tower's output for every text, read from `cache_dir` when a file keyed by the
    digest of (tokens, frozen weights) is there, else encoded once and (rank 0) written there."""
    started = time.perf_counter()
    path = cache_dir / f"{frozen_text_digest(model, tokens)[:32]}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        features = torch.load(path, map_location=env.device, weights_only=True)
        _log_main(env.is_main, "frozen text features of %d texts read from %s", len(features), path)
        return features
    features = encode_frozen_texts(model, tokens.long(), device=env.device)
    _log_main(env.is_main, "encoded %d texts with the frozen text tower once, in %.1f s", len(features),
              time.perf_counter() - started)
    if path is not None and env.is_main:
        atomic_torch_save(features.cpu(), path)
    return features


def frozen_text_digest(model: MedFilipModel, tokens: torch.Tensor) -> str:
    """sha256 over the token ids and every frozen text-tower tensor: any change of either misses."""
    digest = hashlib.sha256(tokens.to(torch.int64).cpu().numpy().tobytes())
    # open_clip's own text tower lives in the CLIP module itself, beside the image tower.
    text = getattr(model.clip, "text", model.clip)
    trainable = {name for name, p in text.named_parameters() if p.requires_grad}
    for name, tensor in sorted(text.state_dict().items()):
        if name not in trainable and not name.startswith(("visual.", "logit_")):
            digest.update(name.encode() + b"\0")
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _log_main(is_main: bool, message: str, *args) -> None:
    if is_main:
        log.info(message, *args)
