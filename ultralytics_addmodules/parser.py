"""Registry-driven ``parse_model`` for model YAMLs that use add-on modules, and the checks that turn a bad
model YAML into one clear line.

The parser is a loop: for each YAML line it looks the module name up in the registry and lets the module's
channel rule derive constructor arguments and output channels. It knows nothing about any particular module;
a multi-output backbone's rule says how many feature maps it returns, and the parser gives each one a
selector layer. Where Ultralytics releases read a YAML differently, ``patch.py`` passes a ``Dialect``.

Every error raised here is a ``ModelYAMLError`` (a ``ValueError``) whose text is one line, Chinese then
English, naming the layer, the bad value and what would be valid.
"""

from __future__ import annotations

import ast
import importlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .messages import ModelYAMLError, bilingual
from .registry import (
    DEFAULT_RULE,
    ChannelRule,
    LayerContext,
    ModelContext,
    Registration,
    Resolved,
    close_names,
    lookup,
    registered_names,
    rule_of,
)

LOGGER = logging.getLogger("ultralytics")  # Ultralytics' own logger name, so our table prints with theirs

ROW_FORM = "[from, repeats, module, args]"
MAX_MULTIPLIER = 16.0  # width/depth beyond this is a typo, not a model (width 16 is already a 256x cost)
MAX_REPEATS = 1000


@dataclass
class Dialect:
    """How the installed Ultralytics reads a model YAML where releases differ (filled in by ``patch.py``)."""

    version: str = ""
    keep_nc_unscaled: bool = False  # 8.3: a first argument equal to nc is never width-scaled
    header_keys: tuple[str, ...] = ()  # extra header keys the release reads into ModelContext (8.4: reg_max, end2end)
    newer_keys: dict = field(default_factory=dict)  # header keys only later releases read -> first such release
    newer_modules: dict = field(default_factory=dict)  # module names only later releases have -> first such release
    # YAML name prefix -> the module it names ("nn." -> "torch.nn"), imported when a YAML uses it: stock 8.4
    # defers torchvision the same way
    name_prefixes: dict = field(default_factory=dict)
    # set Conv.default_act from an nn.Module; returns a function that puts the previous one back
    set_activation: Callable[[nn.Module], Callable[[], None]] | None = None


@dataclass
class Row:
    """One validated YAML line."""

    line: str  # where it is written, e.g. "head[3]", for messages
    source: int | list[int]
    repeats: int
    name: str
    args: list


def layer_error(where: tuple[str, str], zh: str, en: str) -> ModelYAMLError:
    """A ModelYAMLError for the layer ``where`` names (from ``_where``)."""
    return ModelYAMLError(bilingual(f"{where[0]}：{zh}", f"{where[1]}: {en}"))


def _where(index: int | None, name: str | None = None, line: str | None = None) -> tuple[str, str]:
    """How messages name a layer (its index in the built model) and/or its YAML line, Chinese and English."""
    detail = ", ".join(x for x in (line, name) if x)
    suffix = f" ({detail})" if detail else ""
    if index is None:
        return f"模型 YAML 的 {line}{f' ({name})' if name else ''}", f"model YAML {line}{f' ({name})' if name else ''}"
    return f"模型 YAML 第 {index} 层{suffix}", f"model YAML layer {index}{suffix}"


# --------------------------------------------------------------------------------------------------------
# Header and structure
# --------------------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_multiplier(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_MULTIPLIER:
        raise ModelYAMLError(bilingual(
            f"模型 YAML 的 {key} 必须是 0 到 {MAX_MULTIPLIER:g} 之间的正数，实际是 {value!r}",
            f"model YAML {key} must be a positive number up to {MAX_MULTIPLIER:g}, got {value!r}",
        ))
    return float(value)


