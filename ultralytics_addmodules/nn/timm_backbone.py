"""Any timm model as a multi-output YOLO backbone: ``[-1, 1, TimmBackbone, [convnext_atto, False]]``.

timm (PyTorch Image Models) builds a "features only" version of almost every network it knows: the
classifier is dropped and the forward pass returns the feature maps listed in the model's ``feature_info``
(channels, and ``reduction``, the stride relative to the input). ``TimmBackbone`` asks timm for the four
levels at strides 4, 8, 16 and 32 and exposes them as P2..P5, so the rest of a YOLO YAML (layers 1-4,
the head's indices 2/3/4) is the same as for our own backbones.

timm is an optional dependency (``pip install ultralytics-addmodules[timm]``) and is imported only when a
``TimmBackbone`` is built, so the package itself works without it.
"""

from __future__ import annotations

import difflib
import logging
from typing import Mapping

import torch
from torch import nn

from ..registry import MultiOutputBackbone, register_module
from .backbone import FEATURE_STRIDES, Backbone
from .common import Fusable

LOGGER = logging.getLogger("ultralytics")
INSTALL_HINT = "pip install ultralytics-addmodules[timm]"
# A fused model must compute what the unfused one did; BN folding changes rounding only.
FUSE_TOLERANCE = 1e-3


def import_timm():
    """The timm module, or an ImportError that says which extra to install."""
    try:
        import timm
    except ImportError as e:  # also raised when sys.modules["timm"] is None
        raise ImportError(f"TimmBackbone needs the timm package, which is not installed: {INSTALL_HINT}") from e
    return timm


def check_model_name(timm, name) -> str:
    """Return ``name`` if timm knows it (a pretrained tag such as '.d2_in1k' is allowed), else a ValueError
    that names it and lists the closest timm model names."""
    if isinstance(name, str) and timm.is_model(name):
        return name
    all_names = timm.list_models()
    text = str(name).lower()
    close = difflib.get_close_matches(text, all_names, n=5, cutoff=0.6)
    close += [n for n in timm.list_models(f"*{text.split('.')[0]}*") if n not in close][: 8 - len(close)]
    hint = f"closest timm models: {', '.join(close)}" if close else "see timm.list_models() for valid names"
    raise ValueError(f"unknown timm model name {name!r}; {hint}")


