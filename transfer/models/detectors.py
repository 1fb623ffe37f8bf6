"""torchvision detectors by name (COCO weights through ``weights/``) and a frozen wrapper.

``TorchvisionDetector`` keeps the detector's parameters *and* buffers unchanged: BatchNorm layers are turned
into ``FrozenBatchNorm2d`` (what torchvision does for its trained models anyway), the wrapper stays in
eval mode whatever ``.train()`` the parent calls, the loss pass (train mode, needs targets) and the
prediction pass (eval mode, ``no_grad``, never sees targets) are separate calls.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.misc import FrozenBatchNorm2d

from transfer.models.registry import names_from, register_family
from transfer.statedict import require_fit
from transfer.weights import random_init_requested, resolve
from transfer.safeload import load_state_dict

TORCHVISION = {
    "fcos": torchvision.models.detection.fcos_resnet50_fpn,
    "retinanet": torchvision.models.detection.retinanet_resnet50_fpn,
    "fasterrcnn": torchvision.models.detection.fasterrcnn_resnet50_fpn,
}


class TinyBackbone(nn.Module):
    """4 stages of Conv3x3-GroupNorm-ReLU (strides 2, 4, 8, 16) returning stride-8 and stride-16 maps."""

    def __init__(self, width: int = 32):
        super().__init__()
        half = width // 2

        def block(i, o, stride):
            return [nn.Conv2d(i, o, 3, stride, 1), nn.GroupNorm(8, o), nn.ReLU(inplace=True)]

        self.s2 = nn.Sequential(*block(3, half, 2), *block(half, half, 1))
        self.s4 = nn.Sequential(*block(half, width, 2))
        self.s8 = nn.Sequential(*block(width, width, 2), *block(width, width, 1))
        self.s16 = nn.Sequential(*block(width, width, 2), *block(width, width, 1))
        self.out_channels = width

    def forward(self, x):
        p3 = self.s8(self.s4(self.s2(x)))
        return OrderedDict(p3=p3, p4=self.s16(p3))


def tiny_fcos(num_classes: int = 4, size: int = 64, width: int = 32, **kwargs) -> FCOS:
    """An 84k-parameter FCOS for toys and tests: GroupNorm only (no running statistics), fixed input size."""
    anchors = AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((1.0,), (1.0,)))
    head = FCOSHead(width, num_anchors=1, num_classes=num_classes, num_convs=2)
    defaults = dict(min_size=size, max_size=size, score_thresh=0.05, detections_per_img=50, topk_candidates=200)
    return FCOS(TinyBackbone(width), num_classes, anchor_generator=anchors, head=head, **{**defaults, **kwargs})


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d carrying the same statistics (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def _torchvision(build):
    return lambda num_classes=91, **kwargs: build(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


#: architecture builders by name (weights come after, in create_detector)
ARCHITECTURES = {**{name: _torchvision(build) for name, build in TORCHVISION.items()}, "tiny_fcos": tiny_fcos}


@register_family("detector", names_from(ARCHITECTURES))
def create_detector(name: str, weights: str | None = None, num_classes: int = 91, **kwargs: Any) -> nn.Module:
    """``name``: fcos | retinanet | fasterrcnn (ResNet-50 FPN, COCO head of 91 classes) | tiny_fcos.
    ``weights``: a registered name (e.g. ``fcos_resnet50_fpn.coco``) or a file, never downloaded; ``random`` for a
    random init on purpose (the COCO detectors refuse to start without weights)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown detector '{name}'; known: {', '.join(ARCHITECTURES)}")
    model = ARCHITECTURES[name](num_classes=num_classes, **kwargs)
    freeze_batchnorm(model)
    if random_init_requested("detector", name, weights, pretrained_only=name != "tiny_fcos"):
        model.random_init = True
    elif weights:
        path = resolve(weights)
        load_detector_weights(model, load_state_dict(path), str(path))
    return model


def load_detector_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    require_fit(model.state_dict(), state, source, type(model).__name__, hint="is it a checkpoint of another detector?")
    model.load_state_dict(state)


def weights_hash(module: nn.Module) -> str:
    """sha256 over names and bytes of every parameter and buffer (first 16 hex digits)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _batchnorm_statistics_kept(modules: list[nn.Module]):
    """While checkpointed modules run again in the backward pass, their training-mode BatchNorm layers compute what
    the first pass did, but their running statistics are put back afterwards: otherwise every recomputation would
    count the batch twice (``num_batches_tracked``, ``running_mean``/``var``)."""
    kept = [(b, b.clone()) for module in modules for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    try:
        yield
    finally:
        for b, value in kept:
            b.copy_(value)


def _checkpointed(function, modules: list[nn.Module], *args, **kwargs):
    """``function(*args)`` (which runs ``modules``) recomputed in the backward pass (non-reentrant); the modules'
    BatchNorm statistics count the batch once."""
    return torch.utils.checkpoint.checkpoint(
        function, *args, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _batchnorm_statistics_kept(modules)), **kwargs)


def _in_turn(modules: list[nn.Module], x):
    """``modules`` applied one after the other, as one checkpointed segment when gradients are on."""
    def run(x):
        for m in modules:
            x = m(x)
        return x

    return _checkpointed(run, modules, x) if torch.is_grad_enabled() else run(x)


class _Recomputed:
    """Mixin put in front of a module's class by :func:`recompute_in_backward`."""

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return _checkpointed(super().forward, [self], *args, **kwargs)
        return super().forward(*args, **kwargs)


