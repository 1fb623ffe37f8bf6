"""Checkpoints as their publishers release them: fairseq's wav2vec2 files (tensors under ``model`` beside an
argparse ``args`` or an omegaconf ``cfg``, numpy numbers and foreign classes in the training state) load their
tensors exactly through the suite's one safe loader, and a file made to run a command when loaded never runs it."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from real_fixtures import fairseq_wav2vec2_state
from transfer.models.wav2vec2 import create_wav2vec2
from transfer.safeload import CheckpointFileError, Inert, load_checkpoint_file, load_state_dict


class _Module:
    """A module that exists while the file is written and read (as fairseq would be on the publisher's machine
    and, for a naive loader, on ours): if the loader resolved its globals, their code would run."""

    def __init__(self, name: str, **attrs):
        self.name, self.module = name, types.ModuleType(name)
        for k, v in attrs.items():
            v.__module__, v.__qualname__ = name, k
            setattr(self.module, k, v)

    def __enter__(self):
        parts = self.name.split(".")
        self.added = [n for n in (".".join(parts[:i]) for i in range(1, len(parts))) if n not in sys.modules]
        for n in self.added:
            sys.modules[n] = types.ModuleType(n)
        sys.modules[self.name] = self.module
        return self.module

    def __exit__(self, *exc):
        for n in [self.name, *self.added]:
            sys.modules.pop(n, None)


class AverageMeter:  # fairseq.logging.meters.AverageMeter, as it sits in extra_state["metrics"]
    def __init__(self):
        self.val, self.sum, self.count = np.float64(0.5), np.float64(12.0), 24


def _training_state():
    return {"metrics": {"train": [("loss", AverageMeter())]},
            "train_iterator": {"epoch": np.int64(3), "iterations_in_epoch": np.int64(120)},
            "best": np.float32(0.125), "shapes": np.array([[1, 2], [3, 4]], dtype=np.int32), "dtype": np.dtype("float16")}


def _optimizer_history():
    return [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam", "num_updates": 400000,
             "lr_scheduler_state": {"best": np.float64(1.75), "warmup": np.int64(32000)}}]


@pytest.mark.parametrize("form", ["namespace", "omegaconf", "s3prl"])
def test_fairseq_form_loads_bit_exactly_with_its_training_state(tmp_path, form):
    torch.manual_seed(0)
    src = create_wav2vec2("tiny")
    ckpt = {"model": fairseq_wav2vec2_state(src), "extra_state": _training_state(),
            "optimizer_history": _optimizer_history(), "last_optimizer_state": None}
    if form == "s3prl":  # s3prl's hub copy: the same tensors under model_weight, configs as plain dicts
        ckpt = {"task_cfg": {"_name": "audio_pretraining", "sample_rate": 16000},
                "model_cfg": {"_name": "wav2vec2", "encoder_layers": 2}, "model_weight": ckpt["model"]}
    elif form == "namespace":
        ckpt["args"] = argparse.Namespace(arch="wav2vec2", encoder_layers=2, dropout=np.float64(0.1))
    else:
        ckpt["args"] = None
        ckpt["cfg"] = OmegaConf.create({"model": {"_name": "wav2vec2", "encoder_layers": 2},
                                        "optimization": {"lr": [0.0005], "max_update": 400000}})
    path = tmp_path / "xlsr2_tiny.pt"
    with _Module("fairseq.logging.meters", AverageMeter=AverageMeter):
        torch.save(ckpt, path)
        if form != "s3prl":  # plain dicts load under torch alone; the others hit this wall
            with pytest.raises(pickle.UnpicklingError):
                torch.load(path, weights_only=True)
        loaded = load_checkpoint_file(path)
    model = create_wav2vec2("tiny", str(path))  # the weights path the shipped moelora_asvspoof uses
    theirs, ours = src.state_dict(), model.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    if form == "s3prl":
        assert loaded["model_cfg"]["encoder_layers"] == 2
        return
    meter = loaded["extra_state"]["metrics"]["train"][0][1]
    assert isinstance(meter, Inert) and meter.qualified_name == "fairseq.logging.meters.AverageMeter"
    assert meter.state == {"val": 0.5, "sum": 12.0, "count": 24}  # its data kept, its class never imported
    assert loaded["extra_state"]["train_iterator"]["epoch"] == 3 and isinstance(loaded["extra_state"]["best"], np.floating)
    np.testing.assert_array_equal(loaded["extra_state"]["shapes"], [[1, 2], [3, 4]])
    assert loaded["optimizer_history"][0]["lr_scheduler_state"]["best"] == 1.75
    if form == "omegaconf":
        assert isinstance(loaded["cfg"], DictConfig) and loaded["cfg"].optimization.max_update == 400000
    else:
        assert loaded["args"].encoder_layers == 2


def test_a_file_that_runs_a_command_when_loaded_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    def touch(path):  # code a publisher's package could hold: runs if a loader resolves and calls it
        Path(path).touch()

    class Sneaky:
        def __reduce__(self):
            return (touch, (str(marker),))

    state = {"model": {"w": torch.ones(2)}}
    torch.save({**state, "extra_state": {"meter": Payload()}}, tmp_path / "os.pt")
    with pytest.raises(CheckpointFileError, match=r"refused: its pickled data names (posix|os)\.system.*Nothing was executed"):
        load_checkpoint_file(tmp_path / "os.pt")
    with _Module("trainer_utils", touch=touch):
        torch.save({**state, "extra_state": {"hook": Sneaky()}}, tmp_path / "sneaky.pt")
        loaded = load_checkpoint_file(tmp_path / "sneaky.pt")  # the module is importable: still never called
    assert isinstance(loaded["extra_state"]["hook"], Inert) and loaded["extra_state"]["hook"].args == (str(marker),)
    assert torch.equal(load_state_dict(tmp_path / "sneaky.pt")["w"], torch.ones(2))
    assert not marker.exists()


def test_a_pickled_whole_model_is_named_not_loaded(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

    with _Module("their_project.models", Net=Net):
        torch.save(Net(), tmp_path / "net.pt")
        with pytest.raises(CheckpointFileError, match=r"pickles a whole their_project\.models\.Net object, not a state dict"):
            load_state_dict(tmp_path / "net.pt")
