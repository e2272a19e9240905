"""Activation: the import hook, the kill switch, bare YAML names, error messages, plugins."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch
from helpers import REPO, TESTS, fresh_python, make_tiny_dataset, needs_newer_release
from ultralytics.nn import tasks

import ultralytics_addmodules
from ultralytics_addmodules import patch, register_module
from ultralytics_addmodules.model_yamls import list_model_yamls
from ultralytics_addmodules.registry import ScaledOutput

PLUGIN_ENV = {"ULTRALYTICS_ADDMODULES_PLUGINS": "plugin_tiny_backbone", "PYTHONPATH": str(TESTS)}


def test_startup_imports_neither_torch_nor_ultralytics():
    r = fresh_python("import sys; print(json.dumps(['torch' in sys.modules, 'ultralytics' in sys.modules, "
                     "[type(f).__name__ for f in sys.meta_path]]))".replace("json.dumps", "__import__('json').dumps"))
    assert r.returncode == 0, r.stderr
    torch_loaded, ul_loaded, finders = json.loads(r.stdout)
    assert not torch_loaded and not ul_loaded
    assert "UltralyticsFinder" in finders  # the installed .pth put the hook in place


def test_hook_activates_without_importing_the_package(tmp_path):
    code = textwrap.dedent("""
        import sys
        from ultralytics.nn import tasks
        from plugin_tiny_backbone import TINY_YAML  # the plugin module is also imported by activation
        open('tiny.yaml', 'w').write(TINY_YAML)
        m = tasks.DetectionModel('tiny.yaml', verbose=False)
        print(type(m.model[0]).__name__, m.stride.tolist(), tasks.parse_model.__module__)
    """)
    r = fresh_python(code, cwd=tmp_path, env=PLUGIN_ENV)
    assert r.returncode == 0, r.stderr
    result = r.stdout.strip().splitlines()[-1]
    assert result.split()[0] == "TinyBackbone"
    assert "[16.0, 32.0]" in result
    assert result.split()[-1] == "ultralytics_addmodules.patch"


@pytest.mark.slow
def test_fresh_process_trains_one_epoch(tmp_path):
    data = make_tiny_dataset(tmp_path / "data")
    code = textwrap.dedent(f"""
        from ultralytics import YOLO
        from plugin_tiny_backbone import TINY_YAML
        open('tiny.yaml', 'w').write(TINY_YAML)
        model = YOLO('tiny.yaml')
        model.train(data={str(data)!r}, epochs=1, imgsz=64, batch=4, workers=0, device='cpu', plots=False,
                    project={str(tmp_path / 'runs')!r}, name='t', exist_ok=True, amp=False)
        print('TRAINED', type(model.model.model[0]).__name__)
    """)
    r = fresh_python(code, cwd=tmp_path, env=PLUGIN_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TRAINED TinyBackbone" in r.stdout
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()


def test_kill_switch(tmp_path):
    code = textwrap.dedent("""
        import sys
        from ultralytics.nn import tasks
        state = lambda: 'stock' if tasks.parse_model.__module__ == 'ultralytics.nn.tasks' else 'patched'
        seen = [state(), 'loaded' if 'ultralytics_addmodules' in sys.modules else 'not-loaded']
        import ultralytics_addmodules
        seen.append(state())
        ultralytics_addmodules.activate()
        seen.append(state())
        print('RESULT', *seen)
    """)
    r = fresh_python(code, cwd=tmp_path, env={"ULTRALYTICS_ADDMODULES": "0"})
    assert r.returncode == 0, r.stderr
    result = [line for line in r.stdout.splitlines() if line.startswith("RESULT")][0]
    assert result.split()[1:] == ["stock", "not-loaded", "stock", "patched"]


def test_activate_is_idempotent():
    before = tasks.parse_model
    assert ultralytics_addmodules.activate() is True
    assert ultralytics_addmodules.activate() is True
    assert tasks.parse_model is before
    assert ultralytics_addmodules.is_active()


def test_shipped_yamls_resolve_by_bare_name_from_any_directory(tmp_path):
    names = [p.name for p in list_model_yamls("detect") if not needs_newer_release(p)]
    assert names, "no model YAMLs shipped in yaml/"
    scaled = [re.sub(r"^(yolo\d+|yolov\d+)-", r"\1n-", n) for n in names]
    code = textwrap.dedent(f"""
        from ultralytics import YOLO
        for name in {scaled!r}:
            m = YOLO(name)
            print('RESULT', name, m.model.yaml['scale'], int(m.model.stride.max()))
    """)
    r = fresh_python(code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("RESULT")]
    assert [row[0] for row in rows] == scaled
    assert all(row[1] == "n" and row[2] == "32" for row in rows)


def _tiny_dict(**changes):
    from plugin_tiny_backbone import TINY_YAML  # noqa: F401  (registers TinyBackbone in this process)
    import yaml

    d = yaml.safe_load(TINY_YAML)
    d.update(changes)
    return d


def test_unknown_module_names_layer_and_suggests():
    d = _tiny_dict()
    d["head"][2] = [-1, 1, "C3K2", [128, False]]
    with pytest.raises(ValueError) as e:
        tasks.DetectionModel(d, verbose=False)
    msg = str(e.value)
    assert "'C3K2'" in msg and "layer 8" in msg and "C3k2" in msg


def test_referring_to_backbone_layer_zero_is_an_error():
    d = _tiny_dict()
    d["head"][1] = [[-1, 0], 1, "Concat", [1]]
    with pytest.raises(ValueError, match=r"layer 0.*use layers 1-4"):
        tasks.DetectionModel(d, verbose=False)


def test_backbone_line_expands_to_five_layers_in_the_table(caplog):
    d = _tiny_dict()
    with caplog.at_level("INFO", logger="ultralytics"):
        m = tasks.DetectionModel(d, verbose=True)
    assert [type(layer).__name__ for layer in m.model[:6]] == ["TinyBackbone"] + ["SelectFeature"] * 4 + ["SPPF"]
    assert [layer.f for layer in m.model[1:5]] == [0, 0, 0, 0]
    table = caplog.text
    assert "TinyBackbone" in table and table.count("SelectFeature") == 4
    m.eval()
    m.fuse(verbose=False)
    m.info(verbose=False)
    with torch.no_grad():
        y, feats = m(torch.rand(1, 3, 64, 64))
    if isinstance(feats, dict):  # 8.4's Detect returns its raw predictions as a dict
        feats = feats["feats"]
    assert [f.shape[-1] for f in feats] == [4, 2]


def test_profile_forward_runs_through_backbone(caplog):
    m = tasks.DetectionModel(_tiny_dict(), verbose=False).eval()
    with caplog.at_level("INFO", logger="ultralytics"), torch.no_grad():
        m.predict(torch.rand(1, 3, 64, 64), profile=True)
    rows = [line for line in caplog.text.splitlines() if "SelectFeature" in line or "TinyBackbone" in line]
    assert len(rows) == 5  # one timed row for the backbone, one for each selector layer
    assert "Total" in caplog.text


def test_activation_key_is_applied_without_eval_and_restored():
    from ultralytics.nn.modules import Conv

    saved = Conv.default_act
    m = tasks.DetectionModel(_tiny_dict(activation="nn.ReLU()"), verbose=False)
    assert isinstance(m.model[5].cv2.act, torch.nn.ReLU)  # SPPF's output conv was built with the YAML's act
    assert Conv.default_act is saved  # the next model in the process is stock again
    with pytest.raises(ValueError, match="__import__"):
        tasks.DetectionModel(_tiny_dict(activation="__import__('os').system('true')"), verbose=False)
    assert Conv.default_act is saved


def test_register_module_in_one_line():
    class Widen(torch.nn.Conv2d):
        def __init__(self, c1, c2):
            super().__init__(c1, c2, 1)

    register_module(Widen, ScaledOutput())
    d = _tiny_dict()
    d["head"].insert(3, [-1, 1, "Widen", [96]])
    d["head"][-1] = [[9, 5], 1, "Detect", ["nc"]]
    m = tasks.DetectionModel(d, verbose=False)
    assert isinstance(m.model[9], Widen) and m.model[9].out_channels == 24  # 96 * width 0.25


def test_register_module_rejects_bad_rule():
    with pytest.raises(TypeError, match="ChannelRule"):
        register_module(torch.nn.Identity, rule="scaled")


def test_bad_scale_names_valid_ones():
    with pytest.raises(ValueError, match=r"'q'.*valid: n"):
        tasks.DetectionModel(_tiny_dict(scale="q"), verbose=False)


def test_stock_parser_is_kept():
    assert patch.stock_parse_model().__module__ == "ultralytics.nn.tasks"
    assert str(REPO)  # helpers import works
