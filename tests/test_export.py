"""Export of every shipped YAML through Ultralytics' own path: ONNX (static and dynamic shapes) and
TorchScript, with outputs equal to the PyTorch model, standard ONNX ops only, and no network access."""

from __future__ import annotations

import copy
import re
import socket
import subprocess

import numpy as np
import pytest
import torch
from helpers import randomize_and_calibrate_
from ultralytics import YOLO

from ultralytics_addmodules.model_yamls import list_model_yamls

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

YAMLS = [p.name for p in list_model_yamls("detect")]  # the checks below read Detect outputs
# Exported output vs PyTorch float32: max abs difference of the whole Detect output (xywh boxes in pixels,
# class scores) below 1e-3, or below 3x float32's own rounding noise where that is larger. The models have
# random weights with calibrated BatchNorm statistics (a default-initialised model gives nearly the same
# output for every input, so parity would prove nothing); such random networks are ill-conditioned, and
# float32 PyTorch itself differs from float64 by up to ~0.01 px at 96x128. That noise floor is measured in
# the same test (float64 copy of the model); a real export error (padding, anchors, folding) is pixels.
TOLERANCE = 1e-3
NOISE_FACTOR = 3.0
STANDARD_DOMAINS = {"", "ai.onnx"}


def scaled(name: str, scale: str = "n") -> str:
    """'yolo11-X.yaml' -> 'yolo11n-X.yaml' (Ultralytics reads the scale from the file name)."""
    return re.sub(r"^(yolo(?:v)?\d+)", rf"\g<1>{scale}", name, count=1)


def random_model(name: str) -> YOLO:
    """The model at scale n with random weights and calibrated random BatchNorm statistics.

    The last convolutions of the Detect head are scaled down so box and class logits stay in the range a
    trained detector produces (softmax / sigmoid not saturated).
    """
    torch.manual_seed(0)
    yolo = YOLO(scaled(name))
    randomize_and_calibrate_(yolo.model)
    detect = yolo.model.model[-1]
    with torch.no_grad():
        for branch in (*detect.cv2, *detect.cv3):
            branch[-1].weight.mul_(0.1)
    return yolo


def pytorch_output(yolo: YOLO, x: torch.Tensor) -> tuple[np.ndarray, float]:
    """Float32 output of the model, and its max abs difference from the float64 model (rounding noise)."""
    model = yolo.model.eval()
    with torch.no_grad():
        out = model(x)[0]
        exact = copy.deepcopy(model).double()(x.double())[0]
    return out.numpy(), float((out.double() - exact).abs().max())


def onnx_output(path: str, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def assert_close(got: np.ndarray, expected: tuple[np.ndarray, float]) -> None:
    """``got`` vs ``pytorch_output(...)``: the Detect output (batch, 4 + classes, anchors)."""
    expected, noise = expected
    assert got.shape == expected.shape
    assert np.abs(expected[:, :4]).max() > 1.0  # real boxes, not a comparison of two near-zero tensors
    diff = float(np.abs(got - expected).max())
    limit = max(TOLERANCE, NOISE_FACTOR * noise)
    print(f"max abs diff {diff:.2e} (float32 noise {noise:.2e}, limit {limit:.2e})")
    assert diff < limit, f"outputs differ by up to {diff:.2e}; float32 rounding alone gives {noise:.2e}"


def graph_domains(model) -> set[str]:
    """Op domains of every node, subgraphs included, plus the declared opset domains."""
    domains = {o.domain for o in model.opset_import}
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            domains.add(node.domain)
            stack.extend(a.g for a in node.attribute if a.HasField("g"))
    return domains


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # exports are written next to the model file name, i.e. in the cwd
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("name", YAMLS)
def test_onnx_static_and_dynamic_match_pytorch(name, in_tmp):
    yolo = random_model(name)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = pytorch_output(yolo, x)

    static = yolo.export(format="onnx", imgsz=64, simplify=False)
    graph = onnx.load(static)
    onnx.checker.check_model(graph)
    assert graph_domains(graph) <= STANDARD_DOMAINS, f"custom op domains: {graph_domains(graph) - STANDARD_DOMAINS}"
    assert_close(onnx_output(static, x), expected)

    dynamic = yolo.export(format="onnx", imgsz=64, simplify=False, dynamic=True)
    assert graph_domains(onnx.load(dynamic)) <= STANDARD_DOMAINS
    other = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(2))  # other batch and shape
    assert_close(onnx_output(dynamic, other), pytorch_output(yolo, other))


@pytest.mark.slow
@pytest.mark.parametrize("name", YAMLS)
def test_torchscript_matches_pytorch(name, in_tmp):
    yolo = random_model(name)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path = yolo.export(format="torchscript", imgsz=64)
    scripted = torch.jit.load(path).eval()
    with torch.no_grad():
        got = scripted(x)
    got = got[0] if isinstance(got, (list, tuple)) else got
    assert_close(got.numpy(), pytorch_output(yolo, x))


def test_default_export_settings_never_touch_the_network(in_tmp, monkeypatch):
    """8.3.0 defaults to simplify=True, which asks for onnxslim; offline that must be a warning, not a pip run."""
    attempts = []

    def no_connect(self, address, *args):
        attempts.append(f"connect {address}")
        raise OSError("network disabled in this test")

    def no_subprocess(*args, **kwargs):
        attempts.append(f"subprocess {args[0] if args else kwargs.get('args')}")
        raise OSError("subprocesses disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    for fn in ("run", "check_output", "check_call", "Popen"):
        monkeypatch.setattr(subprocess, fn, no_subprocess)
    path = YOLO(scaled(YAMLS[0])).export(format="onnx", imgsz=64)  # all defaults
    assert path and path.endswith(".onnx")
    assert not attempts, attempts
