"""Pre-training pays off: with 1% of the labels, the linear probe on the pre-trained image encoder
beats the same architecture from random init, on the generated corpus's held-out NIH-layout set.

Needs a model that has learned something, which the tests cannot make in their budget: a tiny
model trained for ~100 steps on a 400-study generated corpus at 64 px (~30 s here) reached only
zero-shot AUC ~0.55, and on drawn-shape fixtures random features + a linear probe already score
0.7-0.96. So this test runs when the lead's fixture is present and is skipped otherwise:
- MEDFILIP_EVAL_CHECKPOINT: a training.loop checkpoint (best.pt) of a model trained on the
  generated corpus (e.g. the `demo` preset), and
- MEDFILIP_EVAL_ROOT: that corpus's `<out>/eval` folder (generate_corpus(..., eval_images>=200)).
"""
from __future__ import annotations

import os

import pytest
import torch

from evaluation.datasets import generated_eval_sets
from evaluation.finetune import run_finetune

CHECKPOINT = os.environ.get("MEDFILIP_EVAL_CHECKPOINT")
EVAL_ROOT = os.environ.get("MEDFILIP_EVAL_ROOT")


@pytest.mark.skipif(not (CHECKPOINT and EVAL_ROOT), reason="needs MEDFILIP_EVAL_CHECKPOINT and MEDFILIP_EVAL_ROOT")
def test_pretrained_encoder_beats_random_init_with_one_percent_of_labels():
    config = torch.load(CHECKPOINT, map_location="cpu", weights_only=False)["model_config"]
    data = generated_eval_sets(EVAL_ROOT)["nih"]
    result = run_finetune(data, config, CHECKPOINT, fractions=(0.01,), modes=("linear",),
                          inits=("pretrained", "random"), n_boot=200)
    auc = {run["init"]: run["report"]["mean_auc"] for run in result["runs"]}
    assert auc["pretrained"] > auc["random"], auc