def read_model_context(d: dict, dialect: Dialect) -> ModelContext:
    """The header of a model YAML (nc, scales, multipliers) as a ModelContext; ModelYAMLError if malformed."""
    nc = d.get("nc")
    if nc is not None and (not _is_int(nc) or nc < 1):
        raise ModelYAMLError(bilingual(f"模型 YAML 的 nc（类别数）必须是正整数，实际是 {nc!r}",
                                       f"model YAML nc (number of classes) must be a positive integer, got {nc!r}"))
    depth = _check_multiplier(d.get("depth_multiple", 1.0), "depth_multiple")
    width = _check_multiplier(d.get("width_multiple", 1.0), "width_multiple")
    max_channels = float("inf")
    scales, scale = d.get("scales"), d.get("scale") or None
    if scales:
        if not isinstance(scales, dict):
            raise ModelYAMLError(bilingual("模型 YAML 的 scales 必须是 {名称: [depth, width, max_channels]} 字典",
                                           "model YAML scales must be a mapping {name: [depth, width, max_channels]}"))
        if not scale:
            scale = next(iter(scales))
            LOGGER.warning(f"WARNING ⚠️ no model scale passed. Assuming scale='{scale}'.")
        if scale not in scales:
            raise ModelYAMLError(bilingual(f"模型规模 {scale!r} 不在该 YAML 的 scales 中；可用：{', '.join(scales)}",
                                           f"model scale {scale!r} is not in this YAML's scales; valid: {', '.join(scales)}"))
        entry = scales[scale]
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise ModelYAMLError(bilingual(f"scales.{scale} 必须是 [depth, width, max_channels]，实际是 {entry!r}",
                                           f"scales.{scale} must be [depth, width, max_channels], got {entry!r}"))
        depth = _check_multiplier(entry[0], f"scales.{scale} depth")
        width = _check_multiplier(entry[1], f"scales.{scale} width")
        if not _is_int(entry[2]) or entry[2] < 1:
            raise ModelYAMLError(bilingual(f"scales.{scale} 的 max_channels 必须是正整数，实际是 {entry[2]!r}",
                                           f"scales.{scale} max_channels must be a positive integer, got {entry[2]!r}"))
        max_channels = entry[2]
    for key, release in dialect.newer_keys.items():
        if key in d:
            raise ModelYAMLError(bilingual(
                f"该模型 YAML 使用了 {key}:，需要 Ultralytics {release} 或更新版本（已安装 {dialect.version}）；"
                f"请安装：pip install -U \"ultralytics>={release}\"",
                f"this model YAML uses {key}:, which needs Ultralytics {release} or newer (installed: {dialect.version}); "
                f"install it: pip install -U \"ultralytics>={release}\"",
            ))
    ctx = ModelContext(nc, width, depth, max_channels, scale, d.get("kpt_shape", 1.0),
                       keep_nc_unscaled=dialect.keep_nc_unscaled)
    for key in dialect.header_keys:
        if key in d:
            setattr(ctx, key, d[key])
    return ctx


