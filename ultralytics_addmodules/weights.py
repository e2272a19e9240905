"""ImageNet weights from timm / torchvision state dicts into our backbones.

Each family knows its own key mapping (``Backbone.convert_state_dict``, next to the architecture); this module
finds the backbones in a model, reads the source, checks that every backbone tensor is matched with the right
shape, and only then loads: a failed load leaves the model unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .nn.backbone import Backbone

LOGGER = logging.getLogger("ultralytics")
ONLINE_SOURCES = ("timm", "torchvision")
# Checkpoint dicts from training frameworks keep the weights under one of these keys.
_STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net")


@dataclass
class PretrainedReport:
    """What ``load_pretrained`` did for one backbone."""

    backbone: str  # our class name
    architecture: str  # the reference model the weights belong to, e.g. "timm:efficientnet_b0"
    source: str  # file path, "timm" or "torchvision"
    tensors: int  # tensors loaded

    def __str__(self) -> str:
        return f"{self.backbone}: {self.tensors} tensors from {self.source} ({self.architecture})"


def find_backbones(model) -> list[Backbone]:
    """Backbones inside a YOLO object, an Ultralytics model, or the backbone itself."""
    module = model  # a YOLO object is an nn.Module too, holding the Ultralytics model as a submodule
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a YOLO object, an Ultralytics model or a backbone module, got {type(model).__name__}")
    found = [m for m in module.modules() if isinstance(m, Backbone)]
    if not found:
        raise ValueError(
            f"{type(module).__name__} contains no ultralytics-addmodules backbone; pretrained weights load into "
            "MobileNetV1/V4, EfficientNet V1/V2 or TimmBackbone layers"
        )
    return found


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .pth/.pt/.bin/.safetensors file, unwrapping common checkpoint dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled objects we refuse to execute, ...
        raise ValueError(f"cannot read pretrained weights from {str(path)!r}: {type(e).__name__}: {e}") from e
    for key in _STATE_DICT_KEYS:  # unwrap {"state_dict": {...}} and friends
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def fetch_online(source: str, name: str) -> dict[str, torch.Tensor]:
    """Download published weights through timm or torchvision (needs network; they cache the file)."""
    if source == "timm":
        try:
            import timm
        except ImportError as e:
            raise ImportError("loading weights with source 'timm' needs timm: pip install ultralytics-addmodules[timm]") from e
        return timm.create_model(name, pretrained=True).state_dict()
    import torchvision

    return torchvision.models.get_model(name, weights="DEFAULT").state_dict()


def _problems(backbone: Backbone, converted: Mapping[str, torch.Tensor]) -> list[str]:
    """Every way ``converted`` fails to cover the backbone exactly (missing, unexpected, mis-shaped)."""
    ours = backbone.state_dict()
    problems = []
    for key, tensor in ours.items():
        if key not in converted:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"missing {key} {tuple(tensor.shape)}")
        elif converted[key].shape != tensor.shape:
            problems.append(f"shape of {key}: ours {tuple(tensor.shape)}, source {tuple(converted[key].shape)}")
    problems += [f"unexpected {key}" for key in converted if key not in ours]
    return problems


def _match(backbone: Backbone, state_dict: Mapping[str, torch.Tensor] | None, source: str) -> tuple[str, dict]:
    """(reference architecture, converted state dict) for the first published source that fits exactly."""
    sources = backbone.weight_sources()
    name = type(backbone).__name__
    if not sources:
        raise ValueError(f"{name} in this configuration has no published ImageNet weights; {backbone.weight_hint()} has them")
    if source in ONLINE_SOURCES:
        if source not in sources:
            raise ValueError(f"{name} has no {source} weights; available sources: {', '.join(sources)}")
        candidates = {source: sources[source]}
        state_dict = fetch_online(source, sources[source])
    else:
        candidates = sources
    attempts = []
    for kind, reference in candidates.items():
        try:
            converted = backbone.convert_state_dict(state_dict, kind)
        except (KeyError, ValueError, NotImplementedError) as e:
            attempts.append((kind, reference, [f"cannot map keys: {e}"]))
            continue
        problems = _problems(backbone, converted)
        if not problems:
            return f"{kind}:{reference}", converted
        attempts.append((kind, reference, problems))
    kind, reference, problems = min(attempts, key=lambda a: len(a[2]))
    shown = "\n  ".join(problems[:8])
    raise ValueError(
        f"weights from {source!r} do not fit {name} (closest: {kind} {reference}); {len(problems)} problem(s), "
        f"first ones:\n  {shown}\nNothing was loaded."
    )


def load_pretrained(model, source: str | Path, verbose: bool = True) -> list[PretrainedReport]:
    """Load ImageNet weights into every backbone of ``model``; strict and all-or-nothing.

    Args:
        model: a YOLO object, an Ultralytics model (DetectionModel, ...) or a Backbone.
        source: a state-dict file written by timm or torchvision (a checkpoint dict holding one works too),
            or "timm" / "torchvision" to download the matching weights through that library (online only).
        verbose: log one line per backbone.

    Returns:
        one report per backbone (tensors loaded, source, reference architecture).

    Raises:
        ValueError: no backbone, no published weights for this width, or the tensors do not match.
        FileNotFoundError: the file does not exist.
    """
    backbones = find_backbones(model)
    source = str(source)
    state_dict = None if source in ONLINE_SOURCES else read_state_dict(source)
    planned = [(bb, *_match(bb, state_dict, source)) for bb in backbones]  # validate everything first
    reports = []
    for bb, architecture, converted in planned:
        merged = bb.state_dict()
        merged.update({k: v.to(merged[k].dtype) for k, v in converted.items()})
        bb.load_state_dict(merged, strict=True)
        tensors = sum(not k.endswith("num_batches_tracked") for k in converted)  # counters are not weights
        reports.append(PretrainedReport(type(bb).__name__, architecture, source, tensors))
        if verbose:
            LOGGER.info(f"ultralytics-addmodules: loaded pretrained {reports[-1]}")
    return reports
