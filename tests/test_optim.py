"""``model.optimizer`` / ``model.scheduler``: the recipe by default, any torch optimiser or schedule on request."""

from pathlib import Path

import pytest
import torch

from conftest import TINY
from transfer.optim import configured, make_optimizer, make_scheduler
from transfer.runner import run


def _groups():
    body, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
    return [{"params": list(body.parameters()), "lr": 0.1 * 0.01}, {"params": list(head.parameters()), "lr": 0.01}]


def test_recipe_by_default_and_named_optimiser_over_the_same_groups():
    recipe = make_optimizer(_groups(), None, lambda g: torch.optim.Adam(g, weight_decay=0.5))
    assert type(recipe) is torch.optim.Adam and recipe.param_groups[0]["weight_decay"] == 0.5
    opt = make_optimizer(_groups(), {"name": "SGD", "momentum": 0.9, "nesterov": True}, None)
    assert type(opt) is torch.optim.SGD
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.001), 0.01]  # per-group lrs (0.1x body) kept
    assert {g["momentum"] for g in opt.param_groups} == {0.9}
    dotted = make_optimizer(_groups(), {"name": "torch.optim.RMSprop"}, None)
    assert type(dotted) is torch.optim.RMSprop


def test_schedule_override_and_errors():
    opt = make_optimizer(_groups(), {"name": "SGD", "lr": 0.1}, None)
    sched = make_scheduler(opt, {"name": "StepLR", "step_size": 2, "interval": "epoch"})
    assert type(sched["scheduler"]) is torch.optim.lr_scheduler.StepLR and sched["interval"] == "epoch"
    assert make_scheduler(opt, {"name": "none"}, lambda o: 1 / 0) is None  # turns the recipe's schedule off
    assert configured(opt, None) is opt
    with pytest.raises(ValueError, match="unknown 'Adamm' in torch.optim; known: .*AdamW"):
        make_optimizer(_groups(), {"name": "Adamm"}, None)
    with pytest.raises(ValueError, match="needs a 'name'"):
        make_optimizer(_groups(), {"lr": 0.1}, None)
    with pytest.raises(ValueError, match="interval must be step or epoch"):
        make_scheduler(opt, {"name": "StepLR", "step_size": 1, "interval": "batch"})


def test_optimiser_from_the_command_line_trains_and_its_checkpoint_loads_safely(make_cfg, tmp_path):
    rows = run(make_cfg("experiment=source_only_toy", *TINY, "model.optimizer={name: SGD, momentum: 0.9}",
                        "model.scheduler={name: StepLR, step_size: 1, gamma: 0.5, interval: epoch}",
                        run_dir=tmp_path / "run"))
    ckpt = torch.load(Path(rows[0]["checkpoint"]), map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["optimizer"]["name"] == "SGD"
    assert ckpt["optimizer_states"][0]["param_groups"][0]["momentum"] == 0.9
    assert ckpt["lr_schedulers"][0]["step_size"] == 1


def test_hydra_partial_form_is_the_same_optimiser_and_stays_loadable(make_cfg, tmp_path):
    """lightning-hydra-template's ``{_target_, _partial_: true}`` names the same optimiser; it reaches the module (and
    the checkpoint) as the plain dict, never as a ``functools.partial`` that ``weights_only`` loading refuses."""
    opt = make_optimizer(_groups(), {"_target_": "torch.optim.SGD", "_partial_": True, "momentum": 0.8}, None)
    assert type(opt) is torch.optim.SGD and {g["momentum"] for g in opt.param_groups} == {0.8}
    with pytest.raises(ValueError, match="must be _partial_: true"):
        make_optimizer(_groups(), {"_target_": "torch.optim.SGD", "_partial_": False}, None)
    with pytest.raises(ValueError, match="names its class twice"):
        make_optimizer(_groups(), {"_target_": "torch.optim.SGD", "name": "Adam"}, None)
    rows = run(make_cfg("experiment=source_only_toy", *TINY,
                        "model.optimizer={_target_: torch.optim.SGD, _partial_: true, momentum: 0.9}",
                        "model.scheduler={_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 1,"
                        " interval: epoch}", run_dir=tmp_path / "run"))
    ckpt = torch.load(Path(rows[0]["checkpoint"]), map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["optimizer"] == {"name": "torch.optim.SGD", "momentum": 0.9}
    assert ckpt["optimizer_states"][0]["param_groups"][0]["momentum"] == 0.9
    assert ckpt["lr_schedulers"][0]["step_size"] == 1
