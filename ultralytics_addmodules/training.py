"""Training helpers built on Ultralytics' public callback API (no patching)."""

from __future__ import annotations

import logging

from .nn.backbone import Backbone

LOGGER = logging.getLogger("ultralytics")


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
    """Keep the backbone(s) of ``yolo`` frozen for the first ``epochs`` epochs of its next ``train()``.

    Typical use with ImageNet weights: train the neck and head first, then fine-tune everything. Works in
    single-process training (callbacks do not reach DDP workers; there use Ultralytics' ``freeze=1``, which
    freezes layer 0, the backbone, for the whole run).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"freeze-backbone epochs must be an integer >= 0, got {epochs!r}")
    if epochs == 0:
        return

    def freeze(trainer):
        n = _set_backbone_trainable(trainer.model, False)
        LOGGER.info(f"ultralytics-addmodules: backbone frozen ({n:,} parameters) for the first {epochs} epochs")

    def maybe_unfreeze(trainer):
        if trainer.epoch == epochs:
            n = _set_backbone_trainable(trainer.model, True)
            LOGGER.info(f"ultralytics-addmodules: epoch {epochs + 1}: backbone unfrozen ({n:,} parameters)")

    yolo.add_callback("on_pretrain_routine_end", freeze)  # after Ultralytics' own freeze/unfreeze pass
    yolo.add_callback("on_train_epoch_start", maybe_unfreeze)
