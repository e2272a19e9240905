"""One builder and one weight-key mapper for every table-driven backbone family.

A family (MobileNetV1, MobileNetV4, EfficientNet) is data: a 3x3/2 stem and a table of ``BlockSpec`` rows,
each naming its block class. ``StagedBackbone.build`` turns the table into modules and cuts it into the four
levels P2..P5 by the stride accumulated so far, so a table never says where a stage ends.

Reference weights (timm, torchvision) number their blocks ``<prefix>.<stage>.<index>`` in the same order as
our blocks; ``StagedBackbone.convert_state_dict`` pairs the n-th reference block with our n-th block and renames
the tensors inside it with a per-block-class key table (``KeyLayout``).

Adding a family therefore takes a table, its block classes, a key table per weight source and one
``register_module`` line (see ``mobilenetv1.py`` for the smallest example).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import torch
from torch import nn

from .backbone import FEATURE_STRIDES, Backbone
from .common import ConvBNAct, round_channels


_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)  # torch >= 2.3 has it


def _tracing() -> bool:
    """Whether a tracer (TorchScript/ONNX export, torch.compile/export) is recording: exported graphs keep NCHW."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or _is_compiling()


@dataclass(frozen=True)
class BlockSpec:
    """One table row: ``repeats`` blocks of class ``block`` with ``channels`` outputs at width 1.0.

    Only the first block of the row gets ``stride``. The builder calls
    ``block(c1, c2, stride=..., **args, **options)`` where ``options`` are the family-wide arguments (activation,
    layer scale, BatchNorm eps, drop path) that the class lists in its ``builder_options`` attribute.
    """

    block: type[nn.Module]
    channels: int
    stride: int = 1
    repeats: int = 1
    args: Mapping[str, Any] = field(default_factory=dict)


def make_block(block: type[nn.Module], c1: int, c2: int, stride: int, args: Mapping[str, Any],
               options: Mapping[str, Any]) -> nn.Module:
    """``block(c1, c2, stride=stride, **args)`` plus the family-wide ``options`` the class declares it takes."""
    wanted = {name: options[name] for name in getattr(block, "builder_options", ()) if name in options}
    return block(c1, c2, stride=stride, **args, **wanted)


@dataclass(frozen=True)
class KeyLayout:
    """How one reference implementation names a family's tensors.

    ``block_key`` matches a block tensor's key with three groups (stage, index, the rest); ``stem_keys`` and each
    table in ``block_keys`` map a reference key prefix to ours (the longest matching prefix wins). ``block_keys``
    is looked up with ``StagedBackbone.block_kind(block)`` (the block's class unless a family says otherwise).
    Keys that match neither (classifier, final 1x1 conv) are dropped.
    """

    block_key: re.Pattern
    stem_keys: Mapping[str, str]
    block_keys: Mapping[Hashable, Mapping[str, str]]


# Every timm model built by its EfficientNet builder (MobileNetV1/V3/V4, EfficientNet) names its tensors so.
TIMM_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
TIMM_STEM_KEYS = {"conv_stem": "stem.conv", "bn1": "stem.bn"}


def timm_layout(block_keys: Mapping[Hashable, Mapping[str, str]]) -> KeyLayout:
    """The ``KeyLayout`` of a timm EfficientNet-builder model with these per-block key tables."""
    return KeyLayout(TIMM_BLOCK_KEY, TIMM_STEM_KEYS, block_keys)


