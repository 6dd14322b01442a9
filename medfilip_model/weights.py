"""Pre-trained tower weights from local files, every tensor accounted for.

Sources (nothing is ever downloaded):
- a CLIP state dict in the OpenAI / open_clip layout (`ViT-B-32.pt`, `RN50.pt`, open_clip
  `open_clip_pytorch_model.bin`; TorchScript archives, pickles and .safetensors alike): its image
  part (`visual.*`), its text part (everything else but `logit_scale`) or all of it. Grids of
  positional embeddings (`visual.positional_embedding`, `visual.attnpool.positional_embedding`) are
  interpolated to the configured image size (RN50: 7x7 at 224 px, 14x14 at 448 px);
- a torchvision ResNet state dict (`resnet50-0676ba61.pth`) into a timm ResNet trunk (timm's
  `resnet50` has torchvision's key names and shapes); the ImageNet classifier `fc.*` is left out;
- a Hugging Face text encoder folder (`text_cfg.hf_model_name`): open_clip loads it through
  `from_pretrained`, which skips unmatched tensors with a warning only; `check_hf_text_weights`
  compares the folder's tensors with the built encoder afterwards.

A tensor of the source that is not loaded, and a tensor of the target part that is not loaded
(left at its random initialisation), fail the load with the list of their names, unless a pattern
of the model config's `weights_not_loaded` (fnmatch, in the model's `clip.` namespace without the
prefix, e.g. `"text_projection"`, `"visual.head.*"`) names them. Relative file names are looked up
under the `weights_dir` the caller passes (the `training.weights_dir` setting, MEDFILIP_WEIGHTS),
default ~/.cache/medfilip/weights.
"""
from __future__ import annotations

import fnmatch
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

Part = Literal["image", "text", "all"]
DEFAULT_WEIGHTS_DIR = Path.home() / ".cache" / "medfilip" / "weights"
# Not weights: OpenAI's scalars, and the causal mask a TorchScript archive keeps with its buffers.
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_GRID_EMBEDDINGS = ("visual.positional_embedding", "visual.attnpool.positional_embedding")


class WeightsMismatch(ValueError):
    """A weight file does not fit the model; the message lists every tensor concerned."""


@dataclass
class LoadReport:
    source: str
    layout: str
    part: str
    loaded: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)
    other_part: list[str] = field(default_factory=list)  # source tensors of the other tower
    named_not_loaded: list[str] = field(default_factory=list)  # allowed by weights_not_loaded

    def summary(self) -> str:
        return (f"{self.source} ({self.layout}, {self.part}): {len(self.loaded)} tensors loaded"
                f" ({len(self.interpolated)} interpolated), {len(self.other_part)} of the other tower skipped,"
                f" {len(self.named_not_loaded)} not loaded as configured")


