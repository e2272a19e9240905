"""Chinese class names in Ultralytics' plots, offline.

For labels that are not ASCII, Ultralytics 8.3.0 asks ``check_font("Arial.Unicode.ttf")``, which downloads
that font from GitHub (and, offline, falls back to PIL's built-in font, which has no Chinese); matplotlib's
default DejaVu Sans has no Chinese either, so label plots and confusion matrices show empty boxes and log
"Glyph ... missing from font(s) DejaVu Sans".

The ``[cjk]`` extra (``pip install ultralytics-addmodules[cjk]``) brings Noto Sans CJK through pip: the
``noto-cjk-sans-otc`` package (a 15.5 MB wheel: the Noto Sans CJK collection, whose Simplified Chinese
face is used; OFL-1.1). Without it, a CJK font already installed on the system (Microsoft YaHei, SimHei,
PingFang SC, Noto Sans CJK SC, WenQuanYi, ...) is used when matplotlib knows it. Nothing is downloaded.
``patch.py`` wires ``check_font`` and the PIL annotator to the functions here.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

INSTALL_HINT = "pip install ultralytics-addmodules[cjk]"
UNICODE_FONT_REQUEST = "Arial.Unicode.ttf"  # what Ultralytics asks for when labels are not ASCII

# (importable package, font file inside it, family name of its Simplified Chinese face); the [cjk] extra first.
PIP_FONTS = (("noto_cjk_sans_otc", "NotoSansCJK-Regular.ttc", "Noto Sans CJK SC"),)
# Fonts a system may already have, best first (family names as matplotlib lists them).
SYSTEM_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "Microsoft YaHei",
                   "PingFang SC", "SimHei", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Heiti SC",
                   "Droid Sans Fallback")

LOGGER = logging.getLogger("ultralytics")


@dataclass(frozen=True)
class CJKFont:
    """A font file with Chinese glyphs, the face to use inside it (``.ttc`` collections) and its family name."""

    path: Path
    index: int
    family: str


def _face_index(path: Path, family: str) -> int:
    """Index of the face named ``family`` in a font collection (0 when not found or not a collection)."""
    from PIL import ImageFont

    for index in range(32):
        try:
            name = ImageFont.truetype(str(path), 10, index=index).getname()[0]
        except OSError:
            break
        if name == family:
            return index
    return 0


def _pip_font() -> CJKFont | None:
    for module, filename, family in PIP_FONTS:
        spec = importlib.util.find_spec(module)  # locate the package without importing it
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / filename
            if path.is_file():
                return CJKFont(path, _face_index(path, family), family)
    return None


def _system_font() -> CJKFont | None:
    from matplotlib import font_manager

    entries = {}
    for entry in font_manager.fontManager.ttflist:
        entries.setdefault(entry.name, entry)
    for family in SYSTEM_FAMILIES:
        entry = entries.get(family)
        if entry is not None and Path(entry.fname).is_file():
            path = Path(entry.fname)
            index = getattr(entry, "index", None)  # matplotlib >= 3.10 knows the face of a collection
            return CJKFont(path, index if index is not None else _face_index(path, family), family)
    return None


@functools.lru_cache(maxsize=None)
def find_cjk_font() -> CJKFont | None:
    """The font for Chinese labels: the ``[cjk]`` extra's, else a system one matplotlib knows, else None."""
    return _pip_font() or _system_font()


@functools.lru_cache(maxsize=None)
def _register(font: CJKFont) -> str:
    """Add ``font`` to matplotlib's font list (once); returns the family name to ask for."""
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(font.path))
    registered = [e.name for e in font_manager.fontManager.ttflist if Path(e.fname) == font.path]
    return font.family if font.family in registered or not registered else registered[0]


def use_in_matplotlib(font: CJKFont) -> str:
    """Make ``font`` matplotlib's fallback after the default family; returns the family used.

    Latin text keeps DejaVu Sans; characters it lacks come from ``font`` (matplotlib >= 3.6 falls back
    glyph by glyph through the ``font.family`` list).
    """
    import matplotlib

    family = _register(font)
    families = list(matplotlib.rcParams["font.family"])
    if family not in families:
        matplotlib.rcParams["font.family"] = families + [family]
    return family


@functools.lru_cache(maxsize=None)
def _warn_missing() -> None:
    LOGGER.warning("WARNING ⚠️ 类别名不是英文，图里要显示中文需要字体（不会联网下载）：" + INSTALL_HINT +
                   " | class names are not ASCII; to show them in plots install a CJK font (nothing is downloaded): " +
                   INSTALL_HINT)


def check_font(font: str, stock_check_font: Callable[[str], object]):
    """Ultralytics' ``check_font`` with a local CJK font for non-ASCII labels instead of a download.

    Other requests go to ``stock_check_font`` unchanged. When no CJK font is installed, Ultralytics' own
    lookup runs as before and a one-line hint names the extra to install.
    """
    if Path(str(font)).name != UNICODE_FONT_REQUEST:
        return stock_check_font(font)
    cjk = find_cjk_font()
    if cjk is None:
        found = stock_check_font(font)
        if found is None:
            _warn_missing()
        return found
    use_in_matplotlib(cjk)
    return str(cjk.path)


def chinese_face(pil_font):
    """``pil_font`` switched to the Simplified Chinese face when it was opened from our collection file.

    PIL opens face 0 of a ``.ttc`` (Japanese in Noto Sans CJK, whose forms differ for many common
    characters, e.g. 直, 角, 门); the same size, other face is returned. A ``getsize`` that a caller
    attached to the font instance is attached to the new one too.
    """
    cjk = find_cjk_font()
    if cjk is None or getattr(pil_font, "path", None) != str(cjk.path) or getattr(pil_font, "index", 0) == cjk.index:
        return pil_font
    face = pil_font.font_variant(index=cjk.index)
    if "getsize" in vars(pil_font):  # Ultralytics adds getsize to fonts of Pillow >= 10, which dropped it
        face.getsize = lambda text: face.getbbox(text)[2:4]
    return face
