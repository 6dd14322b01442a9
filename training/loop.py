"""The pre-training loop: AMP, gradient accumulation, DDP, atomic checkpoints, exact resume.

`train()` knows nothing of Dagster or MLflow: metrics leave through `callback(kind, step, metrics)`
(kind "step" every `log_every` optimiser steps, "epoch" after each validation), called on rank 0.
Every epoch's metrics say where its time went: `data_wait_s` (blocked on the loader), `compute_s`
(the steps on the device) and `epoch_train_s` (the loop's wall time, holding both).

Exactness, by construction:
- the sample order is a function of (seed, epoch, data_lanes) only (see training.data), and a
  checkpoint stores the position inside the epoch, so a resumed run reads the same batches;
- under DDP every rank gathers all ranks' features and computes the *global* loss of the global
  batch; the gradient flows into the local slice only, and the loss is scaled by the world size
  (the logit scale, which every rank sees whole, gets that factor taken back by a gradient hook),
  so DDP's gradient average equals the single-process gradient of the same global batch.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from training.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint, seed_everything
from training.config import TrainConfig
from training.data import Augmentation, Batch, CxrTextStream, TextTokens, build_split_index, make_loader
from training.distributed import DistEnv, all_reduce_mean, gather_features, gather_objects, init_distributed
from training.frozen_text import load_or_encode_frozen_texts
from training.loss import MedFilipLoss
from medfilip_model.dual_encoder import MedFilipModel, create_model, create_tokenizer
from training.optim import build_optimizer, build_scheduler
from knowledge.texts import IMAGE_TEXTS_FILE, TEXTS_FILE
from medfilip_model.zero_shot import TextCategories, mean_auc, per_class_auc, prompt_embeddings

log = logging.getLogger("training")

TargetsFn = Callable[[Sequence[Sequence[int]], Sequence[int]], torch.Tensor]
MetricsCallback = Callable[[str, int, Mapping[str, float]], None]


@dataclass
class TrainResult:
    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    steps: int
    epochs_completed: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def train(
    config: TrainConfig,
    images_dir: str | Path,
    texts_dir: str | Path,
    out_dir: str | Path,
    targets_fn: TargetsFn,
    *,
    prompts: Mapping[str, str] | None = None,
    resume: bool = False,
    callback: MetricsCallback | None = None,
    env: DistEnv | None = None,
    weights_dir: Path | None = None,
) -> TrainResult:
    """Trains `config.model` on the train split, validating on the val split each epoch.

    `targets_fn(image_text_ids, column_text_ids) -> [B, T]` builds the soft targets (SSM);
    `prompts` (category -> prompt text) enables the zero-shot AUC, which then picks the best
    checkpoint (otherwise the lowest validation loss does).
    """
    env = env or init_distributed(config.device)
    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / "checkpoints"
    if env.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    run = _Run(config, Path(images_dir), Path(texts_dir), targets_fn, prompts, env, out_dir / "frozen_text",
               weights_dir)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": -math.inf, "history": []}
    if resume and (checkpoint_dir / LAST).is_file():
        state = run.load(checkpoint_dir / LAST)
        _log_main(env, "resumed from %s at step %d (epoch %d, batch %d)", checkpoint_dir / LAST,
                 state["step"], state["epoch"], state["batch_in_epoch"])

    best_path = checkpoint_dir / BEST if (checkpoint_dir / BEST).is_file() else None
    stopped = False
    while state["epoch"] < config.epochs and not stopped:
        stopped = run.train_epoch(state, checkpoint_dir, callback)
        if stopped:
            break
        metrics = run.validate()
        metrics.update(epoch=state["epoch"], train_loss=state.pop("epoch_loss", float("nan")),
                       **state.pop("epoch_timing", {}))
        state["history"].append(metrics)
        metric = metrics.get("zero_shot_mean_auc", float("nan"))
        metric = -metrics["val_loss"] if math.isnan(metric) else metric
        improved = metric > state["best_metric"]
        if improved:
            state["best_metric"] = metric
        state["epoch"], state["batch_in_epoch"] = state["epoch"] + 1, 0
        run.save(checkpoint_dir / LAST, state)
        if improved:
            run.save(checkpoint_dir / BEST, state)
            best_path = checkpoint_dir / BEST
        if env.is_main and callback:
            callback("epoch", state["step"], metrics)
        _log_main(env, "epoch %d: %s", state["epoch"] - 1, {k: round(v, 4) for k, v in metrics.items()})
    return TrainResult(out_dir, checkpoint_dir / LAST, best_path, state["step"], state["epoch"], stopped,
                       state["history"])


class _Run:
    """One training run's objects: model (DDP-wrapped), optimiser, schedule, data, loss."""

    def __init__(self, config: TrainConfig, images_dir: Path, texts_dir: Path, targets_fn: TargetsFn,
                 prompts: Mapping[str, str] | None, env: DistEnv, frozen_text_dir: Path | None = None,
                 weights_dir: Path | None = None):
        self.config, self.env, self.targets_fn, self.prompts = config, env, targets_fn, prompts
        cuda = env.device.type == "cuda"
        self.amp_dtype = {"amp_fp16": torch.float16, "amp_bf16": torch.bfloat16}.get(config.precision) if cuda else None
        if cuda:
            torch.backends.cudnn.benchmark = True

        self.model: MedFilipModel = create_model(config.model, config.pretrained, image_weights=config.image_weights,
                                                 text_weights=config.text_weights,
                                                 weights_dir=weights_dir).to(env.device)
        self.tokenizer = create_tokenizer(self.model.config)
        self.tokens = TextTokens(texts_dir / TEXTS_FILE, self.tokenizer)
        self.categories = TextCategories(texts_dir / TEXTS_FILE)
        self.frozen_text: torch.Tensor | None = None  # [texts, width], rows as self.tokens
        if self.model.text_locked and config.cache_frozen_text:
            self.frozen_text = load_or_encode_frozen_texts(self.model, self.tokens.tokens, env, frozen_text_dir)
        self.train_index = build_split_index(images_dir, texts_dir / IMAGE_TEXTS_FILE, "train")
        self.val_index = build_split_index(images_dir, texts_dir / IMAGE_TEXTS_FILE, "val")

        lanes = config.data_lanes or env.world_size
        if config.batch_size % lanes:
            raise ValueError(f"batch_size {config.batch_size} must divide into {lanes} data lanes")
        self.stream = CxrTextStream(
            self.train_index, self.tokens, config.batch_size // lanes, self.model.image_size,
            augmentation=Augmentation() if config.augment else None, seed=config.seed, data_lanes=lanes,
            rank=env.rank, world_size=env.world_size, shuffle_window=config.shuffle_window,
            text_sampling=config.text_sampling,
            negated_text_ids=frozenset(i for i, negated in self.categories.negated.items() if negated),
            batch_layout=config.batch_layout,
        )
        if config.batch_layout == "all_texts" and env.distributed:
            # Ranks would hold different numbers of texts; gather_features needs equal shapes.
            raise ValueError("batch_layout='all_texts' runs in one process only (the published code's setting)")
        self.steps_per_epoch = self.stream.batches_per_epoch(0) // config.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(f"{self.train_index.num_images} training images give no full batch of {config.batch_size}")

        self.ddp_model: torch.nn.Module = self.model
        if env.distributed:
            if cuda and config.sync_batchnorm:
                self.ddp_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.ddp_model, device_ids=[env.local_rank] if cuda else None)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loss_fn = MedFilipLoss(config.loss)

    # -- training ------------------------------------------------------------------------------

    def train_epoch(self, state: dict, checkpoint_dir: Path, callback: MetricsCallback | None) -> bool:
        """Runs the rest of the current epoch; True when max_steps stopped it."""
        config, env = self.config, self.env
        self.ddp_model.train()
        self.stream.set_epoch(state["epoch"])
        self.stream.set_start_batch(state["batch_in_epoch"])
        micro_batches = self.steps_per_epoch * config.accum_steps
        loader = make_loader(self.stream, config.num_workers, pin_memory=env.device.type == "cuda")
        losses, timer = state.setdefault("epoch_losses", []), _StepTimer()
        position = state["batch_in_epoch"]
        for batch in loader:
            if position >= micro_batches:
                break
            timer.mark("data_s")
            last_micro = (position + 1) % config.accum_steps == 0
            loss = self._micro_step(batch.to(env.device), sync=last_micro, timer=timer)
            losses.append(loss)
            position += 1
            if last_micro:
                self._optimiser_step()
            timer.mark("compute_s")  # float(loss) waited for the device: this is its time, not queued work
            if not last_micro:
                continue
            state["step"] += 1
            state["batch_in_epoch"] = position
            if env.is_main and callback and state["step"] % config.log_every == 0:
                callback("step", state["step"], self._step_metrics(losses, timer, len(batch)))
                timer.reset()
            if config.checkpoint_every and state["step"] % config.checkpoint_every == 0:
                self.save(checkpoint_dir / LAST, state)
            timer.last = time.perf_counter()  # logging/checkpointing is not data loading
            if config.max_steps is not None and state["step"] >= config.max_steps:
                self.save(checkpoint_dir / LAST, state)
                return True
        state["epoch_loss"] = all_reduce_mean(float(np.mean(state.pop("epoch_losses"))) if losses else float("nan"), env)
        state["epoch_timing"] = timer.epoch_summary()
        return False

    def _micro_step(self, batch: Batch, sync: bool, timer: "_StepTimer") -> float:
        env = self.env
        no_sync = self.ddp_model.no_sync if env.distributed and not sync else nullcontext
        with no_sync():
            images = batch.images  # uint8 to float and the augmentation, where the batch now is
            timer.mark("input_s")
            with self._autocast():
                image_features, text_features, scale = self.ddp_model(images, **self._text_input(batch))
            all_images = gather_features(image_features, env)
            all_texts = gather_features(text_features, env)
            if env.distributed:
                # Every rank holds the whole scale: undo the world-size factor applied below.
                scale = scale.clone()
                scale.register_hook(lambda grad: grad / env.world_size)
            timer.mark("compute_s")
            targets = self.targets_fn(gather_objects(batch.image_text_ids, env),
                                      gather_objects(batch.text_ids.tolist(), env)).to(env.device)
            timer.mark("targets_s")
            loss = self.loss_fn(all_images, all_texts, scale, targets)
            self.scaler.scale(loss * env.world_size / self.config.accum_steps).backward()
        return float(loss.detach())

    def _text_input(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The sampled texts as tokens, or as cached frozen-encoder outputs when the tower is locked."""
        if self.frozen_text is None:
            return {"tokens": batch.tokens}
        return {"frozen_text": self.frozen_text[self.tokens.rows(batch.text_ids).to(self.frozen_text.device)]}

    def _optimiser_step(self) -> None:
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.config.max_logit_scale is not None:
            self.model.clamp_logit_scale(self.config.max_logit_scale)

    def _step_metrics(self, losses: list[float], timer: "_StepTimer", batch_images: int) -> dict[str, float]:
        window = losses[-self.config.log_every * self.config.accum_steps:]
        metrics = {"loss": float(np.mean(window)), "lr": self.scheduler.get_last_lr()[0],
                   "logit_scale": float(self.model.clip.logit_scale.detach().exp())}
        metrics.update(timer.per_step())
        total = sum(timer.totals.values())
        if total > 0:
            metrics["images_per_s"] = batch_images * self.env.world_size * timer.micro / total
        return metrics

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    # -- validation ----------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss and zero-shot AUC on rank 0 (others wait); the result is broadcast."""
        metrics: dict[str, float] = {}
        if self.env.is_main:
            metrics = self._validate_here()
        if self.env.distributed:
            holder = [metrics]
            torch.distributed.broadcast_object_list(holder, src=0)
            metrics = holder[0]
        return metrics

    def _validate_here(self) -> dict[str, float]:
        model = self.model.eval()
        if not self.val_index.units:
            return {"val_loss": float("nan")}
        stream = CxrTextStream(self.val_index, self.tokens, self.config.val_batch_size, model.image_size,
                               augmentation=None, seed=self.config.seed, shuffle=False, drop_last=False,
                               batch_layout=self.config.batch_layout)
        losses, weights, features, image_text_ids = [], [], [], []
        for batch in make_loader(stream, self.config.num_workers):
            batch = batch.to(self.env.device)
            with self._autocast():
                image_features, text_features, scale = model(batch.images, **self._text_input(batch))
            targets = self.targets_fn(batch.image_text_ids, batch.text_ids.tolist()).to(self.env.device)
            losses.append(float(self.loss_fn(image_features, text_features, scale, targets)))
            weights.append(len(batch))
            features.append(image_features.float())
            image_text_ids.extend(batch.image_text_ids)
        metrics = {"val_loss": float(np.average(losses, weights=weights))}
        if self.prompts:
            categories = list(self.prompts)
            with self._autocast():
                prompt_features = prompt_embeddings(model.encode_text, self.tokenizer, self.prompts, self.env.device)
            scores = (torch.cat(features) @ prompt_features.float().T).cpu().numpy()
            per_class = per_class_auc(self.categories.labels(image_text_ids, categories), scores, categories)
            metrics["zero_shot_mean_auc"] = mean_auc(per_class)
            metrics.update({f"auc/{name}": value for name, value in per_class.items()})
        self.ddp_model.train()
        return metrics

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, path: Path, state: dict) -> None:
        """Rank 0 writes; every rank waits for it under DDP."""
        if self.env.is_main:
            save_checkpoint(path, state, model=self.model, config=self.config, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=self.scaler)
        if self.env.distributed:
            torch.distributed.barrier()

    def load(self, path: Path) -> dict:
        return load_checkpoint(path, self.env.device, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, scaler=self.scaler)


