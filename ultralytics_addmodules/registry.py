"""Module registry: each layer class declares how the YAML parser derives its channels and arguments.

A *channel rule* turns the YAML arguments of one layer into constructor arguments and tells the parser the
layer's output channels. Rules are small objects; the parser is a loop that looks the rule up here.
This module imports neither torch nor Ultralytics, so module families can register themselves cheaply.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x`` (the rounding Ultralytics applies to YAML widths)."""
    return int(math.ceil(x / divisor) * divisor)


@dataclass
class LayerContext:
    """What a rule may read about the layer being built and the model around it."""

    index: int  # index of this layer in the built model
    source: int | list[int]  # the YAML 'from' field
    repeats: int  # YAML 'n' after the depth gain
    ch: list  # output channels of every layer built so far (ch[-1] is the previous layer)
    prev_c2: Any  # output channels the previous rule reported (stock parse_model keeps it for some heads)
    width: float
    depth: float
    max_channels: float
    nc: int | None
    scale: str | None

    @property
    def c1(self) -> int:
        """Input channels of a single-input layer."""
        return self.ch[self.source]


@dataclass
class Resolved:
    """A rule's answer: constructor arguments, output channels, and how many copies to stack."""

    args: list
    c2: Any
    repeats: int = 1
    kwargs: dict = field(default_factory=dict)


class ChannelRule:
    """Base rule: keeps the arguments, output channels equal input channels (e.g. ``nn.Upsample``)."""

    multi_output = False  # True for backbones whose forward returns [P2, P3, P4, P5]

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved(list(args), ctx.c1, ctx.repeats)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class SameChannels(ChannelRule):
    """Output channels equal input channels; YAML arguments are passed unchanged."""


class ScaledOutput(ChannelRule):
    """First YAML argument is the output channel count, scaled by width (capped by max_channels).

    Constructor receives ``(c1, c2, *rest)``. With ``repeats_in_args`` the depth-scaled repeat count is
    inserted as the third argument (C2f/C3-style blocks) instead of stacking copies.
    """

    def __init__(self, repeats_in_args: bool = False):
        self.repeats_in_args = repeats_in_args

    def scale_channels(self, c: int, ctx: LayerContext) -> int:
        return make_divisible(min(c, ctx.max_channels) * ctx.width, 8)

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        c2 = args[0]
        if c2 != ctx.nc:  # a classifier's output is the class count, never scaled
            c2 = self.scale_channels(c2, ctx)
        new_args = [ctx.c1, c2, *args[1:]]
        repeats = ctx.repeats
        if self.repeats_in_args:
            new_args.insert(2, repeats)
            repeats = 1
        return Resolved(new_args, c2, repeats)


class ConcatChannels(ChannelRule):
    """Output channels are the sum of all inputs' channels."""

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved(list(args), sum(ctx.ch[x] for x in ctx.source), ctx.repeats)


class InputChannelList(ChannelRule):
    """Heads that take the list of their inputs' channels (Detect, Segment, ...).

    ``insert_at=None`` appends the list; ``scale_arg`` is the index of an argument that is a channel count
    scaled by width (Segment's prototype channels). Output channels are kept from the previous layer, as
    stock Ultralytics does.
    """

    def __init__(self, insert_at: int | None = None, scale_arg: int | None = None):
        self.insert_at = insert_at
        self.scale_arg = scale_arg

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        args = list(args)
        channels = [ctx.ch[x] for x in ctx.source]
        if self.insert_at is None:
            args.append(channels)
        else:
            args.insert(self.insert_at, channels)
        if self.scale_arg is not None:
            args[self.scale_arg] = make_divisible(min(args[self.scale_arg], ctx.max_channels) * ctx.width, 8)
        return Resolved(args, ctx.prev_c2, ctx.repeats)


class MultiOutputBackbone(ChannelRule):
    """A whole backbone on one YAML line. Constructor receives ``(c1, *yaml_args)``.

    The built module must expose ``out_channels`` (four ints, P2..P5) and return a list of four feature maps.
    The parser expands the line into the backbone layer plus four selector layers.
    """

    multi_output = True

    def resolve(self, args: list, ctx: LayerContext) -> Resolved:
        return Resolved([ctx.c1, *args], None, 1)


# Default rule for classes nobody registered but that live in torch.nn (Upsample, MaxPool2d, Identity, ...).
DEFAULT_RULE = SameChannels()


@dataclass
class Registration:
    cls: Callable
    rule: ChannelRule


_REGISTRY: dict[str, Registration] = {}


def register_module(cls: Callable | None = None, rule: ChannelRule | None = None, *, name: str | None = None):
    """Make a module class usable in model YAMLs under ``name`` (default: the class name).

    Use as ``register_module(MyBlock, ScaledOutput())`` or as a class decorator
    ``@register_module(rule=MultiOutputBackbone())``. Registering a name again replaces the earlier entry,
    so a user may override a built-in rule.
    """
    if rule is None:
        rule = DEFAULT_RULE
    if not isinstance(rule, ChannelRule):
        raise TypeError(f"rule must be a ChannelRule instance, got {rule!r}")

    def _register(c: Callable) -> Callable:
        if not callable(c):
            raise TypeError(f"register_module expects a class or callable, got {c!r}")
        _REGISTRY[name or c.__name__] = Registration(c, rule)
        return c

    return _register if cls is None else _register(cls)


def lookup(name: str) -> Registration | None:
    """Registration for a YAML module name, or None."""
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    """All registered YAML module names, sorted."""
    return sorted(_REGISTRY)


def rule_of(cls: Callable) -> ChannelRule | None:
    """The rule of a registered class (looked up by identity), or None."""
    for reg in _REGISTRY.values():
        if reg.cls is cls:
            return reg.rule
    return None


def close_names(name: str, candidates: Sequence[str] | None = None, n: int = 3) -> list[str]:
    """Registered names closest to ``name`` (for 'did you mean' messages)."""
    pool = list(candidates) if candidates is not None else registered_names()
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if not close:  # case-insensitive second try: 'mobilenetv4convsmall' should still find the real name
        lowered = {p.lower(): p for p in pool}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    return close
