"""MoE-LoRA building blocks (issue 5, first part): expert layer and router, balance loss, EER against an
independent computation, ASVspoof / In-the-Wild / CSV readers, audio loading."""

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from datamodules import DatasetError
from datamodules.audio import (
    AudioDataset, crop_or_repeat, load_audio, read_asvspoof2019, read_asvspoof2021_keys, read_csv_list,
    read_in_the_wild,
)
from transfer.adapters import (
    MoELoRAConfig, MoELoRALinear, inject_moe_lora, load_balancing_loss, router_z_loss, routers_of,
)
from transfer.metrics.eer import ScoreError, compute_eer, eer_report, plot_det, pooled_ood_mean, write_score_file


class Attention(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        a = torch.softmax(self.q_proj(x) @ self.k_proj(x).transpose(-1, -2), -1) @ self.v_proj(x)
        return self.out_proj(a)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(Attention(), Attention())


@pytest.mark.parametrize("top_k,routing,shared", [(None, "token", True), (2, "token", True),
                                                  (1, "utterance", True), (2, "token", False)])
def test_identity_at_init_shapes_and_trainable_set(top_k, routing, shared):
    m, x = _model(), torch.randn(3, 5, 8)
    y0 = m(x)
    cfg = MoELoRAConfig(num_experts=4, rank=2, top_k=top_k, routing=routing, router_shared=shared)
    routers = inject_moe_lora(m, cfg)
    assert torch.allclose(m(x), y0, atol=1e-6)  # every B_e is zero
    layer = m[0].q_proj
    assert isinstance(layer, MoELoRALinear) and layer.lora_A.shape == (4, 2, 8) and layer.lora_B.shape == (4, 8, 2)
    assert len(routers) == (2 if shared else 8)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all(("lora_" in n) or ("router" in n) for n in trainable)
    per_proj = 4 * 2 * (8 + 8)
    router = 8 * 4 + 4
    expected = 2 * (4 * per_proj + (router if shared else 4 * router))
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == expected


def test_topk_gates_are_masked_and_renormalised():
    m = _model()
    inject_moe_lora(m, MoELoRAConfig(num_experts=4, rank=2, top_k=2))
    router = m[0].moe_router
    with torch.no_grad():
        router.proj.weight.normal_()
    m(torch.randn(2, 6, 8))
    gates = router.gates
    assert gates.shape == (2, 6, 4)
    assert torch.equal((gates > 0).sum(-1), torch.full((2, 6), 2))
    assert torch.allclose(gates.sum(-1), torch.ones(2, 6))
    top2 = router.logits.topk(2, -1).indices
    assert torch.equal(gates.topk(2, -1).indices.sort(-1).values, top2.sort(-1).values)


def test_utterance_routing_gives_one_gate_vector_per_utterance():
    m = _model()
    inject_moe_lora(m, MoELoRAConfig(num_experts=3, rank=2, routing="utterance"))
    with torch.no_grad():
        m[0].moe_router.proj.weight.normal_()
    m(torch.randn(2, 7, 8))
    g = m[0].moe_router.gates
    assert torch.allclose(g, g[:, :1].expand_as(g))


def test_output_matches_the_formula_with_random_experts():
    torch.manual_seed(1)
    base = nn.Linear(6, 5)
    cfg = MoELoRAConfig(num_experts=3, rank=2, alpha=4.0, top_k=None)
    from transfer.adapters import Router

    router = Router(6, 3)
    layer = MoELoRALinear(base, router, cfg, own_router=True)
    with torch.no_grad():
        layer.lora_B.normal_()
        router.proj.weight.normal_()
    x = torch.randn(4, 6)
    g = torch.softmax(router.proj(x), -1)
    expected = base(x) + 2.0 * sum(g[:, e:e + 1] * (x @ layer.lora_A[e].T @ layer.lora_B[e].T) for e in range(3))
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_balance_loss_on_known_gate_distributions():
    m = _model()
    inject_moe_lora(m, MoELoRAConfig(num_experts=4, rank=2))
    m(torch.randn(2, 5, 8))
    # zero routers: uniform probabilities, every argmax is expert 0 -> f = (1,0,0,0), P = 1/4 -> E * 1/4 = 1
    assert load_balancing_loss(routers_of(m)).item() == pytest.approx(1.0)
    r = m[0].moe_router
    r.logits = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]]))
    m[1].moe_router.logits = r.logits
    # f = (1/2, 1/2, 0, 0), P = (0.4, 0.4, 0.1, 0.1) -> 4 * (0.2 + 0.2) = 1.6
    assert load_balancing_loss(routers_of(m)).item() == pytest.approx(1.6)
    z = torch.logsumexp(r.logits, -1).square().mean()
    assert router_z_loss(routers_of(m)).item() == pytest.approx(z.item())


