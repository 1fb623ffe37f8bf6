"""Adapter library: identity at init, merge equivalence, parameter formulas, gradients, DoRA, peft oracle,
injector, adapter-only checkpoints and bad input."""

import copy
import math

import pytest
import torch
from torch import nn

from transfer.statedict import StateDictMismatchError

from transfer.adapters import (
    AdapterConfig, AdapterLayer, adapter_state_dict, inject, load_adapters, merge_all,
    save_adapters,
)

torch.manual_seed(0)
PAPER_KINDS = ["lora_c", "convlora", "cp_lora", "dora_c", "convdora", "cp_dora"]

# (module, input shape): every supported type, with stride/dilation/"same"/transposed variants
LAYERS = {
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), (2, 4, 9)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, padding=1), (2, 4, 7, 7)),
    "conv3d": (lambda: nn.Conv3d(3, 5, 3, padding=1), (2, 3, 5, 5, 5)),
    "conv2d_stride2": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 8, 8)),
    "conv2d_dilation2_same": (lambda: nn.Conv2d(4, 6, 3, dilation=2, padding="same"), (2, 4, 9, 9)),
    "conv3d_stride2_reflect": (lambda: nn.Conv3d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"), (1, 3, 6, 6, 6)),
    "convT1d": (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1), (2, 4, 5)),
    "convT2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1), (2, 4, 5, 5)),
    "convT3d": (lambda: nn.ConvTranspose3d(4, 3, 2, stride=2), (1, 4, 3, 3, 3)),
    "convT2d_dilation": (lambda: nn.ConvTranspose2d(4, 6, 3, dilation=2), (2, 4, 5, 5)),
    "linear": (lambda: nn.Linear(6, 5), (3, 2, 6)),
}


def _adapted(layer_key, kind, rank=3, **kw):
    make, shape = LAYERS[layer_key]
    base = make()
    return base, AdapterLayer(copy.deepcopy(base), AdapterConfig(kind=kind, rank=rank, **kw)), torch.randn(shape)


def _randomise(layer: AdapterLayer) -> None:
    with torch.no_grad():
        for p in layer.adapter_parameters():
            p.normal_(0, 0.3)


@pytest.mark.parametrize("kind", PAPER_KINDS)
@pytest.mark.parametrize("layer_key", list(LAYERS))
def test_identity_at_init(layer_key, kind):
    base, layer, x = _adapted(layer_key, kind)
    assert torch.allclose(layer(x), base(x), atol=1e-6)


@pytest.mark.parametrize("kind,mode", [(k, "materialize") for k in PAPER_KINDS] + [("lora_c", "branch"), ("dora_c", "branch")])
@pytest.mark.parametrize("layer_key", list(LAYERS))
def test_merged_equals_unmerged(layer_key, kind, mode):
    _, layer, x = _adapted(layer_key, kind, forward_mode=mode)
    _randomise(layer)
    y = layer(x)
    assert not torch.allclose(y, layer.base(x), atol=1e-4)  # the update does something
    layer.merge()
    assert torch.allclose(layer(x), y, atol=1e-5)
    assert torch.allclose(layer.to_plain()(x), y, atol=1e-5)
    layer.unmerge()
    assert torch.allclose(layer(x), y, atol=1e-5)


@pytest.mark.parametrize("layer_key", ["conv2d_dilation2_same", "convT2d", "conv3d_stride2_reflect", "linear"])
@pytest.mark.parametrize("dora", [False, True])
def test_branch_forward_equals_materialized(layer_key, dora):
    _, a, x = _adapted(layer_key, "lora_c", dora=dora, forward_mode="branch")
    b = copy.deepcopy(a)
    b.branch = False
    _randomise(a)
    b.load_state_dict(a.state_dict())
    assert torch.allclose(a(x), b(x), atol=1e-5)


def _formula(kind, O, I, k, d, r):
    P = k**d
    return {"lora_c": r * (O + I * P), "convlora": r * k * (O * k ** (d - 1) + I * k), "cp_lora": r * (O + I + d * k)}[kind]


