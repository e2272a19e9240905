"""The neck and head of an Ultralytics checkpoint into a model with another backbone, aligned by role.

Stock transfer (``BaseModel.load``) matches state-dict keys, that is layer indices. A swapped backbone takes
layers 0-4 instead of yolo11's 0-10, so every later index shifts and nothing useful transfers. Here both layer
graphs are walked together from the output layer backwards, following each layer's ``from`` inputs: layers
met at the same place of the walk play the same role (SPPF and SPPF, the Concat that joins P4, the Detect head).
The walk stops at our backbone (its layer and the P2-P5 selectors after it), whose weights come from ImageNet
instead. In each aligned pair of layers of the same type (any two detection heads count as the same type for
their shared parts), every tensor with the same name and shape is copied; everything else is reported.
A model that keeps the stock layout (C3_UIB variants) is aligned layer by layer, that is by index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .nn.backbone import Backbone


@dataclass
class TransferReport:
    """What ``load_pretrained`` took from an Ultralytics checkpoint."""

    source: str  # the checkpoint file
    task: str  # the checkpoint's task: detect, segment, pose, obb
    source_classes: int | None
    model_classes: int | None
    by: str  # "structure" (aligned by role) or "index" (same layout)
    tensors: int  # tensors copied
    candidates: int  # tensors of our layers outside the backbone
    parameters: int  # parameters (not buffers) copied
    model_parameters: int  # all parameters of the model
    layers: dict[int, int] = field(default_factory=dict)  # our layer index -> checkpoint layer index
    class_dependent: list[str] = field(default_factory=list)  # skipped because the class count differs
    task_specific: list[str] = field(default_factory=list)  # head parts only the checkpoint has (seg proto, ...)
    model_only: list[str] = field(default_factory=list)  # head parts only this model has
    not_transferred: list[str] = field(default_factory=list)  # other layers / tensors that did not fit

    def __str__(self) -> str:
        share = 100 * self.parameters / max(self.model_parameters, 1)
        what = "neck/head by structure" if self.by == "structure" else "all layers by index (same layout)"
        text = (f"{self.source} ({self.task}, {self.source_classes} classes) -> {what}: "
                f"{self.tensors}/{self.candidates} tensors, {self.parameters:,} parameters ({share:.1f}% of the model)")
        if self.class_dependent:
            text += (f"; class-dependent tensors skipped: {len(self.class_dependent)} ({self.source_classes} classes "
                     f"in the checkpoint, {self.model_classes} here)")
        if self.task_specific:
            text += f"; {self.task} head parts not in this model: {', '.join(self.task_specific)}"
        if self.model_only:
            text += f"; head parts of this model not in the checkpoint: {', '.join(self.model_only)}"
        if self.not_transferred:
            text += f"; not transferred: {', '.join(self.not_transferred)}"
        return text


def _inputs(layer: nn.Module) -> list[int]:
    """Absolute indices of a layer's inputs (-1 = the image)."""
    sources = [layer.f] if isinstance(layer.f, int) else list(layer.f)
    return [s if s >= 0 else layer.i + s for s in sources]


def _in_backbone(layers: nn.Sequential, i: int) -> bool:
    """A multi-output backbone layer or one of the selectors that pick its P2-P5 outputs."""
    return isinstance(layers[i], Backbone) or any(
        s >= 0 and isinstance(layers[s], Backbone) for s in _inputs(layers[i]))


def align_layers(ours: nn.Sequential, theirs: nn.Sequential) -> tuple[dict[int, int], list[str]]:
    """Our layer index -> the checkpoint layer in the same role, by walking both graphs from the output back.

    Returns the pairs and notes on where the walk could not continue (a different number of inputs).
    """
    pairs: dict[int, int] = {}
    notes: list[str] = []
    stack = [(len(ours) - 1, len(theirs) - 1)]
    while stack:
        i, j = stack.pop()
        if i < 0 or j < 0 or _in_backbone(ours, i) or i in pairs:
            continue
        pairs[i] = j
        mine, other = _inputs(ours[i]), _inputs(theirs[j])
        if len(mine) != len(other):
            notes.append(f"layer {i} {type(ours[i]).__name__} takes {len(mine)} inputs, the checkpoint's {len(other)}")
            continue
        stack.extend(zip(mine, other))
    return pairs, notes


