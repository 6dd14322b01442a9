"""Our `reference` preset computes the published training step (PerceptionComputingLab/MedFILIP,
train/train.py + train/models.py), checked against a re-implementation of that step written here
from reading it: IKI text composition, `SSM()`, the B x sum-T logits of `VLM.forward` (torchvision
ResNet-50 + fc to 768, HF CLIP text model pooler output + a bias-free linear to 768, exp(logit
scale) times cosine), MSE + BCE-with-logits.

Both sides start from the same weights and read the same batch. Widths: the image tower is the
real ResNet-50 at 64 px; the text tower is CLIP's text transformer reduced to 2 layers of 64 (the
same classes as ViT-B/32's 12 of 512), so the test runs in seconds on a CPU.

Tolerances: targets 1e-6 (the two sides embed the texts in different batches, so padding changes
the float32 summation order, ~1e-7; our SSM diagonal is exactly 1, the reference's 1 +- 1e-7);
loss 1e-5 and gradients 1e-4 absolute (same maths, different kernels: open_clip's fused
in-projection against HF's separate q/k/v, timm's against torchvision's module order).
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.config import PRESETS, TrainConfig
from training.distributed import init_distributed
from knowledge.base import load_knowledge
from training.loop import _Run, _StepTimer
from training.data import make_loader
from medfilip_model.dual_encoder import create_tokenizer, load_config
from knowledge.ssm import SSM, build_ssm, ssm_targets_fn
from knowledge.embeddings import default_sentence_model_path, write_text_embeddings
from knowledge.texts import build_training_texts

# Labels as GPT-IE writes them: [severity, location, category], severity "no" for a negation.
REPORTS = {
    "s0": [["large", "left", "effusion"], ["no", "na", "pneumothorax"]],
    "s1": [["small", "right", "effusion"], ["na", "na", "cardiomegaly"]],
    "s2": [["mild", "na", "edema"], ["no", "left", "effusion"], ["moderate", "bilateral", "atelectasis"]],
    "s3": [["na", "na", "cardiomegaly"]],
}
WIDTH, SIZE = 64, 64


# -- the reference, re-implemented ------------------------------------------------------------------

def reference_texts(labels: list[list[str]], description_book: dict[str, str]) -> list[str]:
    """`Mimic_CXR.__getitem__`: the three fields joined by spaces, then ". " and the description."""
    return [" ".join(label) + ". " + description_book[label[2]] if label[2] in description_book else " ".join(label)
            for label in labels]


def reference_ssm(texts: list[str], entity: list[str], lengths: list[int], tokenizer, model) -> torch.Tensor:
    """`SSM()`: same-entity mask times cosine of mean-pooled sentence embeddings of the batch's
    texts, then per image the max over its own rows -> [B, sum T]."""
    same = np.array([[other == item for other in entity] for item in entity])
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**encoded)[0]
    mask = encoded["attention_mask"].unsqueeze(-1).expand(tokens.size()).float()
    embeddings = F.normalize(torch.sum(tokens * mask, 1) / torch.clamp(mask.sum(1), min=1e-9), p=2, dim=1)
    similarity = same * (embeddings @ embeddings.T).numpy()
    bounds = np.cumsum([0] + lengths)
    return torch.tensor(np.array([np.max(similarity[bounds[i]:bounds[i + 1]], axis=0) for i in range(len(lengths))]))


class ReferenceVLM(nn.Module):
    """`VLM(vision_model="resnet")`."""

    def __init__(self, text_config, embed_dim: int = 768):
        super().__init__()
        import torchvision
        from transformers import CLIPTextModel

        self.image_model = torchvision.models.resnet50(weights=None)
        self.image_model.fc = nn.Linear(self.image_model.fc.in_features, embed_dim)
        self.text_model = CLIPTextModel(text_config)  # what CLIPModel(...).text_model is (transformers 5)
        self.text_projection = nn.Linear(text_config.hidden_size, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        image_feat = self.image_model(images)
        text_feat = self.text_projection(self.text_model(tokens).pooler_output)
        image_feat = image_feat / image_feat.norm(dim=1, keepdim=True)
        text_feat = text_feat / text_feat.norm(dim=1, keepdim=True)
        return self.logit_scale.exp() * image_feat @ text_feat.t()


def parameter_map(layers: int, width: int) -> list[tuple[str, str, slice | None, bool]]:
    """(reference name, our name, rows of our tensor, transposed) for every reference parameter."""
    pairs: list[tuple[str, str, slice | None, bool]] = [
        ("image_model.fc.weight", "clip.visual.head.proj.weight", None, False),
        ("image_model.fc.bias", "clip.visual.head.proj.bias", None, False),
        ("text_model.embeddings.token_embedding.weight", "clip.token_embedding.weight", None, False),
        ("text_model.embeddings.position_embedding.weight", "clip.positional_embedding", None, False),
        ("text_model.final_layer_norm.weight", "clip.ln_final.weight", None, False),
        ("text_model.final_layer_norm.bias", "clip.ln_final.bias", None, False),
        ("text_projection.weight", "clip.text_projection", None, True),
        ("logit_scale", "clip.logit_scale", None, False),
    ]
    for i in range(layers):
        ours, ref = f"clip.transformer.resblocks.{i}", f"text_model.encoder.layers.{i}"
        for k, name in enumerate(("q_proj", "k_proj", "v_proj")):
            rows = slice(k * width, (k + 1) * width)
            pairs += [(f"{ref}.self_attn.{name}.weight", f"{ours}.attn.in_proj_weight", rows, False),
                      (f"{ref}.self_attn.{name}.bias", f"{ours}.attn.in_proj_bias", rows, False)]
        for ref_part, our_part in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                   ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            pairs += [(f"{ref}.{ref_part}.{p}", f"{ours}.{our_part}.{p}", None, False) for p in ("weight", "bias")]
    return pairs


def ours_as_reference(tensor: torch.Tensor, rows: slice | None, transposed: bool) -> torch.Tensor:
    tensor = tensor[rows] if rows is not None else tensor
    return tensor.T if transposed else tensor


# -- fixture: the same batch for both ---------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("reference")
    kb = load_knowledge()
    triplets = pa.Table.from_pylist([
        dict(study_id=study, severity=sev, location=loc, category=cat, negated=sev == "no", uncertain=False)
        for study, labels in REPORTS.items() for sev, loc, cat in labels])
    images = pa.Table.from_pylist([dict(dicom_id=f"d{k}", study_id=study, patient_key=f"p{k}")
                                   for k, study in enumerate(REPORTS)])
    texts_dir = root / "texts"
    build_training_texts(triplets, images, kb, texts_dir, val_fraction=0.0, wording="reference")
    texts = pq.read_table(texts_dir / "texts.parquet").sort_by("text_id")
    write_text_embeddings(texts_dir / "texts.parquet", root / "embeddings.npy")
    build_ssm(texts, np.load(root / "embeddings.npy"), root / "ssm")

    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    pq.write_table(pa.Table.from_pylist([
        dict(dicom_id=f"d{k}", study_id=study, patient_key=f"p{k}", height=SIZE, width=SIZE,
             pixels=rng.integers(0, 256, SIZE * SIZE, dtype=np.uint8).tobytes()) for k, study in enumerate(REPORTS)]),
        root / "images" / "shard-0.parquet")

    model_config = load_config("reference")
    model_config["vision_cfg"]["image_size"] = SIZE
    model_config["text_cfg"].update(width=WIDTH, heads=2, layers=2)
    (root / "model.json").write_text(json.dumps(model_config))
    config = TrainConfig(**{**PRESETS["reference"], "model": str(root / "model.json"), "image_weights": None,
                            "text_weights": None, "batch_size": len(REPORTS), "device": "cpu"})
    run = _Run(config, root / "images", texts_dir, ssm_targets_fn(SSM.load(root / "ssm")), None,
               init_distributed("cpu"), root / "frozen")
    batch = next(iter(make_loader(run.stream)))
    return dict(kb=kb, run=run, batch=batch, texts=texts, model_config=model_config)


def test_reference_preset_step_equals_the_published_step(setup):
    from transformers import AutoModel, AutoTokenizer, CLIPTextConfig

    run, batch, kb = setup["run"], setup["batch"], setup["kb"]
    text_of = dict(zip(setup["texts"]["text_id"].to_pylist(), setup["texts"]["text"].to_pylist()))
    study_of = {f"d{k}": study for k, study in enumerate(REPORTS)}
    initial = copy.deepcopy(run.model.state_dict())

    # Ours: one micro-step of the reference preset's loop on the batch.
    our_targets = run.targets_fn(batch.image_text_ids, batch.text_ids.tolist())
    our_loss = run._micro_step(batch, sync=True, timer=_StepTimer())
    our_grads = {name: p.grad for name, p in run.model.named_parameters() if p.requires_grad}

    # The reference on the same images, its labels in our column order (the loss is a mean over
    # all pairs, so the order of an image's texts does not change it; this lets us compare entries).
    book = {name: entry.description for name, entry in kb.categories.items()}
    labels, texts = [], []
    for dicom_id, ids in zip(batch.dicom_ids, batch.image_text_ids):
        mine = reference_texts(REPORTS[study_of[dicom_id]], book)
        ours = [text_of[i] for i in ids]
        assert sorted(mine) == sorted(ours)  # text composition: the same strings
        labels.append([REPORTS[study_of[dicom_id]][mine.index(text)] for text in ours])
        texts += ours
    assert [text_of[i] for i in batch.text_ids.tolist()] == texts  # B x sum T: every text of every image

    entity = [label[2] for image_labels in labels for label in image_labels]
    lengths = [len(image_labels) for image_labels in labels]
    sentence_model = str(default_sentence_model_path())
    targets = reference_ssm(texts, entity, lengths, AutoTokenizer.from_pretrained(sentence_model),
                            AutoModel.from_pretrained(sentence_model).eval())
    assert targets.shape == (len(batch), len(texts))
    assert torch.allclose(our_targets.float(), targets.float(), rtol=0, atol=1e-6)

    text_config = CLIPTextConfig(vocab_size=49408, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                                 num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                 hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
    reference = ReferenceVLM(text_config).train()
    pairs = parameter_map(2, WIDTH)
    state = {f"image_model.{k.removeprefix('clip.visual.trunk.')}": v for k, v in initial.items()
             if k.startswith("clip.visual.trunk.")}
    state.update({ref: ours_as_reference(initial[our], rows, t) for ref, our, rows, t in pairs})
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not missing and not unexpected  # every reference tensor comes from our model

    # CLIPProcessor(padding=True): the same BPE ids, padded to the longest with <|endoftext|>.
    tokens = create_tokenizer(setup["model_config"])(texts)
    tokens = tokens[:, :int((tokens != 0).sum(1).max())]
    tokens[tokens == 0] = 49407
    mean = torch.tensor(setup["model_config"]["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(setup["model_config"]["image_std"]).view(1, 3, 1, 1)
    images = (batch.images.repeat(1, 3, 1, 1) - mean) / std  # the published data_prepare normalises up front
    logits = reference(images, tokens)
    loss = nn.MSELoss()(logits, targets) + nn.BCEWithLogitsLoss()(logits, targets)
    loss.backward()

    assert abs(float(loss) - our_loss) <= 1e-5
    compared = set()
    for name, param in reference.named_parameters():
        if name.startswith("image_model.") and not name.startswith("image_model.fc."):
            ours, rows, transposed = "clip.visual.trunk." + name.removeprefix("image_model."), None, False
        else:
            _, ours, rows, transposed = next(p for p in pairs if p[0] == name)
        expected = ours_as_reference(our_grads[ours], rows, transposed)
        assert torch.allclose(param.grad, expected, rtol=0, atol=1e-4), (name, float((param.grad - expected).abs().max()))
        compared.add(ours)
    assert compared == set(our_grads)  # every trained parameter of ours has its reference twin


def test_reference_preset_options(setup):
    """The published optimiser: SGD without momentum, decay on every parameter, warm restarts
    every 2 epochs to eta_min 1e-6, no logit-scale bound, no augmentation."""
    run = setup["run"]
    optimizer = run.optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    decayed = [g for g in optimizer.param_groups if g["weight_decay"] == 1e-4]
    assert sum(len(g["params"]) for g in decayed) == sum(1 for p in run.model.parameters() if p.requires_grad)
    assert all(g["momentum"] == 0.0 for g in optimizer.param_groups)
    assert run.stream.augmentation is None and run.config.max_logit_scale is None
    # CosineAnnealingWarmRestarts(T_0 = 2 epochs of steps, eta_min=1e-6) from lr 1e-4:
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(reference, T_0=2 * run.steps_per_epoch, eta_min=1e-6)
    ours = run.scheduler
    for _ in range(5 * run.steps_per_epoch):
        assert abs(ours.get_last_lr()[0] - schedule.get_last_lr()[0]) < 1e-12
        reference.step(), schedule.step(), ours.step()
