"""Building blocks shared by the backbone families: conv-BN-activation that folds for inference,
drop path, argument checks and channel rounding."""

from __future__ import annotations

import math
from numbers import Real
from typing import Iterable, Sequence

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
    "identity": nn.Identity,
}


def make_activation(act: str | nn.Module | None) -> nn.Module:
    """An activation module from a name ('relu', 'silu', ...), a module, or None (identity)."""
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    try:
        return ACTIVATIONS[act](inplace=True) if act not in ("gelu", "identity") else ACTIVATIONS[act]()
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; valid: {sorted(ACTIVATIONS)}") from None


def round_channels(channels: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, nearest first but never below 90 %.

    This is the rounding the MobileNet/EfficientNet papers (and timm) use, so width 1.0 reproduces the
    published channel tables exactly; it differs from Ultralytics' round-up rule on purpose.
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(channels + divisor / 2) // divisor * divisor)
    if rounded < round_limit * channels:
        rounded += divisor
    return int(rounded)


def check_positive_number(value, what: str, examples: Sequence[float] = (0.25, 0.5, 0.75, 1.0, 1.5),
                          maximum: float = 16.0) -> float:
    """Return ``value`` as float if it is a finite number in (0, ``maximum``], else raise a ValueError naming it.

    The upper bound stops a typo (width 1e6) before it asks for terabytes of memory.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not 0 < value <= maximum:
        raise ValueError(
            f"{what} must be a positive number up to {maximum:g}, got {value!r}; valid: e.g. "
            + ", ".join(str(e) for e in examples)
        )
    return float(value)


def check_choice(value, choices: Iterable[str], what: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing the valid ones."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")
    return value


class Fusable:
    """Marker for modules that can fold their normalisation into convolutions for inference.

    ``fuse_modules`` calls ``fuse()`` on every such submodule; the patched ``model.fuse()`` uses it.
    """

    def fuse(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv whose output equals ``bn(conv(x))`` in eval mode."""
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
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_(bn.bias + (conv_bias - bn.running_mean) * scale)
    fused.weight.requires_grad_(False)
    fused.bias.requires_grad_(False)
    return fused.to(dtype=conv.weight.dtype)


class ConvBNAct(nn.Module, Fusable):
    """Conv2d (no bias) -> BatchNorm2d -> activation; ``fuse()`` folds the BN into the conv.

    Padding defaults to ``dilation * (kernel - 1) // 2`` ("same" for stride 1, as the reference models use).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | nn.Module | None = "relu",
        dilation: int = 1,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(c1, c2, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=bn_eps)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fold_batchnorm(self.conv, self.bn)
            self.bn = nn.Identity()


def fuse_modules(root: nn.Module) -> int:
    """Fold every ``Fusable`` submodule of ``root`` in place; returns how many were fused."""
    count = 0
    for m in list(root.modules()):
        if isinstance(m, Fusable):
            m.fuse()
            count += 1
    return count


class DropPath(nn.Module):
    """Stochastic depth: randomly drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