@pytest.mark.parametrize("kind", PAPER_KINDS)
@pytest.mark.parametrize("d,transposed", [(1, False), (2, False), (3, False), (3, True)])
def test_trainable_count_matches_spec_formula(kind, d, transposed):
    O, I, k, r = 32, 16, 3, 4
    conv = getattr(nn, f"Conv{'Transpose' if transposed else ''}{d}d")(I, O, k)
    layer = AdapterLayer(conv, AdapterConfig(kind=kind, rank=r))
    base_kind = kind.replace("dora_c", "lora_c").replace("convdora", "convlora").replace("cp_dora", "cp_lora")
    expected = _formula(base_kind, O, I, k, d, r) + (O if kind in ("dora_c", "convdora", "cp_dora") else 0)
    assert sum(p.numel() for p in layer.adapter_parameters()) == expected


def test_worked_sizes_from_the_spec():
    """adapters_sah.md §2.4: O = I = 32, k = 3, r = R = 4, 3-D: 3,584 / 4,608 / 292."""
    sizes = [sum(p.numel() for p in AdapterLayer(nn.Conv3d(32, 32, 3), AdapterConfig(kind=k, rank=4)).adapter_parameters())
             for k in ("lora_c", "convlora", "cp_lora")]
    assert sizes == [3584, 4608, 292]


@pytest.mark.parametrize("kind", PAPER_KINDS)
def test_gradient_reaches_the_zero_factor_on_the_first_step(kind):
    _, layer, x = _adapted("conv3d", kind)
    layer(x).square().sum().backward()
    zero = layer.cp_out if "cp" in kind else layer.lora_B
    assert zero.grad is not None and zero.grad.abs().sum() > 0
    assert layer.base.weight.grad is None and layer.base.bias.grad is None


@pytest.mark.parametrize("layer_key", ["conv2d", "convT3d", "linear"])
@pytest.mark.parametrize("axis", ["out", "in"])
def test_dora_magnitude_starts_at_the_weight_norm(layer_key, axis):
    base, layer, _ = _adapted(layer_key, "dora_c", dora_axis=axis)
    w = base.weight.transpose(0, 1) if "convT" in layer_key else base.weight
    keep = 0 if axis == "out" else 1
    norm = torch.linalg.vector_norm(w, dim=[i for i in range(w.dim()) if i != keep])
    assert torch.allclose(layer.magnitude, norm)


def test_dora_norm_is_clamped_for_a_zero_channel():
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight[1].zero_()
    layer = AdapterLayer(conv, AdapterConfig(kind="dora_c", rank=2))
    assert torch.isfinite(layer(torch.randn(1, 2, 5, 5))).all()


# ------------------------------------------------------------------------------------------- peft oracle
def _peft_pair(base: nn.Module, rank: int, alpha: float, dora: bool):
    peft = pytest.importorskip("peft")
    ours = AdapterLayer(copy.deepcopy(base), AdapterConfig(kind="lora_c", rank=rank, alpha=alpha, dora=dora))
    _randomise(ours)
    if dora:  # keep the magnitude at its init, which both libraries define as ||W0||
        with torch.no_grad():
            ours.magnitude.copy_(ours._norm(ours._std(ours.base.weight)))
    model = peft.get_peft_model(nn.Sequential(copy.deepcopy(base)),
                                peft.LoraConfig(target_modules=["0"], r=rank, lora_alpha=alpha, use_dora=dora))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A.view_as(layer.lora_A["default"].weight))
        layer.lora_B["default"].weight.copy_(ours.lora_B.view_as(layer.lora_B["default"].weight))
    return ours, model


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Conv2d(4, 6, 3, padding=1), (2, 4, 7, 7)),
    (lambda: nn.Conv3d(3, 5, 3, stride=2, padding=1), (2, 3, 6, 6, 6)),
    (lambda: nn.Linear(6, 5), (3, 6)),
])
def test_lora_c_and_dora_c_agree_with_peft(make, shape, dora):
    base = make()
    ours, theirs = _peft_pair(base, rank=3, alpha=6.0, dora=dora)
    x = torch.randn(shape)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    assert not torch.allclose(ours(x), base(x), atol=1e-4)


