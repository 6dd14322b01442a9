"""Pre-trained weights from local files: random models of the real architectures (open_clip CLIP
with ViT and ModifiedResNet towers, torchvision ResNet-50, HF BERT and CLIP text models, reduced in
width where the class stays the same) are saved and loaded; every tensor is accounted for."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medfilip_model.dual_encoder import create_model, create_tokenizer, load_config
from medfilip_model.weights import WeightsMismatch, load_weights

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}


def reference_config(**changes) -> dict:
    """The `reference` model (real ResNet-50 trunk) with a narrow CLIP text transformer, at 64 px."""
    config = load_config("reference")
    config["vision_cfg"]["image_size"] = 64
    config["text_cfg"] = dict(TEXT)
    return {**config, **changes}


def save_clip(path: Path, vision_cfg: dict, embed_dim: int = 32) -> dict[str, torch.Tensor]:
    """A random open_clip CLIP (OpenAI key layout) with the narrow text tower, saved at `path`."""
    from open_clip.model import CLIP

    torch.manual_seed(1)
    state = CLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=TEXT, quick_gelu=True).state_dict()
    state["logit_scale"] = torch.tensor(4.6052)  # OpenAI's trained log(100), not the initial log(1/0.07)
    torch.save(state, path)
    return state


def assert_loaded(model, state: dict[str, torch.Tensor], keys) -> None:
    ours = model.clip.state_dict()
    for key in keys:
        assert torch.equal(ours[key], state[key]), key


def test_torchvision_resnet50_fills_the_reference_image_tower(tmp_path):
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet50.pth")
    model = create_model(reference_config(), image_weights=str(tmp_path / "resnet50.pth"))
    trunk = model.clip.visual.trunk.state_dict()
    assert set(trunk) == set(state) - {"fc.weight", "fc.bias"}  # ImageNet classifier replaced (config)
    assert all(torch.equal(trunk[k], state[k]) for k in trunk)

    # Without the config naming them, the classifier and the new projection fail the load.
    config = reference_config(weights_not_loaded=[])
    with pytest.raises(WeightsMismatch, match=r"visual\.trunk\.fc\.weight.*visual\.head\.proj\.weight"):
        create_model(config, image_weights=str(tmp_path / "resnet50.pth"))
    # A tensor missing from the file is listed, never silently left random.
    del state["layer4.2.conv3.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(WeightsMismatch, match=r"layer4\.2\.conv3\.weight"):
        create_model(reference_config(), image_weights=str(tmp_path / "partial.pth"))


def test_vit_b32_layout_clip_dict_fills_the_reference_text_tower(tmp_path):
    state = save_clip(tmp_path / "vit.pt", {"image_size": 64, "patch_size": 32, "width": 64, "layers": 2,
                                             "head_width": 32})
    model = create_model(reference_config(), text_weights=str(tmp_path / "vit.pt"))
    text_keys = [k for k in state if not k.startswith("visual.") and k not in ("logit_scale", "text_projection")]
    assert len(text_keys) == 4 + 12 * TEXT["layers"]
    assert_loaded(model, state, text_keys)
    # The reference trains a new 64 -> 768 projection and starts the scale at 1/0.07.
    assert not torch.equal(model.clip.logit_scale, state["logit_scale"])
    with pytest.raises(WeightsMismatch, match="text_projection"):
        create_model(reference_config(weights_not_loaded=["visual.*"]), text_weights=str(tmp_path / "vit.pt"))


def test_vit_clip_dict_loads_whole_at_another_image_size(tmp_path):
    vision = {"image_size": 64, "patch_size": 32, "width": 64, "layers": 2, "head_width": 32}
    state = save_clip(tmp_path / "vit.pt", vision)
    config = {"embed_dim": 32, "image_mean": [0.5] * 3, "image_std": [0.25] * 3, "quick_gelu": True,
              "vision_cfg": {**vision, "image_size": 96}, "text_cfg": TEXT}
    model = create_model(config, pretrained=tmp_path / "vit.pt")
    grid = model.clip.visual.positional_embedding
    assert grid.shape == (1 + 3 * 3, 64) and state["visual.positional_embedding"].shape == (1 + 2 * 2, 64)
    assert torch.equal(grid[0], state["visual.positional_embedding"][0])  # class token kept
    assert_loaded(model, state, [k for k in state if k != "visual.positional_embedding"])


def test_rn50_layout_clip_dict_interpolates_the_attention_pool_grid(tmp_path):
    # The `paper` failure: an RN50 dict at 224 px ([50, 2048]) into a 448 px model ([197, 2048]).
    vision = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16}
    state = save_clip(tmp_path / "rn.pt", vision)
    config = {"embed_dim": 32, "image_mean": [0.5] * 3, "image_std": [0.25] * 3, "quick_gelu": True,
              "vision_cfg": {**vision, "image_size": 128}, "text_cfg": TEXT}
    model = create_model(config, pretrained=tmp_path / "rn.pt")
    key = "visual.attnpool.positional_embedding"
    assert state[key].shape[0] == 1 + 2 * 2 and model.clip.state_dict()[key].shape[0] == 1 + 4 * 4
    assert_loaded(model, state, [k for k in state if k != key])
    report = load_weights(model.clip, tmp_path / "rn.pt", "image")
    assert report.interpolated == [key] and len(report.loaded) == len([k for k in state if k.startswith("visual.")])


def write_bert(folder: Path, *, masked_lm: bool = False) -> None:
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "left", "effusion", "large", "density", "."]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(2)
    (BertForMaskedLM if masked_lm else BertModel)(config).save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)


def hf_config(folder: Path, pooler: str = "mean_pooler", **extra) -> dict:
    return {"embed_dim": 32, "image_mean": [0.5] * 3, "image_std": [0.25] * 3,
            "vision_cfg": {"image_size": 32, "timm_model_name": "test_resnet", "timm_model_pretrained": False,
                           "timm_pool": "avg", "timm_proj": "linear"},
            "text_cfg": {"context_length": 16, "hf_model_name": str(folder), "hf_proj_type": "linear",
                         "hf_pooler_type": pooler}, **extra}


def test_bert_folder_with_its_tokenizer_is_loaded_whole(tmp_path):
    from safetensors.torch import load_file

    write_bert(tmp_path / "bert")
    model = create_model(hf_config(tmp_path / "bert"))
    stored = load_file(str(tmp_path / "bert" / "model.safetensors"))
    encoder = model.clip.text.transformer.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in stored.items() if k in encoder)
    tokens = create_tokenizer(model.config)(["large left effusion."])
    assert tokens.shape == (1, 16) and int(tokens[0, 0]) == 2  # [CLS] from the folder's vocabulary
    assert model.encode_text(tokens).shape == (1, 32)


def test_bert_masked_lm_folder_fails_until_its_head_is_named(tmp_path):
    # BioClinicalBERT-style checkpoints carry the masked-LM head (cls.*), which an encoder does not use.
    write_bert(tmp_path / "bert_mlm", masked_lm=True)
    with pytest.raises(WeightsMismatch, match=r"cls\.predictions"):
        create_model(hf_config(tmp_path / "bert_mlm"))
    model = create_model(hf_config(tmp_path / "bert_mlm", weights_not_loaded=["text.transformer.cls.*"]))
    assert model.encode_text(create_tokenizer(model.config)(["no effusion."])).shape == (1, 32)


def test_hf_clip_text_model_folder_loads_with_its_pooler_output(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path / "clip_text"
    folder.mkdir()
    vocab = ["<|startoftext|>", "<|endoftext|>", "no</w>", "left</w>", "effusion</w>", ".</w>"]
    vocab += sorted(set("noleftefusin."))
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=16, hidden_act="quick_gelu",
                            eos_token_id=1, bos_token_id=0, pad_token_id=1)
    torch.manual_seed(3)
    CLIPTextModel(config).save_pretrained(folder)
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    model = create_model(hf_config(folder, pooler="cls_pooler"))
    tokens = create_tokenizer(model.config)(["no effusion"])
    direct = CLIPTextModel.from_pretrained(folder).eval()
    with torch.no_grad():
        pooled = direct(input_ids=tokens, attention_mask=(tokens != 1).long()).pooler_output
        ours = model.clip.text.proj(model.clip.text.pooler(model.clip.text.transformer(
            input_ids=tokens, attention_mask=(tokens != 1).long()), None))
    assert torch.allclose(ours, model.clip.text.proj(pooled))


def test_torchscript_archive_as_openai_ships_clip_loads(tmp_path):
    # OpenAI's ViT-B-32.pt is a TorchScript archive (its buffers include the causal attn_mask).
    from open_clip.model import CLIP

    vision = {"image_size": 64, "patch_size": 32, "width": 64, "layers": 1, "head_width": 32}
    torch.manual_seed(4)
    clip = CLIP(32, vision, TEXT, quick_gelu=True).eval()
    traced = torch.jit.trace_module(clip, {"forward": (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long))},
                                    check_trace=False)
    torch.jit.save(traced, tmp_path / "ViT-B-32.pt")
    model = create_model(reference_config(), text_weights=str(tmp_path / "ViT-B-32.pt"))
    state = clip.state_dict()
    assert_loaded(model, state, [k for k in state if not k.startswith("visual.") and k not in ("logit_scale", "text_projection")])