def read_rows(d: Any) -> list[Row]:
    """The backbone and head lines of a model YAML dict, checked for shape; ModelYAMLError if malformed."""
    if not isinstance(d, dict) or not d:
        raise ModelYAMLError(bilingual("模型 YAML 为空或不是字典；需要 backbone: 和 head: 两个列表",
                                       "the model YAML is empty or not a mapping; it needs backbone: and head: lists"))
    for section in ("backbone", "head"):
        if not isinstance(d.get(section), list):
            found = "缺少" if section not in d else f"是 {type(d[section]).__name__}"
            found_en = "is missing" if section not in d else f"is a {type(d[section]).__name__}"
            raise ModelYAMLError(bilingual(f"模型 YAML 的 {section}: {found}，需要一个 {ROW_FORM} 行的列表",
                                           f"model YAML {section}: {found_en}; it must be a list of {ROW_FORM} lines"))
    rows = []
    lines = [f"{section}[{k}]" for section in ("backbone", "head") for k in range(len(d[section]))]
    for line, row in zip(lines, d["backbone"] + d["head"]):
        where = _where(None, line=line)
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise layer_error(where, f"每行必须是 {ROW_FORM} 四项，实际是 {row!r}",
                              f"each line must be the 4 fields {ROW_FORM}, got {row!r}")
        f, n, name, args = row
        if not (_is_int(f) or (isinstance(f, list) and f and all(_is_int(x) for x in f))):
            raise layer_error(where, f"from 必须是整数或整数列表，实际是 {f!r}",
                              f"'from' must be an integer or a list of integers, got {f!r}")
        if not _is_int(n) or not 1 <= n <= MAX_REPEATS:
            raise layer_error(where, f"repeats 必须是 1 到 {MAX_REPEATS} 的整数，实际是 {n!r}",
                              f"repeats must be an integer from 1 to {MAX_REPEATS}, got {n!r}")
        if not isinstance(name, str) or not name:
            raise layer_error(where, f"module 必须是模块名称字符串，实际是 {name!r}",
                              f"module must be a module name string, got {name!r}")
        if not isinstance(args, list):
            raise layer_error(_where(None, name, line), f"args 必须是列表，实际是 {args!r}", f"args must be a list, got {args!r}")
        rows.append(Row(line, f, n, name, list(args)))
    return rows


def resolve_module(name: str, index: int | None, dialect: Dialect, line: str | None = None
                   ) -> tuple[Any, ChannelRule, Registration | None]:
    """(class, rule, registration) for a YAML module name; ``nn.X``-style names come from their library."""
    for prefix, library in dialect.name_prefixes.items():
        if name.startswith(prefix):
            library = importlib.import_module(library)
            cls = getattr(library, name[len(prefix):], None)
            if not isinstance(cls, type):
                raise layer_error(_where(index, name, line), f"{library.__name__} 中没有模块 {name[len(prefix):]!r}",
                                  f"{library.__name__} has no module {name[len(prefix):]!r}")
            return cls, rule_of(cls) or DEFAULT_RULE, None
    reg = lookup(name)
    if reg is None and name in dialect.newer_modules:
        release = dialect.newer_modules[name]
        raise layer_error(
            _where(index, name, line),
            f"模块 {name} 需要 Ultralytics {release} 或更新版本（已安装 {dialect.version}）；请安装：pip install -U \"ultralytics>={release}\"",
            f"module {name} needs Ultralytics {release} or newer (installed: {dialect.version}); install it: "
            f"pip install -U \"ultralytics>={release}\"",
        )
    if reg is None:
        close = close_names(name)
        zh_hint = f"；你是不是想写：{', '.join(close)}" if close else ""
        en_hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise layer_error(
            _where(index, name, line), f"未知模块 {name!r}{zh_hint}（已注册 {len(registered_names())} 个；"
            "自定义模块用 ultralytics_addmodules.register_module() 注册）",
            f"unknown module {name!r}{en_hint} ({len(registered_names())} registered; register your own with "
            "ultralytics_addmodules.register_module())",
        )
    return reg.cls, reg.rule, reg


def uses_addon_modules(d: dict, dialect: Dialect) -> bool:
    """Whether any line of a (structurally valid) model YAML names a module that is not Ultralytics' own."""
    for row in read_rows(d):
        if any(row.name.startswith(p) for p in dialect.name_prefixes):
            continue
        reg = lookup(row.name)
        if reg is None or not reg.stock:
            return True
    return False


# --------------------------------------------------------------------------------------------------------
# The activation key
# --------------------------------------------------------------------------------------------------------
def activation_from_yaml(expr: Any) -> nn.Module:
    """Build ``nn.SiLU()``-style expressions without eval: only torch.nn classes with literal arguments."""
    error = ModelYAMLError(bilingual(
        f"不支持 activation: {expr!r}；请写一个 torch.nn 模块调用，如 'nn.ReLU()' 或 'nn.LeakyReLU(0.1)'",
        f"activation {expr!r} is not supported; write a torch.nn module call such as 'nn.ReLU()' or 'nn.LeakyReLU(0.1)'",
    ))
    if not isinstance(expr, str):
        raise error
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
        return cls(*args, **kwargs)
    except (ValueError, TypeError):
        raise error from None