# ------------------------------------------------------------------------------------------- injector
class TinyUNet(nn.Module):
    adapter_groups = {"encoder": ["enc"], "decoder": ["up", "head"]}

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 8, 3, stride=2, padding=1))
        self.up = nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.head = nn.Conv3d(4, 1, 1)

    def forward(self, x):
        return self.head(self.up(self.enc(x)))


def test_inject_by_regex_group_and_suffix():
    m = TinyUNet()
    report = inject(m, AdapterConfig(kind="convlora", rank=2, target=r"enc\.\d+"))
    assert report.adapted == ["enc.0", "enc.3"] and "2 modules adapted" in str(report)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"enc.0.lora_A", "enc.0.lora_B", "enc.3.lora_A", "enc.3.lora_B"}
    assert report.trainable == sum(r[3] for r in report.rows)

    m = TinyUNet()
    assert inject(m, AdapterConfig(kind="cp_dora", rank=2, target=["decoder"])).adapted == ["up", "head"]
    m = TinyUNet()
    report = inject(m, AdapterConfig(kind="lora_c", rank=2, target=["head"], train_norms=True, modules_to_save=["up"]))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"enc.1.weight", "enc.1.bias", "up.weight", "up.bias", "head.lora_A"} <= trainable
    assert "enc.0.weight" not in trainable and "head.base.weight" not in trainable


def test_injected_model_is_identity_then_merges_to_plain_modules():
    m = TinyUNet().eval()
    x = torch.randn(1, 1, 6, 6, 6)
    y0 = m(x)
    inject(m, AdapterConfig(kind="dora_c", rank=2))
    assert torch.allclose(m(x), y0, atol=1e-6)
    for layer in m.modules():
        if isinstance(layer, AdapterLayer):
            _randomise(layer)
    y = m(x)
    merge_all(m)
    assert not any(isinstance(mod, AdapterLayer) for mod in m.modules())
    assert type(m.up) is nn.ConvTranspose3d and torch.allclose(m(x), y, atol=1e-5)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown adapter kind 'lora_x'"):
        AdapterConfig(kind="lora_x")
    for bad in (0, -2):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            AdapterConfig(rank=bad)
    with pytest.raises(ValueError, match=r"matches no module; close module names: .*enc\.0"):
        inject(TinyUNet(), AdapterConfig(target=r"encoder\.0"))
    with pytest.raises(TypeError, match="matched only unsupported modules .*BatchNorm3d"):
        inject(TinyUNet(), AdapterConfig(target=r"enc\.1"))
    with pytest.raises(TypeError, match="cannot adapt Embedding"):
        AdapterLayer(nn.Embedding(4, 4), AdapterConfig())
    with pytest.raises(ValueError, match="groups=2 is not supported"):
        AdapterLayer(nn.Conv2d(4, 4, 3, groups=2), AdapterConfig())
    m = TinyUNet()
    inject(m, AdapterConfig(target=["head"]))
    with pytest.raises(ValueError, match="already carries an adapter"):
        inject(m, AdapterConfig(target=["head"]))


# ------------------------------------------------------------------------------------------- checkpoints
def test_adapter_only_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    pretrained = TinyUNet().eval()
    m = copy.deepcopy(pretrained)
    cfg = AdapterConfig(kind="cp_dora", rank=3, target=["decoder"], modules_to_save=[r"enc\.1"])
    inject(m, cfg)
    for layer in m.modules():
        if isinstance(layer, AdapterLayer):
            _randomise(layer)
    with torch.no_grad():
        m.enc[1].weight.add_(1.0)  # a trained extra module travels with the adapters
    folder = save_adapters(m, tmp_path / "adapter", cfg)
    saved = adapter_state_dict(m)
    assert not any(".base." in k for k in saved) and "enc.0.weight" not in saved and "enc.1.weight" in saved
    fresh = load_adapters(copy.deepcopy(pretrained), folder)
    x = torch.randn(1, 1, 6, 6, 6)
    assert torch.allclose(fresh(x), m(x), atol=1e-6)
    assert (folder / "adapter_config.json").exists()
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {n for n, p in m.named_parameters() if p.requires_grad}