def test_gradients_reach_zero_experts_and_the_router():
    m = _model()
    inject_moe_lora(m, MoELoRAConfig(num_experts=4, rank=2, top_k=2))
    loss = m(torch.randn(2, 5, 8)).square().sum() + 0.01 * load_balancing_loss(routers_of(m))
    loss.backward()
    assert m[0].q_proj.lora_B.grad.abs().sum() > 0
    assert m[0].moe_router.proj.weight.grad.abs().sum() > 0  # the router learns, from zero init
    assert m[0].q_proj.base.weight.grad is None


def test_moe_config_bad_input():
    with pytest.raises(ValueError, match="top_k must be in 1..4"):
        MoELoRAConfig(num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="no nn.Linear named"):
        inject_moe_lora(nn.Sequential(nn.Linear(2, 2)), MoELoRAConfig(targets=["q_proj"]))


# ------------------------------------------------------------------------------------------ EER
def test_eer_agrees_with_an_independent_roc_computation():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    bona, spoof = rng.normal(1, 1, 400), rng.normal(-1, 1.3, 900)
    eer, thr = compute_eer(bona, spoof)
    fpr, tpr, _ = roc_curve(np.r_[np.ones(400), np.zeros(900)], np.r_[bona, spoof], drop_intermediate=False)
    i = np.argmin(np.abs((1 - tpr) - fpr))
    assert eer == pytest.approx(((1 - tpr[i]) + fpr[i]) / 2, abs=1 / 400)
    frr = np.mean(bona <= thr)
    far = np.mean(spoof > thr)
    assert abs(frr - far) <= 1 / 400 + 1 / 900 and eer == pytest.approx((frr + far) / 2, abs=1e-9)


