"""The multi-output backbone contract shared by every family.

A backbone is one YAML line. Its constructor is ``Cls(c1, *yaml_args)`` where the last optional YAML
argument may be a pretrained-weights source, which the constructor only records (``requested_weights``;
``ultralytics_addmodules.weights`` loads it once the whole model is built); ``forward`` returns ``[P2, P3, P4, P5]`` (strides 4, 8, 16,
32) and ``out_channels`` lists their channels. The parser (registry rule ``MultiOutputBackbone``) expands
the line into layer 0 (this module) and layers 1-4 (``SelectFeature`` picking P2..P5).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

FEATURE_STRIDES = (4, 8, 16, 32)


class Backbone(nn.Module):
    """Base class of multi-output backbones.

    Subclasses set ``self.out_channels`` (four ints) and implement ``forward`` returning four tensors.
    For ImageNet weights they implement ``weight_sources`` and ``convert_state_dict``, and store a weights
    source given in the YAML line as ``self.requested_weights`` (loading it is the job of
    ``ultralytics_addmodules.weights``, after the model is built).
    """

    out_channels: list[int]
    strides = FEATURE_STRIDES
    requested_weights = None  # the weights source written in the YAML line ("timm", a file path), if any

    def weight_sources(self) -> dict[str, str]:
        """Published weights of exactly this architecture, e.g. ``{"timm": "efficientnet_b0"}``.

        Empty when this configuration (width, depth) has no published weights.
        """
        return {}

    def weight_hint(self) -> str:
        """Which configurations of this family have published weights (used in error messages)."""
        return "width 1.0"

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Rename a reference state dict (``source`` is "timm" or "torchvision") to this module's keys.

        Keys outside the backbone (classifier, head conv) are dropped. Keys that cannot be mapped are left
        out; ``load_pretrained`` reports every backbone tensor that ends up missing or mis-shaped.
        """
        raise NotImplementedError(f"{type(self).__name__} has no weight mapping for {source!r}")


class StagedBackbone(Backbone):
    """A backbone built as ``stem`` followed by four ``stages``; each stage's output is one level P2..P5."""

    stem: nn.Module
    stages: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class SelectFeature(nn.Module):
    """Layer 1-4 of an expanded backbone line: picks one feature map from the backbone's list."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return features[self.index]

    def extra_repr(self) -> str:
        return f"index={self.index}"