def rename_by_prefix(key: str, table: Mapping[str, str]) -> str | None:
    """Replace the longest dotted prefix of ``key`` found in ``table``; None if there is none."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            return ".".join([table[prefix], *parts[cut:]])
    return None


class StagedBackbone(Backbone):
    """A backbone built as ``stem`` followed by four ``stages``; each stage's output is one level P2..P5.

    Subclasses call ``self.build(...)`` in ``__init__`` and define ``key_layouts`` (weight source ->
    ``KeyLayout``), ``scaling`` (the multipliers that must be 1.0 for published weights) and ``references``
    (weight source -> reference model name of this architecture at multipliers 1.0). ``references`` is derived
    from class data (a property where it depends on a variant), so checkpoints pickled earlier still answer.
    """

    stem: nn.Module
    stages: nn.ModuleList
    # Inference runs the blocks in channels_last memory format: CPU PyTorch sends depthwise convolutions in NCHW
    # down a slow non-blocked path. Measured (benchmarks/channels_last.py, docs/benchmarks.md): 5-11 % less
    # time for the fused MobileNetV1/V4 and EfficientNetV2 models at 320 and 640 px. The input is converted
    # once and the four features are handed back contiguous, so the stock layers after the backbone see the
    # layout they always saw. Training, traced exports and other devices (measured on CPU only) are unchanged.
    channels_last_inference = True
    key_layouts: dict[str, KeyLayout] = {}
    scaling: tuple[str, ...] = ("width",)
    references: dict[str, str] = {}

    def build(
        self,
        c1: int,
        stem_channels: int,
        table: Sequence[BlockSpec],
        *,
        width: float = 1.0,
        depth: float = 1.0,
        options: Mapping[str, Any] | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        """Build ``stem``, ``stages`` and ``out_channels`` from a table.

        Args:
            c1: input channels of the stem (a 3x3 conv with stride 2).
            stem_channels: output channels of the stem (already scaled: families round it differently).
            table: the rows, in order; a block joins the level of the stride reached after it (blocks still at
                stride 2 join P2, so every level ends at its stride).
            width: channel multiplier of the rows (channels rounded to multiples of 8).
            depth: repeat multiplier of the rows (repeats rounded up).
            options: family-wide block arguments (``act``, ``bn_eps``, ``layer_scale_init``, ...); each block
                receives those its class lists in ``builder_options``, the stem those of ``ConvBNAct``.
            drop_path_rate: stochastic depth of the last block, growing linearly from 0 over the blocks (given to
                blocks that list ``drop_path``).
        """
        options = dict(options or {})
        self.c1 = c1
        self.stem = make_block(ConvBNAct, c1, stem_channels, 2, {"kernel_size": 3}, options)
        repeats = [int(math.ceil(row.repeats * depth)) for row in table]
        total, index, stride, channels = sum(repeats), 0, 2, stem_channels
        levels: list[list[nn.Module]] = [[] for _ in FEATURE_STRIDES]
        self.out_channels = [0] * len(FEATURE_STRIDES)
        for row, n in zip(table, repeats):
            c2 = round_channels(row.channels * width)
            for i in range(n):
                s = row.stride if i == 0 else 1
                stride *= s
                if stride not in (2, *FEATURE_STRIDES):
                    raise ValueError(f"{type(self).__name__}: the table reaches stride {stride}; valid: 2 to 32")
                level = FEATURE_STRIDES.index(max(stride, FEATURE_STRIDES[0]))
                options["drop_path"] = drop_path_rate * index / total
                levels[level].append(make_block(row.block, channels, c2, s, row.args, options))
                self.out_channels[level] = channels = c2
                index += 1
        if not all(levels):
            raise ValueError(f"{type(self).__name__}: the table must reach every stride {list(FEATURE_STRIDES)}")
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        channels_last = (self.channels_last_inference and x.device.type == "cpu" and not self.training
                         and not _tracing())
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x.contiguous() if channels_last else x)
        return features

    # --- published weights --------------------------------------------------------------------------------
    def weight_sources(self) -> dict[str, str]:
        scaled = any(getattr(self, name) != 1.0 for name in self.scaling)
        return {} if scaled or self.c1 != 3 else dict(self.references)

    def weight_hint(self) -> str:
        names = ", ".join(f"{source} {name}" for source, name in self.references.items())
        return f"{', '.join(f'{n} 1.0' for n in self.scaling)} and 3 input channels ({names})"

    def block_kind(self, block: nn.Module) -> Hashable:
        """The key of ``block``'s table in ``KeyLayout.block_keys``: its class, unless a family needs more."""
        return type(block)

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """(our key prefix, block) of every block, in order."""
        return [(f"stages.{s}.{i}", block) for s, stage in enumerate(self.stages) for i, block in enumerate(stage)]

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Rename a reference state dict (the full classifier's or a ``features_only`` model's) to our keys.

        Both list the same blocks in the same order, so the n-th reference block is our n-th block; a different
        number of blocks means another architecture and raises a ValueError naming the expected reference.
        """
        layout = self.key_layouts.get(source)
        if layout is None:
            return super().convert_state_dict(state_dict, source)
        ours = self.blocks()
        theirs = sorted({(int(m[1]), int(m[2])) for m in map(layout.block_key.match, state_dict) if m})
        if len(theirs) != len(ours):
            raise ValueError(
                f"the {source} state dict has {len(theirs)} blocks but {type(self).__name__} has {len(ours)}; "
                f"valid: a state dict of {source} {self.references.get(source, '(no published model)')}"
            )
        block_of = dict(zip(theirs, ours))
        converted = {}
        for key, tensor in state_dict.items():
            if m := layout.block_key.match(key):
                prefix, block = block_of[int(m[1]), int(m[2])]
                renamed = rename_by_prefix(m[3], layout.block_keys[self.block_kind(block)])
                if renamed is not None:  # unknown sub-modules stay unmapped and are reported by load_pretrained
                    converted[f"{prefix}.{renamed}"] = tensor
            elif (renamed := rename_by_prefix(key, layout.stem_keys)) is not None:
                converted[renamed] = tensor
        return converted
