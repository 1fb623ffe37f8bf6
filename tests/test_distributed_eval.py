"""One way to evaluate across processes: every evaluation loader shards with ShardSampler (each sample once, no
padding) and per-sample records come together through ``transfer.metrics.distributed.gather``."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from datamodules.samplers import ShardSampler, eval_loader
from transfer.metrics.distributed import gather


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        loader = eval_loader(TensorDataset(torch.arange(7)), batch_size=2)
        assert isinstance(loader.sampler, ShardSampler)
        seen = [int(i) for (batch,) in loader for i in batch]
        probs = torch.full((len(seen), 2), float(rank))
        out[rank] = (seen, gather(seen), torch.cat(gather([probs])).tolist())
    finally:
        dist.destroy_process_group()


def test_two_processes_see_each_sample_once_and_gather_all_of_them():
    out = mp.Manager().dict()
    # forked: the workers inherit this process's imports instead of spending seconds on their own
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="fork")
    (seen0, all0, probs0), (seen1, all1, probs1) = out[0], out[1]
    assert seen0 == [0, 2, 4, 6] and seen1 == [1, 3, 5]  # uneven shards, no repeated sample
    assert all0 == all1 == [0, 2, 4, 6, 1, 3, 5]  # rank order, the same on every process
    assert probs0 == probs1 == [[0.0, 0.0]] * 4 + [[1.0, 1.0]] * 3


def test_one_process_gathers_its_own_items_and_loads_sequentially():
    assert gather([3, 1]) == [3, 1]
    loader = eval_loader(TensorDataset(torch.arange(5)), batch_size=2)
    assert [int(i) for (b,) in loader for i in b] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("module", ["audio", "detection", "domains", "embeddings", "fewshot", "volumes"])
def test_every_evaluation_loader_is_an_eval_loader(module):
    """No datamodule builds its own validation/test DataLoader (Lightning's padded sampler would repeat samples)."""
    import importlib
    import inspect
    import re

    src = inspect.getsource(importlib.import_module(f"datamodules.{module}"))
    for hook in ("val_dataloader", "test_dataloader"):
        for body in re.findall(rf"def {hook}\(self\).*?\n(?=    def |\Z)", src, flags=re.S):
            assert "eval_loader(" in body and "DataLoader(" not in body.replace("eval_loader(", ""), (module, hook)
