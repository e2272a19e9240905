"""Module registry: each layer class declares how the YAML parser derives its channels and arguments.

A *channel rule* turns the YAML arguments of one layer into constructor arguments and tells the parser the
layer's output channels. Rules are small objects; the parser is a loop that looks the rule up here.
A module declares its rule next to its definition (``register_module(C3_UIB, ScaledOutput(repeats_in_args=True))``).

This module imports neither torch nor Ultralytics, so module families and users' plugins can register cheaply.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .messages import bilingual

# Largest channel count a layer may have after width scaling: beyond it a typo (width 1e6) would try to
# allocate terabytes before any error could be raised.
MAX_CHANNELS = 65536


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x`` (the rounding Ultralytics applies to YAML widths)."""
    return int(math.ceil(x / divisor) * divisor)


@dataclass
class ModelContext:
    """What every layer's rule may read about the whole model (from the YAML header), plus the one piece of
    state earlier layers leave for later ones (``legacy``)."""

    nc: int | None
    width: float
    depth: float
    max_channels: float
    scale: str | None
    kpt_shape: Any = None
    reg_max: int = 16  # Ultralytics 8.4: DFL bins of detection heads (YAML key reg_max)
    end2end: bool | None = None  # Ultralytics 8.4: one-to-one head (YAML key end2end)
    keep_nc_unscaled: bool = False  # Ultralytics 8.3: a channel count equal to nc is never width-scaled
    legacy: bool = True  # Ultralytics 8.4: False once a layer marks the model as modern (C3k2, our modules)


@dataclass
class LayerContext:
    """What a rule may read about the layer being built and the model around it."""

    index: int  # index of this layer in the built model
    source: int | list[int]  # the YAML 'from' field
    repeats: int  # YAML 'n' after the depth gain
    ch: list  # output channels of every layer built so far (ch[-1] is the previous layer)
    prev_c2: Any  # output channels the previous rule reported (stock parse_model keeps it for some heads)
    model: ModelContext

    @property
    def c1(self) -> int:
        """Input channels of a single-input layer."""
        if not isinstance(self.source, int):
            raise ValueError(
                bilingual(f"该模块只接受一个输入，但 from 是 {self.source}", f"this module takes one input, got from {self.source}")
            )
        return self.ch[self.source]

    # The header values most rules need, without the ``model.`` prefix.
    width = property(lambda self: self.model.width)
    depth = property(lambda self: self.model.depth)
    max_channels = property(lambda self: self.model.max_channels)
    nc = property(lambda self: self.model.nc)
    scale = property(lambda self: self.model.scale)


@dataclass
class Resolved:
    """A rule's answer: constructor arguments, output channels, and how many copies to stack.

    ``class_attrs`` are set on the class before it is constructed (Ultralytics 8.4 tells its heads whether the
    model is a legacy one this way).
    """

    args: list
    c2: Any
    repeats: int = 1
    class_attrs: dict = field(default_factory=dict)


class ChannelRule:
    """Base rule: keeps the arguments, output channels equal input channels (e.g. ``nn.Upsample``)."""

    multi_output = False  # True for backbones whose forward returns a list of feature maps
    marks_modern = False  # Ultralytics 8.4: a layer with this rule makes the model's heads non-legacy

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved(list(args), ctx.c1, ctx.repeats)

    def finalize(self, module: Any, resolved: Resolved, ctx: LayerContext) -> None:
        """Adjust the built module (default: nothing)."""

    def yaml_params(self, params: list[str]) -> list[str]:
        """The constructor parameters a user writes in YAML, given all positional ones (without ``self``)."""
        return params

    def yaml_signature(self, cls: Callable) -> str:
        """What a YAML line's ``args`` for ``cls`` look like, e.g. ``[c2, shortcut, g, e]`` (for messages)."""
        try:
            parameters = inspect.signature(cls).parameters.values()
        except (TypeError, ValueError):
            return "[...]"
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in positional]
        return "[" + ", ".join(self.yaml_params(names)) + "]"

    def __repr__(self) -> str:
        fields_ = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields_})"


class SameChannels(ChannelRule):
    """Output channels equal input channels; YAML arguments are passed unchanged."""


