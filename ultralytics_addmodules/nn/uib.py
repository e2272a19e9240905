"""Universal Inverted Bottleneck (UIB) from MobileNetV4, and C3_UIB, a YOLO CSP block built from it.

UIB (MobileNetV4 paper, arXiv:2404.10518) is one block with two optional depthwise convolutions around
the usual expand -> project pair of 1x1 convolutions::

    x -> [start_dw kxk] -> expand 1x1 (act) -> [mid_dw kxk (act)] -> project 1x1 -> (layer scale) -> + x

Which depthwise convolutions are present selects the form (0 means "absent"):

=============  ===========  ===================================================
start_dw       mid_dw       form
=============  ===========  ===================================================
0              k            IB: the MobileNetV2 inverted bottleneck
k              0            ConvNeXt-like: spatial mixing before the expansion
0              0            FFN: two 1x1 convs, the transformer feed-forward
k1             k2           ExtraDW: both, cheap extra depth and receptive field
=============  ===========  ===================================================
"""

from __future__ import annotations

import torch
from torch import nn

from ..messages import bilingual
from ..registry import ScaledOutput, register_module
from .common import ConvBNAct, Fusable, round_channels

UIB_FORMS = {
    (False, True): "IB",
    (True, False): "ConvNeXt",
    (False, False): "FFN",
    (True, True): "ExtraDW",
}


class LayerScale2d(nn.Module):
    """Learnable per-channel scale of a residual branch (NCHW), initialised small so the block starts
    close to identity; MobileNetV4's hybrid models use it on every UIB and attention block."""

    def __init__(self, channels: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)

    @torch.no_grad()
    def fold_into(self, layer: nn.Module) -> None:
        """Multiply the output channels of ``layer`` (a Conv2d, or a ConvBNAct without activation) by gamma,
        so that this scale can be dropped at inference. ``layer`` must feed this scale directly."""
        gamma = self.gamma.detach()
        if isinstance(layer, ConvBNAct):
            if not isinstance(layer.act, nn.Identity):
                raise ValueError(f"cannot fold a layer scale through activation {layer.act!r}; valid: no activation")
            layer = layer.bn if isinstance(layer.bn, nn.BatchNorm2d) else layer.conv  # BN is affine: scale it
        if not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
            raise ValueError(f"cannot fold a layer scale into {type(layer).__name__}; valid: Conv2d, ConvBNAct")
        layer.weight.mul_(gamma.view(-1, *([1] * (layer.weight.ndim - 1))))
        if layer.bias is not None:
            layer.bias.mul_(gamma)


