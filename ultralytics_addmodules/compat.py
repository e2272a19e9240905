"""Which Ultralytics releases the add-on supports: the one place that says so.

``SUPPORTED_ULTRALYTICS`` is read by the version guard in ``activate()``; ``pyproject.toml`` admits exactly the
range from its oldest to its newest entry (a test keeps the two in step). Supporting another release is one edit
here, its channel rules in ``patch.py`` and its parity tests. Imports nothing heavy.
"""

from __future__ import annotations

from .messages import bilingual

SUPPORTED_ULTRALYTICS: tuple[str, ...] = ("8.3.0", "8.4.190")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"8.4.190"`` -> ``(8, 4, 190)``; a pre-release or local suffix is ignored (``"8.4.0rc1"`` -> ``(8, 4, 0)``)."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def is_supported(version: str) -> bool:
    """Whether this exact Ultralytics release is one the add-on was built and tested for."""
    return version_tuple(version) in {version_tuple(v) for v in SUPPORTED_ULTRALYTICS}


def supported_text() -> str:
    """``"8.3.0, 8.4.190"`` for messages."""
    return ", ".join(SUPPORTED_ULTRALYTICS)


def install_command() -> str:
    """The pip command that installs the newest supported release."""
    return f"pip install ultralytics=={SUPPORTED_ULTRALYTICS[-1]}"


def unsupported_message(installed: str) -> str:
    """The one line the version guard logs, and the error our YAML names raise, on an unsupported release."""
    return bilingual(
        f"ultralytics-addmodules 不支持已安装的 Ultralytics {installed}（支持的版本：{supported_text()}），"
        f"扩展模块已关闭，原版 Ultralytics 不受影响；修复：{install_command()}",
        f"ultralytics-addmodules does not support the installed Ultralytics {installed} (supported: "
        f"{supported_text()}); its modules are off and stock Ultralytics is untouched; fix: {install_command()}",
    )
