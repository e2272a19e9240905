"""The only module that touches Ultralytics internals.

``activate(plugins)`` checks the installed Ultralytics against ``compat.SUPPORTED_ULTRALYTICS``. On a supported
release it registers that release's own modules with their channel rules (tables below, one per release) and
rebinds a handful of functions; on any other release it changes nothing Ultralytics does and only makes our
YAML names fail with one line naming the supported releases. Activation is all-or-nothing: if any step or any
plugin import fails, every replaced function is put back and the registry is restored.

What is rebound, and why:

* ``tasks.parse_model``: a YAML that names none of our modules goes to the release's own parse_model untouched
  (after a structure check that only rejects what would crash it, with one clear line instead); a YAML with
  our modules goes to our registry-driven parser (``parser.py``), which follows the release's rules.
* ``DetectionModel.__init__``: when the first forward (stride computation) fails, say which layer's inputs do
  not fit instead of a bare tensor-size error; once built, load the weights its YAML lines name (``weights.py``)
  unless the model is being rebuilt from a checkpoint just read. ``ClassificationModel.__init__``: the same load.
* ``check_yaml``: bare names of our shipped YAMLs resolve anywhere; ``yaml_model_load``: a model YAML that does
  not exist gets the closest shipped and official names.
* ``BaseModel.fuse``: also folds BatchNorm inside our modules (8.4 passes ``imgsz``, which is forwarded).
* ``initialize_weights``: backbones keep their reference BatchNorm eps and in-place flags.
* checkpoint loading (``torch_safe_load``): only what genuine checkpoints contain, never hidden code; clear errors
  (exception types that stock's callers catch) instead of an automatic pip install; C3_UIB expansions of older
  checkpoints are written into their ``model.yaml`` so that a rebuild (fine-tuning, resuming) matches them.
* ``AutoBackend.__init__``: TensorFlow is imported after torchvision's ops when a .tflite model is loaded.
* ``BaseTrainer.save_model`` / ``strip_optimizer``: temporary file, then rename; ``resume_training`` drops
  results.csv rows past the checkpoint; ``check_resume`` keeps a refused file's own one-line error.
* ``check_det_dataset``: a relative data YAML path resolves next to the YAML.
* ``Model.export``: 8.3.0's TorchScript-based ONNX exporter on torch versions that default to dynamo.
* ``check_pip_update_available``: after Ultralytics' own upgrade hint, one line on what upgrading means here.
* ``BaseTrainer.get_dataset``: the cheap part of our dataset check runs before Ultralytics reads the data.
* ``check_font`` and the PIL ``Annotator``: a local CJK font (the ``[cjk]`` extra) for Chinese class names, never
  a font download.

Nothing else in the package knows how Ultralytics is patched.
"""

from __future__ import annotations

import functools
import inspect
import sys
import weakref
from copy import deepcopy
from typing import Any, Callable

import torch
import ultralytics
from torch import nn
from ultralytics.nn import modules as ul
from ultralytics.nn import tasks
from ultralytics.utils import LOGGER, checks

from . import checkpoints, compat, dataset_check, export, fonts, model_yamls, parser, weights
from .dataset_check import absolute_data_yaml
from .messages import ModelYAMLError, bilingual
from .model_yamls import find_model_yaml, suggest_model_names
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
    register_stock_module,
    registered_names,
    restore,
    snapshot,
)

STOCK: dict[str, Any] = {}  # the original Ultralytics functions, saved before they are replaced
DIALECT = parser.Dialect()  # how the installed release reads YAMLs; filled in by activate()


# --- channel rules that only Ultralytics' own modules need ------------------------------------------------
class C3k2Rule(ScaledOutput):
    """C3k2 switches to C3k inner blocks (``c3k=True``) at the m/l/x scales.

    ``fill_missing``: 8.4 also supplies c3k when the YAML line omits it (slice assignment); 8.3 indexes it.
    """

    def __init__(self, fill_missing: bool = False):
        super().__init__(repeats_in_args=True, marks_modern=True)
        self.fill_missing = fill_missing

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        r = super().resolve(args, ctx)
        if ctx.scale and ctx.scale in "mlx":
            if self.fill_missing:
                r.args[3:4] = [True]
            else:
                r.args[3] = True
        return r


