"""MobileNetV1 (arXiv:1704.04861) as a multi-output YOLO backbone.

MobileNetV1 is a plain stack of depthwise-separable convolutions: a 3x3 depthwise conv filters each channel
on its own, then a 1x1 pointwise conv mixes channels. That costs about 1/8-1/9 of a full 3x3 conv. The width
multiplier alpha thins every layer uniformly (cost falls roughly with alpha squared).

At width 1.0 the module is exactly timm's ``mobilenetv1_100`` with ``features_only=True,
out_indices=(1, 2, 3, 4)`` (ReLU6 activations, BN after every conv, no residuals); other widths scale channels
as timm's ``channel_multiplier`` does (stem included, multiples of 8).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from ..registry import MultiOutputBackbone, register_module
from .backbone import StagedBackbone
from .common import ConvBNAct, check_positive_number, round_channels

# (output channels at width 1.0, stride of the first block, blocks) per row; the stem is a 3x3/2 conv to 32.
# Rows are grouped by the output stride they end at: the stride-2 row joins the P2 (stride 4) stage.
STEM_CHANNELS = 32
STAGES: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((64, 1, 1), (128, 2, 2)),  # P2, stride 4
    ((256, 2, 2),),  # P3, stride 8
    ((512, 2, 6),),  # P4, stride 16
    ((1024, 2, 2),),  # P5, stride 32
)
ACTIVATION = "relu6"
TIMM_NAME = "mobilenetv1_100"
# timm's DepthwiseSeparableConv sub-modules -> ours.
TIMM_BLOCK_KEYS = {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "pw.conv", "bn2": "pw.bn"}
TIMM_STEM_KEYS = {"conv_stem": "stem.conv", "bn1": "stem.bn"}


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (carries the stride) -> BN -> act, then 1x1 pointwise conv -> BN -> act."""

    def __init__(self, c1: int, c2: int, stride: int = 1, act: str = ACTIVATION):
        super().__init__()
        self.dw = ConvBNAct(c1, c1, 3, stride, groups=c1, act=act)
        self.pw = ConvBNAct(c1, c2, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class MobileNetV1(StagedBackbone):
    """MobileNetV1 backbone returning ``[P2, P3, P4, P5]`` (strides 4, 8, 16, 32).

    Args:
        c1: input channels.
        width: the width multiplier alpha, any positive number (0.25, 0.5, 0.75, 1.0 in the paper); channels
            are rounded to multiples of 8. 1.0 is timm's ``mobilenetv1_100``.
        pretrained: optional weight source ("timm" or a state-dict file), loaded after building.
    """

    def __init__(self, c1: int = 3, width: float = 1.0, pretrained=None):
        super().__init__()
        self.width = check_positive_number(width, f"{type(self).__name__} width")
        self.c1 = c1
        channels = round_channels(STEM_CHANNELS * self.width)
        self.stem = ConvBNAct(c1, channels, 3, 2, act=ACTIVATION)
        stages = []
        for rows in STAGES:
            blocks = []
            for c2, stride, repeats in rows:
                c2 = round_channels(c2 * self.width)
                for i in range(repeats):
                    blocks.append(DepthwiseSeparable(channels, c2, stride if i == 0 else 1))
                    channels = c2
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = [stage[-1].pw.conv.out_channels for stage in self.stages]
        self.requested_weights = pretrained  # loaded by weights.py once the model is built

    def weight_sources(self) -> dict[str, str]:
        return {"timm": TIMM_NAME} if self.width == 1.0 and self.c1 == 3 else {}

    def weight_hint(self) -> str:
        return f"width 1.0 and 3 input channels (timm {TIMM_NAME})"

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Rename a timm ``mobilenetv1_100`` state dict (full model or ``features_only``) to our keys.

        timm numbers blocks ``blocks.<row>.<index>`` over five rows, we group them in four stages; both list
        the same blocks in the same order, so the n-th timm block is our n-th block.
        """
        if source != "timm":
            return super().convert_state_dict(state_dict, source)
        ours = [f"stages.{s}.{i}" for s, stage in enumerate(self.stages) for i in range(len(stage))]
        block_key = re.compile(r"^blocks\.(\d+)\.(\d+)\.([^.]+)\.(.+)$")
        theirs = sorted({(int(m[1]), int(m[2])) for m in map(block_key.match, state_dict) if m})
        if len(theirs) != len(ours):
            raise ValueError(
                f"the state dict has {len(theirs)} MobileNetV1 blocks but {type(self).__name__} has {len(ours)}; "
                f"valid: a state dict of timm {TIMM_NAME}"
            )
        prefix_of = dict(zip(theirs, ours))
        converted = {}
        for key, tensor in state_dict.items():
            head, _, rest = key.partition(".")
            if head in TIMM_STEM_KEYS:
                converted[f"{TIMM_STEM_KEYS[head]}.{rest}"] = tensor
            elif (m := block_key.match(key)) and m[3] in TIMM_BLOCK_KEYS:
                converted[f"{prefix_of[int(m[1]), int(m[2])]}.{TIMM_BLOCK_KEYS[m[3]]}.{m[4]}"] = tensor
            # anything else (classifier) is not part of the backbone
        return converted


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
