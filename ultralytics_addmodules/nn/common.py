"""Building blocks shared by the backbone families: conv-BN-activation that folds for inference,
layer scale, drop path, argument checks and channel rounding."""

from __future__ import annotations

import math
from numbers import Real
from typing import Iterable, Sequence

import torch
from torch import nn

from .fuse import Fusable, fold_batchnorm, folds_batchnorm_fp16_safe, folds_fp16_safe, fuse_modules  # noqa: F401

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


class ConvBNAct(nn.Module, Fusable):
    """Conv2d (no bias) -> BatchNorm2d -> activation; ``fuse()`` folds the BN into the conv.

    Padding defaults to ``dilation * (kernel - 1) // 2`` ("same" for stride 1, as the reference models use).
    """

    builder_options = ("act", "bn_eps")  # family-wide arguments the stage builder passes (builder.py)

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
        """Fold the BN into the conv, unless that would push a channel out of float16's normal range."""
        if isinstance(self.bn, nn.BatchNorm2d) and folds_batchnorm_fp16_safe(self.conv, self.bn):
            self.conv = fold_batchnorm(self.conv, self.bn)
            self.bn = nn.Identity()


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


class LayerScale2d(nn.Module):
    """Learnable per-channel scale of a residual branch (NCHW), initialised small so the block starts
    close to identity; MobileNetV4's hybrid models use it on every UIB and attention block."""

    def __init__(self, channels: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)

    def target_of(self, layer: nn.Module) -> nn.Module:
        """The module whose output channels carry this scale when folded into ``layer`` (a Conv2d, or a
        ConvBNAct without activation: its BN if still there, else its conv)."""
        if isinstance(layer, ConvBNAct):
            if not isinstance(layer.act, nn.Identity):
                raise ValueError(f"cannot fold a layer scale through activation {layer.act!r}; valid: no activation")
            layer = layer.bn if isinstance(layer.bn, nn.BatchNorm2d) else layer.conv  # BN is affine: scale it
        if not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
            raise ValueError(f"cannot fold a layer scale into {type(layer).__name__}; valid: Conv2d, ConvBNAct")
        return layer

    def folds_fp16_safe(self, layer: nn.Module) -> bool:
        """Whether folding into ``layer`` keeps its weights within float16's normal range (a scale still at its
        1e-5 initialisation does not: the fused weights would be about 1e-6)."""
        target = self.target_of(layer)
        weight = target.weight.view(-1, 1) if isinstance(target, nn.BatchNorm2d) else target.weight
        return folds_fp16_safe(weight, self.gamma)

    @torch.no_grad()
    def fold_into(self, layer: nn.Module) -> None:
        """Multiply the output channels of ``layer`` (a Conv2d, or a ConvBNAct without activation) by gamma,
        so that this scale can be dropped at inference. ``layer`` must feed this scale directly."""
        target = self.target_of(layer)
        gamma = self.gamma.detach().double()
        target.weight.copy_(target.weight.double() * gamma.view(-1, *([1] * (target.weight.ndim - 1))))
        if target.bias is not None:
            target.bias.copy_(target.bias.double() * gamma)

    def fuse_into(self, layer: nn.Module) -> bool:
        """Fold into ``layer`` if that is float16-safe; returns whether it did (else keep this multiply)."""
        if self.folds_fp16_safe(layer):
            self.fold_into(layer)
            return True
        return False