class _RecomputedStem:
    """Mixin for torchvision's ``IntermediateLayerGetter`` (a detector's backbone body): the layers in front of the
    first stage (conv1, bn1, relu, maxpool) run as one checkpointed segment, so only the image is kept for the
    backward pass, not the stem's full-resolution maps and max-pool indices."""

    stem_length = 0

    def forward(self, x):
        items = list(self.items())
        x = _in_turn([m for _, m in items[:self.stem_length]], x)
        out = OrderedDict()
        for name, module in items[self.stem_length:]:
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


def recompute_in_backward(module: nn.Module) -> nn.Module:
    """Activation checkpointing (non-reentrant): ``module`` keeps no activations for the backward pass and runs
    again there. Its state dict, weights and outputs are unchanged (RNG state is replayed)."""
    cls = type(module)
    if not issubclass(cls, _Recomputed):
        module.__class__ = type(f"Recomputed{cls.__name__}", (_Recomputed, cls), {})
    return module


class _RecomputedSegments:
    """Mixin for an ``nn.Sequential`` stage: its blocks run in checkpointed segments of ``per`` blocks."""

    per = 1

    def forward(self, x):
        blocks = list(self)
        for i in range(0, len(blocks), self.per):
            x = _in_turn(blocks[i:i + self.per], x)
        return x


def recompute_blocks(module: nn.Module, skip: int = 0, per: int = 1) -> list[nn.Module]:
    """Checkpoint ``module``'s sequential stages in segments of ``per`` blocks (e.g. ResNet bottlenecks; the first
    ``skip`` children are left out), other children with parameters one by one: the backward pass then holds the
    segments' inputs and one segment's activations at a time instead of the whole network's."""
    done = []
    for child in list(module.children())[skip:]:
        if isinstance(child, nn.Sequential) and len(child) > 1 and per > 1 and all(any(b.children()) for b in child):
            child.__class__ = type(f"Recomputed{type(child).__name__}", (_RecomputedSegments, type(child)), {})
            child.per = per
            done.append(child)
            continue
        blocks = list(child) if isinstance(child, nn.Sequential) and len(child) > 1 else [child]
        for block in blocks:
            if any(p.numel() for p in block.parameters()):
                done.append(recompute_in_backward(block))
    return done


def checkpoint_detector(detector: nn.Module, blocks_per_segment: int = 2) -> list[nn.Module]:
    """Activation checkpointing of a (frozen) torchvision detector: the backbone's stem as one segment, its stages in
    segments of ``blocks_per_segment`` blocks, the FPN, and the dense heads of FCOS / RetinaNet (Faster R-CNN's RPN
    and ROI heads sample proposals and are left as they are). Two blocks per segment halve the segment inputs kept
    for the backward pass against one, for the same recomputation (each block runs once more either way)."""
    backbone = detector.backbone
    body = getattr(backbone, "body", backbone)
    stem = 0
    if isinstance(body, IntermediateLayerGetter):
        for name, child in body.named_children():
            if isinstance(child, nn.Sequential) or name in body.return_layers:
                break
            stem += 1
        if stem and not isinstance(body, _RecomputedStem):
            body.__class__ = type(f"RecomputedStem{type(body).__name__}", (_RecomputedStem, type(body)), {})
            body.stem_length = stem
    done = recompute_blocks(body, skip=stem, per=blocks_per_segment) + ([body] if stem else [])
    if hasattr(backbone, "fpn"):
        done.append(recompute_in_backward(backbone.fpn))
    head = getattr(detector, "head", None)
    if head is not None:
        parts = [getattr(head, n) for n in ("classification_head", "regression_head") if hasattr(head, n)]
        done += [recompute_in_backward(m) for m in (parts or [head])]
    return done


CHECKPOINTING = ("none", "detector", "translator", "both")


class TorchvisionDetector(nn.Module):
    """A torchvision detector behind one small face (``losses``, ``predict``): frozen (``trainable="none"``, what
    ModTr puts behind its translator) or fine-tuned (``full``, or ``head``: ``detector.head`` / ``roi_heads`` + ``rpn``)
    for the baselines. Batch-norm statistics stay frozen in every case."""

    def __init__(self, detector: nn.Module, trainable: str = "none", name: str = "detector"):
        super().__init__()
        if trainable not in ("none", "full", "head"):
            raise ValueError(f"trainable must be none, full or head, got '{trainable}'")
        self.detector, self.trainable, self.name = freeze_batchnorm(detector), trainable, name
        for p in self.detector.parameters():
            p.requires_grad_(trainable == "full")
        if trainable == "head":
            heads = [getattr(self.detector, a) for a in ("head", "roi_heads", "rpn") if hasattr(self.detector, a)]
            for p in (p for h in heads for p in h.parameters()):
                p.requires_grad_(True)
        self.detector.eval()

    def train(self, mode: bool = True) -> "TorchvisionDetector":
        self.training = mode  # the detector itself stays in eval mode; losses() switches it briefly
        return self

    def losses(self, images: torch.Tensor | list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """The detector's own training losses; gradients flow to the input (and to trainable weights)."""
        self.detector.train()
        try:
            return self.detector(list(images), targets)
        finally:
            self.detector.eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor | list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Plain inference: eval mode, no targets, no gradients."""
        self.detector.eval()
        return self.detector(list(images))

    def weights_hash(self) -> str:
        return weights_hash(self.detector)