def test_loading_adapters_onto_other_shapes_is_refused(tmp_path):
    m = TinyUNet()
    inject(m, AdapterConfig(kind="lora_c", rank=2, target=["head"]))
    save_adapters(m, tmp_path / "a")
    other = TinyUNet()
    other.head = nn.Conv3d(4, 2, 1)
    with pytest.raises(StateDictMismatchError, match=r"module 'head' was Conv3d \(1, 4, 1, 1, 1\) when saved"):
        load_adapters(other, tmp_path / "a")
    wrong_rank = TinyUNet()
    inject(wrong_rank, AdapterConfig(kind="lora_c", rank=5, target=["head"]))
    with pytest.raises(StateDictMismatchError, match="carries .*'rank': 5"):
        load_adapters(wrong_rank, tmp_path / "a")


def test_scaling_is_alpha_over_rank():
    layer = AdapterLayer(nn.Conv2d(2, 2, 3), AdapterConfig(kind="cp_lora", rank=4, alpha=8))
    assert layer.scaling == 2.0 and AdapterConfig(rank=16).alpha == 16.0
    assert math.isclose(AdapterLayer(nn.Linear(2, 2), AdapterConfig(rank=4, alpha=1)).scaling, 0.25)


def test_lightning_checkpoint_holds_adapters_but_not_the_frozen_base(tmp_path):
    import lightning as L

    from transfer.checkpoints import CompatibleCheckpointMixin

    torch.manual_seed(0)
    pretrained = TinyUNet()

    class Module(CompatibleCheckpointMixin, L.LightningModule):
        adapter_only_checkpoints = True

        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(pretrained)
            inject(self.net, AdapterConfig(kind="convlora", rank=2, target=["decoder"]))

        def training_step(self, batch, _):
            return self.net(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.5)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 1, 4, 4, 4)), batch_size=2)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    module = Module()
    trainer.fit(module, data)
    path = tmp_path / "adapters.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert set(state) == {"net.up.lora_A", "net.up.lora_B", "net.head.lora_A", "net.head.lora_B"}
    assert state["net.up.lora_B"].abs().sum() > 0  # trained
    restored = Module.load_from_checkpoint(path, weights_only=True)
    x = torch.randn(1, 1, 4, 4, 4)
    assert torch.allclose(restored.net(x), module.net(x), atol=1e-6)

    class Other(Module):
        def __init__(self):
            super().__init__()
            self.net = TinyUNet()
            inject(self.net, AdapterConfig(kind="lora_c", rank=2, target=["decoder"]))

    with pytest.raises(StateDictMismatchError, match="different model"):
        Other.load_from_checkpoint(path, weights_only=True)


def test_adapter_and_base_weight_loaders_report_mismatches_like_every_loader(tmp_path):
    """The adapter file and plain-weights loaders go through the one state-dict fit report."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from transfer.adapters import load_base_weights

    m = TinyUNet()
    inject(m, AdapterConfig(kind="lora_c", rank=2, target=["head"]))
    save_adapters(m, tmp_path / "a")
    f = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(str(f))
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
    tensors["head.stray"] = torch.zeros(3)
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(StateDictMismatchError, match=r"0 tensors of another shape, 0 missing, 1 unexpected \(e.g. 'head.stray'\)"):
        load_adapters(TinyUNet(), tmp_path / "a")
    plain = TinyUNet().state_dict()
    adapted = TinyUNet()
    inject(adapted, AdapterConfig(kind="lora_c", rank=2, target=["head"]))
    load_base_weights(adapted, plain)  # head.weight goes to head.base.weight; adapter tensors are not asked for
    assert torch.equal(adapted.head.base.weight, plain["head.weight"])
    short = {k: v for k, v in plain.items() if k != "head.bias"}
    with pytest.raises(StateDictMismatchError, match=r"1 tensors of the model are missing \(e.g. 'head.base.bias'\)"):
        load_base_weights(adapted, short)
    plain["head.weight"] = torch.zeros(9, 9)
    with pytest.raises(StateDictMismatchError, match=r"'head.base.weight' does not fit .*1 tensors of another shape"):
        load_base_weights(adapted, plain)
