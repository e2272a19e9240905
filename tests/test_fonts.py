"""Chinese class names in Ultralytics' plots, offline: the [cjk] extra's font, no download, no missing glyphs."""

from __future__ import annotations

import importlib.util
import logging
import urllib.request
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from ultralytics_addmodules import fonts, patch

HAS_CJK_EXTRA = importlib.util.find_spec("noto_cjk_sans_otc") is not None
NAMES = {0: "猫", 1: "狗"}


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test (Ultralytics' check_font probes its URL with urlopen)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def own_rcparams(monkeypatch):
    """Changes to matplotlib's font family stay inside the test."""
    monkeypatch.setitem(matplotlib.rcParams, "font.family", list(matplotlib.rcParams["font.family"]))


def dejavu() -> fonts.CJKFont:
    """A font every matplotlib ships, standing in for a CJK font (the wiring does not care which)."""
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return fonts.CJKFont(path, 0, "DejaVu Sans")


def test_check_font_uses_the_local_font_for_non_ascii_labels(monkeypatch, no_network, own_rcparams):
    from ultralytics.data import utils as data_utils
    from ultralytics.utils import plotting

    monkeypatch.setattr(fonts, "find_cjk_font", dejavu)
    asked = []
    monkeypatch.setitem(patch.STOCK, "check_font", lambda font: asked.append(font) or "stock.ttf")
    # the names Ultralytics calls it by: plotting (Annotator) and data.utils (check_det_dataset)
    assert plotting.check_font("Arial.Unicode.ttf") == str(dejavu().path)
    assert data_utils.check_font("Arial.Unicode.ttf") == str(dejavu().path)
    assert asked == []
    assert plotting.check_font("Arial.ttf") == "stock.ttf" and asked == ["Arial.ttf"]  # ASCII labels: untouched
    annotator = plotting.Annotator(np.zeros((64, 64, 3), np.uint8), example="猫")
    assert annotator.pil and annotator.font.path == str(dejavu().path)


def test_without_a_cjk_font_stock_lookup_runs_and_names_the_extra(monkeypatch, caplog):
    from ultralytics.utils import plotting

    monkeypatch.setattr(fonts, "find_cjk_font", lambda: None)
    monkeypatch.setitem(patch.STOCK, "check_font", lambda font: None)  # offline: stock finds nothing
    fonts._warn_missing.cache_clear()
    with caplog.at_level(logging.WARNING, logger="ultralytics"):
        assert plotting.check_font("Arial.Unicode.ttf") is None
        assert plotting.check_font("Arial.Unicode.ttf") is None
    hints = [r.getMessage() for r in caplog.records if fonts.INSTALL_HINT in r.getMessage()]
    assert len(hints) == 1 and "类别名" in hints[0]  # once, Chinese first


def glyph_warnings(plot) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot()
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


@pytest.mark.slow  # two rounds of Ultralytics' label plots and confusion matrix: about 30 s on 2 cores
@pytest.mark.skipif(not HAS_CJK_EXTRA, reason="the [cjk] extra (pip package noto-cjk-sans-otc) is not installed")
def test_chinese_names_in_ultralytics_plots_with_the_cjk_extra(tmp_path, no_network, own_rcparams):
    from ultralytics.utils import checks, plotting
    from ultralytics.utils.metrics import ConfusionMatrix

    rng = np.random.default_rng(0)
    boxes, cls = rng.uniform(0.1, 0.5, (20, 4)).astype(np.float32), rng.integers(0, 2, 20)  # as in training

    def plot_all():
        plotting.plot_labels(boxes.copy(), cls, names=NAMES, save_dir=tmp_path)
        matrix = ConfusionMatrix(nc=2)
        matrix.matrix = rng.integers(0, 5, (3, 3)).astype(float)
        matrix.plot(names=tuple(NAMES.values()), save_dir=tmp_path)

    matplotlib.rcParams["font.family"] = ["sans-serif"]  # control: matplotlib's default font has no Chinese
    assert glyph_warnings(plot_all), "the control plot should miss glyphs"

    font = checks.check_font("Arial.Unicode.ttf")  # what check_det_dataset does for non-ASCII names
    assert Path(font).name == "NotoSansCJK-Regular.ttc"
    assert glyph_warnings(plot_all) == []
    assert (tmp_path / "labels.jpg").is_file() and (tmp_path / "confusion_matrix_normalized.png").is_file()

    annotator = plotting.Annotator(np.full((96, 96, 3), 255, np.uint8), example="猫狗")
    assert annotator.font.getname() == ("Noto Sans CJK SC", "Regular")  # the Simplified Chinese face
    drawn = []
    for name in NAMES.values():
        annotator = plotting.Annotator(np.full((96, 96, 3), 255, np.uint8), example="猫狗")
        annotator.box_label([10, 40, 80, 90], name, color=(0, 0, 255))
        drawn.append(np.asarray(annotator.result())[:40])
    assert not np.array_equal(*drawn)  # real glyphs: 猫 and 狗 differ (missing glyphs draw the same box)


def test_a_system_cjk_font_is_used_without_the_extra(monkeypatch):
    from matplotlib import font_manager

    path = str(dejavu().path)
    monkeypatch.setattr(fonts, "_pip_font", lambda: None)
    fake = font_manager.FontEntry(fname=path, name="Microsoft YaHei")  # as matplotlib lists a Windows font
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [fake])
    fonts.find_cjk_font.cache_clear()
    try:
        assert fonts.find_cjk_font() == fonts.CJKFont(Path(path), 0, "Microsoft YaHei")
        monkeypatch.setattr(font_manager.fontManager, "ttflist", [])
        fonts.find_cjk_font.cache_clear()
        assert fonts.find_cjk_font() is None
    finally:
        fonts.find_cjk_font.cache_clear()