def _is_head(module: nn.Module) -> bool:
    from ultralytics.nn.modules.head import Detect

    return isinstance(module, Detect)


def _classes(model: nn.Module) -> int | None:
    return getattr(model.model[-1], "nc", None)


def plan_transfer(model: nn.Module, checkpoint_model: nn.Module,
                  source: str) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """Tensors (keyed like ``model.state_dict()``) to copy from ``checkpoint_model`` into ``model``, and the report.

    Changes nothing: the caller copies once every source has been checked.
    """
    from ultralytics.nn.tasks import guess_model_task

    ours, theirs = model.model, checkpoint_model.model
    same_layout = len(ours) == len(theirs) and all(a.f == b.f for a, b in zip(ours, theirs))
    if same_layout:
        pairs, notes = {i: i for i in range(len(ours))}, []
    else:
        pairs, notes = align_layers(ours, theirs)
    nc_ours, nc_theirs = _classes(model), _classes(checkpoint_model)
    report = TransferReport(source, guess_model_task(checkpoint_model), nc_theirs, nc_ours,
                            "index" if same_layout else "structure", 0, 0, 0,
                            sum(p.numel() for p in model.parameters()), dict(sorted(pairs.items())))
    report.not_transferred += notes
    tensors: dict[str, torch.Tensor] = {}
    other_type: dict[tuple[str, str], list[int]] = {}  # (our type, checkpoint type) -> our layer indices
    for i, layer in enumerate(ours):
        if _in_backbone(ours, i):
            continue
        state = {k: v for k, v in layer.state_dict().items() if not k.endswith("num_batches_tracked")}
        report.candidates += len(state)
        j = pairs.get(i)
        if j is None:
            report.not_transferred.append(f"layer {i} {type(layer).__name__} (no counterpart)")
            continue
        other = theirs[j]
        heads = _is_head(layer) and _is_head(other)
        if type(layer) is not type(other) and not heads:
            other_type.setdefault((type(layer).__name__, type(other).__name__), []).append(i)
            continue
        other_state = other.state_dict()
        parameter_names = {name for name, _ in layer.named_parameters()}
        # Heads of different tasks share their box/class branches; each may have parts the other lacks.
        parts, other_parts = {k.split(".")[0] for k in state}, {k.split(".")[0] for k in other_state}
        if heads:
            report.task_specific += sorted(other_parts - parts)
            report.model_only += sorted(parts - other_parts)
        mismatched = []
        for key, tensor in state.items():
            source_tensor = other_state.get(key)
            if source_tensor is not None and source_tensor.shape == tensor.shape:
                tensors[f"model.{i}.{key}"] = source_tensor.detach().to(tensor.dtype).clone()
                report.tensors += 1
                report.parameters += tensor.numel() if key in parameter_names else 0
            elif heads and key.split(".")[0] not in other_parts:
                continue  # counted in model_only
            elif heads and source_tensor is not None and nc_ours != nc_theirs and key.startswith("cv3."):
                # the class branch: its output and (below 100 classes) its hidden width follow the class count
                report.class_dependent.append(f"model.{i}.{key}")
            elif source_tensor is None:
                mismatched.append(f"{key} (not in the checkpoint)")
            else:
                mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(source_tensor.shape)}")
        if mismatched:
            more = f" +{len(mismatched) - 1} more" if len(mismatched) > 1 else ""
            report.not_transferred.append(f"layer {i} {type(layer).__name__}: {mismatched[0]}{more}")
    for (mine, other), indices in other_type.items():
        report.not_transferred.append(f"layer{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))} "
                                      f"({mine} here, {other} in the checkpoint)")
    return tensors, report


__all__ = ["TransferReport", "align_layers", "plan_transfer"]