def resolve_weights_file(name: str | os.PathLike, weights_dir: Path | None = None) -> Path:
    """An existing path, or a name under `weights_dir`; a missing file is a one-line error."""
    folder = Path(weights_dir) if weights_dir else DEFAULT_WEIGHTS_DIR
    path = Path(name).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (folder / path).exists():
        return folder / path
    raise FileNotFoundError(
        f"weight file {str(name)!r} not found (looked in {folder}; set training.weights_dir / MEDFILIP_WEIGHTS to the"
        f" folder that holds it, or override image_weights/text_weights with null to start from random weights)")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weight file: safetensors, a torch pickle (optionally under "model" /
    "state_dict" / "network"), or a TorchScript archive (OpenAI's CLIP files)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        import warnings

        with warnings.catch_warnings():  # deprecated in torch, yet the format OpenAI ships CLIP in
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - our checkpoints also hold configs and RNG states
            state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ("model", "state_dict", "network"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise WeightsMismatch(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()
            if isinstance(v, torch.Tensor) and k not in _OPENAI_METADATA}


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    keys = set(state)
    if any(k.startswith("clip.") for k in keys):
        return "medfilip"
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "torchvision_resnet"
    if any(k.startswith("visual.") for k in keys) or "token_embedding.weight" in keys:
        return "clip"
    raise WeightsMismatch(f"unknown weight layout (first keys: {sorted(keys)[:5]})")


def load_weights(clip: nn.Module, path: str | os.PathLike, part: Part, not_loaded: Iterable[str] = (),
                 weights_dir: Path | None = None) -> LoadReport:
    """Loads `part` of the weight file at `path` (or a name under `weights_dir`) into `clip` (the
    open_clip model inside MedFilipModel); raises WeightsMismatch listing every tensor left out on
    either side."""
    path = resolve_weights_file(path, weights_dir)
    state = read_state_dict(path)
    layout = detect_layout(state)
    patterns = tuple(not_loaded)
    target = clip.state_dict()
    report = LoadReport(str(path), layout, part)
    if layout == "medfilip":
        state = {k.removeprefix("clip."): v for k, v in state.items()}
    elif layout == "torchvision_resnet":
        if part == "text":
            raise WeightsMismatch(f"{path}: a torchvision ResNet holds no text tower")
        part = "image"
        if not any(k.startswith("visual.trunk.") for k in target):
            raise WeightsMismatch(f"{path}: torchvision ResNet weights need a timm ResNet image tower"
                                  " (vision_cfg.timm_model_name 'resnet50')")
        state = {f"visual.trunk.{k}": v for k, v in state.items()}
    source_in_part = {k: v for k, v in state.items() if _in_part(k, part)}
    report.other_part = sorted(set(state) - set(source_in_part))

    chosen: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, tensor in source_in_part.items():
        expected = target.get(key)
        if expected is not None and key in _GRID_EMBEDDINGS and tensor.shape != expected.shape:
            tensor = interpolate_grid_embedding(tensor, expected.shape)
            report.interpolated.append(key)
        if expected is None or tensor.shape != expected.shape:
            unused.append(f"{key} {tuple(tensor.shape)}" + ("" if expected is None else f" vs {tuple(expected.shape)}"))
            continue
        chosen[key] = tensor
    # BatchNorm's num_batches_tracked is a step counter, not a weight (OpenAI's files lack it).
    left_random = [k for k in target if _in_part(k, part) and k not in chosen and not k.endswith("num_batches_tracked")]

    allowed = lambda name: any(fnmatch.fnmatchcase(name.split(" ")[0], p) for p in patterns)  # noqa: E731
    bad_source = [k for k in unused if not allowed(k)]
    bad_target = [k for k in left_random if not allowed(k)]
    if bad_source or bad_target:
        raise WeightsMismatch(
            f"{path} does not fit this model ({layout}, {part} part): source tensors not loaded {bad_source};"
            f" model tensors left at random initialisation {bad_target}. Name deliberate ones in the model"
            " config's weights_not_loaded.")
    report.named_not_loaded = sorted({k.split(" ")[0] for k in unused} | set(left_random))
    missing, unexpected = clip.load_state_dict(chosen, strict=False)
    assert not unexpected and not set(missing) & set(chosen), "load_state_dict disagreed with the plan"
    report.loaded = sorted(chosen)
    log.info(report.summary())
    return report


def interpolate_grid_embedding(embedding: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """[1 + g*g, W] (class token first) resized to [1 + G*G, W], bicubic over the square grid."""
    tokens, target_tokens = embedding.shape[0] - 1, shape[0] - 1
    grid, target_grid = math.isqrt(tokens), math.isqrt(target_tokens)
    if grid * grid != tokens or target_grid * target_grid != target_tokens or embedding.shape[1:] != shape[1:]:
        raise WeightsMismatch(f"positional embedding {tuple(embedding.shape)} cannot be resized to {tuple(shape)}")
    cls, patches = embedding[:1], embedding[1:]
    patches = patches.reshape(1, grid, grid, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(target_grid, target_grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(target_grid * target_grid, -1).to(embedding.dtype)
    return torch.cat([cls, patches])


def check_hf_text_weights(transformer: nn.Module, folder: str | os.PathLike, not_loaded: Iterable[str] = ()) -> int:
    """Every tensor of the folder's weight files is in the built encoder with the same value, and
    every tensor of the encoder came from the files; returns the number checked. Names in
    `not_loaded` are relative to the encoder, prefixed `text.transformer.` (the model namespace)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise WeightsMismatch(f"text encoder folder {folder} has no *.safetensors or pytorch_model*.bin")
    source: dict[str, torch.Tensor] = {}
    for file in files:
        source.update(read_state_dict(file))
    target = transformer.state_dict()
    prefix = getattr(transformer, "base_model_prefix", "") + "."
    matched, unused = set(), []
    for key, tensor in source.items():
        name = key if key in target else key.removeprefix(prefix) if key.removeprefix(prefix) in target else None
        if name is None or target[name].shape != tensor.shape or not torch.equal(target[name].to(tensor.dtype), tensor):
            unused.append(key)
        else:
            matched.add(name)
    left_random = [k for k in target if k not in matched]
    # Not weights: `position_ids` is an index buffer HF rebuilds; a `pooler.*` of a BERT file is
    # unused by construction when the configured pooling (mean) builds the encoder without a pooler.
    has_pooler = getattr(transformer, "pooler", None) is not None
    unused = [k for k in unused if not k.endswith("position_ids")
              and not (not has_pooler and k.removeprefix(prefix).startswith("pooler."))]
    patterns = tuple(not_loaded)
    allowed = lambda name: any(fnmatch.fnmatchcase(f"text.transformer.{name}", p) for p in patterns)  # noqa: E731
    bad_source, bad_target = [k for k in unused if not allowed(k)], [k for k in left_random if not allowed(k)]
    if bad_source or bad_target:
        raise WeightsMismatch(
            f"text encoder {folder}: file tensors not loaded {bad_source}; encoder tensors not from the files"
            f" {bad_target}. Name deliberate ones (as text.transformer.<name>) in weights_not_loaded.")
    return len(matched)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with the model's code next to its tensors."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def _in_part(key: str, part: Part) -> bool:
    if part == "all":
        return True
    if part == "image":
        return key.startswith("visual.")
    return not key.startswith("visual.") and key != "logit_scale"
