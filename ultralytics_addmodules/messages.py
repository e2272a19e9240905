"""Messages a user reads: one line, Chinese first, then English (see DESIGN.md, "Messages a user reads").

Imports nothing heavy (no torch, no Ultralytics): the start-up hook, the registry and the dataset check use it.
"""

from __future__ import annotations


def bilingual(zh: str, en: str) -> str:
    """One line: the Chinese sentence, then the English one (``"中文 | English"``).

    Both halves name the same bad value and what would be valid; newlines are folded so the result stays
    one line whatever the caller passed.
    """
    return " | ".join(" ".join(part.split()) for part in (zh, en))


class ModelYAMLError(ValueError):
    """A model YAML that cannot be built; ``str(error)`` is one bilingual line naming the layer and value."""


__all__ = ["ModelYAMLError", "bilingual"]