def _check_channels(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CHANNELS:
        raise ValueError(
            bilingual(
                f"{what} 必须是 1 到 {MAX_CHANNELS} 之间的整数，实际是 {value!r}",
                f"{what} must be an integer from 1 to {MAX_CHANNELS}, got {value!r}",
            )
        )
    return value


class ScaledOutput(ChannelRule):
    """First YAML argument is the output channel count, scaled by width (capped by max_channels).

    Constructor receives ``(c1, c2, *rest)``. With ``repeats_in_args`` the depth-scaled repeat count is
    inserted as the third argument (C2f/C3-style blocks) instead of stacking copies. ``scale_output=False``
    keeps the channel count as written (Ultralytics 8.4's Classify).
    """

    def __init__(self, repeats_in_args: bool = False, scale_output: bool = True, marks_modern: bool = False):
        self.repeats_in_args = repeats_in_args
        self.scale_output = scale_output
        self.marks_modern = marks_modern

    def scale_channels(self, c: int, ctx: LayerContext) -> int:
        return make_divisible(min(c, ctx.max_channels) * ctx.width, 8)

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        if not args:
            raise ValueError(bilingual("缺少输出通道数（第一个参数）", "missing the output channel count (first argument)"))
        c2 = _check_channels(args[0], "输出通道数 / output channels")
        if self.scale_output and not (ctx.model.keep_nc_unscaled and c2 == ctx.nc):
            c2 = _check_channels(self.scale_channels(c2, ctx), "缩放后的通道数 / scaled channels")
        new_args = [ctx.c1, c2, *args[1:]]
        repeats = ctx.repeats
        if self.repeats_in_args:
            new_args.insert(2, repeats)
            repeats = 1
        return Resolved(new_args, c2, repeats)

    def yaml_params(self, params: list[str]) -> list[str]:
        drop = {0, 2} if self.repeats_in_args else {0}
        return [p for k, p in enumerate(params) if k not in drop]


class ConcatChannels(ChannelRule):
    """Output channels are the sum of all inputs' channels."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        sources = [ctx.source] if isinstance(ctx.source, int) else ctx.source
        return Resolved(list(args), sum(ctx.ch[x] for x in sources), ctx.repeats)


class InputChannelList(ChannelRule):
    """Heads that take the list of their inputs' channels (Detect, Segment, ...).

    ``insert_at=None`` appends the list; ``extra`` names model values appended before it (Ultralytics 8.4:
    ``("reg_max", "end2end")``); ``scale_arg`` is the index of an argument that is a channel count scaled by
    width (Segment's prototype channels); ``sets_legacy`` tells the head class whether the model is a legacy
    one (8.4). Output channels are kept from the previous layer, as stock Ultralytics does.
    """

    def __init__(self, insert_at: int | None = None, scale_arg: int | None = None, extra: tuple[str, ...] = (),
                 sets_legacy: bool = False):
        self.insert_at = insert_at
        self.scale_arg = scale_arg
        self.extra = tuple(extra)
        self.sets_legacy = sets_legacy

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        args = list(args)
        sources = [ctx.source] if isinstance(ctx.source, int) else ctx.source
        channels = [ctx.ch[x] for x in sources]
        if self.insert_at is None:
            args.extend([getattr(ctx.model, name) for name in self.extra])
            args.append(channels)
        else:
            args.insert(self.insert_at, channels)
        if self.scale_arg is not None:
            args[self.scale_arg] = make_divisible(min(args[self.scale_arg], ctx.max_channels) * ctx.width, 8)
        class_attrs = {"legacy": ctx.model.legacy} if self.sets_legacy else {}
        return Resolved(args, ctx.prev_c2, ctx.repeats, class_attrs=class_attrs)

    def yaml_params(self, params: list[str]) -> list[str]:
        if self.insert_at is not None:
            return [p for k, p in enumerate(params) if k != self.insert_at]
        return params[: max(0, len(params) - 1 - len(self.extra))]


class MultiOutputBackbone(ChannelRule):
    """A whole backbone on one YAML line. Constructor receives ``(c1, *yaml_args)``.

    The built module exposes ``out_channels`` (one int per output, P2..P5 for our backbones) and returns a list
    of feature maps. The parser expands the line into the backbone layer plus one selector layer per output,
    so later lines refer to each feature map by its own layer index.
    """

    multi_output = True
    marks_modern = True

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved([ctx.c1, *args], None, 1)

    def outputs(self, module: Any) -> list[int]:
        """Channels of each output of a built backbone, in the order of its forward's list."""
        return [int(c) for c in module.out_channels]

    def selector(self, level: int) -> Any:
        """The layer that picks output ``level`` from the backbone's list."""
        from .nn.backbone import SelectFeature  # torch only when a backbone is actually built

        return SelectFeature(level)

    def yaml_params(self, params: list[str]) -> list[str]:
        return params[1:]


# Default rule for classes nobody registered but that live in torch.nn (Upsample, MaxPool2d, Identity, ...).
DEFAULT_RULE = SameChannels()


@dataclass
class Registration:
    """One YAML name: the class it builds, its channel rule, and where it comes from."""

    name: str
    cls: Callable
    rule: ChannelRule
    stock: bool = False  # one of the installed Ultralytics' own modules (registered by patch.py)
    forced: bool = False  # registered with force=True (allowed to take a stock name)


_REGISTRY: dict[str, Registration] = {}


def _qualname(cls: Callable) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"


def register_module(cls: Callable | None = None, rule: ChannelRule | None = None, *, name: str | None = None,
                    force: bool = False):
    """Make a module class usable in model YAMLs under ``name`` (default: the class name).

    Use as ``register_module(MyBlock, ScaledOutput())`` or as a class decorator
    ``@register_module(rule=MultiOutputBackbone())``. A name is registered once: registering another class
    under a taken name (one of ours, a user's or one of Ultralytics' own) raises ``ValueError`` unless
    ``force=True``, which replaces it for every YAML of the process.
    """
    if rule is None:
        rule = DEFAULT_RULE
    if not isinstance(rule, ChannelRule):
        raise TypeError(f"rule must be a ChannelRule instance, got {rule!r}")

    def _register(c: Callable) -> Callable:
        if not callable(c):
            raise TypeError(f"register_module expects a class or callable, got {c!r}")
        key = name or c.__name__
        old = _REGISTRY.get(key)
        if old is not None and not force and not (old.cls is c and repr(old.rule) == repr(rule)):
            raise ValueError(
                bilingual(
                    f"YAML 名称 {key!r} 已注册为 {_qualname(old.cls)}，不能再注册 {_qualname(c)}；"
                    "换一个名称，或用 force=True 替换它",
                    f"YAML name {key!r} is already registered to {_qualname(old.cls)}, cannot register {_qualname(c)}; "
                    "use another name, or force=True to replace it",
                )
            )
        _REGISTRY[key] = Registration(key, c, rule, stock=False, forced=force)
        return c

    return _register if cls is None else _register(cls)


def register_stock_module(cls: Callable, rule: ChannelRule, name: str) -> None:
    """Register one of Ultralytics' own modules (called by patch.py at activation).

    A name a user registered with ``force=True`` keeps the user's class; one registered without it is a clash
    the user must resolve (their block would silently change every stock YAML that uses the name).
    """
    old = _REGISTRY.get(name)
    if old is not None and not old.stock:
        if old.forced:
            return
        raise ValueError(
            bilingual(
                f"YAML 名称 {name!r} 是 Ultralytics 自带模块的名称，却被注册为 {_qualname(old.cls)}；"
                "换一个名称，或用 force=True 明确替换",
                f"YAML name {name!r} is one of Ultralytics' own modules but was registered to {_qualname(old.cls)}; "
                "use another name, or force=True to replace it on purpose",
            )
        )
    _REGISTRY[name] = Registration(name, cls, rule, stock=True)


def lookup(name: str) -> Registration | None:
    """Registration for a YAML module name, or None."""
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    """All registered YAML module names, sorted."""
    return sorted(_REGISTRY)


def user_modules() -> set[str]:
    """Python modules whose classes a user (or plugin) registered: code the process already chose to run."""
    return {getattr(reg.cls, "__module__", "") for reg in _REGISTRY.values()
            if not reg.stock and not getattr(reg.cls, "__module__", "").startswith("ultralytics_addmodules")}


def rule_of(cls: Callable) -> ChannelRule | None:
    """The rule of a registered class (looked up by identity), or None."""
    for reg in _REGISTRY.values():
        if reg.cls is cls:
            return reg.rule
    return None


def backbones() -> list[str]:
    """YAML names of all registered multi-output backbones (ours and plugins'), sorted."""
    return [n for n, reg in sorted(_REGISTRY.items()) if reg.rule.multi_output]


def snapshot() -> dict[str, Registration]:
    """A copy of the registry, for ``restore`` (activation is all-or-nothing)."""
    return dict(_REGISTRY)


def restore(saved: dict[str, Registration]) -> None:
    """Put the registry back to a ``snapshot``."""
    _REGISTRY.clear()
    _REGISTRY.update(saved)


def close_names(name: str, candidates: Sequence[str] | None = None, n: int = 3) -> list[str]:
    """Registered names closest to ``name`` (for 'did you mean' messages), case-insensitive."""
    pool = list(candidates) if candidates is not None else registered_names()
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    lowered: dict[str, str] = {}
    for p in pool:
        lowered.setdefault(p.lower(), p)
    # 'mobilenetv4convsmall' should still find the real name first
    exact = lowered.get(name.lower())
    case_close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    merged = ([exact] if exact else []) + case_close + close
    return list(dict.fromkeys(merged))[:n]
