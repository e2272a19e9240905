"""The only module that touches Ultralytics internals.

``apply()`` registers every Ultralytics 8.3.0 module with its channel rule and rebinds a handful of
functions: ``tasks.parse_model`` (our registry-driven parser), ``check_yaml`` (bare names of our shipped
YAMLs resolve anywhere), ``BaseModel.fuse`` (also folds BatchNorm inside our modules),
``initialize_weights`` (backbones keep their reference BatchNorm eps), checkpoint loading (clear errors for
corrupt files and missing modules instead of an automatic pip install), ``check_det_dataset`` (a relative
data YAML path resolves next to the YAML) and the ONNX export
(``Model.export`` keeps 8.3.0's TorchScript-based ONNX exporter on torch versions whose default became
the dynamo exporter).
Nothing else in the package knows how Ultralytics is patched.
"""

from __future__ import annotations

import ast
import functools
import inspect
import pickle
import sys
import weakref
import zipfile

import torch
from torch import nn
from ultralytics.nn import modules as ul
from ultralytics.nn import tasks
from ultralytics.utils import LOGGER, VERBOSE, checks

from . import parser
from .dataset_check import absolute_data_yaml
from .model_yamls import find_model_yaml
from .nn.backbone import Backbone
from .nn.common import fuse_modules
from .registry import (
    ChannelRule,
    ConcatChannels,
    InputChannelList,
    LayerContext,
    Resolved,
    SameChannels,
    ScaledOutput,
    make_divisible,
    register_module,
    registered_names,
)

STOCK: dict = {}  # the original Ultralytics functions, saved once before they are replaced


