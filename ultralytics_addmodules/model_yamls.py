"""Where the model YAMLs shipped with this package live, and bare-name lookup in that folder."""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def yaml_dir() -> Path:
    """The folder of shipped model YAMLs: package data when installed, ``yaml/`` in a source checkout."""
    installed = _PACKAGE_DIR / "yaml"
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / "yaml"


# Ultralytics guesses a model's task from these file-name tokens (and from the head; our YAMLs agree).
_TASK_TOKENS = (("-seg", "segment"), ("-cls", "classify"), ("-pose", "pose"), ("-obb", "obb"))


def yaml_task(name: str | Path) -> str:
    """The task a model YAML's file name says: detect, segment, classify, pose or obb."""
    stem = Path(str(name)).stem
    return next((task for token, task in _TASK_TOKENS if token in stem), "detect")


def list_model_yamls(task: str | None = None) -> list[Path]:
    """Shipped model YAML files, sorted by name; only those of ``task`` (e.g. "detect") if given."""
    return sorted(p for p in yaml_dir().glob("*.yaml") if task is None or yaml_task(p) == task)


def find_model_yaml(name: str | Path) -> Path | None:
    """The shipped YAML whose file name equals ``name``'s file name, or None."""
    candidate = yaml_dir() / Path(str(name)).name
    return candidate if candidate.is_file() else None


# The scale letter Ultralytics strips from a model file name before looking the file up
# ('yolo11n-X.yaml' -> 'yolo11-X.yaml'); kept here so a suggestion keeps the user's scale.
_SCALE_IN_NAME = re.compile(r"^(yolo(?:v)?\d+)([nslmx])(?=-|$)", re.IGNORECASE)
_PREFIX = re.compile(r"^(yolo(?:v)?\d+)(?=-|$)", re.IGNORECASE)  # where a scale letter goes


def official_model_yamls() -> list[Path]:
    """The model YAMLs shipped inside the installed Ultralytics package (found without importing it)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return []
    cfg = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "models"
    return sorted(cfg.rglob("*.yaml"))


def suggest_model_names(name: str | Path, n: int = 3) -> list[str]:
    """Model YAML names (ours and Ultralytics') closest to ``name``, ignoring case; best first.

    A name that differs only in case gives just the real name (``yolo11n-mobilenetv4.yaml`` ->
    ``["yolo11n-MobileNetV4.yaml"]``); otherwise up to ``n`` close spellings. The scale letter of the
    query (``yolo11n-...``) is kept in the suggestions. Empty list when nothing is close.
    """
    stem = re.sub(r"\.ya?ml$", "", Path(str(name)).name, flags=re.IGNORECASE)
    pool = {p.stem.lower(): p.stem for p in official_model_yamls()}
    pool.update({p.stem.lower(): p.stem for p in list_model_yamls()})
    if stem.lower() in pool:  # files whose own name carries a scale, e.g. yolov9s.yaml
        return [f"{pool[stem.lower()]}.yaml"]
    scale, match = "", _SCALE_IN_NAME.match(stem)
    if match:  # look up 'yolo11-x' for 'yolo11n-x', as Ultralytics does
        scale, stem = match.group(2).lower(), match.group(1) + stem[match.end():]
    key = stem.lower()
    found = [pool[key]] if key in pool else [pool[k] for k in difflib.get_close_matches(key, list(pool), n, 0.6)]
    if scale:
        found = [f if _SCALE_IN_NAME.match(f) else _PREFIX.sub(rf"\g<1>{scale}", f, count=1) for f in found]
    return [f"{f}.yaml" for f in found]


def pin_c3_uib_expansion(model) -> int:
    """Write each C3_UIB's real UIB expansion into ``model.yaml`` where the YAML line leaves it to the default.

    Checkpoints pickle the module objects, so a model saved when the default expansion was 4 still loads and
    predicts as saved. But fine-tuning or resuming rebuilds the model from ``model.yaml`` and copies the
    weights over by shape: without the expansion written in, the rebuilt blocks would use today's default
    (1) and the UIB weights would be dropped. Call this on a loaded checkpoint's model (and EMA) before any
    rebuild. Returns the number of YAML lines changed (0 for models saved with the current default).
    """
    from .nn.common import round_channels
    from .nn.uib import C3_UIB
    from .registry import lookup

    cfg, layers = getattr(model, "yaml", None), getattr(model, "model", None)
    if not isinstance(cfg, dict) or layers is None:
        return 0
    changed, index = 0, 0
    for line in list(cfg.get("backbone", [])) + list(cfg.get("head", [])):
        name, args = line[2], line[3]
        if name == "C3_UIB" and index < len(layers) and isinstance(layers[index], C3_UIB) and len(args) < 5:
            block = layers[index]
            c_, hidden = block.cv1.conv.out_channels, block.m[0].expand.conv.out_channels
            if hidden != round_channels(c_ * 1.0):  # not what the current default (expansion 1) builds
                line[3] = [*args, *[True, 1, 0.5][len(args) - 1:], hidden / c_]  # c2, shortcut, g, e, ratio
                changed += 1
        reg = lookup(name) if isinstance(name, str) else None
        index += 1 + (4 if reg is not None and reg.rule.multi_output else 0)  # a backbone line is 5 layers
    return changed
