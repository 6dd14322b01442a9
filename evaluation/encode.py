"""Shared plumbing: load a pre-trained MedFILIP model, decode a set's images once, embed them."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from evaluation.datasets import LabelledImages
from medfilip_model.dual_encoder import MedFilipModel, Tokenizer, create_model, create_tokenizer, load_config


def load_pretrained(checkpoint: str | os.PathLike | None, config: str | dict | None = None,
                    device: str | torch.device = "cpu") -> tuple[MedFilipModel, Tokenizer]:
    """Model + tokenizer from our checkpoint (its stored `model_config` unless `config` is given);
    `checkpoint=None` gives the untrained `config` (for plumbing and baselines)."""
    if config is None:
        if checkpoint is None:
            raise ValueError("need a checkpoint or a model config")
        payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = payload.get("model_config") if isinstance(payload, dict) else None
        if config is None:
            raise ValueError(f"{checkpoint} stores no model_config; pass config=")
    config = config if isinstance(config, dict) else load_config(config)
    model = create_model(without_tower_weights(config) if checkpoint else config, pretrained=checkpoint)
    return model.to(device).eval(), create_tokenizer(model.config)


def without_tower_weights(config: dict) -> dict:
    """A config whose towers start random: our checkpoint holds every tensor, so the ImageNet / CLIP
    files the training started from are neither read nor needed where a model is evaluated."""
    return {k: v for k, v in config.items() if k not in ("image_weights", "text_weights")}



def image_tensor(data: LabelledImages, size: int) -> torch.Tensor:
    """All images decoded once: uint8 [N, 1, size, size] (a quarter of float32's memory)."""
    if len(data) == 0:
        return torch.zeros((0, 1, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack([data.image(i, size) for i in range(len(data))]))[:, None]


def as_float(images: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(255.0)


@torch.no_grad()
def embed_images(model: MedFilipModel, images: torch.Tensor, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """Unit-norm image features [N, D] (float32, CPU) of uint8 [N, 1, S, S] images."""
    model.eval()
    out = [model.encode_image(as_float(images[i : i + batch_size], device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, model.config["embed_dim"]))


@torch.no_grad()
def embed_texts(model: MedFilipModel, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 128,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Unit-norm text features [T, D] (float32, CPU)."""
    model.eval()
    out = [model.encode_text(tokenizer(list(texts[i : i + batch_size])).to(device)).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)



@torch.no_grad()
def predict_probabilities(net: torch.nn.Module, images: torch.Tensor, device: torch.device, batch: int,
                          empty_shape: tuple[int, ...]) -> np.ndarray:
    """Sigmoid of a logit head over uint8 images, batch by batch; `empty_shape` when no images."""
    net.eval()
    out = [torch.sigmoid(net(as_float(images[i : i + batch], device))).cpu() for i in range(0, len(images), batch)]
    return torch.cat(out).numpy() if out else np.zeros(empty_shape)