class UniversalInvertedBottleneck(nn.Module, Fusable):
    """The UIB block; ``start_dw_kernel`` / ``mid_dw_kernel`` (0 = absent) select IB, ConvNeXt-like, FFN or
    ExtraDW (see the module docstring).

    Args:
        c1: input channels.
        c2: output channels.
        start_dw_kernel: kernel of the depthwise conv before the expansion (no activation), 0 for none.
        mid_dw_kernel: kernel of the depthwise conv between expansion and projection (activated), 0 for none.
        stride: 1 or 2. The stride goes to the middle depthwise conv if present, else to the start one.
        expand_ratio: hidden channels = ``round_channels(c1 * expand_ratio)``.
        act: activation after the expansion and the middle depthwise conv.
        layer_scale_init: initial value of a per-channel scale on the branch; None for no layer scale.
        shortcut: add the input to the output (only possible when ``stride == 1`` and ``c1 == c2``).
        groups: groups of the two 1x1 convs (1 in MobileNetV4).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        start_dw_kernel: int = 3,
        mid_dw_kernel: int = 3,
        stride: int = 1,
        expand_ratio: float = 4.0,
        act: str | nn.Module | None = "relu",
        layer_scale_init: float | None = None,
        shortcut: bool = True,
        groups: int = 1,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"UIB stride must be 1 or 2, got {stride!r}; valid: 1, 2")
        if stride > 1 and not (start_dw_kernel or mid_dw_kernel):
            raise ValueError(
                f"a UIB with stride {stride} needs a depthwise conv to downsample; got start_dw_kernel=0 and "
                "mid_dw_kernel=0 (the FFN form); valid: stride 1 for FFN, or a kernel > 0"
            )
        hidden = round_channels(c1 * expand_ratio)
        for name, channels in (("c1", c1), ("c2", c2), ("hidden channels", hidden)):
            if channels % groups:
                raise ValueError(f"UIB groups={groups!r} must divide {name} ({channels}); valid: a divisor of it")
        self.form = UIB_FORMS[(bool(start_dw_kernel), bool(mid_dw_kernel))]

        self.start_dw = (
            ConvBNAct(c1, c1, start_dw_kernel, stride if not mid_dw_kernel else 1, groups=c1, act=None)
            if start_dw_kernel
            else nn.Identity()
        )
        self.expand = ConvBNAct(c1, hidden, 1, groups=groups, act=act)
        self.mid_dw = (
            ConvBNAct(hidden, hidden, mid_dw_kernel, stride, groups=hidden, act=act) if mid_dw_kernel else nn.Identity()
        )
        # Linear projection: an activation here would destroy information in the narrow output (MobileNetV2).
        self.project = ConvBNAct(hidden, c2, 1, groups=groups, act=None)
        self.layer_scale = LayerScale2d(c2, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.add = shortcut and stride == 1 and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer_scale(self.project(self.mid_dw(self.expand(self.start_dw(x)))))
        return x + y if self.add else y

    def fuse(self) -> None:
        """Fold the layer scale into the projection (its BNs are folded by their own ``fuse``)."""
        if isinstance(self.layer_scale, LayerScale2d):
            self.layer_scale.fold_into(self.project)
            self.layer_scale = nn.Identity()

    def extra_repr(self) -> str:
        return f"form={self.form}, residual={self.add}"


class C3_UIB(nn.Module):  # noqa: N801 - the YAML name is a public contract
    """C3-style CSP block whose inner blocks are UIBs.

    Like Ultralytics' C3: ``cv1`` and ``cv2`` (1x1) split the input into two halves of ``c_ = c2 * e``
    channels, ``m`` runs ``n`` blocks on the first half, ``cv3`` (1x1) fuses the concatenation.

    The inner block is the ExtraDW form with expansion ratio 1 by default: 3x3 depthwise, 1x1 (act), 3x3
    depthwise (act), 1x1 projection. That is the block of the published C3_UIB tutorial in structure and
    cost (about 2*c_^2 + 18*c_ weights against about 10*c_^2 for C3's Bottleneck), so the block is lighter
    than the C3 it replaces; ``expand_ratio=4`` gives MobileNetV4's usual, heavier form.

    Two deliberate differences from the tutorial's block: the residual is kept when ``shortcut`` is True
    (the tutorial's block never adds its input; pass ``shortcut=False`` for that), and the activation is
    SiLU instead of ReLU6, so the block matches the Conv layers around it in every YOLO model.

    YAML arguments (the channel rule inserts ``c1`` and ``n``): ``[c2, shortcut, g, e, expand_ratio]``;
    ``expand_ratio`` is the 5th, after C3's own four, e.g. ``[256, True, 1, 0.5, 4]``.

    Args:
        c1, c2: input / output channels.
        n: number of UIB blocks.
        shortcut: residual connection inside each UIB block.
        g: groups of the UIB 1x1 convs (C3 passes ``g`` to its bottleneck convs; the spatial convs of a
            UIB are depthwise already).
        e: hidden-channel ratio of the CSP split.
        expand_ratio: UIB expansion (hidden channels of each block = ``c_ * expand_ratio``, rounded to 8).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
        expand_ratio: float = 1.0,
    ):
        super().__init__()
        if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, (int, float)) or not expand_ratio > 0:
            raise ValueError(bilingual(
                f"C3_UIB 的扩张比例 expand_ratio（YAML 第 5 个参数）必须是正数，收到 {expand_ratio!r}；"
                "有效值：任意 > 0 的数，如 1、2、4",
                f"C3_UIB expand_ratio (5th YAML argument) must be a positive number, got {expand_ratio!r}; "
                "valid: any number > 0, e.g. 1, 2, 4",
            ))
        c_ = int(c2 * e)
        self.cv1 = ConvBNAct(c1, c_, 1, act="silu")
        self.cv2 = ConvBNAct(c1, c_, 1, act="silu")
        self.cv3 = ConvBNAct(2 * c_, c2, 1, act="silu")
        self.m = nn.Sequential(
            *(
                UniversalInvertedBottleneck(
                    c_, c_, 3, 3, 1, expand_ratio=expand_ratio, act="silu", shortcut=shortcut, groups=g
                )
                for _ in range(n)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


register_module(C3_UIB, ScaledOutput(repeats_in_args=True))
