"""Checkpoint files: atomic torch saves and the random-number state that makes a resume exact."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from common.storage import atomic_path

LAST = "last.pt"
BEST = "best.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def atomic_torch_save(payload: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def save_checkpoint(path: Path, state: Mapping[str, Any], *, model, config, optimizer, scheduler, scaler) -> None:
    """Weights, configs, optimiser/schedule/scaler state, RNG and the loop position, atomically."""
    payload = {
        "model": model.state_dict(),
        "model_config": model.config,
        "train_config": config.model_dump(mode="json"),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        **{k: v for k, v in state.items() if k != "epoch_losses"},
        "epoch_losses": list(state.get("epoch_losses", [])),
    }
    atomic_torch_save(payload, path)


def load_checkpoint(path: Path, device: torch.device, *, model, optimizer, scheduler, scaler) -> dict:
    """Restore everything save_checkpoint wrote; returns the loop position."""
    payload = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    set_rng_state(payload["rng"])
    return {k: payload[k] for k in ("step", "epoch", "batch_in_epoch", "best_metric", "history", "epoch_losses")}