def _log_main(env: DistEnv, message: str, *args: Any) -> None:
    if env.is_main:
        log.info(message, *args)


class _StepTimer:
    """Wall time split into data wait / input (to float, augmentation) / compute / target
    construction, per optimiser step and for the epoch. Each interval runs from the previous
    mark, so the parts never overlap; what the loop does between steps (logging, checkpoints)
    is moved out by setting `last`."""

    def __init__(self):
        self.started = time.perf_counter()
        self.epoch_totals = {"data_s": 0.0, "input_s": 0.0, "targets_s": 0.0, "compute_s": 0.0}
        self.reset()

    def reset(self) -> None:
        self.totals = {"data_s": 0.0, "input_s": 0.0, "targets_s": 0.0, "compute_s": 0.0}
        self.micro, self.last = 0, time.perf_counter()

    def mark(self, part: str) -> None:
        now = time.perf_counter()
        self.totals[part] += now - self.last
        self.epoch_totals[part] += now - self.last
        self.last = now
        if part == "data_s":
            self.micro += 1

    def per_step(self) -> dict[str, float]:
        """Seconds per micro-batch of each part since the last reset."""
        steps = max(1, self.micro)
        return {k: v / steps for k, v in self.totals.items()}

    def epoch_summary(self) -> dict[str, float]:
        """This process's part of the epoch: seconds waiting for the loader, seconds of the step
        (input, compute and targets), and the wall time since the timer started, which holds
        both and what lies between steps. data_wait_s near epoch_train_s: the loader is the
        bottleneck; compute_s near it: the device is."""
        totals = self.epoch_totals
        return {"data_wait_s": totals["data_s"], "compute_s": totals["input_s"] + totals["compute_s"] + totals["targets_s"],
                "epoch_train_s": time.perf_counter() - self.started}
