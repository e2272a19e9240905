"""Never break stock Ultralytics: version guard, all-or-nothing activation, quiet processes, a self-guarding
start-up line, stock exception types (issue 13)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import ultralytics
from helpers import REPO, TESTS, fresh_python
from ultralytics.nn import tasks

from ultralytics_addmodules import compat

UNSUPPORTED = "8.3.100"  # a real release the add-on does not support (its wheel imports with our torch/numpy)
CACHE = Path(os.environ.get("ADDMODULES_TEST_CACHE", Path.home() / ".cache" / "ultralytics-addmodules-tests"))


def _unpacked_release(version: str) -> Path:
    """An Ultralytics wheel unpacked once into the test cache (downloaded from the package index once)."""
    target = CACHE / f"ultralytics-{version}"
    if (target / "ultralytics" / "__init__.py").is_file():
        return target
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = next(wheels.glob(f"ultralytics-{version}-*.whl"), None)
    if wheel is None:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"ultralytics=={version}",
                            "-d", str(wheels)], capture_output=True, text=True, timeout=300)
        wheel = next(wheels.glob(f"ultralytics-{version}-*.whl"), None)
        if wheel is None:
            pytest.skip(f"cannot download ultralytics {version} from the package index: {r.stderr.strip()[-200:]}")
    tmp = target.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
    tmp.rename(target)
    return target


@pytest.fixture(scope="module")
def unsupported_release() -> dict:
    """Environment for a fresh interpreter that imports an unsupported Ultralytics release first."""
    return {"PYTHONPATH": os.pathsep.join([str(_unpacked_release(UNSUPPORTED)), str(TESTS)]), "YOLO_VERBOSE": "true"}


def _ours_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if "addmodules" in line]


@pytest.mark.slow
def test_unsupported_release_keeps_stock_working_and_names_the_supported_ones(unsupported_release, tmp_path):
    code = textwrap.dedent("""
        import ultralytics
        from ultralytics import YOLO
        import ultralytics_addmodules as addon
        from ultralytics.nn import tasks
        print('VERSION', ultralytics.__version__, addon.is_active(), tasks.parse_model.__module__)
        m = YOLO('yolo11n.yaml')
        print('STOCK', sum(p.numel() for p in m.model.parameters()))
        try:
            YOLO('yolo11n-MobileNetV4.yaml')
        except Exception as e:
            print('OURS', type(e).__name__, str(e))
    """)
    r = fresh_python(code, cwd=tmp_path, env=unsupported_release)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.split(" ", 1)[0] in ("VERSION", "STOCK", "OURS"))
    assert lines["VERSION"] == f"{UNSUPPORTED} False ultralytics.nn.tasks"
    assert int(lines["STOCK"]) == 2624080  # stock YOLO11n, unchanged
    assert "ModelYAMLError" in lines["OURS"] and UNSUPPORTED in lines["OURS"]
    assert all(v in lines["OURS"] for v in compat.SUPPORTED_ULTRALYTICS)
    guard_lines = _ours_in(r.stdout + r.stderr)
    assert sum("不支持" in line for line in guard_lines) == 2  # the guard's one line, and the YAML's error


@pytest.mark.slow
def test_unsupported_release_trains_stock_one_step(unsupported_release, tmp_path):
    code = textwrap.dedent("""
        from ultralytics.nn import tasks
        from helpers import train_one_step
        m = tasks.DetectionModel('yolo11n.yaml', nc=2, verbose=False)
        print('LOSS', train_one_step(m, nc=2))
    """)
    r = fresh_python(code, cwd=tmp_path, env=unsupported_release)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LOSS" in r.stdout


def test_yolo_version_prints_only_the_version():
    yolo = Path(sys.executable).with_name("yolo")
    env = {**os.environ, "YOLO_VERBOSE": "true"}  # the version is a log line: hidden when not verbose
    r = subprocess.run([str(yolo), "version"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ultralytics.__version__
    assert not _ours_in(r.stderr)


def test_a_process_without_our_modules_prints_nothing_of_ours_and_ours_says_one_line(tmp_path):
    code = textwrap.dedent("""
        from ultralytics.nn.tasks import DetectionModel
        DetectionModel('yolo11n.yaml', verbose=True)  # verbose, as training builds it: the model table prints
        print('---')
        DetectionModel('yolo11n-MobileNetV4.yaml', verbose=True)
    """)
    r = fresh_python(code, cwd=tmp_path, env={"YOLO_VERBOSE": "true"})
    assert r.returncode == 0, r.stderr[-2000:]
    stock_part, ours_part = (r.stdout + r.stderr).split("---", 1)
    assert not _ours_in(stock_part)
    said = [line for line in ours_part.splitlines() if line.startswith("ultralytics-addmodules:")]
    assert said == ["ultralytics-addmodules: this model uses MobileNetV4ConvSmall"]


PLUGINS = {
    "import_error": "import no_such_module_anywhere\n",
    "exception": "raise RuntimeError('plugin broke')\n",
    "exit": "import sys\nsys.exit(3)\n",
}


@pytest.mark.parametrize("kind", sorted(PLUGINS))
def test_failing_plugin_leaves_a_live_process_and_stock_ultralytics(kind, tmp_path):
    (tmp_path / f"bad_plugin_{kind}.py").write_text(PLUGINS[kind])
    code = textwrap.dedent("""
        import ultralytics_addmodules as addon
        from ultralytics import YOLO
        from ultralytics.nn import tasks
        from ultralytics.utils import checks
        import ultralytics.data.utils as data_utils
        stock = (tasks.parse_model.__module__, checks.check_yaml.__module__, tasks.BaseModel.fuse.__module__,
                 tasks.DetectionModel.__init__.__module__, data_utils.check_det_dataset.__module__,
                 tasks.torch_safe_load.__module__)
        print('STATE', addon.is_active(), all(m.startswith('ultralytics.') for m in stock))
        print('STOCK', sum(p.numel() for p in YOLO('yolo11n.yaml').model.parameters()))
        print('BACKBONES', 'MobileNetV4ConvSmall' in addon.backbones(), addon.lookup('Conv') is None)
    """)
    r = fresh_python(code, cwd=tmp_path, env={"ULTRALYTICS_ADDMODULES_PLUGINS": f"bad_plugin_{kind}",
                                              "PYTHONPATH": str(tmp_path), "YOLO_VERBOSE": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "STATE False True" in r.stdout
    assert "STOCK 2624080" in r.stdout
    assert "BACKBONES True True" in r.stdout  # our own names stay known; no stock entry was left behind
    said = _ours_in(r.stdout + r.stderr)
    assert len(said) == 1 and f"bad_plugin_{kind}" in said[0] and "未激活" in said[0] and "runs stock" in said[0]


def test_pth_line_is_silent_when_its_module_is_gone(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(REPO / "autoload" / "ultralytics_addmodules.pth", site_dir)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"import site; site.addsitedir({str(site_dir)!r}); print('OK')"
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "OK"
    assert r.stderr == ""
    # ... and with the module beside it, the same line installs the hook
    shutil.copy(REPO / "autoload" / "ultralytics_addmodules_autoload.py", site_dir)
    code = (f"import site, sys; site.addsitedir({str(site_dir)!r}); "
            "print([type(f).__name__ for f in sys.meta_path].count('UltralyticsFinder'))")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() in ("1",), r.stderr


def test_corrupt_checkpoint_keeps_the_stock_exception_type(tmp_path):
    from ultralytics import YOLO

    import torch

    good = tmp_path / "good.pt"
    torch.save({"model": tasks.DetectionModel("yolo11n.yaml", nc=2, verbose=False).half(), "train_args": {}}, good)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good.read_bytes()[:20000])
    saved = tasks.torch_safe_load
    try:  # what stock raises for this file
        tasks.torch_safe_load = __import__("ultralytics_addmodules.patch").patch.STOCK["torch_safe_load"]
        with pytest.raises(Exception) as stock_error:
            YOLO(str(bad))
    finally:
        tasks.torch_safe_load = saved
    with pytest.raises(Exception) as ours:
        YOLO(str(bad))
    assert isinstance(ours.value, type(stock_error.value))
    assert "truncated.pt" in str(ours.value) and "corrupt or truncated" in str(ours.value)


def test_upgrade_hint_gets_one_line_about_supported_releases(monkeypatch, caplog):
    from ultralytics.utils import checks

    from ultralytics_addmodules import patch

    monkeypatch.setitem(patch.STOCK, "check_pip_update_available", lambda: True)
    with caplog.at_level("INFO", logger="ultralytics"):
        assert checks.check_pip_update_available() is True
    lines = [r.getMessage() for r in caplog.records if "ultralytics-addmodules" in r.getMessage()]
    assert len(lines) == 1 and all(v in lines[0] for v in compat.SUPPORTED_ULTRALYTICS)
    monkeypatch.setitem(patch.STOCK, "check_pip_update_available", lambda: False)
    caplog.clear()
    assert checks.check_pip_update_available() is False
    assert not caplog.records


def test_supported_set_is_what_pyproject_admits():
    text = (REPO / "pyproject.toml").read_text()
    spec = re.search(r'"ultralytics(>=[^"]+)"', text).group(1)
    bounds = dict(re.findall(r"(>=|<=)\s*([0-9.]+)", spec))
    versions = sorted(compat.SUPPORTED_ULTRALYTICS, key=compat.version_tuple)
    assert bounds == {">=": versions[0], "<=": versions[-1]}
    assert compat.is_supported(ultralytics.__version__)
    assert not compat.is_supported(UNSUPPORTED)


def test_activation_imports_no_module_stock_ultralytics_defers(tmp_path):
    """Ultralytics 8.4 keeps torchvision out of `import ultralytics` (its own test checks it); activating the
    add-on must not pull in anything heavy that stock leaves for later."""
    code = ("import sys\nfrom ultralytics import YOLO\nimport ultralytics_addmodules\n"
            "print('LOADED', sorted(m for m in ('torchvision', 'timm', 'onnx', 'openvino', 'tensorflow') "
            "if m in sys.modules), ultralytics_addmodules.is_active())")
    off = fresh_python(code, cwd=tmp_path, env={"ULTRALYTICS_ADDMODULES": "0"})
    on = fresh_python(code, cwd=tmp_path)
    assert off.returncode == 0 and on.returncode == 0, (off.stderr + on.stderr)[-2000:]
    loaded_off = off.stdout.split("LOADED ", 1)[1].strip()
    loaded_on = on.stdout.split("LOADED ", 1)[1].strip()
    assert loaded_off.endswith("False") and loaded_on.endswith("True")  # the add-on was off, then active
    assert loaded_on.rsplit(" ", 1)[0] == loaded_off.rsplit(" ", 1)[0]
