"""An AASIST-style back-end for self-supervised speech features (Jung et al., "AASIST: Audio anti-spoofing using
integrated spectro-temporal graph attention networks", ICASSP 2022; used after wav2vec2/XLS-R in SSL-AASIST),
written from the papers' description:

1. frames [B, T, D] -> linear to ``dim`` (+ BatchNorm, SELU) -> a [B, 1, dim, T] map -> 2-D residual encoder;
2. two graphs from the encoded map [B, C, F, T']: spectral nodes (max over time, one node per feature row) and
   temporal nodes (max over the feature axis, one per time step), each with a graph attention layer and graph
   pooling (top-k nodes by a learned score);
3. a heterogeneous stacking graph attention layer over both node sets with a learned master node, twice;
4. readout: max and mean of the spectral and temporal nodes and the master node -> linear -> 2 logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GraphAttention(nn.Module):
    """Attention over all node pairs: weights from tanh(W (h_i * h_j)) · a, then projected with and without
    the attention-aggregated neighbours, BatchNorm and SELU."""

    def __init__(self, cin: int, cout: int, temperature: float = 2.0):
        super().__init__()
        self.att_proj = nn.Linear(cin, cout)
        self.att_weight = nn.Parameter(torch.randn(cout, 1) * 0.1)
        self.with_att, self.without_att = nn.Linear(cin, cout), nn.Linear(cin, cout)
        self.bn, self.temperature = nn.BatchNorm1d(cout), temperature

    def attention(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        pair = torch.tanh(self.att_proj(x[:, :, None, :] * x[:, None, :, :]))  # [B, N, N, C]
        return ((pair @ weight).squeeze(-1) / self.temperature).softmax(-1)  # [B, N, N]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.attention(x, self.att_weight)
        h = self.with_att(att @ x) + self.without_att(x)
        return F.selu(self.bn(h.transpose(1, 2)).transpose(1, 2))


class GraphPool(nn.Module):
    """Keep the ``ratio`` of nodes with the highest learned score (nodes scaled by their sigmoid score)."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.score, self.ratio = nn.Linear(dim, 1), ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.score(x))  # [B, N, 1]
        k = max(1, int(round(x.shape[1] * self.ratio)))
        idx = s.squeeze(-1).topk(k, dim=1).indices
        return torch.gather(x * s, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class HeteroGraphAttention(nn.Module):
    """Heterogeneous stacking graph attention (HS-GAL): spectral and temporal nodes in one graph, with separate
    attention weights for spectral-spectral, temporal-temporal and cross pairs, and a master node that attends
    to all of them."""

    def __init__(self, dim: int, temperature: float = 2.0):
        super().__init__()
        self.proj_s, self.proj_t = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.att_proj = nn.Linear(dim, dim)
        self.w_ss, self.w_tt, self.w_st = (nn.Parameter(torch.randn(dim, 1) * 0.1) for _ in range(3))
        self.w_master = nn.Parameter(torch.randn(dim, 1) * 0.1)
        self.with_att, self.without_att = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.master_with, self.master_without = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.bn, self.temperature = nn.BatchNorm1d(dim), temperature

    def forward(self, s: torch.Tensor, t: torch.Tensor, master: torch.Tensor):
        ns = s.shape[1]
        x = torch.cat([self.proj_s(s), self.proj_t(t)], 1)  # [B, Ns + Nt, C]
        pair = torch.tanh(self.att_proj(x[:, :, None, :] * x[:, None, :, :]))
        n = x.shape[1]
        kind = torch.zeros(n, n, dtype=torch.long, device=x.device)  # 0: s-s, 1: t-t, 2: cross
        kind[ns:, ns:] = 1
        kind[:ns, ns:] = kind[ns:, :ns] = 2
        logits = torch.stack([(pair @ w).squeeze(-1) for w in (self.w_ss, self.w_tt, self.w_st)], -1)
        att = (logits.gather(-1, kind.expand(x.shape[0], n, n)[..., None]).squeeze(-1) / self.temperature).softmax(-1)
        h = self.with_att(att @ x) + self.without_att(x)
        h = F.selu(self.bn(h.transpose(1, 2)).transpose(1, 2))
        m_att = ((torch.tanh(self.att_proj(x * master)) @ self.w_master).squeeze(-1) / self.temperature).softmax(-1)
        master = self.master_with((m_att[:, None, :] @ x)) + self.master_without(master)
        return h[:, :ns], h[:, ns:], master


class Residual2d(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.SELU(), nn.Conv2d(cin, cout, (2, 3), padding=(1, 1)),
                                  nn.BatchNorm2d(cout), nn.SELU(), nn.Conv2d(cout, cout, (2, 3), padding=(0, 1)))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.body(x) + self.skip(x), (1, 3), ceil_mode=True)


class AASISTBackend(nn.Module):
    """[B, T, D] speech-model frames -> [B, 2] logits (class 1 = bona fide)."""

    def __init__(self, d_in: int, dim: int = 128, channels: tuple[int, ...] = (32, 32, 64, 64),
                 graph_dim: int = 64, pool_ratio: float = 0.5, temperature: float = 2.0):
        super().__init__()
        self.proj = nn.Linear(d_in, dim)
        self.bn_in = nn.BatchNorm2d(1)
        chans = (1, *channels)
        self.encoder = nn.Sequential(*(Residual2d(a, b) for a, b in zip(chans, chans[1:])))
        c = channels[-1]
        self.to_graph = nn.Linear(c, graph_dim)
        self.gat_s, self.gat_t = GraphAttention(graph_dim, graph_dim, temperature), GraphAttention(graph_dim, graph_dim, temperature)
        self.pool_s, self.pool_t = GraphPool(graph_dim, pool_ratio), GraphPool(graph_dim, pool_ratio)
        self.master = nn.Parameter(torch.randn(1, 1, graph_dim) * 0.1)
        self.hs1, self.hs2 = HeteroGraphAttention(graph_dim, temperature), HeteroGraphAttention(graph_dim, temperature)
        self.out = nn.Linear(5 * graph_dim, 2)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.proj(frames).transpose(1, 2)[:, None]  # [B, 1, dim, T]
        x = F.selu(self.bn_in(F.max_pool2d(x, (3, 3), ceil_mode=True)))
        x = self.encoder(x)  # [B, C, F, T']
        spectral = self.to_graph(x.abs().amax(3).transpose(1, 2))  # [B, F, G]
        temporal = self.to_graph(x.abs().amax(2).transpose(1, 2))  # [B, T', G]
        s, t = self.pool_s(self.gat_s(spectral)), self.pool_t(self.gat_t(temporal))
        master = self.master.expand(x.shape[0], -1, -1)
        s1, t1, m1 = self.hs1(s, t, master)
        s2, t2, m2 = self.hs2(s1, t1, m1)
        s, t, m = s1 + s2, t1 + t2, m1 + m2  # the two stacks, summed (as the paper's second branch)
        readout = torch.cat([s.abs().amax(1), s.mean(1), t.abs().amax(1), t.mean(1), m.squeeze(1)], -1)
        return self.out(readout)
