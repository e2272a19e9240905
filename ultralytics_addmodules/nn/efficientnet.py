"""EfficientNet V1 (arXiv:1905.11946) and V2 (arXiv:2104.00298) as multi-output YOLO backbones.

Both are stacks of mobile inverted bottlenecks:

* MBConv: 1x1 expansion -> kxk depthwise (carries the stride) -> squeeze-excite -> linear 1x1 projection,
  with a residual (and stochastic depth) when the shape is kept.
* Fused-MBConv (V2 only): the expansion and the depthwise conv are fused into one full kxk conv, which runs
  faster on accelerators in the early, high-resolution stages; with expansion 1 it is a single kxk conv.

V1 is one base table (B0) grown by *compound scaling*: each version multiplies the channels by a width
coefficient and the repeats per stage by a depth coefficient (rounded up). V2's versions are separate
tables (the paper scales its stages non-uniformly, adding most layers to the late stages). The YAML's
``width`` and ``depth`` multiply on top of the version's own coefficients.

At width 1.0 / depth 1.0 every version is exactly timm's model (``efficientnet_b0`` ... ``efficientnet_l2``,
``efficientnetv2_s`` ... ``_xl``) with ``features_only=True, out_indices=(1, 2, 3, 4)``; where torchvision
has the same network (``efficientnet_b0`` ... ``_b7``, ``efficientnet_v2_s/m/l``) its state dict loads too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..registry import MultiOutputBackbone, register_module
from .backbone import StagedBackbone
from .common import ConvBNAct, DropPath, check_positive_number, make_activation, round_channels

TIMM_BN_EPS = 1e-5  # timm's efficientnet_* / efficientnetv2_* (the non-"tf_" models) use PyTorch's default


# --------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    """Channel attention: global average -> 1x1 reduce (bias) -> act -> 1x1 expand (bias) -> sigmoid gate."""

    def __init__(self, channels: int, reduced: int, act: str = "silu"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


class MBConv(nn.Module):
    """Mobile inverted bottleneck with optional squeeze-excite.

    ``se_ratio`` is relative to the block's input channels (as in the paper: 0.25 of ``c1``). With
    ``expand_ratio`` 1 there is no expansion conv (EfficientNet's first stage).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        kernel: int = 3,
        stride: int = 1,
        expand_ratio: float = 6.0,
        se_ratio: float = 0.25,
        act: str = "silu",
        drop_path: float = 0.0,
        bn_eps: float = TIMM_BN_EPS,
    ):
        super().__init__()
        hidden = c1 if expand_ratio == 1 else round_channels(c1 * expand_ratio)
        self.expand = ConvBNAct(c1, hidden, 1, act=act, bn_eps=bn_eps) if expand_ratio != 1 else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act, bn_eps=bn_eps)
        # Python's round() on hidden * se / expand, as the reference rounds the reduced width.
        self.se = SqueezeExcite(hidden, round(hidden * se_ratio / expand_ratio), act) if se_ratio else nn.Identity()
        self.project = ConvBNAct(hidden, c2, 1, act=None, bn_eps=bn_eps)
        self.drop_path = DropPath(drop_path)
        self.has_skip = stride == 1 and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + self.drop_path(y) if self.has_skip else y


