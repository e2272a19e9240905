"""Training helpers built on Ultralytics' public callback API (no patching)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .messages import bilingual
from .nn.backbone import Backbone

LOGGER = logging.getLogger("ultralytics")
FREEZE_FILE = "freeze_backbone.json"  # in the run folder, next to args.yaml: the setting a resumed run restores


def _set_backbone_trainable(model, trainable: bool) -> int:
    count = 0
    for m in model.modules():
        if isinstance(m, Backbone):
            for p in m.parameters():
                if p.dtype.is_floating_point:
                    p.requires_grad_(trainable)
                    count += p.numel()
    return count


def freeze_backbone(yolo, epochs: int) -> None:
    """Keep the backbone(s) of ``yolo`` frozen exactly while the epoch index is below ``epochs`` in its next
    ``train()``, also when that train() resumes an interrupted run (``train(resume=True)``).

    Typical use with ImageNet weights: train the neck and head first, then fine-tune everything. The setting is
    written to ``freeze_backbone.json`` in the run folder; ``restore_freeze_backbone`` reads it back for a
    resumed run (train.py --resume does so). Works in single-process training (callbacks do not reach DDP
    workers; there use Ultralytics' ``freeze=1``, which freezes layer 0, the backbone, for the whole run).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(bilingual(f"冻结主干的轮数必须是 >= 0 的整数，收到 {epochs!r}",
                                   f"freeze-backbone epochs must be an integer >= 0, got {epochs!r}"))
    if epochs == 0:
        return
    state = {"frozen": None}

    def apply(trainer, epoch: int) -> None:
        frozen = epoch < epochs
        if frozen == state["frozen"]:
            return
        n = _set_backbone_trainable(trainer.model, not frozen)
        state["frozen"] = frozen
        if frozen:
            LOGGER.info(f"ultralytics-addmodules: backbone frozen ({n:,} parameters) while epoch < {epochs}")
        else:
            LOGGER.info(f"ultralytics-addmodules: epoch {epoch + 1}: backbone trainable ({n:,} parameters)")

    def at_setup_end(trainer) -> None:  # after Ultralytics' own freeze pass and resume_training()
        save_dir = Path(trainer.save_dir)
        if save_dir.is_dir():
            (save_dir / FREEZE_FILE).write_text(json.dumps({"epochs": epochs}) + "\n")
        apply(trainer, trainer.start_epoch)

    yolo.add_callback("on_pretrain_routine_end", at_setup_end)
    yolo.add_callback("on_train_epoch_start", lambda trainer: apply(trainer, trainer.epoch))


def restore_freeze_backbone(yolo, checkpoint: str | Path) -> int:
    """For a run resumed from ``checkpoint`` (``<run>/weights/last.pt``): apply the ``freeze_backbone`` setting
    the run was started with, if any. Returns its epoch count (0 when the run froze nothing)."""
    setting = Path(checkpoint).resolve().parent.parent / FREEZE_FILE
    if not setting.is_file():
        return 0
    epochs = json.loads(setting.read_text()).get("epochs", 0)
    freeze_backbone(yolo, epochs)
    return epochs
