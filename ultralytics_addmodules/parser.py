"""Registry-driven replacement for ``ultralytics.nn.tasks.parse_model``.

The parser is a loop: for each YAML layer it looks the module name up in the registry and lets the
module's channel rule derive constructor arguments and output channels. It knows nothing about any
particular module; multi-output backbones are expanded into the backbone layer plus four selector layers.
"""

from __future__ import annotations

import ast
import logging
from typing import Any, Callable

from torch import nn

from .nn.backbone import SelectFeature
from .registry import DEFAULT_RULE, LayerContext, close_names, lookup, registered_names, rule_of

LOGGER = logging.getLogger("ultralytics")  # Ultralytics' own logger name, so our table prints with theirs

# Names a YAML argument may refer to (stock Ultralytics resolves strings against its local variables).
_YAML_VARIABLES = ("nc", "kpt_shape", "width", "depth", "max_channels", "scale")


def _resolve_module(name: str, index: int) -> tuple[Any, Any]:
    """(class, rule) for a YAML module name; ``nn.X`` names come from torch.nn."""
    if name.startswith("nn."):
        cls = getattr(nn, name[3:], None)
        if cls is None:
            raise ValueError(f"layer {index}: torch.nn has no module {name[3:]!r} (from YAML name {name!r})")
        return cls, rule_of(cls) or DEFAULT_RULE
    reg = lookup(name)
    if reg is None:
        close = close_names(name)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"layer {index}: unknown module {name!r}.{hint} Registered modules: {len(registered_names())}; "
            "register your own with ultralytics_addmodules.register_module()."
        )
    return reg.cls, reg.rule


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


def _type_name(cls: Any) -> str:
    return f"{cls.__module__}.{cls.__qualname__}".replace("__main__.", "")


def parse_model(
    d: dict,
    ch: int,
    verbose: bool = True,
    set_activation: Callable[[str], None] | None = None,
) -> tuple[nn.Sequential, list[int]]:
    """Build ``(nn.Sequential of layers, sorted save list)`` from a model YAML dict.

    Same contract as Ultralytics 8.3.0's ``parse_model``. ``set_activation`` handles the YAML
    ``activation:`` key (it is Ultralytics-specific, so the caller supplies it).
    """
    max_channels = float("inf")
    nc, act, scales = (d.get(x) for x in ("nc", "activation", "scales"))
    depth, width, kpt_shape = (d.get(x, 1.0) for x in ("depth_multiple", "width_multiple", "kpt_shape"))
    scale = None
    if scales:
        scale = d.get("scale")
        if not scale:
            scale = next(iter(scales))
            LOGGER.warning(f"WARNING ⚠️ no model scale passed. Assuming scale='{scale}'.")
        if scale not in scales:
            raise ValueError(f"model scale {scale!r} is not in this YAML's scales; valid: {', '.join(scales)}")
        depth, width, max_channels = scales[scale]

    if act:
        if set_activation is None:
            raise ValueError(f"YAML sets activation {act!r} but no activation handler was given")
        set_activation(act)
        if verbose:
            LOGGER.info(f"activation: {act}")

    if verbose:
        LOGGER.info(f"\n{'':>3}{'from':>20}{'n':>3}{'params':>10}  {'module':<45}{'arguments':<30}")

    variables = {"nc": nc, "kpt_shape": kpt_shape, "width": width, "depth": depth,
                 "max_channels": max_channels, "scale": scale}
    chs: list = [ch]
    layers: list[nn.Module] = []
    save: list[int] = []
    backbone_layers: dict[int, str] = {}  # index of each multi-output backbone -> its YAML name
    c2: Any = ch

    for f, n, name, args in d["backbone"] + d["head"]:
        i = len(layers)
        cls, rule = _resolve_module(name, i)
        args = [_resolve_arg(a, variables) for a in args]
        sources = [f] if isinstance(f, int) else list(f)
        for s in sources:
            absolute = s if s >= 0 else i + s
            if absolute in backbone_layers:
                raise ValueError(
                    f"layer {i} ({name}) takes input from layer {absolute}, the {backbone_layers[absolute]} "
                    f"backbone itself, which outputs a list of 4 feature maps; use layers {absolute + 1}-"
                    f"{absolute + 4} (P2, P3, P4, P5) instead"
                )
        n = n_ = max(round(n * depth), 1) if n > 1 else n  # depth gain, as Ultralytics rounds it
        ctx = LayerContext(i, f, n, chs, c2, width, depth, max_channels, nc, scale)
        try:
            resolved = rule.resolve(args, ctx)
        except (IndexError, TypeError, KeyError) as e:
            raise ValueError(f"layer {i} ({name}): arguments {args} do not fit its channel rule {rule}: {e}") from e
        c2 = resolved.c2
        if resolved.repeats > 1:
            module = nn.Sequential(*(cls(*resolved.args, **resolved.kwargs) for _ in range(resolved.repeats)))
        else:
            module = cls(*resolved.args, **resolved.kwargs)
        _add_layer(layers, save, module, i, f, n_, _type_name(cls), resolved.args, verbose)
        if i == 0:
            chs = []  # from here on chs[k] is layer k's output channels

        if rule.multi_output:
            out_channels = list(module.out_channels)
            if len(out_channels) != 4:
                raise ValueError(f"layer {i} ({name}) must expose 4 out_channels (P2..P5), got {out_channels}")
            backbone_layers[i] = name
            chs.append(out_channels)
            for level, c in enumerate(out_channels):
                _add_layer(layers, save, SelectFeature(level), i + 1 + level, i, 1,
                           _type_name(SelectFeature), [level], verbose)
                chs.append(c)
            c2 = out_channels[-1]
        else:
            chs.append(c2)
    return nn.Sequential(*layers), sorted(save)


def _add_layer(layers, save, module, i, f, n, type_name, args, verbose) -> None:
    """Attach the bookkeeping attributes Ultralytics' forward pass reads, log the table row, append."""
    module.np = sum(p.numel() for p in module.parameters())
    module.i, module.f, module.type = i, f, type_name
    if verbose:
        LOGGER.info(f"{i:>3}{str(f):>20}{n:>3}{module.np:10.0f}  {type_name:<45}{str(args):<30}")
    save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
    layers.append(module)


__all__ = ["parse_model"]