def test_eer_edge_cases_and_report(tmp_path):
    assert compute_eer([3, 4, 5], [0, 1, 2])[0] == 0.0
    assert compute_eer([0, 1, 2], [3, 4, 5])[0] == 1.0
    with pytest.raises(ScoreError, match="NaN"):
        compute_eer([1, np.nan, 2], [0, 1, 2])
    with pytest.raises(ScoreError, match="hard decisions"):
        compute_eer([1, 1, 1], [0, 0])
    scores = [0.9, 0.8, 0.7, 0.1, 0.2, 0.85, 0.3]
    labels = [1, 1, 1, 0, 0, 0, 0]
    attacks = ["bonafide"] * 3 + ["A01", "A01", "A02", "A02"]
    rep = eer_report(scores, labels, attacks)
    assert rep["eer_A01"] == 0.0 and rep["eer_A02"] > 0 and set(rep) == {"eer", "eer_A01", "eer_A02"}
    assert pooled_ood_mean({"in": 0.01, "a": 0.1, "b": 0.3}, "in") == pytest.approx(0.2)
    write_score_file(tmp_path / "scores.txt", ["u1", "u2"], [0.5, -1.25])
    assert (tmp_path / "scores.txt").read_text() == "u1 0.500000\nu2 -1.250000\n"
    plot_det({"sys": ([0.9, 0.8, 0.4], [0.1, 0.5, 0.2])}, tmp_path / "det.png")
    assert (tmp_path / "det.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------ readers
def test_asvspoof_and_wild_readers(tmp_path):
    p = tmp_path / "ASVspoof2019.LA.cm.train.trn.txt"
    p.write_text("LA_0079 LA_T_1138215 - - bonafide\nLA_0039 LA_T_2834763 - A01 spoof\n")
    items = read_asvspoof2019(p, tmp_path / "flac")
    assert [(i.utt, i.label, i.attack) for i in items] == [("LA_T_1138215", 1, "bonafide"), ("LA_T_2834763", 0, "A01")]
    assert items[0].path == tmp_path / "flac" / "LA_T_1138215.flac"
    p.write_text("LA_0079 LA_T_1138215 - bonafide\n")
    with pytest.raises(DatasetError, match=r"train\.trn\.txt:1: expected 5 columns"):
        read_asvspoof2019(p, tmp_path)
    p.write_text("LA_0079 LA_T_1138215 - - genuinely\n")
    with pytest.raises(DatasetError, match="unknown label 'genuinely'"):
        read_asvspoof2019(p, tmp_path)
    keys = tmp_path / "trial_metadata.txt"
    keys.write_text("LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval\n"
                    "LA_0020 LA_E_6866159 none - bonafide bonafide notrim progress\n"
                    "LA_0007 LA_E_5464494 none - bonafide bonafide notrim eval\n")
    items = read_asvspoof2021_keys(keys, tmp_path)
    assert [(i.utt, i.label, i.attack) for i in items] == [("LA_E_9332881", 0, "A07"), ("LA_E_5464494", 1, "bonafide")]
    wild = tmp_path / "release_in_the_wild"
    wild.mkdir()
    (wild / "meta.csv").write_text("file,speaker,label\n0.wav,Alan Watts,spoof\n1.wav,Alan Watts,bona-fide\n")
    assert [i.label for i in read_in_the_wild(wild)] == [0, 1]
    lst = tmp_path / "list.csv"
    lst.write_text("path,label,attack\na.wav,bonafide\nb.wav,spoof,vocoder\n")
    assert [(i.label, i.attack) for i in read_csv_list(lst)] == [(1, "bonafide"), (0, "vocoder")]


def test_audio_loading_resamples_and_names_bad_files(tmp_path):
    t = np.arange(8000) / 8000
    sf.write(tmp_path / "a.flac", np.sin(2 * np.pi * 440 * t).astype(np.float32), 8000)
    wav = load_audio(tmp_path / "a.flac", 16000)
    assert wav.shape == (16000,) and wav.abs().max() > 0.9  # 1 s at 16 kHz, not a silently wrong rate
    (tmp_path / "bad.flac").write_bytes(b"not audio")
    with pytest.raises(DatasetError, match=r"bad\.flac: unreadable audio"):
        load_audio(tmp_path / "bad.flac")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(DatasetError, match=r"empty\.wav: audio file is empty"):
        load_audio(tmp_path / "empty.wav")
    x = torch.arange(5.0)
    assert crop_or_repeat(x, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert crop_or_repeat(x, 3).tolist() == [0, 1, 2]
    lst = tmp_path / "l.csv"
    lst.write_text("a.flac,bonafide\n")
    wav, label, _ = AudioDataset(read_csv_list(lst), length=4000)[0]
    assert wav.shape == (4000,) and label == 1


def test_router_gates_move_from_uniform_and_usage_is_gate_mass():
    """Zero-init routers start uniform (usage reports 1/E each, not '100 % expert 0'); training on inputs from
    two clusters that need different updates moves the gates apart."""
    m = _model()
    routers = list(inject_moe_lora(m, MoELoRAConfig(num_experts=4, rank=2, top_k=None)).values())
    m.eval()
    with torch.no_grad():
        m(torch.randn(4, 5, 8))
    for r in routers:
        assert torch.allclose(r.usage / r.usage.sum(), torch.full((4,), 0.25))
        r.usage.zero_()
    m.train()
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 8, generator=g) * 3
    x = torch.cat([centres[0] + 0.1 * torch.randn(16, 5, 8, generator=g), centres[1] + 0.1 * torch.randn(16, 5, 8, generator=g)])
    target = torch.cat([torch.ones(16, 5, 8), -torch.ones(16, 5, 8)])
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        (m(x) - target).square().mean().backward()
        opt.step()
    gates = routers[0].gates.detach().reshape(-1, 4)
    assert (gates - 0.25).abs().max() > 0.05  # moved away from uniform
    assert (gates[:80].mean(0) - gates[80:].mean(0)).abs().max() > 0.02  # and differ between the two clusters


def test_aasist_backend_shapes_gradients_and_graph_invariance():
    from transfer.models.aasist import AASISTBackend, GraphAttention
    from transfer.models.wav2vec2 import SpoofClassifier

    torch.manual_seed(0)
    head = AASISTBackend(32, dim=24, channels=(8, 8), graph_dim=16)
    frames = torch.randn(3, 40, 32, requires_grad=True)
    logits = head(frames)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    logits[:, 1].sum().backward()
    assert frames.grad.abs().sum() > 0 and all(p.grad is not None for p in head.parameters() if p.requires_grad)
    gat = GraphAttention(16, 16).eval()  # attention over a fully connected graph: node order does not matter
    x, perm = torch.randn(2, 7, 16), torch.randperm(7)
    assert torch.allclose(gat(x)[:, perm], gat(x[:, perm]), atol=1e-5)
    net = SpoofClassifier("tiny", backend="aasist", backend_kwargs={"dim": 24, "channels": [8, 8], "graph_dim": 16})
    assert net(torch.randn(2, 4000)).shape == (2, 2)
    with pytest.raises(ValueError, match="backend must be one of mlp, aasist"):
        SpoofClassifier("tiny", backend="rawnet")
