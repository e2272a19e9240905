"""MobileNetV4 (arXiv:2404.10518) as multi-output YOLO backbones: Conv-S/M/L and Hybrid-M/L.

Each variant is a table of block specs (``VARIANTS``); one builder (``MobileNetV4``) turns a table into
modules. At width 1.0 every variant is exactly timm's ``mobilenetv4_*`` model with
``features_only=True, out_indices=(1, 2, 3, 4)``: same layers, parameter count and, with timm's weights
loaded through ``convert_state_dict``, the same feature maps. Widths scale channels the way timm's
``channel_multiplier`` does (multiples of 8; the stem keeps its width below 1.0).

The hybrid variants add Mobile MQA: attention in which all query heads share one key and one value
projection (multi-query), and keys/values may be computed on a spatially downsampled map, which makes
attention affordable on mobile accelerators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..registry import MultiOutputBackbone, register_module
from .backbone import StagedBackbone
from .common import ConvBNAct, Fusable, check_choice, check_positive_number, round_channels
from .uib import LayerScale2d, UniversalInvertedBottleneck


# --------------------------------------------------------------------------------------------------------
# Blocks used only by MobileNetV4 (the UIB lives in uib.py)
# --------------------------------------------------------------------------------------------------------
class FusedIB(nn.Module):
    """Fused inverted bottleneck: a full kxk expansion conv (act) then a linear 1x1 projection.

    Cheaper than depthwise + pointwise on accelerators at high resolution, so MobileNetV4 uses it right
    after the stem.
    """

    def __init__(self, c1: int, c2: int, kernel: int = 3, stride: int = 1, expand_ratio: float = 4.0, act="relu"):
        super().__init__()
        hidden = round_channels(c1 * expand_ratio)
        self.expand = ConvBNAct(c1, hidden, kernel, stride, act=act)
        self.project = ConvBNAct(hidden, c2, 1, act=None)
        self.add = stride == 1 and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.expand(x))
        return x + y if self.add else y


class PreNorm(nn.Module, Fusable):
    """BatchNorm in front of the attention block.

    It feeds a zero-padded depthwise conv (the key/value downsampling), where folding a shift into the
    conv would be wrong at the borders; ``fuse()`` therefore turns it into the equivalent per-channel
    affine map, a 1x1 depthwise conv with bias, so no BatchNorm2d is left after fusing.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)

    def fuse(self) -> None:
        bn = self.bn
        if not isinstance(bn, nn.BatchNorm2d):
            return
        affine = nn.Conv2d(bn.num_features, bn.num_features, 1, groups=bn.num_features, bias=True).to(bn.weight)
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            affine.weight.copy_(scale.view(-1, 1, 1, 1))
            affine.bias.copy_(bn.bias - bn.running_mean * scale)
        affine.requires_grad_(False)
        self.bn = affine


