"""A minimal user-defined multi-output backbone, registered the way a user would (tests use it as a plugin)."""

import torch
from torch import nn

from ultralytics_addmodules import Backbone, MultiOutputBackbone, register_module


class TinyBackbone(Backbone):
    """Four strided convs: P2..P5 with ``width``-scaled channels."""

    def __init__(self, c1: int = 3, width: float = 1.0):
        super().__init__()
        chans = [max(8, int(c * width)) for c in (16, 32, 64, 128)]
        stem = nn.Sequential(nn.Conv2d(c1, chans[0], 3, 2, 1), nn.SiLU())
        self.stages = nn.ModuleList([nn.Sequential(stem, nn.Conv2d(chans[0], chans[0], 3, 2, 1), nn.SiLU())])
        for a, b in zip(chans, chans[1:]):
            self.stages.append(nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.SiLU()))
        self.out_channels = chans

    def forward(self, x: torch.Tensor) -> list:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


register_module(TinyBackbone, MultiOutputBackbone())

TINY_YAML = """
nc: 2
scales:
  n: [0.50, 0.25, 1024]
backbone:
  - [-1, 1, TinyBackbone, [1.0]]  # 0, layers 1-4 are P2..P5
  - [-1, 1, SPPF, [256, 5]]       # 5
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 3], 1, Concat, [1]]
  - [-1, 1, C3k2, [128, False]]   # 8
  - [[8, 5], 1, Detect, [nc]]
"""
