"""Two gloo DDP processes train exactly like one process on the same global batches."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from test_train_loop import PROMPTS, category_targets, tiny_config, write_fixture
from training.distributed import init_distributed, shutdown_distributed
from training.loop import train
from medfilip_model.dual_encoder import create_model


# SGD, the paper's optimiser: its update is linear in the gradient. (Adam divides by the root of the
# second moment, which turns the ~1e-10 float noise on gradients that are zero in exact arithmetic -
# attention key biases - into full-size steps, so Adam runs agree only on the other parameters.)
DDP_CONFIG = dict(data_lanes=2, epochs=1, optimizer="sgd", lr=0.1, momentum=0.9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    root_path = Path(root)
    env = init_distributed("cpu")
    try:
        train(tiny_config(**DDP_CONFIG), root_path / "images", root_path / "texts", root_path / "ddp",
              category_targets(root_path / "texts"), prompts=PROMPTS, env=env)
    finally:
        shutdown_distributed()


def test_two_process_ddp_matches_single_process_with_same_global_batch(tmp_path):
    images, texts = write_fixture(tmp_path)
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    torch.set_num_threads(1)
    single = train(tiny_config(**DDP_CONFIG), images, texts, tmp_path / "single",
                   category_targets(texts), prompts=PROMPTS)
    ddp_state = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=False)
    single_state = torch.load(single.last_checkpoint, weights_only=False)
    assert ddp_state["step"] == single_state["step"] == single.steps > 0
    for name, value in single_state["model"].items():
        torch.testing.assert_close(ddp_state["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # the comparison means something only if training moved the weights away from the same init
    torch.manual_seed(0)
    initial = create_model("tiny").state_dict()
    assert max((single_state["model"][k] - v).abs().max().item() for k, v in initial.items()) > 1e-3
    assert abs(ddp_state["history"][0]["val_loss"] - single_state["history"][0]["val_loss"]) < 1e-4
