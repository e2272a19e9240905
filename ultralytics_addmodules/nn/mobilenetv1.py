"""MobileNetV1 (arXiv:1704.04861) as a multi-output YOLO backbone.

MobileNetV1 is a plain stack of depthwise-separable convolutions: a 3x3 depthwise conv filters each channel
on its own, then a 1x1 pointwise conv mixes channels. That costs about 1/8-1/9 of a full 3x3 conv. The width
multiplier alpha thins every layer uniformly (cost falls roughly with alpha squared).

At width 1.0 the module is exactly timm's ``mobilenetv1_100`` with ``features_only=True,
out_indices=(1, 2, 3, 4)`` (ReLU6 activations, BN after every conv, no residuals); other widths scale channels
as timm's ``channel_multiplier`` does (stem included, multiples of 8).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import MultiOutputBackbone, register_module
from .builder import BlockSpec, StagedBackbone, timm_layout
from .common import ConvBNAct, check_positive_number, round_channels

ACTIVATION = "relu6"


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (carries the stride) -> BN -> act, then 1x1 pointwise conv -> BN -> act."""

    builder_options = ("act",)

    def __init__(self, c1: int, c2: int, stride: int = 1, act: str = ACTIVATION):
        super().__init__()
        self.dw = ConvBNAct(c1, c1, 3, stride, groups=c1, act=act)
        self.pw = ConvBNAct(c1, c2, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


def ds(channels: int, stride: int, repeats: int) -> BlockSpec:
    return BlockSpec(DepthwiseSeparable, channels, stride, repeats)


# After the 3x3/2 stem to 32 channels: 13 depthwise-separable blocks (channels at width 1.0, stride, repeats).
STEM_CHANNELS = 32
TABLE = (
    ds(64, 1, 1), ds(128, 2, 2),  # P2, stride 4
    ds(256, 2, 2),  # P3, stride 8
    ds(512, 2, 6),  # P4, stride 16
    ds(1024, 2, 2),  # P5, stride 32
)
TIMM_NAME = "mobilenetv1_100"
# timm's DepthwiseSeparableConv sub-modules -> ours.
TIMM_KEYS = timm_layout(
    {DepthwiseSeparable: {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "pw.conv", "bn2": "pw.bn"}}
)


class MobileNetV1(StagedBackbone):
    """MobileNetV1 backbone returning ``[P2, P3, P4, P5]`` (strides 4, 8, 16, 32).

    Args:
        c1: input channels.
        width: the width multiplier alpha, any positive number (0.25, 0.5, 0.75, 1.0 in the paper); channels
            are rounded to multiples of 8. 1.0 is timm's ``mobilenetv1_100``.
        pretrained: optional weight source ("timm" or a state-dict file), recorded as ``requested_weights``.
    """

    key_layouts = {"timm": TIMM_KEYS}
    references = {"timm": TIMM_NAME}

    def __init__(self, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__()
        self.width = check_positive_number(width, f"{type(self).__name__} width")
        stem = round_channels(STEM_CHANNELS * self.width)
        self.build(c1, stem, TABLE, width=self.width, options={"act": ACTIVATION})
        self.request_weights(pretrained)


class FixedWidthMobileNetV1(MobileNetV1):
    """MobileNetV1 at the width ``fixed_width`` of a subclass; YAML lines give no width (``[]``)."""

    fixed_width = 1.0

    def __init__(self, c1: int = 3, pretrained=None):
        if isinstance(pretrained, (int, float)) and not isinstance(pretrained, bool):
            # `[0.5]` after a fixed-width name would otherwise be read as a weights file named "0.5".
            raise ValueError(
                f"{type(self).__name__} has the fixed width {self.fixed_width} and takes no width argument, got "
                f"{pretrained!r}; valid: no arguments ([]), or use MobileNetV1 with [width]"
            )
        super().__init__(c1, self.fixed_width, pretrained)


class MobileNetV1_n(FixedWidthMobileNetV1):  # noqa: N801  (the YAML name is a public contract)
    """MobileNetV1 at alpha 0.25 (the YOLOv8 'n' width)."""

    fixed_width = 0.25


class MobileNetV1_s(FixedWidthMobileNetV1):  # noqa: N801
    """MobileNetV1 at alpha 0.5 (the YOLOv8 's' width)."""

    fixed_width = 0.5


class MobileNetV1_m(FixedWidthMobileNetV1):  # noqa: N801
    """MobileNetV1 at alpha 0.75 (the YOLOv8 'm' width)."""

    fixed_width = 0.75


for _cls in (MobileNetV1, MobileNetV1_n, MobileNetV1_s, MobileNetV1_m):
    register_module(_cls, MultiOutputBackbone())
