"""Where the model YAMLs shipped with this package live, and bare-name lookup in that folder."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def yaml_dir() -> Path:
    """The folder of shipped model YAMLs: package data when installed, ``yaml/`` in a source checkout."""
    installed = _PACKAGE_DIR / "yaml"
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / "yaml"


def list_model_yamls() -> list[Path]:
    """All shipped model YAML files, sorted by name."""
    return sorted(yaml_dir().glob("*.yaml"))


def find_model_yaml(name: str | Path) -> Path | None:
    """The shipped YAML whose file name equals ``name``'s file name, or None."""
    candidate = yaml_dir() / Path(str(name)).name
    return candidate if candidate.is_file() else None
