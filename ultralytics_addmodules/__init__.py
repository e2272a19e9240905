"""ultralytics-addmodules: lightweight backbones (MobileNetV1/V4, EfficientNetV1/V2) and C3_UIB for stock
Ultralytics 8.3.0, without forking it.

Importing this package activates it (unless ``ULTRALYTICS_ADDMODULES=0``); an installed copy also
activates itself in every process as soon as Ultralytics is imported (see ``ultralytics_addmodules_autoload``).
"""

from __future__ import annotations

import os

from . import nn as _families  # noqa: F401  (importing the families registers their YAML names)
from .nn.backbone import Backbone
from .registry import (
    ChannelRule,
    ConcatChannels,
    InputChannelList,
    MultiOutputBackbone,
    SameChannels,
    ScaledOutput,
    lookup,
    register_module,
    registered_names,
)

__version__ = "0.1.0"

_state = {"active": False, "activating": False}


def activate() -> bool:
    """Teach Ultralytics the new modules (idempotent). Returns True once active.

    Safe to call at any time; the automatic hook and ``import ultralytics_addmodules`` call it for you.
    """
    if _state["active"] or _state["activating"]:
        return _state["active"]
    _state["activating"] = True  # importing Ultralytics below fires the import hook, which calls us again
    try:
        from . import patch

        patch.apply()
        _import_plugins()
        _state["active"] = True
    finally:
        _state["activating"] = False
    return True


def _import_plugins() -> None:
    """Import the modules named in ULTRALYTICS_ADDMODULES_PLUGINS (comma-separated).

    A script's own ``register_module()`` calls do not run in the worker processes Ultralytics starts
    (multi-GPU DDP); environment variables do reach them, so users list their registering modules here.
    """
    import importlib

    for name in filter(None, (p.strip() for p in os.environ.get("ULTRALYTICS_ADDMODULES_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"ULTRALYTICS_ADDMODULES_PLUGINS names {name!r}, which cannot be imported: {e}") from e


def is_active() -> bool:
    """Whether Ultralytics has been patched in this process."""
    return _state["active"]


def load_pretrained(model, source, **kwargs):
    """Load ImageNet weights into the backbone(s) of ``model``; see ``ultralytics_addmodules.weights``."""
    from .weights import load_pretrained as _load

    return _load(model, source, **kwargs)


def backbones() -> list[str]:
    """YAML names of all registered multi-output backbones."""
    return [n for n in registered_names() if lookup(n).rule.multi_output]


BACKBONES = tuple(backbones())

__all__ = [
    "BACKBONES",
    "Backbone",
    "ChannelRule",
    "ConcatChannels",
    "InputChannelList",
    "MultiOutputBackbone",
    "SameChannels",
    "ScaledOutput",
    "activate",
    "backbones",
    "is_active",
    "load_pretrained",
    "register_module",
    "registered_names",
]

if os.environ.get("ULTRALYTICS_ADDMODULES", "1") != "0":
    activate()