def reference_feature_info(timm, name: str, in_chans: int) -> list[dict]:
    """timm's ``feature_info`` of the classification model: one dict per feature level, with 'num_chs',
    'reduction' (stride) and 'module'. Built on the meta device, so no memory or init time is spent."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, in_chans=in_chans)
    except Exception:  # a few models compute numbers from tensors while building; the CPU always works
        model = timm.create_model(name, pretrained=False, in_chans=in_chans)
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"timm model {name!r} does not describe its feature maps (no feature_info), so it "
                         "cannot be used as a multi-scale backbone (it does not support features_only=True)")
    return [dict(d) for d in info]


def choose_out_indices(name: str, feature_info: list[dict]) -> tuple[int, ...]:
    """Index of the deepest feature level at each stride 4, 8, 16, 32, or a ValueError naming the strides
    the model has."""
    indices = []
    for stride in FEATURE_STRIDES:
        at_stride = [i for i, d in enumerate(feature_info) if d["reduction"] == stride]
        if not at_stride:
            have = sorted({d["reduction"] for d in feature_info})
            raise ValueError(
                f"timm model {name!r} has feature maps at strides {have}, but a YOLO backbone needs strides "
                f"{list(FEATURE_STRIDES)} (missing {stride}); choose a hierarchical model such as convnext_atto, "
                "resnet18 or efficientvit_b0"
            )
        indices.append(at_stride[-1])  # several levels at one stride (e.g. a final 1x1 conv): the deepest
    return tuple(indices)


def _flattened_key(key: str) -> str | None:
    """'stages.0.blocks.1.w' -> 'stages_0.blocks.1.w': timm's feature wrappers lift the children of
    top-level Sequential containers into their own namespace, joining the two names with '_'."""
    parts = key.split(".")
    return "_".join(parts[:2]) + "." + ".".join(parts[2:]) if len(parts) > 2 else None


class TimmBackbone(Backbone, Fusable):
    """A timm model's features at strides 4, 8, 16, 32 as ``[P2, P3, P4, P5]``.

    Args:
        c1: input channels (passed to timm as ``in_chans``).
        model_name: any timm model name (``timm.list_models()``), optionally with a pretrained tag such as
            ``convnext_atto.d2_in1k``. It must have feature maps at strides 4, 8, 16 and 32.
        pretrained: False (random init); True or "timm" for timm's ImageNet weights (from the local cache, or
            downloaded when the hub is reachable); or the path of a timm state-dict file
            (``torch.save(timm_model.state_dict())``, classifier keys may be present and are dropped).
            Recorded as ``requested_weights``; ``ultralytics_addmodules.weights`` loads it after building.
    """

    def __init__(self, c1: int = 3, model_name: str = "convnext_atto", pretrained=False):
        super().__init__()
        timm = import_timm()
        self.model_name = check_model_name(timm, model_name)
        info = reference_feature_info(timm, model_name, c1)
        out_indices = choose_out_indices(model_name, info)
        self.features = timm.create_model(model_name, pretrained=False, features_only=True,
                                          out_indices=out_indices, in_chans=c1)
        built = self.features.feature_info
        if list(built.reduction()) != list(FEATURE_STRIDES):  # timm's wrapper should honour out_indices
            raise ValueError(f"timm model {model_name!r} built features at strides {built.reduction()}, "
                             f"expected {list(FEATURE_STRIDES)}")
        self.out_channels = list(built.channels())
        # Plain feature wrappers hand back what the blocks produce; a few families (Swin-like) work in NHWC.
        wrapper_fmt = str(getattr(self.features, "output_fmt", "NCHW"))
        self.channels_last_features = "NHWC" in wrapper_fmt and not hasattr(self.features, "out_indices")
        self.fused = False
        self.requested_weights = pretrained  # loaded by weights.py once the model is built

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.features(x)
        if isinstance(features, Mapping):
            features = list(features.values())
        if self.channels_last_features:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)

    # --- pretrained weights ---------------------------------------------------------------------------
    def weight_sources(self) -> dict[str, str]:
        return {"timm": self.model_name}

    def weight_hint(self) -> str:
        return f"a state dict of timm's {self.model_name!r} (any model timm has weights for)"

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Map a timm state dict (the classification model's, or a features-only model's) to our keys.

        Keys of the classifier and of layers after the last feature level are dropped; backbone tensors
        that cannot be found are left out, so ``load_pretrained`` reports them.
        """
        if source != "timm":
            raise ValueError(f"TimmBackbone loads timm state dicts only, got source {source!r}; valid: timm")
        # Where a features-model key may come from: itself, the classification model's unflattened name,
        # the getter wrapper's 'model.' prefix, or a saved TimmBackbone ('features.' prefix).
        lookup: dict[str, str] = {}
        for key in state_dict:
            for candidate in (key.removeprefix("features."), _flattened_key(key), f"model.{key}"):
                if candidate is not None:
                    lookup.setdefault(candidate, key)
        lookup.update({k.removeprefix("features."): k for k in state_dict if k.startswith("features.")})
        return {f"features.{key}": state_dict[lookup[key]] for key in self.features.state_dict() if key in lookup}

    # --- inference ---------------------------------------------------------------------------------------
    def fuse(self) -> None:
        """Prepare for inference: timm's re-parameterisation (RepViT, MobileOne, FastViT, ... merge their
        training-time branches) and folding of every BatchNorm that directly follows a convolution.

        The result is checked against the unfused outputs on a random input; if folding changed them it is
        undone (a warning says so) while the exact re-parameterisation is kept.
        """
        if self.fused:
            return
        timm = import_timm()
        was_training = self.training
        self.eval()
        try:
            # Exporters and predictors call fuse() under inference_mode, where tensors have no version counter
            # (the BN tracing needs it) and new parameters would be inference-only tensors.
            with torch.inference_mode(False):
                timm.utils.reparameterize_model(self.features, inplace=True)
                fold_conv_batchnorm(self.features, self.example_input())
        finally:
            self.train(was_training)
        self.fused = True

    def example_input(self) -> torch.Tensor:
        """A small random batch on the module's device and dtype (used to trace and verify fusing)."""
        p = next(self.parameters())
        g = torch.Generator().manual_seed(0)
        in_chans = getattr(self.features, "in_chans", 3)
        return torch.rand(1, in_chans, 64, 64, generator=g).to(device=p.device, dtype=p.dtype)

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, out_channels={self.out_channels}"