class MobileMQA(nn.Module, Fusable):
    """Mobile multi-query attention block: BN -> MQA -> layer scale -> + input.

    ``num_heads`` query heads of ``key_dim`` channels attend over ONE shared key (``key_dim``) and ONE shared
    value (``value_dim``) map. With ``kv_stride`` 2 the key and value maps are first downsampled by a
    strided depthwise conv (+BN), which cuts the attention cost by 4x.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        key_dim: int = 64,
        value_dim: int | None = None,
        kv_stride: int = 1,
        kv_kernel: int = 3,
        layer_scale_init: float | None = 1e-5,
    ):
        super().__init__()
        value_dim = value_dim or key_dim
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.scale = key_dim**-0.5
        self.norm = PreNorm(channels)
        self.query = nn.Conv2d(channels, num_heads * key_dim, 1, bias=False)

        def kv_downsample() -> nn.Module:
            if kv_stride == 1:
                return nn.Identity()
            return ConvBNAct(channels, channels, kv_kernel, kv_stride, groups=channels, act=None)

        self.key_down, self.value_down = kv_downsample(), kv_downsample()
        self.key = nn.Conv2d(channels, key_dim, 1, bias=False)
        self.value = nn.Conv2d(channels, value_dim, 1, bias=False)
        self.output = nn.Conv2d(num_heads * value_dim, channels, 1, bias=False)
        self.layer_scale = LayerScale2d(channels, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        # Xavier init of the projections: reported (timm) to stabilise training of the hybrid models.
        for conv in (self.query, self.key, self.value, self.output):
            nn.init.xavier_uniform_(conv.weight)
        for down in (self.key_down, self.value_down):
            if isinstance(down, ConvBNAct):
                nn.init.xavier_uniform_(down.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        xn = self.norm(x)
        # q: (B, heads, HW, key_dim); k, v: (B, 1, N, dim), one map shared by all heads (broadcast).
        q = self.query(xn).reshape(b, self.num_heads, self.key_dim, h * w).transpose(-1, -2)
        k = self.key(self.key_down(xn)).flatten(2).transpose(-1, -2).unsqueeze(1)
        v = self.value(self.value_down(xn)).flatten(2).transpose(-1, -2).unsqueeze(1)
        attn = ((q * self.scale) @ k.transpose(-1, -2)).softmax(dim=-1)
        o = attn @ v  # (B, heads, HW, value_dim)
        o = o.permute(0, 1, 3, 2).reshape(b, self.num_heads * self.value_dim, h, w)
        return x + self.layer_scale(self.output(o))

    def fuse(self) -> None:
        """Fold the layer scale into the output projection (the BNs are folded by their own ``fuse``)."""
        if isinstance(self.layer_scale, LayerScale2d):
            self.layer_scale.fold_into(self.output)
            self.layer_scale = nn.Identity()


# --------------------------------------------------------------------------------------------------------
# Architecture tables
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockSpec:
    """One row of a variant table: ``repeats`` blocks of ``kind`` with ``channels`` outputs at width 1.0.

    Only the first block of a row gets ``stride``. Fields that a kind does not use keep their defaults.
    """

    kind: str  # "conv", "fused_ib", "uib" or "mqa"
    channels: int
    stride: int = 1
    repeats: int = 1
    kernel: int = 1  # conv, fused_ib
    start_dw: int = 0  # uib
    mid_dw: int = 0  # uib
    expand: float = 1.0  # fused_ib, uib
    heads: int = 0  # mqa
    key_dim: int = 0  # mqa
    kv_stride: int = 1  # mqa


def conv(c: int, k: int, s: int = 1) -> BlockSpec:
    return BlockSpec("conv", c, s, kernel=k)


def fused_ib(c: int, k: int, s: int, e: float) -> BlockSpec:
    return BlockSpec("fused_ib", c, s, kernel=k, expand=e)


def uib(c: int, start: int, mid: int, e: float, s: int = 1, r: int = 1) -> BlockSpec:
    return BlockSpec("uib", c, s, r, start_dw=start, mid_dw=mid, expand=e)


def mqa(c: int, heads: int, key_dim: int, kv_stride: int = 1, r: int = 1) -> BlockSpec:
    return BlockSpec("mqa", c, 1, r, heads=heads, key_dim=key_dim, kv_stride=kv_stride)


@dataclass(frozen=True)
class VariantSpec:
    """A MobileNetV4 variant: stem width, activation, layer scale and the blocks of the four stages that end
    at strides 4, 8, 16, 32 (P2..P5). The last stage ends with the 1x1 conv to 960 channels."""

    timm_name: str
    stem: int
    act: str
    layer_scale: float | None  # hybrid models scale every UIB/attention branch, initialised at 1e-5
    stages: tuple[tuple[BlockSpec, ...], ...]


# The hybrid tables are the conv tables of the same size with attention blocks interleaved in the last two
# stages: MQA with 2x key/value downsampling at stride 16, without at stride 32.
VARIANTS: dict[str, VariantSpec] = {
    "conv_small": VariantSpec(
        "mobilenetv4_conv_small", 32, "relu", None,
        (
            (conv(32, 3, s=2), conv(32, 1)),
            (conv(96, 3, s=2), conv(64, 1)),
            (uib(96, 5, 5, 3.0, s=2), uib(96, 0, 3, 2.0, r=4), uib(96, 3, 0, 4.0)),
            (
                uib(128, 3, 3, 6.0, s=2), uib(128, 5, 5, 4.0), uib(128, 0, 5, 4.0), uib(128, 0, 5, 3.0),
                uib(128, 0, 3, 4.0, r=2), conv(960, 1),
            ),
        ),
    ),
    "conv_medium": VariantSpec(
        "mobilenetv4_conv_medium", 32, "relu", None,
        (
            (fused_ib(48, 3, s=2, e=4.0),),
            (uib(80, 3, 5, 4.0, s=2), uib(80, 3, 3, 2.0)),
            (
                uib(160, 3, 5, 6.0, s=2), uib(160, 3, 3, 4.0, r=2), uib(160, 3, 5, 4.0), uib(160, 3, 3, 4.0),
                uib(160, 3, 0, 4.0), uib(160, 0, 0, 2.0), uib(160, 3, 0, 4.0),
            ),
            (
                uib(256, 5, 5, 6.0, s=2), uib(256, 5, 5, 4.0), uib(256, 3, 5, 4.0, r=2), uib(256, 0, 0, 4.0),
                uib(256, 3, 0, 4.0), uib(256, 3, 5, 2.0), uib(256, 5, 5, 4.0), uib(256, 0, 0, 4.0, r=2),
                uib(256, 5, 0, 2.0), conv(960, 1),
            ),
        ),
    ),
    "conv_large": VariantSpec(
        "mobilenetv4_conv_large", 24, "relu", None,
        (
            (fused_ib(48, 3, s=2, e=4.0),),
            (uib(96, 3, 5, 4.0, s=2), uib(96, 3, 3, 4.0)),
            (
                uib(192, 3, 5, 4.0, s=2), uib(192, 3, 3, 4.0, r=3), uib(192, 3, 5, 4.0), uib(192, 5, 3, 4.0, r=5),
                uib(192, 3, 0, 4.0),
            ),
            (
                uib(512, 5, 5, 4.0, s=2, r=4), uib(512, 5, 0, 4.0), uib(512, 5, 3, 4.0), uib(512, 5, 0, 4.0, r=2),
                uib(512, 5, 3, 4.0), uib(512, 5, 5, 4.0), uib(512, 5, 0, 4.0, r=3), conv(960, 1),
            ),
        ),
    ),
    "hybrid_medium": VariantSpec(
        "mobilenetv4_hybrid_medium", 32, "relu", 1e-5,
        (
            (fused_ib(48, 3, s=2, e=4.0),),
            (uib(80, 3, 5, 4.0, s=2), uib(80, 3, 3, 2.0)),
            (
                uib(160, 3, 5, 6.0, s=2), uib(160, 0, 0, 2.0), uib(160, 3, 3, 4.0), uib(160, 3, 5, 4.0),
                mqa(160, 4, 64, kv_stride=2), uib(160, 3, 3, 4.0),
                mqa(160, 4, 64, kv_stride=2), uib(160, 3, 0, 4.0),
                mqa(160, 4, 64, kv_stride=2), uib(160, 3, 3, 4.0),
                mqa(160, 4, 64, kv_stride=2), uib(160, 3, 0, 4.0),
            ),
            (
                uib(256, 5, 5, 6.0, s=2), uib(256, 5, 5, 4.0), uib(256, 3, 5, 4.0, r=2), uib(256, 0, 0, 2.0),
                uib(256, 3, 5, 2.0), uib(256, 0, 0, 2.0), uib(256, 0, 0, 4.0),
                mqa(256, 4, 64), uib(256, 3, 0, 4.0),
                mqa(256, 4, 64), uib(256, 5, 5, 4.0),
                mqa(256, 4, 64), uib(256, 5, 0, 4.0),
                mqa(256, 4, 64), uib(256, 5, 0, 4.0),
                conv(960, 1),
            ),
        ),
    ),
    "hybrid_large": VariantSpec(
        "mobilenetv4_hybrid_large", 24, "gelu", 1e-5,
        (
            (fused_ib(48, 3, s=2, e=4.0),),
            (uib(96, 3, 5, 4.0, s=2), uib(96, 3, 3, 4.0)),
            (
                uib(192, 3, 5, 4.0, s=2), uib(192, 3, 3, 4.0, r=3), uib(192, 3, 5, 4.0), uib(192, 5, 3, 4.0, r=2),
                mqa(192, 8, 48, kv_stride=2), uib(192, 5, 3, 4.0),
                mqa(192, 8, 48, kv_stride=2), uib(192, 5, 3, 4.0),
                mqa(192, 8, 48, kv_stride=2), uib(192, 5, 3, 4.0),
                mqa(192, 8, 48, kv_stride=2), uib(192, 3, 0, 4.0),
            ),
            (
                uib(512, 5, 5, 4.0, s=2, r=4), uib(512, 5, 0, 4.0), uib(512, 5, 3, 4.0), uib(512, 5, 0, 4.0, r=2),
                uib(512, 5, 3, 4.0), uib(512, 5, 5, 4.0),
                mqa(512, 8, 64), uib(512, 5, 0, 4.0),
                mqa(512, 8, 64), uib(512, 5, 0, 4.0),
                mqa(512, 8, 64), uib(512, 5, 0, 4.0),
                mqa(512, 8, 64), uib(512, 5, 0, 4.0),
                conv(960, 1),
            ),
        ),
    ),
}

# timm's sub-module names inside each block kind -> ours (see convert_state_dict).
TIMM_BLOCK_KEYS: dict[type, dict[str, str]] = {
    ConvBNAct: {"conv": "conv", "bn1": "bn"},
    FusedIB: {"conv_exp": "expand.conv", "bn1": "expand.bn", "conv_pwl": "project.conv", "bn2": "project.bn"},
    UniversalInvertedBottleneck: {
        "dw_start": "start_dw",
        "pw_exp": "expand",
        "dw_mid": "mid_dw",
        "pw_proj": "project",
        "layer_scale": "layer_scale",
    },
    MobileMQA: {
        "norm": "norm.bn",
        "attn.query.proj": "query",
        "attn.key.down_conv": "key_down.conv",
        "attn.key.norm": "key_down.bn",
        "attn.key.proj": "key",
        "attn.value.down_conv": "value_down.conv",
        "attn.value.norm": "value_down.bn",
        "attn.value.proj": "value",
        "attn.output.proj": "output",
        "layer_scale": "layer_scale",
    },
}
TIMM_STEM_KEYS = {"conv_stem": "stem.conv", "bn1": "stem.bn"}


# --------------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------------
def _build_block(spec: BlockSpec, c1: int, c2: int, stride: int, act: str, layer_scale: float | None) -> nn.Module:
    if spec.kind == "conv":
        return ConvBNAct(c1, c2, spec.kernel, stride, act=act)
    if spec.kind == "fused_ib":
        return FusedIB(c1, c2, spec.kernel, stride, spec.expand, act=act)
    if spec.kind == "uib":
        return UniversalInvertedBottleneck(
            c1, c2, spec.start_dw, spec.mid_dw, stride, spec.expand, act=act, layer_scale_init=layer_scale
        )
    if spec.kind == "mqa":
        if c1 != c2:
            raise ValueError(f"an attention block keeps its channels, got {c1} -> {c2}; valid: equal channels")
        # Heads and key size are not scaled with the width multiplier (as in timm).
        return MobileMQA(c1, spec.heads, spec.key_dim, kv_stride=spec.kv_stride, layer_scale_init=layer_scale)
    raise ValueError(f"unknown block kind {spec.kind!r}; valid: conv, fused_ib, uib, mqa")


class MobileNetV4(StagedBackbone):
    """MobileNetV4 backbone returning ``[P2, P3, P4, P5]`` (strides 4, 8, 16, 32).

    Args:
        variant: one of ``VARIANTS`` ("conv_small", "conv_medium", "conv_large", "hybrid_medium",
            "hybrid_large").
        c1: input channels.
        width: channel multiplier, any positive number; 1.0 is the published architecture.
        pretrained: optional weight source ("timm" or a state-dict file), loaded after building.
    """

    def __init__(self, variant: str, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__()
        self.variant = check_choice(variant, VARIANTS, "MobileNetV4 variant")
        self.width = check_positive_number(width, f"{type(self).__name__} width")
        self.c1 = c1
        spec = VARIANTS[variant]

        # As timm's channel_multiplier: below width 1.0 the stem stays at full width.
        stem = spec.stem if self.width < 1.0 else round_channels(spec.stem * self.width)
        self.stem = ConvBNAct(c1, stem, 3, 2, act=spec.act)
        channels = stem
        stages, self.out_channels = [], []
        for stage_spec in spec.stages:
            blocks = []
            for row in stage_spec:
                for i in range(row.repeats):
                    c2 = round_channels(row.channels * self.width)
                    stride = row.stride if i == 0 else 1
                    blocks.append(_build_block(row, channels, c2, stride, spec.act, spec.layer_scale))
                    channels = c2
            stages.append(nn.Sequential(*blocks))
            self.out_channels.append(channels)
        self.stages = nn.ModuleList(stages)
        self.requested_weights = pretrained  # loaded by weights.py once the model is built

    def weight_sources(self) -> dict[str, str]:
        if self.width == 1.0 and self.c1 == 3:
            return {"timm": VARIANTS[self.variant].timm_name}
        return {}

    def weight_hint(self) -> str:
        return f"width 1.0 and 3 input channels (timm {VARIANTS[self.variant].timm_name})"

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Rename a timm ``mobilenetv4_*`` state dict (full model or ``features_only``) to our keys.

        timm numbers blocks ``blocks.<stage>.<index>`` over five stages (the final 1x1 conv is its own
        stage); ours has four stages. Both list the same blocks in the same order, so the n-th timm block
        maps to our n-th block. The classifier head (``conv_head``, ``norm_head``, ``classifier``) is dropped.
        """
        if source != "timm":
            return super().convert_state_dict(state_dict, source)
        ours = [(f"stages.{s}.{i}", block) for s, stage in enumerate(self.stages) for i, block in enumerate(stage)]
        block_key = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
        theirs = sorted(
            {(int(m[1]), int(m[2])) for m in map(block_key.match, state_dict) if m is not None}
        )
        if len(theirs) != len(ours):
            raise ValueError(
                f"the state dict has {len(theirs)} MobileNetV4 blocks but {type(self).__name__} has {len(ours)}; "
                f"valid: a state dict of timm {VARIANTS[self.variant].timm_name}"
            )
        prefix_of = {f"blocks.{s}.{i}": ours[n] for n, (s, i) in enumerate(theirs)}

        converted = {}
        for key, tensor in state_dict.items():
            head, _, rest = key.partition(".")
            if head in TIMM_STEM_KEYS:
                converted[f"{TIMM_STEM_KEYS[head]}.{rest}"] = tensor
                continue
            match = block_key.match(key)
            if match is None:
                continue  # classifier head
            our_prefix, block = prefix_of[f"blocks.{match[1]}.{match[2]}"]
            renamed = _rename_by_prefix(match[3], TIMM_BLOCK_KEYS[type(block)])
            if renamed is not None:
                converted[f"{our_prefix}.{renamed}"] = tensor
        return converted


