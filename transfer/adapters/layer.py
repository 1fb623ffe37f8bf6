"""One wrapper for Linear, Conv{1,2,3}d and ConvTranspose{1,2,3}d carrying a LoRA-family update.

Weights are handled in a standard layout (out, in, k...): ConvTranspose stores (in, out, k...), so its
weight is transposed on the way in and out. Two forward paths compute the same function:
- ``materialize``: build W = W0 + s*dW (DoRA: m * W / ||W||, norm detached) and call the base op once;
  exact for any stride, dilation, padding (incl. "same") and padding_mode;
- ``branch`` (unfold_lora only): base op with W0, plus s * B(A(x)) where A is a conv with the base
  kernel and settings and B a 1x1 conv (peft's formulation); avoids the full-size weight gradient but
  runs two extra convolutions. ``auto`` picks ``materialize``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvTransposeNd

from .config import AdapterConfig

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class AdapterLayer(nn.Module):
    """``base`` (frozen) + a low-rank or CP update of its weight; supports ``merge()``/``unmerge()``."""

    def __init__(self, base: nn.Module, config: AdapterConfig):
        super().__init__()
        if not isinstance(base, SUPPORTED):
            raise TypeError(f"cannot adapt {type(base).__name__}; supported: {', '.join(t.__name__ for t in SUPPORTED)}")
        if getattr(base, "groups", 1) != 1:
            raise ValueError(f"{type(base).__name__} with groups={base.groups} is not supported (groups must be 1)")
        self.base = base
        self.kind, self.rank, self.dora, self.dora_axis = config.kind, config.rank, config.dora, config.dora_axis
        self.alpha, self.eps = float(config.alpha), config.eps
        self.scaling = self.alpha / self.rank
        self.transposed = isinstance(base, _ConvTransposeNd)
        self.spatial = base.weight.dim() - 2
        w = base.weight
        self.out_features, self.in_features = (w.shape[1], w.shape[0]) if self.transposed else (w.shape[0], w.shape[1])
        self.kernel = tuple(w.shape[2:])
        for p in base.parameters():
            p.requires_grad_(False)
        if self.dora:
            self.magnitude = nn.Parameter(self._norm(self._std(w.detach())).clone())
        self._build_factors(w)
        mode = config.forward_mode
        can_branch = self.kind == "unfold_lora" and (not self.dora or self.dora_axis == "out")
        if mode == "branch" and not can_branch:
            raise ValueError("forward_mode='branch' needs kind unfold_lora (and DoRA on the out axis)")
        self.branch = mode == "branch"  # auto = materialize: measured faster on CPU (benchmarks/adapters.py)
        self.merged = False
        self._w0: torch.Tensor | None = None

    # -- factors
    def _build_factors(self, w: torch.Tensor) -> None:
        O, I, r, P = self.out_features, self.in_features, self.rank, math.prod(self.kernel)
        new = lambda *shape: nn.Parameter(w.new_zeros(shape))  # noqa: E731
        if self.kind == "unfold_lora":
            self.lora_A, self.lora_B = new(r, I * P), new(O, r)
        elif self.kind == "reshape_lora":
            k0 = self.kernel[0] if self.kernel else 1
            rest = math.prod(self.kernel[1:]) if self.kernel else 1
            self.lora_A, self.lora_B = new(r * k0, I * k0), new(O * rest, r * k0)
        elif self.kind == "cp_lora":
            self.cp_out, self.cp_in = new(O, r), new(I, r)
            self.cp_spatial = nn.ParameterList([new(k, r) for k in self.kernel])
        else:
            raise ValueError(f"unknown adapter kind '{self.kind}'")
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Exactly one factor is zero, so the adapted layer starts as the base layer."""
        if self.kind == "cp_lora":
            self.cp_out.zero_()
            self.cp_in.normal_(0, 1 / math.sqrt(self.in_features))
            for f in self.cp_spatial:
                f.normal_(0, 1 / math.sqrt(f.shape[0]))
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B.zero_()
        if self.dora:
            self.magnitude.copy_(self._norm(self._std(self.base.weight)))

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("base.")]

    # -- weights in (out, in, k...) layout
    def _std(self, w: torch.Tensor) -> torch.Tensor:
        return w.transpose(0, 1) if self.transposed else w

    def _norm(self, w_std: torch.Tensor) -> torch.Tensor:
        keep = 0 if self.dora_axis == "out" else 1
        dims = [d for d in range(w_std.dim()) if d != keep]
        return torch.linalg.vector_norm(w_std, ord=2, dim=dims).clamp_min(self.eps)

    def _bcast(self, v: torch.Tensor, keep: int, ndim: int) -> torch.Tensor:
        shape = [1] * ndim
        shape[keep] = -1
        return v.view(shape)

    def delta_weight(self) -> torch.Tensor:
        """s * dW in (out, in, k...) layout."""
        shape = (self.out_features, self.in_features, *self.kernel)
        if self.kind == "cp_lora":
            letters = "abcdefgh"[: self.spatial]
            spec = ",".join(["zr", "yr", *[f"{c}r" for c in letters]]) + "->zy" + letters
            delta = torch.einsum(spec, self.cp_out, self.cp_in, *self.cp_spatial)
        else:
            delta = (self.lora_B @ self.lora_A).reshape(shape)
        return delta * self.scaling

    def effective_weight(self) -> torch.Tensor:
        """The weight a plain layer would need to compute this layer's output (native layout)."""
        w = self._std(self.base.weight) + self.delta_weight()
        if self.dora:
            keep = 0 if self.dora_axis == "out" else 1
            scale = self.magnitude / self._norm(w).detach()
            w = w * self._bcast(scale, keep, w.dim())
        return self._std(w)

    # -- forward
    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, output_size=None):
        b = self.base
        if isinstance(b, nn.Linear):
            return F.linear(x, weight, bias)
        if self.transposed:
            pad = b._output_padding(x, output_size, b.stride, b.padding, b.kernel_size, self.spatial, b.dilation)
            return _CONV_T[self.spatial](x, weight, bias, b.stride, b.padding, pad, 1, b.dilation)
        return b._conv_forward(x, weight, bias)

    def _branch_delta(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        r, I, O = self.rank, self.in_features, self.out_features
        if isinstance(self.base, nn.Linear):
            return F.linear(F.linear(x, self.lora_A), self.lora_B)
        a = self.lora_A.view(r, I, *self.kernel)
        h = self._op(x, a.transpose(0, 1) if self.transposed else a, None, output_size)
        return _CONV[self.spatial](h, self.lora_B.view(O, r, *([1] * self.spatial)))

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if self.merged:
            return self.base(x) if output_size is None else self.base(x, output_size)
        bias = self.base.bias
        if not self.branch:
            return self._op(x, self.effective_weight(), bias, output_size)
        y = self._op(x, self.base.weight, None, output_size) + self.scaling * self._branch_delta(x, output_size)
        if self.dora:
            with torch.no_grad():
                norm = self._norm(self._std(self.base.weight) + self.delta_weight())
            channel = y.dim() - 1 if isinstance(self.base, nn.Linear) else 1
            y = y * self._bcast(self.magnitude / norm, channel, y.dim())
        if bias is not None:
            y = y + (bias if isinstance(self.base, nn.Linear) else self._bcast(bias, 1, y.dim()))
        return y

    # -- merge
    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        self._w0 = self.base.weight.detach().clone()
        self.base.weight.copy_(self.effective_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base.weight.copy_(self._w0)
        self._w0, self.merged = None, False

    def to_plain(self) -> nn.Module:
        """The base module type carrying the effective weight (a copy; this layer is unchanged)."""
        import copy

        plain = copy.deepcopy(self.base)
        with torch.no_grad():
            plain.weight.copy_(self.base.weight if self.merged else self.effective_weight())
        for p in plain.parameters():
            p.requires_grad_(True)
        return plain

    def extra_repr(self) -> str:
        mode = "branch" if self.branch else "materialize"
        return (f"kind={self.kind}, rank={self.rank}, alpha={self.alpha:g}, dora={self.dora}"
                f"{', dora_axis=' + self.dora_axis if self.dora else ''}, forward={mode}, merged={self.merged}")