class A2C2fRule(ScaledOutput):
    """A2C2f (YOLO12, 8.4) adds a residual with MLP ratio 1.2 at the l/x scales."""

    def __init__(self):
        super().__init__(repeats_in_args=True, marks_modern=True)

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        r = super().resolve(args, ctx)
        if ctx.scale in {"l", "x"}:
            r.args.extend((True, 1.2))
        return r


class C2fAttnRule(ScaledOutput):
    """C2fAttn also scales its embedding channels (arg 1) and head count (arg 2), as 8.3 does."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        args = list(args)
        half = ctx.max_channels // 2
        args[1] = make_divisible(min(args[1], half) * ctx.width, 8)
        args[2] = int(max(round(min(args[2], half // 32)) * ctx.width, 1) if args[2] > 1 else args[2])
        return super().resolve(args, ctx)


class C2fAttnRule84(ScaledOutput):
    """C2fAttn in 8.4: head count as in 8.3, embedding channels follow the hidden width ``c2 * e``."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        args = list(args)
        c2 = self.scale_channels(args[0], ctx)
        args[2] = int(max(round(min(args[2], ctx.max_channels // 2 // 32)) * ctx.width, 1) if args[2] > 1 else args[2])
        hidden = int(c2 * (args[6] if len(args) > 6 else 0.5))
        if hidden % args[2]:
            raise ValueError(f"C2fAttn hidden channels {hidden} must be divisible by the head count {args[2]}")
        args[1] = hidden
        return super().resolve(args, ctx)


class SPPFRule(ScaledOutput):
    """8.4: SPPF lines written before YOLO26 (at most ``[c2, k]``) keep the activation on ``cv1``."""

    def finalize(self, module: Any, resolved: Resolved, ctx: LayerContext) -> None:
        if len(resolved.args) <= 3:
            for block in module if resolved.repeats > 1 else [module]:
                block.cv1.act = ul.Conv.default_act


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


class FirstArgChannels(ChannelRule):
    """8.4 TorchVision/Index: ``[c2, *args]``; c2 is only the declared output, not a constructor argument."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved(list(args[1:]), args[0], ctx.repeats)


class DepthRule(ChannelRule):
    """8.4 Depth head: ``[c_mid, ch list]`` (later YAML arguments are dropped, as 8.4 does)."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved([*args[:1], [ctx.ch[x] for x in ctx.source]], ctx.prev_c2, ctx.repeats)


PLAIN = ("Conv", "ConvTranspose", "GhostConv", "Bottleneck", "GhostBottleneck", "SPP", "DWConv", "Focus",
         "RepNCSPELAN4", "ELAN1", "ADown", "AConv", "SPPELAN", "DWConvTranspose2d", "PSA", "SCDown")
CSP = ("BottleneckCSP", "C1", "C2", "C2f", "C3", "C3TR", "C3Ghost", "C3x", "RepC3", "C2fPSA", "C2PSA")
COMMON = {  # rules both releases share
    ConcatChannels(): ("Concat",),
    PrependInputChannels(): ("AIFI",),
    HGRule(): ("HGStem",),
    HGRule(repeats_at=4): ("HGBlock",),
    ResNetLayerRule(): ("ResNetLayer",),
    CBLinearRule(): ("CBLinear",),
    CBFuseRule(): ("CBFuse",),
    InputChannelList(insert_at=1): ("RTDETRDecoder",),
}


def _rules_8_3() -> dict:
    """Rule of every Ultralytics 8.3 module its parse_model treats specially (data, not code)."""
    return {
        **COMMON,
        ScaledOutput(): (*PLAIN, "SPPF", "Classify"),
        ScaledOutput(repeats_in_args=True): (*CSP, "C2fCIB"),
        C3k2Rule(): ("C3k2",),
        C2fAttnRule(repeats_in_args=True): ("C2fAttn",),
        InputChannelList(): ("Detect", "WorldDetect", "Pose", "OBB", "ImagePoolingAttn", "v10Detect"),
        InputChannelList(scale_arg=2): ("Segment",),
    }


def _rules_8_4() -> dict:
    """Rule of every Ultralytics 8.4 module its parse_model treats specially (data, not code)."""
    heads = dict(extra=("reg_max", "end2end"), sets_legacy=True)
    return {
        **COMMON,
        ScaledOutput(): PLAIN,
        SPPFRule(): ("SPPF",),
        ScaledOutput(scale_output=False): ("Classify",),
        ScaledOutput(repeats_in_args=True): CSP,
        ScaledOutput(repeats_in_args=True, marks_modern=True): ("C2fCIB",),
        C3k2Rule(fill_missing=True): ("C3k2",),
        A2C2fRule(): ("A2C2f",),
        C2fAttnRule84(repeats_in_args=True): ("C2fAttn",),
        InputChannelList(**heads): ("Detect", "YOLOEDetect", "Pose", "Pose26", "OBB", "OBB26"),
        InputChannelList(scale_arg=2, **heads): ("Segment", "Segment26", "YOLOESegment", "YOLOESegment26"),
        InputChannelList(extra=("reg_max", "end2end")): ("WorldDetect",),
        InputChannelList(): ("SemanticSegment", "v10Detect"),
        InputChannelList(insert_at=1): ("ImagePoolingAttn", "RTDETRDecoder"),
        DepthRule(): ("Depth",),
        FirstArgChannels(): ("TorchVision", "Index"),
    }


def _dialect(version: tuple[int, ...]) -> tuple[parser.Dialect, dict]:
    """How this release reads YAMLs, and its rule table."""
    if version[:2] >= (8, 4):
        return parser.Dialect(ultralytics.__version__, keep_nc_unscaled=False, header_keys=("reg_max", "end2end"),
                              name_prefixes={"nn.": "torch.nn", "torchvision.ops.": "torchvision.ops"},
                              set_activation=_set_default_activation), _rules_8_4()
    newer = {name: "8.4" for names in _rules_8_4().values() for name in names if not hasattr(ul, name)}
    return parser.Dialect(ultralytics.__version__, keep_nc_unscaled=True, newer_keys={"end2end": "8.4", "reg_max": "8.4"},
                          newer_modules=newer, name_prefixes={"nn.": "torch.nn"}, set_activation=_set_default_activation), _rules_8_3()


def register_builtin_modules(table: dict) -> None:
    """Register every module class the installed Ultralytics exports, with the rule its parse_model applies."""
    special = {getattr(ul, name): rule for rule, names in table.items() for name in names if hasattr(ul, name)}
    for name in ul.__all__:
        cls = getattr(ul, name)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            register_stock_module(cls, special.get(cls, SameChannels()), name)
    # written as nn.X in YAMLs; the parser finds these by class
    register_stock_module(nn.ConvTranspose2d, ScaledOutput(), "nn.ConvTranspose2d")
    register_stock_module(nn.BatchNorm2d, BatchNormRule(), "nn.BatchNorm2d")


def _set_default_activation(module: nn.Module) -> Callable[[], None]:
    """Every Conv built after this uses ``module`` (what the YAML key means); returns the undo."""
    previous = ul.Conv.default_act
    ul.Conv.default_act = module

    def put_back() -> None:
        ul.Conv.default_act = previous

    return put_back


# --- the replacements --------------------------------------------------------------------------------------
def _drop_anchors(d: dict) -> None:
    """YOLOv5 YAMLs pass ``anchors`` to Detect; Ultralytics 8.x heads are anchor-free, so the argument goes."""
    if "anchors" not in d:
        return
    dropped = False
    for row in d.get("head") or []:
        if isinstance(row, list) and len(row) == 4 and isinstance(row[3], list) and "anchors" in row[3]:
            row[3] = [a for a in row[3] if a != "anchors"]
            dropped = True
    if dropped:
        LOGGER.warning(bilingual("YAML 中的 anchors 不会被使用：Ultralytics 8.x 的检测头是 anchor-free 的",
                                 "the YAML's anchors are not used: Ultralytics 8.x detection heads are anchor-free"))


def _parse_model(d, ch, verbose=True):
    """Drop-in for ``tasks.parse_model``: stock YAMLs to the release's own parser, ours to the registry parser."""
    _drop_anchors(d)
    parser.read_rows(d)  # structure first: one clear line instead of a KeyError/TypeError deep inside
    parser.read_model_context(d, DIALECT)
    if d.get("activation"):
        parser.activation_from_yaml(d["activation"])  # 8.3 would eval() any string; only nn.X(literals) pass
    if parser.uses_addon_modules(d, DIALECT):
        return parser.parse_model(d, ch, verbose, DIALECT)
    previous_act = ul.Conv.default_act
    try:
        return STOCK["parse_model"](deepcopy(d), ch, verbose)
    except Exception as e:
        # The registry holds this release's rules too: it names the layer and the bad value where stock cannot.
        try:
            parser.parse_model(deepcopy(d), ch, False, DIALECT)
        except ModelYAMLError as clear:
            raise clear from e
        raise
    finally:
        ul.Conv.default_act = previous_act  # 8.3 leaves the YAML's activation to every later model; 8.4 restores


def _detection_model_init(self, *args, **kwargs):
    """``DetectionModel.__init__`` whose failures name the YAML line or layer at fault (one line)."""
    try:
        STOCK["detection_init"](self, *args, **kwargs)
    except ModelYAMLError:
        raise
    except Exception as e:
        clear = _explain_build_failure(self)
        if clear is not None:
            raise clear from e
        raise
    _load_requested_weights(self, args[0] if args else kwargs.get("cfg"))


def _classification_model_init(self, *args, **kwargs):
    """``ClassificationModel.__init__`` that loads the weights its YAML lines name, like detection models."""
    STOCK["classification_init"](self, *args, **kwargs)
    _load_requested_weights(self, args[0] if args else kwargs.get("cfg"))


def _explain_build_failure(model) -> ModelYAMLError | None:
    """Why a model failed to build, as one line: a malformed YAML (stock reads it before parsing), or the first
    layer whose inputs do not fit in the stride forward. None when neither explains it."""
    d = getattr(model, "yaml", None)
    if isinstance(d, dict):
        try:
            parser.read_rows(d)
            parser.read_model_context(d, DIALECT)
        except ModelYAMLError as clear:
            return clear
    layers = model._modules.get("model")
    if isinstance(layers, nn.Sequential) and len(layers) and hasattr(layers[0], "f"):
        return parser.diagnose_forward(layers, d.get("ch", 3) if isinstance(d, dict) else 3)
    return None


def _check_yaml(file, suffix=(".yaml", ".yml"), hard=True):
    """Stock lookup first (local files, Ultralytics' cfg tree); then the YAMLs shipped with this package."""
    found = STOCK["check_yaml"](file, suffix, hard=False)
    if found:
        return found
    packaged = find_model_yaml(file)
    if packaged is not None:
        return str(packaged)
    return STOCK["check_yaml"](file, suffix, hard=hard)


def _yaml_model_load(path):
    """``yaml_model_load`` whose "does not exist" names the closest shipped and official model YAMLs."""
    try:
        return STOCK["yaml_model_load"](path)
    except FileNotFoundError as e:
        close = suggest_model_names(path)
        if not close:
            raise
        raise FileNotFoundError(bilingual(f"找不到模型 YAML {str(path)!r}；你是不是想写：{', '.join(close)}",
                                          f"model YAML {str(path)!r} does not exist; did you mean: {', '.join(close)}")
                                ) from e


def _fuse(self, *args, **kwargs):
    """``BaseModel.fuse`` that first folds the BatchNorms inside our modules, then runs the stock fuse."""
    fuse_modules(self.model)
    return STOCK["fuse"](self, *args, **kwargs)


def _onnx_export_needs_legacy_default() -> bool:
    param = inspect.signature(torch.onnx.export).parameters.get("dynamo")
    return param is not None and param.default is True


# === deployment exports (wt-deploy, issues 20/24): wiring only, the logic lives in export.py ===============
def _export(self, **kwargs):
    """``Model.export`` that checks the request first (one clear line before any file is written) and fills
    in our defaults (``export.prepare_export``), then runs the stock export with these swaps in place:

    - torch's TorchScript-based ONNX exporter as the default (8.3.0 was written for it; newer torch
      defaults to the dynamo exporter, which needs onnxscript and builds other graphs);
    - NCNN: 8.3.0 looks for pnnx in the cwd or in ``exporter.ROOT``; ROOT points at the pip package's binary;
    - TensorFlow formats: onnx2tf's sample images provided (not downloaded), no pip install of tflite_support
      (``Exporter._add_tflite_metadata`` falls back to our writer), torchvision's ops loaded before TensorFlow.
    """
    from ultralytics.engine import exporter

    kwargs = export.prepare_export(self, kwargs)
    fmt = str(kwargs.get("format", "torchscript")).lower()
    swaps = []
    if _onnx_export_needs_legacy_default():
        swaps.append((torch.onnx, "export", functools.partial(torch.onnx.export, dynamo=False)))
    if fmt == "ncnn" and hasattr(exporter, "ROOT"):
        swaps.append((exporter, "ROOT", export.pnnx_dir()))
    if fmt in export.TENSORFLOW_FORMATS:
        export.import_torchvision_ops()
        stock_writer = exporter.Exporter._add_tflite_metadata
        swaps.append((exporter.Exporter, "_add_tflite_metadata", functools.partialmethod(_add_tflite_metadata,
                                                                                          stock_writer)))
        if hasattr(exporter, "check_requirements"):
            swaps.append((exporter, "check_requirements",
                          export.without_requirement(exporter.check_requirements, "tflite_support")))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    try:
        for owner, name, value in swaps:
            setattr(owner, name, value)
        if fmt not in export.TENSORFLOW_FORMATS:
            return STOCK["export"](self, **kwargs)
        with export.onnx2tf_sample_data():
            return STOCK["export"](self, **kwargs)
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _add_tflite_metadata(self, stock_writer, file):
    """Stock TFLite metadata needs tflite_support (not installable next to current TensorFlow); without it,
    write the same dict in the form AutoBackend reads."""
    try:
        return stock_writer(self, file)
    except ImportError:
        export.write_tflite_metadata(file, self.metadata)


def _autobackend_init(self, *args, **kwargs):
    """Loading a .tflite model imports TensorFlow; load torchvision's ops first (the other order crashes)."""
    # The first parameter is ``weights`` on 8.3 and ``model`` on 8.4: pass everything on as given.
    source = args[0] if args else kwargs.get("weights", kwargs.get("model"))
    if str(source).endswith(".tflite"):
        export.import_torchvision_ops()
    return STOCK["autobackend_init"](self, *args, **kwargs)
# === end of deployment exports ===========================================================================


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


def _check_pip_update_available():
    """Ultralytics' upgrade hint, then one line on what upgrading means for the add-on."""
    available = STOCK["check_pip_update_available"]()
    if available:
        LOGGER.info(bilingual(
            f"ultralytics-addmodules 支持 Ultralytics {compat.supported_text()}；升级到其他版本会关闭扩展模块（原版功能不受影响）",
            f"ultralytics-addmodules supports Ultralytics {compat.supported_text()}; upgrading to any other release "
            "turns the add-on's modules off (stock features keep working)",
        ))
    return available


# --- checkpoints (issue 17): safe loading, atomic saves, clean resume ----------------------------------------
# Every checkpoint Ultralytics loads goes through tasks.torch_safe_load (YOLO(x.pt), resume, predictor and
# validator AutoBackend, attempt_load_weights/attempt_load_one_weight, 8.4's load_checkpoint and NaN recovery);
# ours loads only what genuine checkpoints contain. Saves are written to temporary files and renamed into place;
# a resume first drops results.csv rows of epochs the checkpoint does not hold. The logic lives in checkpoints.py.
MissingModuleError = checkpoints.MissingModuleError


def _check_requirements(requirements=(), *args, **kwargs):
    """Stop Ultralytics from pip-installing modules a checkpoint of ours needs (only reachable when a file is
    trusted and loaded by stock); say what to install."""
    top = requirements.split(".")[0] if isinstance(requirements, str) else None
    if top in ("timm", "ultralytics_addmodules"):
        from . import __version__

        raise MissingModuleError(
            f"the checkpoint needs module {requirements!r}, which is not installed (ultralytics-addmodules "
            f"{__version__}); install it with: {checkpoints.INSTALL_HINTS[top]}", name=requirements)
    return STOCK["check_requirements"](requirements, *args, **kwargs)


def _torch_safe_load(weight, *args, **kwargs):
    ckpt, file = checkpoints.load_ultralytics_checkpoint(weight, STOCK["torch_safe_load"], *args, **kwargs)
    for model in (ckpt.get("ema"), ckpt.get("model")) if isinstance(ckpt, dict) else ():
        if isinstance(model, nn.Module) and isinstance(getattr(model, "yaml", None), dict):
            # A rebuild from this YAML (fine-tuning, resuming) must build the blocks that were saved.
            model_yamls.pin_c3_uib_expansion(model)
            _checkpoint_models.add(model)
    return ckpt, file


# A weights source written in a YAML line loads once the whole model is built (issue 15). A model built from
# the YAML of a checkpoint just read (to receive that checkpoint's weights: fine-tuning best.pt, resuming)
# skips it: the sources would be overwritten anyway and may no longer exist where the model is used now.
_checkpoint_models: weakref.WeakSet = weakref.WeakSet()  # models read from checkpoints that are still alive


def _load_requested_weights(model, cfg) -> None:
    if not any(m.yaml is cfg for m in _checkpoint_models):
        weights.apply_requested_weights(model, model.yaml.get("yaml_file"))


def _save_model(self):
    return checkpoints.save_atomically(self, STOCK["save_model"])


def _strip_optimizer(f="best.pt", s="", updates=None, **kwargs):
    return checkpoints.strip_atomically(STOCK["strip_optimizer"], f, s, updates, **kwargs)


def _resume_training(self, ckpt):
    STOCK["resume_training"](self, ckpt)
    if ckpt is not None and self.resume:
        epoch = ckpt.get("epoch", -1) + 1
        dropped = checkpoints.drop_rows_after(self.csv, epoch)
        if dropped:
            LOGGER.info(bilingual(f"results.csv：删除了 checkpoint（第 {epoch} 轮）之后的 {dropped} 行，这些轮次会重新训练",
                                  f"results.csv: dropped {dropped} row(s) after the checkpoint's epoch {epoch}; "
                                  "those epochs train again"))


def _check_resume(self, *args, **kwargs):
    """Stock wraps every failure in "Resume checkpoint not found"; a refused or damaged file keeps its own line."""
    try:
        return STOCK["check_resume"](self, *args, **kwargs)
    except FileNotFoundError as e:
        if isinstance(e.__cause__, checkpoints.CHECKPOINT_ERRORS):
            raise e.__cause__ from None
        raise


def _apply_checkpoints(p: PatchSet) -> None:
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.utils import torch_utils

    STOCK.update(torch_safe_load=tasks.torch_safe_load, check_requirements=tasks.check_requirements,
                 save_model=BaseTrainer.save_model, strip_optimizer=torch_utils.strip_optimizer,
                 resume_training=BaseTrainer.resume_training, check_resume=BaseTrainer.check_resume)
    p.replace(tasks, "check_requirements", _check_requirements)  # only tasks' own calls (checkpoint loading)
    p.rebind_everywhere(STOCK["torch_safe_load"], _torch_safe_load, "torch_safe_load")  # ultralytics.nn has it too
    p.replace(tasks, "torch_safe_load", _torch_safe_load)
    p.replace(BaseTrainer, "save_model", _save_model)
    p.rebind_everywhere(STOCK["strip_optimizer"], _strip_optimizer, "strip_optimizer")  # trainer, classify trainer
    p.replace(torch_utils, "strip_optimizer", _strip_optimizer)
    p.replace(BaseTrainer, "resume_training", _resume_training)
    p.replace(BaseTrainer, "check_resume", _check_resume)


# --- the dataset check in YOLO.train, Chinese labels in plots (issue 18) -----------------------------------
# YOLO(...).train(data=...) runs the cheap part of our dataset check (no image decoding) before Ultralytics
# reads the data; check_font and the PIL annotator use a local CJK font for non-ASCII labels (the [cjk]
# extra) instead of downloading Arial.Unicode.ttf. The logic lives in dataset_check.py and fonts.py.
def _get_dataset(self):
    dataset_check.quick_check(self.args.data, self.args.task)
    return STOCK["get_dataset"](self)


def _check_font(font="Arial.ttf"):
    return fonts.check_font(font, STOCK["check_font"])


def _annotator_init(self, *args, **kwargs):
    STOCK["annotator_init"](self, *args, **kwargs)
    if getattr(self, "pil", False):
        self.font = fonts.chinese_face(self.font)


# --- applying and undoing ----------------------------------------------------------------------------------
class PatchSet:
    """Replacements made so far, so that activation can be undone completely."""

    def __init__(self):
        self.applied: list[tuple[Any, str, Any]] = []

    def replace(self, owner: Any, attribute: str, new: Any) -> None:
        self.applied.append((owner, attribute, owner.__dict__.get(attribute, _ABSENT)))
        setattr(owner, attribute, new)

    def rebind_everywhere(self, original: Any, new: Any, attribute: str) -> None:
        """Replace ``attribute`` in every already-imported Ultralytics module that bound ``original``."""
        for name, module in list(sys.modules.items()):
            if (name == "ultralytics" or name.startswith("ultralytics.")) and getattr(module, attribute, None) is original:
                self.replace(module, attribute, new)

    def undo(self) -> None:
        for owner, attribute, old in reversed(self.applied):
            if old is _ABSENT:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, old)
        self.applied.clear()


_ABSENT = object()
_PATCHES = PatchSet()


class UnsupportedModule(nn.Module):
    """Stands in for our YAML names on an unsupported Ultralytics release: building it says which releases work."""

    def __init__(self, *args, **kwargs):
        raise ModelYAMLError(compat.unsupported_message(ultralytics.__version__))


def _guard(addon_names: list[str]) -> None:
    """Unsupported release: nothing Ultralytics does changes; our YAMLs resolve and fail with one clear line."""
    STOCK.setdefault("check_yaml", checks.check_yaml)
    _PATCHES.rebind_everywhere(STOCK["check_yaml"], _check_yaml, "check_yaml")
    _PATCHES.replace(checks, "check_yaml", _check_yaml)
    for name in addon_names:
        if name not in tasks.__dict__:
            _PATCHES.replace(tasks, name, UnsupportedModule)


def _apply(table: dict) -> None:
    from ultralytics.data import utils as data_utils
    from ultralytics.engine.model import Model
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.nn.autobackend import AutoBackend
    from ultralytics.utils import plotting

    register_builtin_modules(table)
    STOCK.update(
        parse_model=tasks.parse_model,
        detection_init=tasks.DetectionModel.__init__,
        classification_init=tasks.ClassificationModel.__init__,
        check_yaml=checks.check_yaml,
        yaml_model_load=tasks.yaml_model_load,
        fuse=tasks.BaseModel.fuse,
        export=Model.export,
        autobackend_init=AutoBackend.__init__,
        initialize_weights=tasks.initialize_weights,
        check_det_dataset=data_utils.check_det_dataset,
        check_pip_update_available=checks.check_pip_update_available,
    )
    p = _PATCHES
    p.replace(tasks, "parse_model", _parse_model)
    p.replace(tasks.DetectionModel, "__init__", _detection_model_init)
    p.replace(tasks.ClassificationModel, "__init__", _classification_model_init)
    p.rebind_everywhere(STOCK["check_yaml"], _check_yaml, "check_yaml")
    p.replace(checks, "check_yaml", _check_yaml)
    p.rebind_everywhere(STOCK["yaml_model_load"], _yaml_model_load, "yaml_model_load")
    p.replace(tasks.BaseModel, "fuse", _fuse)
    p.replace(tasks, "initialize_weights", _initialize_weights)
    p.rebind_everywhere(STOCK["check_det_dataset"], _check_det_dataset, "check_det_dataset")
    p.replace(data_utils, "check_det_dataset", _check_det_dataset)
    p.replace(checks, "check_pip_update_available", _check_pip_update_available)
    p.replace(Model, "export", _export)  # deployment exports: see the marked section above
    p.replace(AutoBackend, "__init__", _autobackend_init)
    STOCK.update(get_dataset=BaseTrainer.get_dataset, check_font=checks.check_font,
                 annotator_init=plotting.Annotator.__init__)
    p.replace(BaseTrainer, "get_dataset", _get_dataset)
    p.rebind_everywhere(STOCK["check_font"], _check_font, "check_font")
    p.replace(checks, "check_font", _check_font)
    p.replace(plotting.Annotator, "__init__", _annotator_init)
    _apply_checkpoints(p)


def activate(import_plugins: Callable[[], None]) -> bool:
    """Patch Ultralytics if its release is supported; all-or-nothing. Returns whether the add-on is active.

    ``import_plugins`` imports the user's registering modules; it runs after the patches, and if it (or any
    patch) fails, everything is undone and one line says so. Never raises for a plugin's failure, SystemExit
    included: the process goes on with stock Ultralytics.
    """
    global DIALECT
    if _PATCHES.applied:  # already active, or already guarding an unsupported release
        return is_patched()
    version = compat.version_tuple(ultralytics.__version__)
    ours = registered_names()  # before stock registration: every name now is ours or a plugin's
    if not compat.is_supported(ultralytics.__version__):
        LOGGER.warning(compat.unsupported_message(ultralytics.__version__))
        _guard(ours)
        return False
    saved = snapshot()
    try:
        DIALECT, table = _dialect(version)
        _apply(table)
        import_plugins()
    except BaseException as e:  # noqa: B902 - a plugin calling sys.exit() must not end the user's process
        if isinstance(e, KeyboardInterrupt):
            _PATCHES.undo()
            restore(saved)
            raise
        _PATCHES.undo()
        restore(saved)
        DIALECT = parser.Dialect()
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        LOGGER.warning(bilingual(
            f"ultralytics-addmodules 未激活（{type(e).__name__}: {detail}），已撤销全部修改：Ultralytics 以原版运行",
            f"ultralytics-addmodules is not active ({type(e).__name__}: {detail}); every change was undone: "
            "Ultralytics runs stock",
        ))
        return False
    return True


def is_patched() -> bool:
    """Whether our parse_model is in place right now."""
    return tasks.parse_model is _parse_model


def stock_parse_model():
    """Ultralytics' own parse_model (for comparisons in tests and benchmarks)."""
    return STOCK.get("parse_model", tasks.parse_model)


def _finish_pending_activation() -> None:
    """If importing this module imported Ultralytics, the start-up hook asked for activation while this module was
    still loading (it could not run then); complete it now that the module is whole."""
    import ultralytics_addmodules as package

    if package._state.get("pending"):
        package._state["pending"] = False
        package.activate()


_finish_pending_activation()
