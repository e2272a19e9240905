"""Registry contract (issue 19): a name is registered once, backbones() is the only (live) list, and the package
face is honest: importing a submodule imports neither torch nor Ultralytics."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from helpers import TESTS, fresh_python

import ultralytics_addmodules
from ultralytics_addmodules import MultiOutputBackbone, ScaledOutput, register_module
from ultralytics_addmodules.registry import lookup


class _BlockA(torch.nn.Conv2d):
    def __init__(self, c1, c2):
        super().__init__(c1, c2, 1)


class _BlockB(_BlockA):
    pass


def test_a_name_is_registered_once():
    register_module(_BlockA, ScaledOutput(), name="RegistryTestBlock")
    register_module(_BlockA, ScaledOutput(), name="RegistryTestBlock")  # the same class again: no change
    with pytest.raises(ValueError) as e:
        register_module(_BlockB, ScaledOutput(), name="RegistryTestBlock")
    message = str(e.value)
    assert "_BlockA" in message and "_BlockB" in message and "force=True" in message and " | " in message
    assert lookup("RegistryTestBlock").cls is _BlockA
    register_module(_BlockB, ScaledOutput(), name="RegistryTestBlock", force=True)
    assert lookup("RegistryTestBlock").cls is _BlockB


def test_a_stock_name_needs_force():
    from ultralytics.nn.modules import Conv

    with pytest.raises(ValueError, match=r"'Conv'.*ultralytics\.nn\.modules\.conv\.Conv"):
        register_module(_BlockA, ScaledOutput(), name="Conv")
    assert lookup("Conv").cls is Conv


def test_user_block_with_a_stock_name_is_refused_at_activation(tmp_path):
    (tmp_path / "my_conv_plugin.py").write_text(textwrap.dedent("""
        import torch
        from ultralytics_addmodules import ScaledOutput, register_module

        class Conv(torch.nn.Conv2d):
            def __init__(self, c1, c2, *args):
                super().__init__(c1, c2, 1)

        register_module(Conv, ScaledOutput())  # registered before Ultralytics' own Conv is known
    """))
    code = "from ultralytics.nn import tasks; import ultralytics_addmodules as a; print('ACTIVE', a.is_active())"
    r = fresh_python(code, cwd=tmp_path, env={"ULTRALYTICS_ADDMODULES_PLUGINS": "my_conv_plugin",
                                              "PYTHONPATH": str(tmp_path), "YOLO_VERBOSE": "true"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ACTIVE False" in r.stdout
    assert "'Conv'" in r.stdout + r.stderr and "force=True" in r.stdout + r.stderr


def test_backbones_is_live_and_includes_plugins():
    class LateBackbone(ultralytics_addmodules.Backbone):
        pass

    assert "LateBackbone" not in ultralytics_addmodules.backbones()
    register_module(LateBackbone, MultiOutputBackbone())
    assert "LateBackbone" in ultralytics_addmodules.backbones()
    assert "LateBackbone" in ultralytics_addmodules.BACKBONES  # the round-1 name reads the same live list
    assert {"MobileNetV4ConvSmall", "efficient", "efficientnet_v2", "MobileNetV1", "TimmBackbone"} <= set(
        ultralytics_addmodules.backbones())


def test_importing_submodules_imports_neither_torch_nor_ultralytics():
    code = textwrap.dedent("""
        import json, sys
        import ultralytics_addmodules.registry, ultralytics_addmodules.compat, ultralytics_addmodules.messages
        first = ['torch' in sys.modules, 'ultralytics' in sys.modules]
        import ultralytics_addmodules
        second = ['torch' in sys.modules, 'ultralytics' in sys.modules, ultralytics_addmodules.is_active()]
        from ultralytics.nn import tasks  # Ultralytics' own import completes the activation
        print('RESULT', json.dumps([first, second, ultralytics_addmodules.is_active(), tasks.parse_model.__module__]))
    """)
    r = fresh_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    first, second, active, parse_module = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert first == [False, False]
    assert second == [False, False, False]
    assert active is True and parse_module == "ultralytics_addmodules.patch"


def test_importing_patch_first_still_activates():
    r = fresh_python("from ultralytics_addmodules import patch\nimport ultralytics_addmodules as a\n"
                     "print('ACTIVE', a.is_active())")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ACTIVE True" in r.stdout
    assert TESTS.is_dir()