class FusedMBConv(nn.Module):
    """Fused-MBConv: a full kxk conv (carries the stride) -> linear 1x1 projection.

    With ``expand_ratio`` 1 the kxk conv outputs ``c2`` directly and there is no projection.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        kernel: int = 3,
        stride: int = 1,
        expand_ratio: float = 4.0,
        act: str = "silu",
        drop_path: float = 0.0,
        bn_eps: float = TIMM_BN_EPS,
    ):
        super().__init__()
        if expand_ratio == 1:
            self.expand = ConvBNAct(c1, c2, kernel, stride, act=act, bn_eps=bn_eps)
            self.project = nn.Identity()
        else:
            hidden = round_channels(c1 * expand_ratio)
            self.expand = ConvBNAct(c1, hidden, kernel, stride, act=act, bn_eps=bn_eps)
            self.project = ConvBNAct(hidden, c2, 1, act=None, bn_eps=bn_eps)
        self.drop_path = DropPath(drop_path)
        self.has_skip = stride == 1 and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.expand(x))
        return x + self.drop_path(y) if self.has_skip else y


# --------------------------------------------------------------------------------------------------------
# Architecture tables
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    """``repeats`` blocks of one kind at width/depth 1.0; only the first block gets ``stride``."""

    block: str  # "mbconv" or "fused"
    repeats: int
    kernel: int
    stride: int
    expand: float
    channels: int
    se: float = 0.0  # squeeze-excite ratio, relative to the block input (mbconv only)


def mbconv(r: int, k: int, s: int, e: float, c: int, se: float = 0.25) -> StageSpec:
    return StageSpec("mbconv", r, k, s, e, c, se)


def fused(r: int, k: int, s: int, e: float, c: int) -> StageSpec:
    return StageSpec("fused", r, k, s, e, c)


@dataclass(frozen=True)
class VersionSpec:
    """One published version: stem width, stage table, its own compound-scaling coefficients, and the
    reference models with exactly this architecture (torchvision's BatchNorm eps differs by model)."""

    stem: int
    stages: tuple[StageSpec, ...]
    width: float
    depth: float
    timm_name: str
    torchvision_name: str | None = None
    torchvision_bn_eps: float = 1e-5


EFFICIENTNET_B0 = (
    mbconv(1, 3, 1, 1, 16),
    mbconv(2, 3, 2, 6, 24),
    mbconv(2, 5, 2, 6, 40),
    mbconv(3, 3, 2, 6, 80),
    mbconv(3, 5, 1, 6, 112),
    mbconv(4, 5, 2, 6, 192),
    mbconv(1, 3, 1, 6, 320),
)


def _v1(width: float, depth: float, name: str, torchvision_eps: float | None = 1e-5) -> VersionSpec:
    tv_name = name if torchvision_eps is not None else None
    return VersionSpec(32, EFFICIENTNET_B0, width, depth, name, tv_name, torchvision_eps or 1e-5)


# (width, depth) coefficients of the paper; torchvision builds b5-b7 with BatchNorm eps 1e-3, b0-b4 with 1e-5.
EFFICIENTNET_V1: dict[str, VersionSpec] = {
    "efficientnet-b0": _v1(1.0, 1.0, "efficientnet_b0"),
    "efficientnet-b1": _v1(1.0, 1.1, "efficientnet_b1"),
    "efficientnet-b2": _v1(1.1, 1.2, "efficientnet_b2"),
    "efficientnet-b3": _v1(1.2, 1.4, "efficientnet_b3"),
    "efficientnet-b4": _v1(1.4, 1.8, "efficientnet_b4"),
    "efficientnet-b5": _v1(1.6, 2.2, "efficientnet_b5", 1e-3),
    "efficientnet-b6": _v1(1.8, 2.6, "efficientnet_b6", 1e-3),
    "efficientnet-b7": _v1(2.0, 3.1, "efficientnet_b7", 1e-3),
    "efficientnet-b8": _v1(2.2, 3.6, "efficientnet_b8", None),
    "efficientnet-l2": _v1(4.3, 5.3, "efficientnet_l2", None),
}

# Fused-MBConv in the first three stages, MBConv with SE after; torchvision uses BatchNorm eps 1e-3 for V2.
EFFICIENTNET_V2: dict[str, VersionSpec] = {
    "efficientnet_v2_s": VersionSpec(
        24,
        (
            fused(2, 3, 1, 1, 24), fused(4, 3, 2, 4, 48), fused(4, 3, 2, 4, 64),
            mbconv(6, 3, 2, 4, 128), mbconv(9, 3, 1, 6, 160), mbconv(15, 3, 2, 6, 256),
        ),
        1.0, 1.0, "efficientnetv2_s", "efficientnet_v2_s", 1e-3,
    ),
    "efficientnet_v2_m": VersionSpec(
        24,
        (
            fused(3, 3, 1, 1, 24), fused(5, 3, 2, 4, 48), fused(5, 3, 2, 4, 80),
            mbconv(7, 3, 2, 4, 160), mbconv(14, 3, 1, 6, 176), mbconv(18, 3, 2, 6, 304), mbconv(5, 3, 1, 6, 512),
        ),
        1.0, 1.0, "efficientnetv2_m", "efficientnet_v2_m", 1e-3,
    ),
    "efficientnet_v2_l": VersionSpec(
        32,
        (
            fused(4, 3, 1, 1, 32), fused(7, 3, 2, 4, 64), fused(7, 3, 2, 4, 96),
            mbconv(10, 3, 2, 4, 192), mbconv(19, 3, 1, 6, 224), mbconv(25, 3, 2, 6, 384), mbconv(7, 3, 1, 6, 640),
        ),
        1.0, 1.0, "efficientnetv2_l", "efficientnet_v2_l", 1e-3,
    ),
    "efficientnet_v2_xl": VersionSpec(
        32,
        (
            fused(4, 3, 1, 1, 32), fused(8, 3, 2, 4, 64), fused(8, 3, 2, 4, 96),
            mbconv(16, 3, 2, 4, 192), mbconv(24, 3, 1, 6, 256), mbconv(32, 3, 2, 6, 512), mbconv(8, 3, 1, 6, 640),
        ),
        1.0, 1.0, "efficientnetv2_xl",
    ),
}

ACTIVATION = "silu"

# timm's sub-module names per block layout -> ours. timm has a separate class per layout: DepthwiseSeparableConv
# (MBConv without expansion), InvertedResidual (MBConv), ConvBnAct and EdgeResidual (Fused-MBConv 1 / >1).
_SE_KEYS = {"se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand"}
TIMM_BLOCK_KEYS = {
    ("mbconv", False): {
        "conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "project.conv", "bn2": "project.bn", **_SE_KEYS,
    },
    ("mbconv", True): {
        "conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "dw.conv", "bn2": "dw.bn",
        "conv_pwl": "project.conv", "bn3": "project.bn", **_SE_KEYS,
    },
    ("fused", False): {"conv": "expand.conv", "bn1": "expand.bn"},
    ("fused", True): {"conv_exp": "expand.conv", "bn1": "expand.bn", "conv_pwl": "project.conv", "bn2": "project.bn"},
}
TIMM_STEM_KEYS = {"conv_stem": "stem.conv", "bn1": "stem.bn"}
# torchvision keeps each block's layers in a Sequential `block`; these are their names in order.
TORCHVISION_BLOCK_PARTS = {
    ("mbconv", False): ("dw", "se", "project"),
    ("mbconv", True): ("expand", "dw", "se", "project"),
    ("fused", False): ("expand",),
    ("fused", True): ("expand", "project"),
}
# inside a part: Conv2dNormActivation is (conv, norm, act) by index; SqueezeExcitation has fc1/fc2.
TORCHVISION_LAYER_KEYS = {"0": "conv", "1": "bn", "fc1": "reduce", "fc2": "expand"}


def _layout(block: nn.Module) -> tuple[str, bool]:
    """(block kind, has an expansion/projection pair) - selects the key tables above."""
    if isinstance(block, MBConv):
        return "mbconv", not isinstance(block.expand, nn.Identity)
    return "fused", not isinstance(block.project, nn.Identity)


# --------------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------------
class EfficientNet(StagedBackbone):
    """The builder shared by V1 and V2: turns a ``VersionSpec`` into a backbone returning ``[P2, P3, P4, P5]``.

    Use the registered subclasses ``EfficientNetV1`` (YAML ``efficient``) and ``EfficientNetV2`` (YAML
    ``efficientnet_v2``); they only differ in their version table and spelling of version names.
    """

    versions: dict[str, VersionSpec] = {}
    family = "EfficientNet"

    def __init__(
        self,
        c1: int = 3,
        version: str = "",
        width: float = 1.0,
        depth: float = 1.0,
        pretrained=None,
        *,
        drop_path_rate: float = 0.0,
        bn_eps: float = TIMM_BN_EPS,
    ):
        super().__init__()
        self.version = self.check_version(version)
        self.width = check_positive_number(width, f"{self.family} width")
        self.depth = check_positive_number(depth, f"{self.family} depth", examples=(0.33, 0.5, 0.67, 1.0, 1.33))
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}; valid: e.g. 0.0, 0.1, 0.2")
        self.c1 = c1
        spec = self.versions[self.version]
        # The YAML's multipliers act on top of the version's compound-scaling coefficients.
        channel_mult = spec.width * self.width
        depth_mult = spec.depth * self.depth

        channels = round_channels(spec.stem * channel_mult)
        self.stem = ConvBNAct(c1, channels, 3, 2, act=ACTIVATION, bn_eps=bn_eps)
        repeats = [int(math.ceil(stage.repeats * depth_mult)) for stage in spec.stages]
        total, index, stride = sum(repeats), 0, 2
        levels: list[list[nn.Module]] = [[], [], [], []]  # blocks ending at strides 4, 8, 16, 32
        self.out_channels = [0, 0, 0, 0]
        for stage, n in zip(spec.stages, repeats):
            c2 = round_channels(stage.channels * channel_mult)
            for i in range(n):
                s = stage.stride if i == 0 else 1
                stride *= s
                # Stochastic depth grows linearly with the block index (0 for the first block).
                rate = drop_path_rate * index / total
                if stage.block == "mbconv":
                    block = MBConv(channels, c2, stage.kernel, s, stage.expand, stage.se, ACTIVATION, rate, bn_eps)
                else:
                    block = FusedMBConv(channels, c2, stage.kernel, s, stage.expand, ACTIVATION, rate, bn_eps)
                # Blocks at stride 2 (before the first downsampling block) belong to the P2 stage.
                level = max(0, int(math.log2(stride)) - 2)
                levels[level].append(block)
                self.out_channels[level] = c2
                channels, index = c2, index + 1
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in levels)
        self.requested_weights = pretrained  # loaded by weights.py once the model is built

    @classmethod
    def check_version(cls, version) -> str:
        """The canonical version name, accepting '-' and '_' alike; ValueError listing the valid ones."""
        canonical = cls.canonical(version) if isinstance(version, str) else None
        if canonical not in cls.versions:
            raise ValueError(
                f"unknown {cls.family} version {version!r}; valid: {', '.join(cls.versions)} "
                "('-' and '_' are interchangeable)"
            )
        return canonical

    @staticmethod
    def canonical(version: str) -> str:
        return version

    def _blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"stages.{s}.{i}", block) for s, stage in enumerate(self.stages) for i, block in enumerate(stage)]

    def weight_sources(self) -> dict[str, str]:
        if self.width != 1.0 or self.depth != 1.0 or self.c1 != 3:
            return {}
        spec = self.versions[self.version]
        sources = {"timm": spec.timm_name}
        if spec.torchvision_name:
            sources["torchvision"] = spec.torchvision_name
        return sources

    def weight_hint(self) -> str:
        spec = self.versions[self.version]
        names = f"timm {spec.timm_name}" + (f", torchvision {spec.torchvision_name}" if spec.torchvision_name else "")
        return f"width 1.0, depth 1.0 and 3 input channels ({names})"

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Rename a timm or torchvision state dict (full model or ``features_only``) to our keys.

        Both list the same blocks in the same order as ours (timm: ``blocks.<stage>.<i>``, torchvision:
        ``features.<stage>.<i>``), so the n-th block maps to our n-th block; the classifier head is dropped.
        BatchNorm eps is not stored in a state dict: where the source network used another eps than this
        module (torchvision V2 and B5-B7: 1e-3), the difference is added to ``running_var``, so that
        ``var + eps`` and hence the eval-mode output is the source's.
        """
        spec = self.versions[self.version]
        if source == "timm":
            converted = self._convert_timm(state_dict)
            source_eps = TIMM_BN_EPS
        elif source == "torchvision":
            converted = self._convert_torchvision(state_dict)
            source_eps = spec.torchvision_bn_eps
        else:
            return super().convert_state_dict(state_dict, source)
        our_eps = {name: m.eps for name, m in self.named_modules() if isinstance(m, nn.BatchNorm2d)}
        for key, tensor in converted.items():
            module, _, param = key.rpartition(".")
            if param == "running_var" and module in our_eps and our_eps[module] != source_eps:
                converted[key] = tensor + (source_eps - our_eps[module])
        return converted

    def _check_block_count(self, found: int, source: str, name: str | None) -> None:
        ours = len(self._blocks())
        if found != ours:
            raise ValueError(
                f"the {source} state dict has {found} blocks but {type(self).__name__}({self.version!r}, "
                f"width={self.width}, depth={self.depth}) has {ours}; valid: a state dict of {source} {name}"
            )

    def _convert_timm(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        block_key = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)\.([^.]+)$")
        theirs = sorted({(int(m[1]), int(m[2])) for m in map(block_key.match, state_dict) if m})
        self._check_block_count(len(theirs), "timm", self.versions[self.version].timm_name)
        ours = dict(zip(theirs, self._blocks()))
        converted = {}
        for key, tensor in state_dict.items():
            head, _, rest = key.partition(".")
            if head in TIMM_STEM_KEYS:
                converted[f"{TIMM_STEM_KEYS[head]}.{rest}"] = tensor
            elif m := block_key.match(key):
                prefix, block = ours[int(m[1]), int(m[2])]
                table = TIMM_BLOCK_KEYS[_layout(block)]
                if m[3] in table:  # unknown sub-modules stay unmapped and are reported by load_pretrained
                    converted[f"{prefix}.{table[m[3]]}.{m[4]}"] = tensor
        return converted

    def _convert_torchvision(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stem_key = re.compile(r"^features\.0\.([01])\.(.+)$")
        block_key = re.compile(r"^features\.(\d+)\.(\d+)\.block\.(\d+)\.([^.]+)\.(.+)$")
        theirs = sorted({(int(m[1]), int(m[2])) for m in map(block_key.match, state_dict) if m})
        self._check_block_count(len(theirs), "torchvision", self.versions[self.version].torchvision_name)
        ours = dict(zip(theirs, self._blocks()))
        converted = {}
        for key, tensor in state_dict.items():
            if m := stem_key.match(key):
                converted[f"stem.{TORCHVISION_LAYER_KEYS[m[1]]}.{m[2]}"] = tensor
            elif m := block_key.match(key):
                prefix, block = ours[int(m[1]), int(m[2])]
                parts = TORCHVISION_BLOCK_PARTS[_layout(block)]
                part, layer = int(m[3]), TORCHVISION_LAYER_KEYS.get(m[4])
                if part < len(parts) and layer is not None:
                    converted[f"{prefix}.{parts[part]}.{layer}.{m[5]}"] = tensor
            # the last 1x1 conv (features.<last>.0/1 without `block`) and the classifier are dropped
        return converted


class EfficientNetV1(EfficientNet):
    """EfficientNet V1 (YAML name ``efficient``): MBConv + squeeze-excite, compound-scaled B0 ... B8, L2.

    Args:
        c1: input channels.
        version: ``efficientnet-b0`` ... ``efficientnet-b8`` or ``efficientnet-l2`` (``_`` spelling too).
        width: channel multiplier on top of the version's own width coefficient (channels in multiples of 8).
        depth: repeat multiplier on top of the version's own depth coefficient (repeats rounded up).
        pretrained: optional weight source ("timm", "torchvision" or a state-dict file).
        drop_path_rate: stochastic depth of the last block (linear from 0); active in training mode only.
        bn_eps: BatchNorm eps (timm's 1e-5 by default).
    """

    versions = EFFICIENTNET_V1
    family = "EfficientNetV1"

    def __init__(self, c1: int = 3, version: str = "efficientnet-b0", width: float = 1.0, depth: float = 1.0,
                 pretrained=None, *, drop_path_rate: float = 0.0, bn_eps: float = TIMM_BN_EPS):
        super().__init__(c1, version, width, depth, pretrained, drop_path_rate=drop_path_rate, bn_eps=bn_eps)

    @staticmethod
    def canonical(version: str) -> str:
        return version.lower().replace("_", "-")


class EfficientNetV2(EfficientNet):
    """EfficientNet V2 (YAML name ``efficientnet_v2``): Fused-MBConv early, MBConv + SE late; S, M, L, XL.

    Arguments as ``EfficientNetV1``; ``version`` is ``efficientnet_v2_s``, ``_m``, ``_l`` or ``_xl``.
    """

    versions = EFFICIENTNET_V2
    family = "EfficientNetV2"

    def __init__(self, c1: int = 3, version: str = "efficientnet_v2_s", width: float = 1.0, depth: float = 1.0,
                 pretrained=None, *, drop_path_rate: float = 0.0, bn_eps: float = TIMM_BN_EPS):
        super().__init__(c1, version, width, depth, pretrained, drop_path_rate=drop_path_rate, bn_eps=bn_eps)

    @staticmethod
    def canonical(version: str) -> str:
        return version.lower().replace("-", "_")


register_module(EfficientNetV1, MultiOutputBackbone(), name="efficient")
register_module(EfficientNetV2, MultiOutputBackbone(), name="efficientnet_v2")