def _rename_by_prefix(key: str, table: Mapping[str, str]) -> str | None:
    """Replace the longest dotted prefix of ``key`` found in ``table``; None if there is none."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            return ".".join([table[prefix], *parts[cut:]])
    return None


class MobileNetV4ConvSmall(MobileNetV4):
    """MobileNetV4-Conv-S: convolutions only, 3.8 M parameters with the ImageNet head (1.26 M as a backbone)."""

    def __init__(self, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__("conv_small", c1, width, pretrained)


class MobileNetV4ConvMedium(MobileNetV4):
    """MobileNetV4-Conv-M: FusedIB stem block, then UIB stages."""

    def __init__(self, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__("conv_medium", c1, width, pretrained)


class MobileNetV4ConvLarge(MobileNetV4):
    """MobileNetV4-Conv-L: wider and deeper UIB stages."""

    def __init__(self, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__("conv_large", c1, width, pretrained)


class MobileNetV4HybridMedium(MobileNetV4):
    """MobileNetV4-Hybrid-M: Conv-M with Mobile MQA blocks in the stride-16 and stride-32 stages."""

    def __init__(self, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__("hybrid_medium", c1, width, pretrained)


class MobileNetV4HybridLarge(MobileNetV4):
    """MobileNetV4-Hybrid-L: Conv-L with Mobile MQA blocks, GELU activations."""

    def __init__(self, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__("hybrid_large", c1, width, pretrained)


for _cls in (
    MobileNetV4ConvSmall,
    MobileNetV4ConvMedium,
    MobileNetV4ConvLarge,
    MobileNetV4HybridMedium,
    MobileNetV4HybridLarge,
):
    register_module(_cls, MultiOutputBackbone())
