"""Optimiser and learning-rate schedule of a training run."""
from __future__ import annotations

import math
from functools import partial

import torch

from training.config import TrainConfig


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """weight_decay_scope "matrices": no weight decay on biases, norms and the logit scale (as
    CLIP); "all": every trainable parameter decays (the published code)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            exempt = config.weight_decay_scope == "matrices" and (param.ndim < 2 or "logit_scale" in name)
            (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def lr_factor(step: int, *, schedule: str, warmup: int, total: int, period: int, mult: int, min_ratio: float) -> float:
    """Linear warm-up, then constant / cosine / cosine with warm restarts (SGDR)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = step - warmup
    if schedule == "cosine":
        progress = min(1.0, t / max(1, total - warmup))
    else:
        cycle = period
        while t >= cycle:
            t -= cycle
            cycle *= mult
        progress = t / cycle
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The configured schedule over `config.epochs` epochs of `steps_per_epoch` optimiser steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        lr_factor, schedule=config.schedule, warmup=config.warmup_steps, total=config.epochs * steps_per_epoch,
        period=max(1, round(config.restart_epochs * steps_per_epoch)), mult=config.restart_mult,
        min_ratio=config.min_lr_ratio))
