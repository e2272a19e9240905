"""Inference-time folding shared by every family: BatchNorm (and layer scales) into the convolution before it.

Our own blocks know their structure and fold themselves (``Fusable.fuse``, run by ``fuse_modules``);
for foreign modules (timm models inside ``TimmBackbone``) ``fold_conv_batchnorm`` finds conv -> BN pairs by
tracing one forward pass, because module order in the source says nothing about data flow.

fp16 safety: folding multiplies a conv's output channels by a per-channel scale. Where that scale is tiny (a
layer scale initialised at 1e-5, a BatchNorm of a dead channel) the folded weights can fall below float16's
smallest normal number (6.1e-5), where half precision keeps only a few bits: a fused model would then be far
less accurate in fp16 than the unfused one. ``folds_fp16_safe`` detects this, and such a scale is kept as
its own per-channel multiply instead of being folded. Folds are computed in float64 and rounded once.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import nn

LOGGER = logging.getLogger("ultralytics")
# A fused model must compute what the unfused one did; BN folding changes rounding only.
FUSE_TOLERANCE = 1e-3
FP16_TINY = torch.finfo(torch.float16).tiny  # smallest normal float16 number, 6.1e-5
FP16_MAX = torch.finfo(torch.float16).max


class Fusable:
    """Marker for modules that can fold their normalisation into convolutions for inference.

    ``fuse_modules`` calls ``fuse()`` on every such submodule; the patched ``model.fuse()`` uses it.
    """

    def fuse(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def fuse_modules(root: nn.Module) -> int:
    """Fold every ``Fusable`` submodule of ``root`` in place; returns how many were fused."""
    count = 0
    for m in list(root.modules()):
        if isinstance(m, Fusable):
            m.fuse()
            count += 1
    return count


def folds_fp16_safe(weight: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether multiplying output channel ``c`` of ``weight`` by ``scale[c]`` keeps float16 as good as before:
    no channel whose largest weight was within float16's normal range ends up below it (or above its maximum).

    A channel the scale sets to exactly zero is fine (zero is exact in any precision).
    """
    before = weight.detach().double().abs().flatten(1).amax(1)
    after = before * scale.detach().double().abs().flatten()
    was_normal = (before >= FP16_TINY) & (before <= FP16_MAX)
    is_normal = ((after >= FP16_TINY) | (after == 0)) & (after <= FP16_MAX)
    return bool((is_normal | ~was_normal).all())


def batchnorm_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """The per-channel factor of ``bn`` in eval mode (``weight / sqrt(running_var + eps)``), in float64."""
    return bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)


def folds_batchnorm_fp16_safe(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    """Whether ``fold_batchnorm(conv, bn)`` keeps every output channel within float16's normal range."""
    return folds_fp16_safe(conv.weight, batchnorm_scale(bn))


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv whose output equals ``bn(conv(x))`` in eval mode (computed in float64, rounded once)."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device)
    with torch.no_grad():
        scale = batchnorm_scale(bn)
        fused.weight.copy_(conv.weight.double() * scale.reshape(-1, 1, 1, 1))
        conv_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        fused.bias.copy_(bn.bias.double() + (conv_bias - bn.running_mean.double()) * scale)
    fused.weight.requires_grad_(False)
    fused.bias.requires_grad_(False)
    return fused.to(dtype=conv.weight.dtype)


# --------------------------------------------------------------------------------------------------------
# Folding in modules we did not write: find the pairs by tracing
# --------------------------------------------------------------------------------------------------------
def conv_bn_pairs(root: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """Names of (Conv2d, BatchNorm2d) pairs where the BN consumes the conv's output tensor directly,
    found by running ``root`` once on ``x`` with hooks."""
    names = {m: n for n, m in root.named_modules()}
    conv_outputs: dict[int, tuple[torch.Tensor, int, nn.Module]] = {}
    calls: dict[nn.Module, int] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def after_conv(module, _inputs, output):
        calls[module] = calls.get(module, 0) + 1
        # Keep the tensor alive so its id stays unique; its version counter exposes later in-place edits
        # (conv -> ReLU(inplace) -> BN hands the BN the same tensor object, but not the conv's values).
        conv_outputs[id(output)] = (output, output._version, module)

    def before_bn(module, inputs):
        calls[module] = calls.get(module, 0) + 1
        producer = conv_outputs.get(id(inputs[0]))
        if producer is not None and producer[0] is inputs[0] and producer[1] == inputs[0]._version:
            pairs.append((producer[2], module))

    handles = []
    for m in root.modules():
        if type(m) is nn.Conv2d:
            handles.append(m.register_forward_hook(after_conv))
        elif isinstance(m, nn.BatchNorm2d) and m.affine and m.track_running_stats:
            handles.append(m.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            root(x)
    finally:
        for h in handles:
            h.remove()
    # A conv or BN run more than once (shared weights), or a conv feeding two BNs, cannot be folded.
    conv_uses: dict[nn.Module, int] = {}
    for conv, _ in pairs:
        conv_uses[conv] = conv_uses.get(conv, 0) + 1
    return [(names[c], names[b]) for c, b in pairs if calls[c] == 1 and calls[b] == 1 and conv_uses[c] == 1]


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BN layer once its affine transform lives in the conv: timm's BatchNormAct2d also
    applies dropout and an activation, which must stay."""
    extras = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*extras) if extras else nn.Identity()


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return list(out.values()) if isinstance(out, Mapping) else list(out)


def fold_conv_batchnorm(root: nn.Module, x: torch.Tensor) -> int:
    """Fold each BatchNorm2d that directly follows a Conv2d into that conv (eval mode); returns how many.

    A BN whose fold would push a conv channel out of float16's normal range stays (``folds_fp16_safe``).
    Verified on ``x``: if the outputs moved by more than ``FUSE_TOLERANCE`` (some data flow the hooks
    could not see), every fold is undone and a warning is logged.
    """
    with torch.no_grad():
        before = _flat(root(x))
    originals = []
    for conv_name, bn_name in conv_bn_pairs(root, x):
        conv, bn = root.get_submodule(conv_name), root.get_submodule(bn_name)
        if not folds_batchnorm_fp16_safe(conv, bn):
            continue
        originals.append((conv_name, conv, bn_name, bn))
        _set_submodule(root, conv_name, fold_batchnorm(conv, bn))
        _set_submodule(root, bn_name, _bn_replacement(bn))
    with torch.no_grad():
        after = _flat(root(x))
    error = max(((a.float() - b.float()).abs().max().item() for a, b in zip(after, before)), default=0.0)
    scale = max((b.float().abs().max().item() for b in before), default=1.0)
    if error > FUSE_TOLERANCE * max(1.0, scale):
        for conv_name, conv, bn_name, bn in originals:
            _set_submodule(root, conv_name, conv)
            _set_submodule(root, bn_name, bn)
        LOGGER.warning(f"TimmBackbone: folding BatchNorm changed the outputs by {error:.2g}; left unfolded")
        return 0
    return len(originals)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)