# --------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------
def _resolve_arg(value: Any, variables: dict) -> Any:
    """Turn YAML string arguments into values: known variable names first, then Python literals."""
    if not isinstance(value, str):
        return value
    if value in variables:
        return variables[value]
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):  # plain strings stay strings: 'nearest', 'efficientnet-b0', paths
        return value


def type_name(cls: Any) -> str:
    """The module type string Ultralytics shows in its model table (``ultralytics.nn.modules.conv.Conv``)."""
    return f"{cls.__module__}.{cls.__qualname__}".replace("__main__.", "")


def _check_sources(row: Row, index: int, backbone_outputs: dict[int, tuple[str, int]]) -> list[int]:
    """Absolute indices of a line's inputs; ModelYAMLError for an index that does not exist yet."""
    where = _where(index, row.name, row.line)
    sources = [row.source] if isinstance(row.source, int) else list(row.source)
    absolute = []
    for s in sources:
        if index == 0:
            if s != -1:
                raise layer_error(where, f"第一层只能接收输入图像（from: -1），实际 from 是 {row.source}",
                                  f"the first layer can only take the input image (from: -1), got from {row.source}")
            continue
        a = s if s >= 0 else index + s
        if not 0 <= a < index:
            raise layer_error(where, f"from 中的 {s} 指向第 {a} 层，该层不存在或尚未构建；有效范围：0..{index - 1} 或 -1..-{index}",
                              f"'from' value {s} points at layer {a}, which does not exist yet; valid: 0..{index - 1} "
                              f"or -1..-{index}")
        if a in backbone_outputs:
            name, count = backbone_outputs[a]
            raise layer_error(where, f"from 指向第 {a} 层，即主干网络 {name} 本身（它输出 {count} 个特征图的列表）；"
                                     f"请改用第 {a + 1}-{a + count} 层（P2..P{count + 1}）",
                              f"'from' points at layer {a}, the {name} backbone itself, which outputs a list of {count} "
                              f"feature maps; use layers {a + 1}-{a + count} (P2..P{count + 1}) instead")
        absolute.append(a)
    return absolute


def _describe_args(args: list) -> str:
    text = repr(args)
    return text if len(text) <= 120 else text[:117] + "..."


def _construct(cls: Any, rule: ChannelRule, row: Row, yaml_args: list, resolved: Resolved, index: int,
               inputs: str) -> nn.Module:
    """Build one layer; any failure becomes one line naming the layer, the YAML arguments and the YAML form."""
    for attr, value in resolved.class_attrs.items():
        setattr(cls, attr, value)
    try:
        if resolved.repeats > 1:
            return nn.Sequential(*(cls(*resolved.args) for _ in range(resolved.repeats)))
        return cls(*resolved.args)
    except (ModelYAMLError, ImportError):  # a missing optional package already says which pip command to run
        raise
    except Exception as e:  # TypeError (argument count), AssertionError (C2PSA's c1 == c2), torch errors, ...
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        signature = rule.yaml_signature(cls)
        raise layer_error(
            _where(index, row.name, row.line),
            f"参数 {_describe_args(yaml_args)} 无法构建该模块（{type(e).__name__}: {detail}）；输入：{inputs}；"
            f"YAML 写法：[from, repeats, {row.name}, {signature}]",
            f"arguments {_describe_args(yaml_args)} cannot build it ({type(e).__name__}: {detail}); inputs: {inputs}; "
            f"YAML form: [from, repeats, {row.name}, {signature}]",
        ) from e


