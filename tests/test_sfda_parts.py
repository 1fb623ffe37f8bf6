"""Few-shot SFDA building blocks (issue 6, first part): SHOT network modes, SAM, SHOT/NRC/AaD losses, SND."""

import math

import pytest
import torch
import torch.nn.functional as F

from transfer.methods.sfda import SAM, SHOTNet, aad_loss, information_maximization, nrc_loss, shot_pseudo_labels, snd


def test_information_maximization_on_known_predictions():
    C = 4
    uniform = torch.zeros(8, C)  # every prediction uniform: entropy log C, mean prediction uniform too
    assert information_maximization(uniform).item() == pytest.approx(0.0, abs=1e-4)
    onehot = torch.eye(C).repeat(2, 1) * 50  # confident and balanced: 0 - log C
    assert information_maximization(onehot).item() == pytest.approx(-math.log(C), abs=1e-3)
    collapsed = torch.zeros(8, C)
    collapsed[:, 0] = 50  # confident but one class: 0 - 0
    assert information_maximization(collapsed).item() == pytest.approx(0.0, abs=1e-3)


def test_shot_pseudo_labels_recover_clusters_despite_wrong_predictions():
    torch.manual_seed(0)
    centres = torch.eye(3) * 5
    labels = torch.arange(3).repeat_interleave(20)
    feats = centres[labels] + 0.3 * torch.randn(60, 3)
    probs = F.one_hot(labels, 3).float() * 0.6 + 0.4 / 3
    probs[:10] = probs[:10].roll(1, dims=1)  # a sixth of the predictions point at the wrong class
    assert torch.equal(shot_pseudo_labels(feats, probs), labels)


def test_snd_matches_its_definition_and_prefers_tight_clusters():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(25)
    tight = (5 * F.one_hot(labels, 4) + 0.05 * torch.randn(100, 4)).softmax(1)
    loose = (5 * F.one_hot(labels, 4) + 1.5 * torch.randn(100, 4)).softmax(1)
    assert snd(tight) > snd(loose)
    p = torch.rand(5, 3).softmax(1)
    u = F.normalize(p, dim=1)
    manual = 0.0
    for i in range(5):
        sims = torch.stack([u[i] @ u[j] for j in range(5) if j != i]) / 0.05
        q = sims.softmax(0)
        manual += -(q * q.log()).sum().item() / 5
    assert snd(p) == pytest.approx(manual, abs=1e-5)


def test_aad_loss_matches_its_definition():
    torch.manual_seed(0)
    probs = torch.rand(4, 3).softmax(1)
    feats = torch.randn(4, 5)
    index = torch.arange(4)
    loss = aad_loss(probs, feats, feats, probs, index, k=2, alpha=0.5)
    sim = F.normalize(feats, dim=1) @ F.normalize(feats, dim=1).T
    sim.fill_diagonal_(-float("inf"))
    nn = sim.topk(2, 1).indices
    attract = -sum((probs[i] * probs[j]).sum() for i in range(4) for j in nn[i]) / 4
    disperse = sum((probs[i] * probs[j]).sum() for i in range(4) for j in range(4) if i != j) / 4
    assert loss.item() == pytest.approx((attract + 0.5 * disperse).item(), abs=1e-6)


def test_nrc_loss_is_finite_and_rewards_agreement_with_neighbours():
    torch.manual_seed(0)
    feats = torch.randn(10, 4)
    agree = F.one_hot(torch.zeros(10, dtype=torch.long), 3).float()
    spread = torch.full((10, 3), 1 / 3)
    a = nrc_loss(agree, feats, feats, agree, torch.arange(10), k=3)
    b = nrc_loss(spread, feats, feats, spread, torch.arange(10), k=3)
    assert torch.isfinite(a) and a < b


def test_sam_steps_follow_the_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.5)
    loss = lambda: (w ** 4).sum()  # noqa: E731
    w0 = w.detach().clone()
    loss().backward()
    g = 4 * w0 ** 3
    opt.first_step()
    assert torch.allclose(w.detach(), w0 + 0.1 * g / g.norm())
    perturbed = w.detach().clone()
    loss().backward()
    opt.second_step()
    assert torch.allclose(w.detach(), w0 - 0.5 * 4 * perturbed ** 3)  # back to w0, step with the perturbed gradient


@pytest.mark.parametrize("mode,trainable", [("all", None), ("cls", {"netC"}), ("feat", {"netF", "netB"})])
def test_shotnet_modes(mode, trainable):
    net = SHOTNet("test_resnet", num_classes=5)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    net.set_trainable(mode)
    parts = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert parts == (trainable or {"netF", "netB", "netC"})
