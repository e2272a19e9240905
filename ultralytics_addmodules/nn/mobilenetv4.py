"""MobileNetV4 (arXiv:2404.10518) as multi-output YOLO backbones: Conv-S/M/L and Hybrid-M/L.

Each variant is a table of block specs (``VARIANTS``); the shared builder (``builder.StagedBackbone``) turns
a table into modules. At width 1.0 every variant is exactly timm's ``mobilenetv4_*`` model with
``features_only=True, out_indices=(1, 2, 3, 4)``: same layers, parameter count and, with timm's weights
loaded through ``convert_state_dict``, the same feature maps. Widths scale channels the way timm's
``channel_multiplier`` does (multiples of 8; the stem keeps its width below 1.0).

The hybrid variants add Mobile MQA: attention in which all query heads share one key and one value
projection (multi-query), and keys/values may be computed on a spatially downsampled map, which makes
attention affordable on mobile accelerators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import MultiOutputBackbone, register_module
from .builder import BlockSpec, StagedBackbone, timm_layout
from .common import ConvBNAct, Fusable, LayerScale2d, check_choice, check_positive_number, round_channels
from .fuse import batchnorm_scale, folds_fp16_safe
from .uib import UniversalInvertedBottleneck


# --------------------------------------------------------------------------------------------------------
# Blocks used only by MobileNetV4 (the UIB lives in uib.py)
# --------------------------------------------------------------------------------------------------------
class FusedIB(nn.Module):
    """Fused inverted bottleneck: a full kxk expansion conv (act) then a linear 1x1 projection.

    Cheaper than depthwise + pointwise on accelerators at high resolution, so MobileNetV4 uses it right
    after the stem.
    """

    builder_options = ("act",)

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
        scale = batchnorm_scale(bn)
        if not folds_fp16_safe(torch.ones_like(scale).view(-1, 1), scale):
            return  # a scale below float16's normal range stays a BatchNorm (its own parameters are normal)
        affine = nn.Conv2d(bn.num_features, bn.num_features, 1, groups=bn.num_features, bias=True).to(bn.weight)
        with torch.no_grad():
            affine.weight.copy_(scale.view(-1, 1, 1, 1))
            affine.bias.copy_(bn.bias.double() - bn.running_mean.double() * scale)
        affine.requires_grad_(False)
        self.bn = affine


class MobileMQA(nn.Module, Fusable):
    """Mobile multi-query attention block: BN -> MQA -> layer scale -> + input.

    ``num_heads`` query heads of ``key_dim`` channels attend over ONE shared key (``key_dim``) and ONE shared
    value (``value_dim``) map. With ``kv_stride`` 2 the key and value maps are first downsampled by a
    strided depthwise conv (+BN), which cuts the attention cost by 4x. The block keeps its input's channels
    and resolution (``c2`` must equal ``c1``, ``stride`` be 1: the builder's calling convention).
    """

    builder_options = ("layer_scale_init",)

    def __init__(
        self,
        c1: int,
        c2: int,
        num_heads: int = 8,
        key_dim: int = 64,
        value_dim: int | None = None,
        kv_stride: int = 1,
        kv_kernel: int = 3,
        layer_scale_init: float | None = 1e-5,
        stride: int = 1,
    ):
        super().__init__()
        if c1 != c2 or stride != 1:
            raise ValueError(
                f"an attention block keeps its channels and resolution, got {c1} -> {c2} channels and stride "
                f"{stride}; valid: equal channels and stride 1"
            )
        channels = c1
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
        # All heads share one key and one value map, so the heads are folded into the token axis: q is
        # (B, heads*HW, key_dim), k and v are (B, N, dim), and both products are plain batched matmuls with
        # equal batch dims. A broadcast 4-D matmul (B, heads, HW, k) @ (B, 1, k, N) computes the same but
        # crashes converters (onnx2tf's INT8 TFLite path).
        q = self.query(xn).reshape(b, self.num_heads, self.key_dim, h * w).transpose(-1, -2)
        q = q.reshape(b, self.num_heads * h * w, self.key_dim)
        k = self.key(self.key_down(xn)).flatten(2)  # (B, key_dim, N): already transposed for q @ k
        v = self.value(self.value_down(xn)).flatten(2).transpose(-1, -2)  # (B, N, value_dim)
        attn = ((q * self.scale) @ k).softmax(dim=-1)
        o = (attn @ v).reshape(b, self.num_heads, h * w, self.value_dim)
        o = o.permute(0, 1, 3, 2).reshape(b, self.num_heads * self.value_dim, h, w)
        return x + self.layer_scale(self.output(o))

    def fuse(self) -> None:
        """Fold the layer scale into the output projection where float16 stays safe (else it stays a
        per-channel multiply); the BNs are folded by their own ``fuse``."""
        if isinstance(self.layer_scale, LayerScale2d) and self.layer_scale.fuse_into(self.output):
            self.layer_scale = nn.Identity()


# --------------------------------------------------------------------------------------------------------
# Architecture tables
# --------------------------------------------------------------------------------------------------------
def conv(c: int, k: int, s: int = 1) -> BlockSpec:
    return BlockSpec(ConvBNAct, c, s, args={"kernel_size": k})


def fused_ib(c: int, k: int, s: int, e: float) -> BlockSpec:
    return BlockSpec(FusedIB, c, s, args={"kernel": k, "expand_ratio": e})


def uib(c: int, start: int, mid: int, e: float, s: int = 1, r: int = 1) -> BlockSpec:
    return BlockSpec(UniversalInvertedBottleneck, c, s, r, {"start_dw_kernel": start, "mid_dw_kernel": mid,
                                                            "expand_ratio": e})


def mqa(c: int, heads: int, key_dim: int, kv_stride: int = 1, r: int = 1) -> BlockSpec:
    # Heads and key size are not scaled with the width multiplier (as in timm).
    return BlockSpec(MobileMQA, c, 1, r, {"num_heads": heads, "key_dim": key_dim, "kv_stride": kv_stride})


@dataclass(frozen=True)
class VariantSpec:
    """A MobileNetV4 variant: stem width, activation, layer scale and its blocks after the stem (down to
    stride 32, ending with the 1x1 conv to 960 channels)."""

    timm_name: str
    stem: int
    act: str
    layer_scale: float | None  # hybrid models scale every UIB/attention branch, initialised at 1e-5
    blocks: tuple[BlockSpec, ...]


# The hybrid tables are the conv tables of the same size with attention blocks interleaved in the last two
# stages: MQA with 2x key/value downsampling at stride 16, without at stride 32.
VARIANTS: dict[str, VariantSpec] = {
    "conv_small": VariantSpec(
        "mobilenetv4_conv_small", 32, "relu", None,
        (
            conv(32, 3, s=2), conv(32, 1),  # stride 4
            conv(96, 3, s=2), conv(64, 1),  # stride 8
            uib(96, 5, 5, 3.0, s=2), uib(96, 0, 3, 2.0, r=4), uib(96, 3, 0, 4.0),  # stride 16
            uib(128, 3, 3, 6.0, s=2), uib(128, 5, 5, 4.0), uib(128, 0, 5, 4.0), uib(128, 0, 5, 3.0),  # stride 32
            uib(128, 0, 3, 4.0, r=2), conv(960, 1),
        ),
    ),
    "conv_medium": VariantSpec(
        "mobilenetv4_conv_medium", 32, "relu", None,
        (
            fused_ib(48, 3, s=2, e=4.0),  # stride 4
            uib(80, 3, 5, 4.0, s=2), uib(80, 3, 3, 2.0),  # stride 8
            uib(160, 3, 5, 6.0, s=2), uib(160, 3, 3, 4.0, r=2), uib(160, 3, 5, 4.0), uib(160, 3, 3, 4.0),  # 16
            uib(160, 3, 0, 4.0), uib(160, 0, 0, 2.0), uib(160, 3, 0, 4.0),
            uib(256, 5, 5, 6.0, s=2), uib(256, 5, 5, 4.0), uib(256, 3, 5, 4.0, r=2), uib(256, 0, 0, 4.0),  # 32
            uib(256, 3, 0, 4.0), uib(256, 3, 5, 2.0), uib(256, 5, 5, 4.0), uib(256, 0, 0, 4.0, r=2),
            uib(256, 5, 0, 2.0), conv(960, 1),
        ),
    ),
    "conv_large": VariantSpec(
        "mobilenetv4_conv_large", 24, "relu", None,
        (
            fused_ib(48, 3, s=2, e=4.0),  # stride 4
            uib(96, 3, 5, 4.0, s=2), uib(96, 3, 3, 4.0),  # stride 8
            uib(192, 3, 5, 4.0, s=2), uib(192, 3, 3, 4.0, r=3), uib(192, 3, 5, 4.0), uib(192, 5, 3, 4.0, r=5),  # 16
            uib(192, 3, 0, 4.0),
            uib(512, 5, 5, 4.0, s=2, r=4), uib(512, 5, 0, 4.0), uib(512, 5, 3, 4.0), uib(512, 5, 0, 4.0, r=2),  # 32
            uib(512, 5, 3, 4.0), uib(512, 5, 5, 4.0), uib(512, 5, 0, 4.0, r=3), conv(960, 1),
        ),
    ),
    "hybrid_medium": VariantSpec(
        "mobilenetv4_hybrid_medium", 32, "relu", 1e-5,
        (
            fused_ib(48, 3, s=2, e=4.0),  # stride 4
            uib(80, 3, 5, 4.0, s=2), uib(80, 3, 3, 2.0),  # stride 8
            uib(160, 3, 5, 6.0, s=2), uib(160, 0, 0, 2.0), uib(160, 3, 3, 4.0), uib(160, 3, 5, 4.0),  # stride 16
            mqa(160, 4, 64, kv_stride=2), uib(160, 3, 3, 4.0),
            mqa(160, 4, 64, kv_stride=2), uib(160, 3, 0, 4.0),
            mqa(160, 4, 64, kv_stride=2), uib(160, 3, 3, 4.0),
            mqa(160, 4, 64, kv_stride=2), uib(160, 3, 0, 4.0),
            uib(256, 5, 5, 6.0, s=2), uib(256, 5, 5, 4.0), uib(256, 3, 5, 4.0, r=2), uib(256, 0, 0, 2.0),  # 32
            uib(256, 3, 5, 2.0), uib(256, 0, 0, 2.0), uib(256, 0, 0, 4.0),
            mqa(256, 4, 64), uib(256, 3, 0, 4.0),
            mqa(256, 4, 64), uib(256, 5, 5, 4.0),
            mqa(256, 4, 64), uib(256, 5, 0, 4.0),
            mqa(256, 4, 64), uib(256, 5, 0, 4.0),
            conv(960, 1),
        ),
    ),
    "hybrid_large": VariantSpec(
        "mobilenetv4_hybrid_large", 24, "gelu", 1e-5,
        (
            fused_ib(48, 3, s=2, e=4.0),  # stride 4
            uib(96, 3, 5, 4.0, s=2), uib(96, 3, 3, 4.0),  # stride 8
            uib(192, 3, 5, 4.0, s=2), uib(192, 3, 3, 4.0, r=3), uib(192, 3, 5, 4.0), uib(192, 5, 3, 4.0, r=2),  # 16
            mqa(192, 8, 48, kv_stride=2), uib(192, 5, 3, 4.0),
            mqa(192, 8, 48, kv_stride=2), uib(192, 5, 3, 4.0),
            mqa(192, 8, 48, kv_stride=2), uib(192, 5, 3, 4.0),
            mqa(192, 8, 48, kv_stride=2), uib(192, 3, 0, 4.0),
            uib(512, 5, 5, 4.0, s=2, r=4), uib(512, 5, 0, 4.0), uib(512, 5, 3, 4.0), uib(512, 5, 0, 4.0, r=2),  # 32
            uib(512, 5, 3, 4.0), uib(512, 5, 5, 4.0),
            mqa(512, 8, 64), uib(512, 5, 0, 4.0),
            mqa(512, 8, 64), uib(512, 5, 0, 4.0),
            mqa(512, 8, 64), uib(512, 5, 0, 4.0),
            mqa(512, 8, 64), uib(512, 5, 0, 4.0),
            conv(960, 1),
        ),
    ),
}

# timm's sub-module names inside each block class -> ours.
TIMM_KEYS = timm_layout({
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
})


class MobileNetV4(StagedBackbone):
    """MobileNetV4 backbone returning ``[P2, P3, P4, P5]`` (strides 4, 8, 16, 32).

    Args:
        variant: one of ``VARIANTS`` ("conv_small", "conv_medium", "conv_large", "hybrid_medium",
            "hybrid_large").
        c1: input channels.
        width: channel multiplier, any positive number; 1.0 is the published architecture.
        pretrained: optional weight source ("timm" or a state-dict file), recorded as ``requested_weights``.
    """

    key_layouts = {"timm": TIMM_KEYS}

    def __init__(self, variant: str, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__()
        self.variant = check_choice(variant, VARIANTS, "MobileNetV4 variant")
        self.width = check_positive_number(width, f"{type(self).__name__} width")
        spec = VARIANTS[variant]
        # As timm's channel_multiplier: below width 1.0 the stem stays at full width.
        stem = spec.stem if self.width < 1.0 else round_channels(spec.stem * self.width)
        options = {"act": spec.act, "layer_scale_init": spec.layer_scale}
        self.build(c1, stem, spec.blocks, width=self.width, options=options)
        self.request_weights(pretrained)

    @property
    def references(self) -> dict[str, str]:
        return {"timm": VARIANTS[self.variant].timm_name}


class FixedVariantMobileNetV4(MobileNetV4):
    """MobileNetV4 with the variant ``fixed_variant`` of a subclass: the YAML names, ``Cls(c1, width, pretrained)``."""

    fixed_variant = ""

    def __init__(self, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__(self.fixed_variant, c1, width, pretrained)


class MobileNetV4ConvSmall(FixedVariantMobileNetV4):
    """MobileNetV4-Conv-S: convolutions only, 3.8 M parameters with the ImageNet head (1.26 M as a backbone)."""

    fixed_variant = "conv_small"


class MobileNetV4ConvMedium(FixedVariantMobileNetV4):
    """MobileNetV4-Conv-M: FusedIB stem block, then UIB stages."""

    fixed_variant = "conv_medium"


class MobileNetV4ConvLarge(FixedVariantMobileNetV4):
    """MobileNetV4-Conv-L: wider and deeper UIB stages."""

    fixed_variant = "conv_large"


class MobileNetV4HybridMedium(FixedVariantMobileNetV4):
    """MobileNetV4-Hybrid-M: Conv-M with Mobile MQA blocks in the stride-16 and stride-32 stages."""

    fixed_variant = "hybrid_medium"


class MobileNetV4HybridLarge(FixedVariantMobileNetV4):
    """MobileNetV4-Hybrid-L: Conv-L with Mobile MQA blocks, GELU activations."""

    fixed_variant = "hybrid_large"


for _cls in (
    MobileNetV4ConvSmall,
    MobileNetV4ConvMedium,
    MobileNetV4ConvLarge,
    MobileNetV4HybridMedium,
    MobileNetV4HybridLarge,
):
    register_module(_cls, MultiOutputBackbone())