def _conv_bn_pairs(root: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """Names of (Conv2d, BatchNorm2d) pairs where the BN consumes the conv's output tensor directly,
    found by running ``root`` once with hooks (module order in the source says nothing about data flow)."""
    names = {m: n for n, m in root.named_modules()}
    conv_outputs: dict[int, tuple[torch.Tensor, int, nn.Module]] = {}
    calls: dict[nn.Module, int] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def after_conv(module, _inputs, output):
        calls[module] = calls.get(module, 0) + 1
        # Keep the tensor alive so its id stays unique; its version counter exposes later in-place edits
        # (conv -> ReLU(inplace) -> BN hands the BN the same tensor object, but not the conv's values).
        conv_outputs[id(output)] = (output, output._version, module)

    def before_bn(module, inputs):
        calls[module] = calls.get(module, 0) + 1
        producer = conv_outputs.get(id(inputs[0]))
        if producer is not None and producer[0] is inputs[0] and producer[1] == inputs[0]._version:
            pairs.append((producer[2], module))

    handles = []
    for m in root.modules():
        if type(m) is nn.Conv2d:
            handles.append(m.register_forward_hook(after_conv))
        elif isinstance(m, nn.BatchNorm2d) and m.affine and m.track_running_stats:
            handles.append(m.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            root(x)
    finally:
        for h in handles:
            h.remove()
    # A conv or BN run more than once (shared weights), or a conv feeding two BNs, cannot be folded.
    conv_uses = {}
    for conv, _ in pairs:
        conv_uses[conv] = conv_uses.get(conv, 0) + 1
    return [(names[c], names[b]) for c, b in pairs if calls[c] == 1 and calls[b] == 1 and conv_uses[c] == 1]


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BN layer once its affine transform lives in the conv: timm's BatchNormAct2d also
    applies dropout and an activation, which must stay."""
    extras = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*extras) if extras else nn.Identity()


def fold_conv_batchnorm(root: nn.Module, x: torch.Tensor) -> int:
    """Fold each BatchNorm2d that directly follows a Conv2d into that conv (eval mode); returns how many.

    Verified on ``x``: if the outputs moved by more than ``FUSE_TOLERANCE`` (some data flow the hooks
    could not see), every fold is undone and a warning is logged.
    """
    from .common import fold_batchnorm

    with torch.no_grad():
        before = root(x)
    pairs = _conv_bn_pairs(root, x)
    originals = []
    for conv_name, bn_name in pairs:
        conv, bn = root.get_submodule(conv_name), root.get_submodule(bn_name)
        originals.append((conv_name, conv, bn_name, bn))
        _set_submodule(root, conv_name, fold_batchnorm(conv, bn))
        _set_submodule(root, bn_name, _bn_replacement(bn))
    with torch.no_grad():
        after = root(x)
    def flat(out) -> list[torch.Tensor]:
        if isinstance(out, torch.Tensor):
            return [out]
        return list(out.values()) if isinstance(out, Mapping) else list(out)

    error = max(((a.float() - b.float()).abs().max().item() for a, b in zip(flat(after), flat(before))), default=0.0)
    scale = max((b.float().abs().max().item() for b in flat(before)), default=1.0)
    if error > FUSE_TOLERANCE * max(1.0, scale):
        for conv_name, conv, bn_name, bn in originals:
            _set_submodule(root, conv_name, conv)
            _set_submodule(root, bn_name, bn)
        LOGGER.warning(f"TimmBackbone: folding BatchNorm changed the outputs by {error:.2g}; left unfolded")
        return 0
    return len(pairs)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


register_module(TimmBackbone, MultiOutputBackbone())
