"""Both supported Ultralytics releases (8.3.0 and 8.4.x): our YAMLs build the same model on each, 8.4-only YAMLs
say which release they need, and 8.4's API differences (fuse(imgsz=...)) are met (issue 22).

The cross-release test needs the other release's interpreter in ADDMODULES_OTHER_PYTHON (CI sets it); it is
skipped with that reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import needs_newer_release, release, train_one_step
from ultralytics import YOLO
from ultralytics.nn import tasks

from ultralytics_addmodules import ModelYAMLError
from ultralytics_addmodules.model_yamls import list_model_yamls

ONLY_84 = [p for p in list_model_yamls() if p.stem.startswith(("yolo12-", "yolo26-"))]
OTHER_PYTHON = os.environ.get("ADDMODULES_OTHER_PYTHON")


def test_8_4_only_yamls_exist():
    assert {p.name for p in ONLY_84} >= {"yolo26-MobileNetV4.yaml", "yolo12-MobileNetV4.yaml"}


@pytest.mark.skipif(release() >= (8, 4), reason="checks the message on Ultralytics 8.3")
@pytest.mark.parametrize("path", ONLY_84, ids=lambda p: p.stem)
def test_8_4_only_yaml_names_the_release_on_8_3(path):
    assert needs_newer_release(path)
    with pytest.raises(ModelYAMLError, match=r"Ultralytics 8\.4.*8\.3\.0.*pip install -U") as e:
        YOLO(path.name.replace("-", "n-", 1))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(release() < (8, 4), reason="YOLO12/YOLO26 need Ultralytics 8.4")
@pytest.mark.parametrize("path", ONLY_84, ids=lambda p: p.stem)
def test_8_4_only_yaml_trains_a_step_and_fuses(path):
    model = tasks.DetectionModel(str(path), nc=2, verbose=False)
    train_one_step(model)
    model.eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)[0] if isinstance(model(x), (list, tuple)) else model(x)
        model.fuse(verbose=False, imgsz=64)  # 8.4's Model.fuse and exporter pass imgsz
        after = model(x)[0] if isinstance(model(x), (list, tuple)) else model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.model[0].modules())
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-3 * float(before.abs().max()))


SIGNATURE = textwrap.dedent("""
    import json, os, sys, torch
    from ultralytics.nn import tasks
    import ultralytics, ultralytics_addmodules
    out = {}
    x = torch.rand(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    for path in json.loads(sys.argv[1]):
        torch.manual_seed(0)
        model = tasks.DetectionModel(path, nc=3, verbose=False).eval()
        weights = path + '.weights.pt'
        if os.path.exists(weights):  # the second release loads the first one's weights
            model.load_state_dict(torch.load(weights, weights_only=True))
        else:
            torch.save(model.state_dict(), weights)
        with torch.no_grad():
            y = model(x)
        while isinstance(y, (list, tuple)):  # the decoded predictions (8.4 nests segment/pose ones one deeper)
            y = y[0]
        torch.save(y, path + '.' + ultralytics.__version__ + '.out.pt')
        state = model.state_dict()
        out[path] = [sum(p.numel() for p in model.parameters()), sorted((k, list(v.shape)) for k, v in state.items())]
    print('SIGNATURE', json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.skipif(not OTHER_PYTHON, reason="ADDMODULES_OTHER_PYTHON (the other supported release's python) not set")
def test_our_yamls_build_the_same_model_on_both_releases(tmp_path):
    """Same parameters, same state_dict keys and shapes, and with the same weights the same outputs."""
    paths = []
    for p in list_model_yamls():
        if p.stem.startswith(("yolo12-", "yolo26-")) or "timm" in p.stem or "-cls-" in p.stem:
            continue  # 8.4-only; timm models are timm's; classifiers are not DetectionModels
        local = tmp_path / p.name.replace("-", "n-", 1)
        local.write_text(p.read_text())
        paths.append(str(local))

    def signature(python):
        r = subprocess.run([python or sys.executable, "-c", SIGNATURE, json.dumps(paths)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.split("SIGNATURE ", 1)[1])

    ours, other = signature(None), signature(OTHER_PYTHON)
    assert ours == other  # parameter counts and every state_dict key and shape
    for path in paths:
        outputs = sorted(Path(tmp_path).glob(Path(path).name + ".*.out.pt"))
        assert len(outputs) == 2, outputs
        a, b = (torch.load(f, weights_only=True) for f in outputs)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


def _detect_yamls_buildable_here():
    for p in list_model_yamls():
        if any(f"-{task}-" in p.stem for task in ("seg", "pose", "obb", "cls")) or needs_newer_release(p):
            continue
        yield pytest.param(p, id=p.stem)


@pytest.mark.slow
@pytest.mark.every_release
@pytest.mark.parametrize("path", list(_detect_yamls_buildable_here()))
def test_every_shipped_yaml_trains_fuses_and_exports(path, tmp_path):
    """On whichever supported release is installed: one epoch on the bundled dataset, fuse(imgsz=...) keeps the
    outputs, and the ONNX export matches PyTorch."""
    if "timm" in path.stem:
        pytest.importorskip("timm")
    from helpers import REPO

    ort = pytest.importorskip("onnxruntime")
    name = path.name.replace("-", "n-", 1)
    model = YOLO(name)
    model.train(data=str(REPO / "dataset" / "data.yaml"), epochs=1, imgsz=64, batch=16, fraction=0.25, workers=0,
                device="cpu", plots=False, val=False, project=str(tmp_path), name="t", exist_ok=True, amp=False)
    trained = YOLO(str(tmp_path / "t" / "weights" / "last.pt"))
    net = trained.model.float().eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = net(x)[0]
        net.fuse(verbose=False) if release() < (8, 4) else net.fuse(verbose=False, imgsz=64)
        after = net(x)[0]
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-3 * float(before.abs().max()))
    onnx_file = trained.export(format="onnx", imgsz=64, simplify=False, dynamic=False)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    exported = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    # the export is of the fused model: compare with it, relative to the output's scale (boxes are pixels)
    torch.testing.assert_close(exported, after, rtol=1e-3, atol=1e-4 * float(after.abs().max()))