def _describe_inputs(sources: list[int], chs: list, names: dict[int, str], ch_in: Any) -> str:
    if not sources:
        return f"image ({ch_in} ch)"
    return ", ".join(f"layer {s}{' ' + names[s] if s in names else ''} ({chs[s]} ch)" for s in sources)


def parse_model(d: dict, ch: int, verbose: bool = True, dialect: Dialect | None = None) -> tuple[nn.Sequential, list[int]]:
    """Build ``(nn.Sequential of layers, sorted save list)`` from a model YAML dict.

    Same contract as Ultralytics' ``parse_model``; ``dialect`` carries what differs between Ultralytics
    releases. Raises ``ModelYAMLError`` (one line) for any problem in the YAML.
    """
    dialect = dialect or Dialect()
    model = read_model_context(d, dialect)
    rows = read_rows(d)
    act = d.get("activation")
    restore = None
    if act:
        module = activation_from_yaml(act)
        if dialect.set_activation is None:
            raise ModelYAMLError(bilingual(f"YAML 设置了 activation {act!r}，但没有提供处理方式",
                                           f"YAML sets activation {act!r} but no activation handler was given"))
        restore = dialect.set_activation(module)
        if verbose:
            LOGGER.info(f"activation: {act}")
    try:
        return _build(rows, model, ch, verbose, dialect)
    finally:
        if restore is not None:
            restore()


def _build(rows: list[Row], model: ModelContext, ch: int, verbose: bool, dialect: Dialect):
    if verbose:
        LOGGER.info(f"\n{'':>3}{'from':>20}{'n':>3}{'params':>10}  {'module':<45}{'arguments':<30}")
    variables = {"nc": model.nc, "kpt_shape": model.kpt_shape, "width": model.width, "depth": model.depth,
                 "max_channels": model.max_channels, "scale": model.scale}
    chs: list = [ch]
    layers: list[nn.Module] = []
    save: list[int] = []
    backbone_outputs: dict[int, tuple[str, int]] = {}  # layer of a multi-output backbone -> (name, outputs)
    level_names: dict[int, str] = {}  # selector layer -> "P3" etc., for messages
    ours: list[str] = []
    c2: Any = ch

    for row in rows:
        i = len(layers)
        cls, rule, reg = resolve_module(row.name, i, dialect, row.line)
        where = _where(i, row.name, row.line)
        sources = _check_sources(row, i, backbone_outputs)
        if rule.multi_output and i != 0:
            raise layer_error(where, "多输出主干网络必须写在 backbone 的第一行（它占用第 0 层及其后的特征层），且每个模型只能有一个",
                              "a multi-output backbone must be the first line of backbone: (it occupies layer 0 and the "
                              "feature layers after it), and a model can have only one")
        if reg is not None and not reg.stock:
            ours.append(row.name)
        yaml_args = [_resolve_arg(a, variables) for a in row.args]
        n = n_ = max(round(row.repeats * model.depth), 1) if row.repeats > 1 else row.repeats  # as Ultralytics rounds
        ctx = LayerContext(i, row.source, n, chs, c2, model)
        try:
            resolved = rule.resolve(yaml_args, ctx)
        except ModelYAMLError:
            raise
        except (IndexError, TypeError, KeyError, ValueError) as e:
            signature = rule.yaml_signature(cls)
            raise layer_error(where, f"参数 {_describe_args(yaml_args)} 不符合该模块的写法（{e}）；YAML 写法："
                                     f"[from, repeats, {row.name}, {signature}]",
                              f"arguments {_describe_args(yaml_args)} do not fit it ({e}); YAML form: "
                              f"[from, repeats, {row.name}, {signature}]") from e
        if rule.marks_modern or (reg is not None and not reg.stock):
            model.legacy = False  # 8.4: a model with our modules gets the same head as on 8.3 (see DESIGN.md)
        inputs = _describe_inputs(sources, chs, level_names, ch)
        module = _construct(cls, rule, row, yaml_args, resolved, i, inputs)
        rule.finalize(module, resolved, ctx)
        _add_layer(layers, save, module, i, row.source, n_, type_name(cls), resolved.args, verbose)
        if i == 0:
            chs = []  # from here on chs[k] is layer k's output channels
        if rule.multi_output:
            outputs = rule.outputs(module)
            backbone_outputs[i] = (row.name, len(outputs))
            chs.append(outputs)
            for level, c in enumerate(outputs):
                selector = rule.selector(level)
                level_names[len(layers)] = f"P{level + 2}"
                _add_layer(layers, save, selector, len(layers), i, 1, type_name(type(selector)), [level], verbose)
                chs.append(c)
            c2 = outputs[-1]
        else:
            c2 = resolved.c2
            chs.append(c2)
    if verbose and ours:
        LOGGER.info(f"ultralytics-addmodules: this model uses {', '.join(dict.fromkeys(ours))}")
    return nn.Sequential(*layers), sorted(save)


