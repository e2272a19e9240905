"""ultralytics-addmodules: lightweight backbones (MobileNetV1/V4, EfficientNetV1/V2) and C3_UIB for stock
Ultralytics, without forking it.

``import ultralytics_addmodules`` activates the add-on (unless ``ULTRALYTICS_ADDMODULES=0``): Ultralytics is
patched as soon as it is imported, right away if it already is. An installed copy does the same in every
process through its start-up hook (``ultralytics_addmodules_autoload``), so plain ``from ultralytics import YOLO``
knows the new modules. Importing this package or a submodule (``registry``, ``nn``, ``weights``) never imports
Ultralytics by itself: with the start-up hook installed, patching waits for Ultralytics' own import.
"""

from __future__ import annotations

import os
import sys

from . import registry as _registry
from .messages import ModelYAMLError, bilingual
from .registry import (
    ChannelRule,
    ConcatChannels,
    InputChannelList,
    MultiOutputBackbone,
    Registration,
    SameChannels,
    ScaledOutput,
    register_module,
)

__version__ = "0.2.0"

_state = {"active": False, "activating": False, "pending": False, "attempted": False}


class PluginError(ImportError):
    """A module named in ULTRALYTICS_ADDMODULES_PLUGINS failed to import (any exception, SystemExit included)."""


def activate() -> bool:
    """Teach Ultralytics the new modules (idempotent). Returns True once active.

    Imports Ultralytics if needed. On an Ultralytics release the add-on does not support, or when a plugin
    fails, nothing stays patched, one line says why, and this returns False. It is tried once per process, so
    the failure is reported once.
    """
    if _state["active"] or _state["activating"] or _state["attempted"]:
        return _state["active"]
    loading = sys.modules.get(f"{__name__}.patch")
    if loading is not None and not hasattr(loading, "activate"):
        # patch.py's own import of Ultralytics fired the start-up hook; patch.py finishes this when loaded
        _state["pending"] = True
        return False
    _state["activating"] = True  # importing Ultralytics below fires the start-up hook, which calls us again
    _state["attempted"] = True
    try:
        _load_families()
        from . import patch

        _state["active"] = patch.activate(_import_plugins)
    finally:
        _state["activating"] = False
    return _state["active"]


def _import_plugins() -> None:
    """Import the modules named in ULTRALYTICS_ADDMODULES_PLUGINS (comma-separated).

    A script's own ``register_module()`` calls do not run in the worker processes Ultralytics starts
    (multi-GPU DDP); environment variables do reach them, so users list their registering modules here.
    """
    import importlib

    for name in filter(None, (p.strip() for p in os.environ.get("ULTRALYTICS_ADDMODULES_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: B902 - SystemExit in a plugin must not end the user's process
            raise PluginError(f"ULTRALYTICS_ADDMODULES_PLUGINS: plugin {name!r} failed to import "
                              f"({type(e).__name__}: {e})") from None


def _load_families() -> None:
    from . import nn  # noqa: F401  (importing the families registers their YAML names; needs torch)


def backbones() -> list[str]:
    """YAML names of every registered multi-output backbone: ours and plugins', sorted."""
    _load_families()
    return _registry.backbones()


def registered_names() -> list[str]:
    """Every YAML module name the parser knows (Ultralytics' own too, once active), sorted."""
    _load_families()
    return _registry.registered_names()


def lookup(name: str) -> Registration | None:
    """The registration (class, channel rule) of a YAML module name, or None."""
    _load_families()
    return _registry.lookup(name)


def is_active() -> bool:
    """Whether Ultralytics is patched with the add-on's modules in this process right now."""
    if not _state["active"]:
        return False
    from . import patch

    return patch.is_patched()


def load_pretrained(model, source, **kwargs):
    """Load pretrained weights into ``model``; see ``ultralytics_addmodules.weights.load_pretrained``."""
    from .weights import load_pretrained as _load

    return _load(model, source, **kwargs)


def __getattr__(name: str):
    # Heavy or derived names on first use, so that importing the package stays cheap.
    if name == "Backbone":
        from .nn.backbone import Backbone

        return Backbone
    if name == "BACKBONES":  # kept for round-1 code; backbones() is the list (plugins' included)
        return tuple(backbones())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _hook_installed() -> bool:
    return any(type(f).__name__ == "UltralyticsFinder" for f in sys.meta_path)


__all__ = [
    "BACKBONES",
    "Backbone",
    "ChannelRule",
    "ConcatChannels",
    "InputChannelList",
    "ModelYAMLError",
    "MultiOutputBackbone",
    "PluginError",
    "Registration",
    "SameChannels",
    "ScaledOutput",
    "activate",
    "backbones",
    "bilingual",
    "is_active",
    "load_pretrained",
    "lookup",
    "register_module",
    "registered_names",
]

if os.environ.get("ULTRALYTICS_ADDMODULES", "1") != "0":
    if "ultralytics" in sys.modules or not _hook_installed():
        activate()
    # else: the start-up hook activates the add-on when Ultralytics finishes importing
