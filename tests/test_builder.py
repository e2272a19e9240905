"""The shared stage builder and weight-key mapper (nn/builder.py), shown on a family written for the test:
a table, its block and a key table are all a family needs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import ultralytics_addmodules.nn as addmodules_nn
from ultralytics_addmodules.nn.builder import BlockSpec, StagedBackbone, rename_by_prefix, timm_layout
from ultralytics_addmodules.nn.common import ConvBNAct, DropPath

NN_DIR = Path(addmodules_nn.__file__).parent


class Plain(nn.Module):
    """A conv block that takes the family-wide activation and drop path from the builder."""

    builder_options = ("act", "drop_path")

    def __init__(self, c1: int, c2: int, stride: int = 1, kernel: int = 3, act: str = "relu", drop_path: float = 0.0):
        super().__init__()
        self.conv = ConvBNAct(c1, c2, kernel, stride, act=act)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Untouched(nn.Module):
    """A block that declares no builder options: it must receive none."""

    def __init__(self, c1: int, c2: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


TABLE = (
    BlockSpec(Plain, 16, 1),  # still at the stem's stride 2: joins P2
    BlockSpec(Plain, 24, 2, 2, {"kernel": 5}),  # stride 4
    BlockSpec(Plain, 32, 2),  # stride 8
    BlockSpec(Untouched, 48, 2),  # stride 16
    BlockSpec(Plain, 64, 2, 2),  # stride 32
)


class TinyFamily(StagedBackbone):
    key_layouts = {"timm": timm_layout({Plain: {"conv": "conv.conv", "bn1": "conv.bn"}, Untouched: {"pw": "conv"}})}
    references = {"timm": "tiny_family_100"}

    def __init__(self, c1: int = 3, width: float = 1.0, depth: float = 1.0, pretrained=None, table=TABLE):
        super().__init__()
        self.width = width
        self.build(c1, 8, table, width=width, depth=depth, options={"act": "silu"}, drop_path_rate=0.3)
        self.request_weights(pretrained)


def test_levels_follow_the_accumulated_stride():
    model = TinyFamily().eval()
    assert [len(stage) for stage in model.stages] == [3, 1, 1, 2]
    assert model.out_channels == [24, 32, 48, 64]
    features = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(c, 64 // s, 96 // s) for c, s in
                                                       zip(model.out_channels, (4, 8, 16, 32))]


def test_width_depth_and_options_reach_the_blocks():
    model = TinyFamily(width=0.5, depth=2.0)
    assert [len(stage) for stage in model.stages] == [2 + 4, 2, 2, 4]  # repeats doubled
    assert model.out_channels == [16, 16, 24, 32]  # rounded to multiples of 8, never below 8
    assert isinstance(model.stem.act, nn.SiLU) and isinstance(model.stages[0][0].conv.act, nn.SiLU)
    assert [b.conv.conv.kernel_size[0] for b in model.stages[0]] == [3, 3, 5, 5, 5, 5]  # the rows' own arguments
    rates = [b.drop_path.drop_prob for stage in model.stages for b in stage if isinstance(b, Plain)]
    assert rates[0] == 0.0 and rates == sorted(rates) and 0.25 < rates[-1] < 0.3  # linear in the block index


def test_tables_that_miss_a_stride_are_rejected():
    with pytest.raises(ValueError, match=r"must reach every stride \[4, 8, 16, 32\]"):
        TinyFamily(table=TABLE[:-1])
    with pytest.raises(ValueError, match="reaches stride 64"):
        TinyFamily(table=(*TABLE, BlockSpec(Plain, 64, 2)))


def reference_state_dict(model: TinyFamily) -> dict[str, torch.Tensor]:
    """Our tensors under timm-style names, with the blocks grouped into other stages and a classifier."""
    g = torch.Generator().manual_seed(0)
    sd = {"conv_stem.weight": torch.randn(model.stem.conv.weight.shape, generator=g),
          "classifier.weight": torch.randn(10, 64, generator=g)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"bn1.{name}"] = torch.rand(8, generator=g)
    sd["bn1.num_batches_tracked"] = torch.tensor(0)
    grouping = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]  # not our 3 + 1 + 1 + 2
    for (prefix, block), (s, i) in zip(model.blocks(), grouping):
        for key, tensor in block.state_dict().items():
            theirs = key.replace("conv.conv.", "conv.").replace("conv.bn.", "bn1.") if isinstance(block, Plain) \
                else key.replace("conv.", "pw.")
            sd[f"blocks.{s}.{i}.{theirs}"] = torch.randn(tensor.shape, generator=g) if tensor.ndim else tensor
    return sd


def test_key_mapper_pairs_blocks_in_order_and_drops_the_head():
    model = TinyFamily()
    sd = reference_state_dict(model)
    converted = model.convert_state_dict(sd, "timm")
    assert set(converted) == set(model.state_dict())
    assert torch.equal(converted["stem.conv.weight"], sd["conv_stem.weight"])
    assert torch.equal(converted["stages.0.2.conv.bn.running_var"], sd["blocks.1.0.bn1.running_var"])
    assert torch.equal(converted["stages.2.0.conv.weight"], sd["blocks.2.0.pw.weight"])
    model.load_state_dict(converted)

    del sd["blocks.3.0.conv.weight"], sd["blocks.3.0.bn1.weight"], sd["blocks.3.0.bn1.bias"]
    del sd["blocks.3.0.bn1.running_mean"], sd["blocks.3.0.bn1.running_var"], sd["blocks.3.0.bn1.num_batches_tracked"]
    with pytest.raises(ValueError, match=r"6 blocks but TinyFamily has 7; valid: a state dict of timm tiny_family_100"):
        model.convert_state_dict(sd, "timm")
    with pytest.raises(NotImplementedError, match="torchvision"):
        model.convert_state_dict(sd, "torchvision")


def test_published_weights_only_at_width_1_and_3_channels():
    assert TinyFamily().weight_sources() == {"timm": "tiny_family_100"}
    assert TinyFamily(width=0.5).weight_sources() == {} and TinyFamily(c1=4).weight_sources() == {}
    assert TinyFamily().weight_hint() == "width 1.0 and 3 input channels (timm tiny_family_100)"


def test_rename_by_prefix_takes_the_longest_prefix():
    table = {"attn": "a", "attn.key.proj": "key", "attn.key": "k"}
    assert rename_by_prefix("attn.key.proj.weight", table) == "key.weight"
    assert rename_by_prefix("attn.key.norm.bias", table) == "k.norm.bias"
    assert rename_by_prefix("attn.weight", table) == "a.weight"
    assert rename_by_prefix("other.weight", table) is None


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {("." * node.level) + (node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_nn_never_imports_weights_and_families_share_one_key_table():
    for path in NN_DIR.glob("*.py"):
        assert not any(m.endswith("weights") for m in _imported_modules(path)), path.name
    # timm's stem names are written once, in the builder
    assert [p.name for p in NN_DIR.glob("*.py") if '"conv_stem"' in p.read_text()] == ["builder.py"]


def test_moved_classes_stay_importable_from_their_old_modules():
    from ultralytics_addmodules.nn import common, fuse, timm_backbone, uib

    assert uib.LayerScale2d is common.LayerScale2d  # pickled checkpoints name nn.uib.LayerScale2d
    assert common.fuse_modules is fuse.fuse_modules and timm_backbone.fold_conv_batchnorm is fuse.fold_conv_batchnorm


def _input_layouts(model: StagedBackbone, run) -> list[bool]:
    """For each conv of ``model`` (in call order), whether its input was channels_last during ``run()``."""
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
        for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_inference_runs_channels_last_and_hands_back_the_usual_layout():
    from helpers import PARITY_REL, assert_close_to_scale

    torch.manual_seed(0)
    model = TinyFamily(width=1.0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        layouts = _input_layouts(model, lambda: model(x))
        features = model(x)
        model.channels_last_inference = False
        reference = model(x)
    assert layouts and all(layouts)  # every conv ran channels_last
    assert all(f.is_contiguous() for f in features)  # the stock layers after the backbone see NCHW
    assert_close_to_scale(features, reference, PARITY_REL, "channels_last features")


def test_training_tracing_and_other_devices_keep_nchw():
    model = TinyFamily(width=1.0)
    x = torch.randn(2, 3, 64, 64)
    assert not any(_input_layouts(model.train(), lambda: model(x)))  # autograd through NCHW, as before
    on_meta = TinyFamily(width=1.0).to("meta").eval()  # stands in for GPUs: the gain was measured on CPU only
    layouts = _input_layouts(on_meta, lambda: on_meta(x.to("meta")))
    assert layouts and not any(layouts)
    model.eval()
    trace = lambda: torch.jit.trace(model, x, strict=False, check_trace=False)  # noqa: E731 (a check reruns eagerly)
    assert not any(_input_layouts(model, trace))
    graph = str(trace().graph)
    assert "aten::contiguous" not in graph  # exported graphs (ONNX, NCNN via TorchScript) are unchanged