# --- channel rules that only Ultralytics' own modules need -------------------------------------------
class C3k2Rule(ScaledOutput):
    """C3k2 switches to C3k inner blocks (``c3k=True``) at the m/l/x scales."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        r = super().resolve(args, ctx)
        if ctx.scale and ctx.scale in "mlx":
            r.args[3] = True
        return r


class C2fAttnRule(ScaledOutput):
    """C2fAttn also scales its embedding channels (arg 1) and head count (arg 2)."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        args = list(args)
        half = ctx.max_channels // 2
        args[1] = make_divisible(min(args[1], half) * ctx.width, 8)
        args[2] = int(max(round(min(args[2], half // 32)) * ctx.width, 1) if args[2] > 1 else args[2])
        return super().resolve(args, ctx)


class PrependInputChannels(ChannelRule):
    """AIFI: input channels go first; output channels stay those of the previous rule."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved([ctx.c1, *args], ctx.prev_c2, ctx.repeats)


class HGRule(ChannelRule):
    """HGStem/HGBlock: ``[cm, c2, ...]`` unscaled; HGBlock takes the repeat count at index 4."""

    def __init__(self, repeats_at: int | None = None):
        self.repeats_at = repeats_at

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        new_args = [ctx.c1, args[0], args[1], *args[2:]]
        repeats = ctx.repeats
        if self.repeats_at is not None:
            new_args.insert(self.repeats_at, repeats)
            repeats = 1
        return Resolved(new_args, args[1], repeats)


class ResNetLayerRule(ChannelRule):
    """ResNetLayer: output is ``c2`` for the stem, else ``4 * c2`` (bottleneck expansion)."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved(list(args), args[1] if args[3] else args[1] * 4, ctx.repeats)


class BatchNormRule(ChannelRule):
    """nn.BatchNorm2d takes only the input channel count."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved([ctx.c1], ctx.prev_c2, ctx.repeats)


class CBLinearRule(ChannelRule):
    """CBLinear: ``[c2s, ...]`` where c2s is a list of unscaled output channels."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved([ctx.c1, args[0], *args[1:]], args[0], ctx.repeats)


class CBFuseRule(ChannelRule):
    """CBFuse: output channels are those of its last input."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved(list(args), ctx.ch[ctx.source[-1]], ctx.repeats)


def _builtin_rules() -> dict:
    """Rule of every Ultralytics 8.3.0 module that its parse_model treats specially (data, not code)."""
    plain, csp, heads = ScaledOutput(), ScaledOutput(repeats_in_args=True), InputChannelList()
    table = {
        plain: ("Classify", "Conv", "ConvTranspose", "GhostConv", "Bottleneck", "GhostBottleneck", "SPP", "SPPF",
                "DWConv", "Focus", "RepNCSPELAN4", "ELAN1", "ADown", "AConv", "SPPELAN", "DWConvTranspose2d",
                "PSA", "SCDown"),
        csp: ("BottleneckCSP", "C1", "C2", "C2f", "C3", "C3TR", "C3Ghost", "C3x", "RepC3", "C2fPSA", "C2fCIB",
              "C2PSA"),
        C3k2Rule(repeats_in_args=True): ("C3k2",),
        C2fAttnRule(repeats_in_args=True): ("C2fAttn",),
        ConcatChannels(): ("Concat",),
        heads: ("Detect", "WorldDetect", "Pose", "OBB", "ImagePoolingAttn", "v10Detect"),
        InputChannelList(scale_arg=2): ("Segment",),
        InputChannelList(insert_at=1): ("RTDETRDecoder",),
        PrependInputChannels(): ("AIFI",),
        HGRule(): ("HGStem",),
        HGRule(repeats_at=4): ("HGBlock",),
        ResNetLayerRule(): ("ResNetLayer",),
        CBLinearRule(): ("CBLinear",),
        CBFuseRule(): ("CBFuse",),
    }
    rules = {getattr(ul, name): rule for rule, names in table.items() for name in names}
    rules[nn.ConvTranspose2d] = plain
    rules[nn.BatchNorm2d] = BatchNormRule()
    return rules


def register_builtin_modules() -> None:
    """Register every module class Ultralytics 8.3.0 exports, with the rule its parse_model applies."""
    special = _builtin_rules()
    for name in ul.__all__:
        cls = getattr(ul, name)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            register_module(cls, special.get(cls, SameChannels()), name=name)
    for cls in (nn.ConvTranspose2d, nn.BatchNorm2d):  # written as nn.X in YAMLs; the parser finds their rules
        register_module(cls, special[cls], name=f"nn.{cls.__name__}")


# --- the YAML 'activation:' key ------------------------------------------------------------------------
def _activation_from_yaml(expr: str) -> nn.Module:
    """Build ``nn.SiLU()``-style expressions without eval: only torch.nn classes with literal arguments."""
    error = ValueError(f"activation {expr!r} is not supported; write a torch.nn module call such as 'nn.ReLU()' "
                       "or 'nn.LeakyReLU(0.1)'")
    try:
        call = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise error from None
    if not isinstance(call, ast.Call):
        raise error
    dotted = []
    node = call.func
    while isinstance(node, ast.Attribute):
        dotted.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or [node.id, *dotted[:-1]] not in (["nn"], ["torch", "nn"]):
        raise error
    cls = getattr(nn, dotted[-1], None) if dotted else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise error
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except ValueError:
        raise error from None
    return cls(*args, **kwargs)


def _set_default_activation(expr: str) -> None:
    ul.Conv.default_act = _activation_from_yaml(expr)  # what stock does: every Conv built after this uses it


# --- replacements ----------------------------------------------------------------------------------------
def _parse_model(d, ch, verbose=True):
    """Drop-in for ``tasks.parse_model`` (same signature)."""
    return parser.parse_model(d, ch, verbose, set_activation=_set_default_activation)


def _check_yaml(file, suffix=(".yaml", ".yml"), hard=True):
    """Stock lookup first (local files, Ultralytics' cfg tree); then the YAMLs shipped with this package."""
    found = STOCK["check_yaml"](file, suffix, hard=False)
    if found:
        return found
    packaged = find_model_yaml(file)
    if packaged is not None:
        return str(packaged)
    return STOCK["check_yaml"](file, suffix, hard=hard)


def _fuse(self, verbose=True):
    """``BaseModel.fuse`` that first folds the BatchNorms inside our modules, then runs the stock fuse."""
    fuse_modules(self.model)
    return STOCK["fuse"](self, verbose=verbose)


def _onnx_export_needs_legacy_default() -> bool:
    param = inspect.signature(torch.onnx.export).parameters.get("dynamo")
    return param is not None and param.default is True


def _export(self, **kwargs):
    """``Model.export`` with torch's TorchScript-based ONNX exporter as the default.

    8.3.0 was written for that exporter; newer torch defaults to the dynamo exporter (needs onnxscript,
    builds other graphs). Every format that goes through ONNX (onnx, engine, openvino, ...) is covered.
    """
    original = torch.onnx.export
    torch.onnx.export = functools.partial(original, dynamo=False)
    try:
        return STOCK["export"](self, **kwargs)
    finally:
        torch.onnx.export = original


def _initialize_weights(model):
    """Ultralytics sets every BatchNorm's eps to 1e-3 and makes every activation in-place. Backbones keep
    their reference eps (otherwise ImageNet weights compute different features inside a YOLO model) and their
    own in-place flags (some timm blocks apply an activation to a view, which must not be in-place)."""
    inside = [m for b in model.modules() if isinstance(b, Backbone) for m in b.modules()]
    saved = [(m, "eps", m.eps) for m in inside if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved += [(m, "inplace", m.inplace) for m in inside if isinstance(getattr(m, "inplace", None), bool)]
    STOCK["initialize_weights"](model)
    for m, attribute, value in saved:
        setattr(m, attribute, value)


def _check_det_dataset(dataset, *args, **kwargs):
    """A relative path to a data YAML without ``path:`` means "next to the YAML" (8.3.0 would look under its
    datasets_dir setting), so ``yolo train data=dataset/data.yaml`` works from the repo root."""
    return STOCK["check_det_dataset"](absolute_data_yaml(dataset), *args, **kwargs)


# Modules a checkpoint of ours may need, and how to get them (instead of Ultralytics' automatic pip install).
_INSTALL_HINTS = {"timm": "pip install ultralytics-addmodules[timm]",
                  "ultralytics_addmodules": "pip install -U ultralytics-addmodules"}


class MissingModuleError(ModuleNotFoundError):
    """A checkpoint refers to a module that is not installed."""


def _check_requirements(requirements=(), *args, **kwargs):
    """Stop Ultralytics from pip-installing modules a checkpoint of ours needs; say what to install."""
    top = requirements.split(".")[0] if isinstance(requirements, str) else None
    if top in _INSTALL_HINTS:
        from . import __version__

        raise MissingModuleError(
            f"the checkpoint needs module {requirements!r}, which is not installed (ultralytics-addmodules "
            f"{__version__}); install it with: {_INSTALL_HINTS[top]}", name=requirements)
    return STOCK["check_requirements"](requirements, *args, **kwargs)


def _is_corrupt_file_error(e: Exception) -> bool:
    if isinstance(e, (EOFError, pickle.UnpicklingError, zipfile.BadZipFile)):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e) for s in ("PytorchStreamReader", "zip archive"))


def _torch_safe_load(weight, *args, **kwargs):
    """``torch_safe_load`` with errors that name the checkpoint file."""
    try:
        return STOCK["torch_safe_load"](weight, *args, **kwargs)
    except MissingModuleError as e:
        raise MissingModuleError(f"cannot load {str(weight)!r}: {e}", name=e.name) from None
    except Exception as e:
        if _is_corrupt_file_error(e):
            raise RuntimeError(f"cannot load checkpoint {str(weight)!r}: the file is corrupt or truncated "
                               f"({type(e).__name__}: {e})") from e
        if isinstance(e, AttributeError) and "ultralytics_addmodules" in str(e):
            raise MissingModuleError(f"cannot load {str(weight)!r}: {e}; it was saved with another version of "
                                     f"ultralytics-addmodules: {_INSTALL_HINTS['ultralytics_addmodules']}") from e
        raise


# === pretrained weights: wiring only, the logic is weights.apply_requested_weights (issue 15) ==============
# A weights source written in a YAML line loads once the whole model is built. A model built from the YAML
# of a checkpoint just read (to receive that checkpoint's weights: fine-tuning best.pt, resuming) skips it:
# the sources would be overwritten anyway and may no longer exist where the model is used now.
_checkpoint_models: weakref.WeakSet = weakref.WeakSet()  # models read from checkpoints that are still alive


def _remember_checkpoint_models(torch_safe_load):
    @functools.wraps(torch_safe_load)
    def remembering(weight, *args, **kwargs):
        ckpt, file = torch_safe_load(weight, *args, **kwargs)
        for model in (ckpt.get("ema"), ckpt.get("model")) if isinstance(ckpt, dict) else ():
            if isinstance(model, nn.Module) and isinstance(getattr(model, "yaml", None), dict):
                _checkpoint_models.add(model)
        return ckpt, file

    return remembering


def _load_requested_weights_after_build(init):
    @functools.wraps(init)
    def __init__(self, cfg="yolov8n.yaml", *args, **kwargs):
        init(self, cfg, *args, **kwargs)
        if not any(m.yaml is cfg for m in _checkpoint_models):
            from .weights import apply_requested_weights

            apply_requested_weights(self, self.yaml.get("yaml_file"))

    return __init__


def _wire_pretrained_weights() -> None:
    tasks.torch_safe_load = _remember_checkpoint_models(tasks.torch_safe_load)
    tasks.DetectionModel.__init__ = _load_requested_weights_after_build(tasks.DetectionModel.__init__)
# === end of pretrained weights wiring =====================================================================


def _rebind_everywhere(original, replacement, attribute: str) -> None:
    """Replace ``attribute`` in every already-imported Ultralytics module that bound ``original``."""
    for name, module in list(sys.modules.items()):
        if name.startswith("ultralytics.") and getattr(module, attribute, None) is original:
            setattr(module, attribute, replacement)


def apply() -> None:
    """Patch Ultralytics (idempotent)."""
    if STOCK:
        return
    from ultralytics.data import utils as data_utils
    from ultralytics.engine.model import Model

    register_builtin_modules()
    STOCK.update(
        parse_model=tasks.parse_model,
        check_yaml=checks.check_yaml,
        fuse=tasks.BaseModel.fuse,
        export=Model.export,
        initialize_weights=tasks.initialize_weights,
        check_requirements=tasks.check_requirements,
        torch_safe_load=tasks.torch_safe_load,
        check_det_dataset=data_utils.check_det_dataset,
    )
    tasks.parse_model = _parse_model
    _rebind_everywhere(STOCK["check_yaml"], _check_yaml, "check_yaml")
    checks.check_yaml = _check_yaml
    tasks.BaseModel.fuse = _fuse
    tasks.initialize_weights = _initialize_weights
    tasks.check_requirements = _check_requirements  # only tasks' own calls (checkpoint loading) go through it
    tasks.torch_safe_load = _torch_safe_load
    _rebind_everywhere(STOCK["check_det_dataset"], _check_det_dataset, "check_det_dataset")
    _wire_pretrained_weights()  # after torch_safe_load above: it wraps the patched loader
    data_utils.check_det_dataset = _check_det_dataset
    if _onnx_export_needs_legacy_default():
        Model.export = _export
    if VERBOSE:
        from .registry import lookup

        ours = [n for n in registered_names() if lookup(n).cls.__module__.startswith("ultralytics_addmodules")]
        LOGGER.info(f"ultralytics-addmodules active: {len(ours)} extra YAML modules ({', '.join(ours[:4])}, ...)")


def stock_parse_model():
    """Ultralytics' own parse_model (for comparisons in tests and benchmarks)."""
    return STOCK.get("parse_model", tasks.parse_model)