def _add_layer(layers, save, module, i, f, n, type_name_, args, verbose) -> None:
    """Attach the bookkeeping attributes Ultralytics' forward pass reads, log the table row, append."""
    module.np = sum(p.numel() for p in module.parameters())
    module.i, module.f, module.type = i, f, type_name_
    if verbose:
        LOGGER.info(f"{i:>3}{str(f):>20}{n:>3}{module.np:10.0f}  {type_name_:<45}{str(args):<30}")
    save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
    layers.append(module)


# --------------------------------------------------------------------------------------------------------
# Diagnosing a model whose first forward fails (Ultralytics computes strides with one)
# --------------------------------------------------------------------------------------------------------
def _shape_text(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.shape[1]} ch, {x.shape[-2]}x{x.shape[-1]}" if x.ndim == 4 else f"shape {tuple(x.shape)}"
    if isinstance(x, (list, tuple)):
        return f"list of {len(x)}"
    return type(x).__name__


def _level_name(layer: nn.Module) -> str:
    index = getattr(layer, "index", None)
    return f" P{index + 2}" if type(layer).__name__ == "SelectFeature" and isinstance(index, int) else ""


def diagnose_forward(layers: nn.Sequential, ch: int, imgsz: int = 256) -> ModelYAMLError | None:
    """Run a model's layers one by one on a blank image, as Ultralytics' stride computation does, and describe
    the first layer that fails: its index, type and each input's layer, level name, channels and size.

    Returns None when the forward passes (the failure was elsewhere).
    """
    y: list[Any] = []  # every layer's output (Ultralytics keeps only the saved ones; this is a one-off walk)
    x: Any = torch.zeros(1, ch, imgsz, imgsz)
    with torch.no_grad():
        for m in layers:
            f = getattr(m, "f", -1)
            if f != -1:
                x = y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]
            try:
                x = m(x)
            except Exception as e:
                sources = [f] if isinstance(f, int) else list(f)
                i = m.i
                described = []
                for s in sources:
                    a = s if s >= 0 else i + s
                    value = y[a] if 0 <= a < len(y) else torch.zeros(1, ch, imgsz, imgsz)  # layer 0 reads the image
                    label = f"layer {a}{_level_name(layers[a])}" if 0 <= a < len(y) else "image"
                    described.append(f"{label} ({_shape_text(value)})")
                detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                name = m.type.rsplit(".", 1)[-1]
                return layer_error(
                    _where(i, name),
                    f"输入的形状不匹配：{'; '.join(described)}（{type(e).__name__}: {detail}）；"
                    "检查 from 是否指向了期望的特征层（尺寸与通道数都要对得上）",
                    f"its inputs do not fit: {'; '.join(described)} ({type(e).__name__}: {detail}); check that 'from' "
                    "points at the feature maps you meant (sizes and channels must fit)",
                )
            y.append(x)
    return None


__all__ = ["Dialect", "activation_from_yaml", "diagnose_forward", "parse_model", "read_model_context", "read_rows",
           "uses_addon_modules"]
