"""Export of every shipped YAML through Ultralytics' own path: ONNX (static and dynamic shapes) and
TorchScript, with outputs equal to the PyTorch model, standard ONNX ops only, and no network access."""

from __future__ import annotations

import copy
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    Float32Reference,
    assert_matches_float32_reference,
    buildable_model_yamls,
    randomize_and_calibrate_,
)
from ultralytics import YOLO


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# The checks below read Detect outputs. The *-pretrained YAMLs are the same families at width 1.0 and export
# through the same code; test_releases exports each of them to ONNX with parity.
YAMLS = [n for n in buildable_model_yamls("detect") if not n.endswith("-pretrained.yaml")]
# Exported outputs are compared with PyTorch float32 within a stated factor of float32's own rounding noise,
# measured on the same inputs (helpers.assert_matches_float32_reference, NOISE_FACTOR). The models have
# random weights with calibrated BatchNorm statistics (a default-initialised model gives nearly the same output
# for every input, so parity would prove nothing); such random networks are ill-conditioned: float32 PyTorch
# itself differs from float64 by up to ~0.01 px at 64x64 for EfficientNetV2. A real export error (padding,
# anchors, a BatchNorm folded with the wrong eps) is pixels: test_export_tolerance_catches_a_wrong_batchnorm_eps.
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


def random_inputs(shape: tuple, n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    """Several seeded random images: the noise and the error are measured over all of them."""
    return [torch.rand(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]


def pytorch_reference(yolo: YOLO, inputs: list[torch.Tensor]) -> Float32Reference:
    ref = Float32Reference(yolo.model, inputs)
    assert max(np.abs(o[:, :4]).max() for o in ref.outputs) > 1.0  # real boxes, not two near-zero tensors
    return ref


def onnx_output(path: str, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


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
    xs = random_inputs((1, 3, 64, 64))
    expected = pytorch_reference(yolo, xs)

    static = yolo.export(format="onnx", imgsz=64, simplify=False)
    graph = onnx.load(static)
    onnx.checker.check_model(graph)
    assert graph_domains(graph) <= STANDARD_DOMAINS, f"custom op domains: {graph_domains(graph) - STANDARD_DOMAINS}"
    print(assert_matches_float32_reference([onnx_output(static, x) for x in xs], expected, "ONNX static"))

    dynamic = yolo.export(format="onnx", imgsz=64, simplify=False, dynamic=True)
    assert graph_domains(onnx.load(dynamic)) <= STANDARD_DOMAINS
    others = random_inputs((2, 3, 96, 128), n=2, seed=10)  # other batch size and shape
    print(assert_matches_float32_reference([onnx_output(dynamic, x) for x in others],
                                           pytorch_reference(yolo, others), "ONNX dynamic"))


@pytest.mark.slow
@pytest.mark.parametrize("name", YAMLS)
def test_torchscript_matches_pytorch(name, in_tmp):
    yolo = random_model(name)
    xs = random_inputs((1, 3, 64, 64))
    expected = pytorch_reference(yolo, xs)
    scripted = torch.jit.load(yolo.export(format="torchscript", imgsz=64)).eval()
    got = []
    with torch.no_grad():
        for x in xs:
            out = scripted(x)
            got.append(out[0] if isinstance(out, (list, tuple)) else out)
    print(assert_matches_float32_reference(got, expected, "TorchScript"))


@pytest.mark.slow
def test_export_tolerance_catches_a_wrong_batchnorm_eps(in_tmp):
    """The noise-scaled bound still fails an export that folds ONE BatchNorm with eps 1e-3 instead of 1e-5
    (the torchvision-vs-timm mistake), in the worst-conditioned shipped model (largest float32 noise)."""
    yolo = random_model("yolo11-EfficientNetV2.yaml")
    xs = random_inputs((1, 3, 64, 64))
    expected = pytorch_reference(yolo, xs)
    wrong = copy.deepcopy(yolo)
    backbone_bns = [m for m in wrong.model.model[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert backbone_bns[len(backbone_bns) // 2].eps == 1e-5
    backbone_bns[len(backbone_bns) // 2].eps = 1e-3
    path = wrong.export(format="onnx", imgsz=64, simplify=False)
    with pytest.raises(AssertionError, match="percentile"):
        assert_matches_float32_reference([onnx_output(path, x) for x in xs], expected, "ONNX with a wrong eps")


# Commands that reach the network from a subprocess: package installers and downloaders. Everything else a
# library runs (py-cpuinfo's `file -b`, `uname -p` and its own `cpuinfo.py --json`) is local and allowed: the
# first export in a fresh config directory runs those, a later one reads Ultralytics' cache instead.
NETWORK_COMMANDS = {"pip", "pip3", "uv", "conda", "mamba", "curl", "wget", "git", "apt", "apt-get", "npm"}


def reaches_network(command) -> bool:
    """Whether a subprocess command line installs packages or downloads (``pip install x``, ``python -m pip``,
    ``curl ...``), as opposed to a local tool."""
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    return any(Path(a).name in NETWORK_COMMANDS for a in args)


@pytest.fixture
def network_guard(monkeypatch):
    """Record (and refuse) every internet connection, DNS lookup and network subprocess of the test; local
    subprocesses run normally and are listed in ``guard["local"]``."""
    guard = {"network": [], "local": []}

    def no_connect(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            guard["network"].append(f"connect {address}")
            raise OSError("network disabled in this test")
        return real_connect(self, address, *args)

    def no_lookup(host, *args, **kwargs):
        guard["network"].append(f"DNS lookup {host}")
        raise socket.gaierror("network disabled in this test")

    class GuardedPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            if reaches_network(args):
                guard["network"].append(f"subprocess {args}")
                raise OSError("network subprocesses disabled in this test")
            guard["local"].append(args)
            super().__init__(args, *rest, **kwargs)

    def guarded_system(command):
        if reaches_network(command):
            guard["network"].append(f"os.system {command}")
            return 1
        guard["local"].append(command)
        return real_system(command)

    real_connect, real_system = socket.socket.connect, os.system
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connect)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    monkeypatch.setattr(subprocess, "Popen", GuardedPopen)
    monkeypatch.setattr(os, "system", guarded_system)
    return guard


def test_default_export_settings_never_touch_the_network(in_tmp, network_guard):
    """8.3.0 defaults to simplify=True, which asks for onnxslim; offline that must be a warning, not a pip run."""
    path = YOLO(scaled(YAMLS[0])).export(format="onnx", imgsz=64)  # all defaults
    assert path and path.endswith(".onnx")
    assert not network_guard["network"], network_guard


def test_network_guard_tells_installs_from_local_tools(network_guard):
    """The guard above is not blind: a pip install and a connection are caught, a local tool still runs."""
    assert subprocess.run(["uname", "-s"], capture_output=True, text=True).stdout.strip()
    with pytest.raises(OSError):
        subprocess.check_output("pip install --no-cache-dir onnxslim", shell=True)
    with pytest.raises(OSError):
        subprocess.run([sys.executable, "-m", "pip", "install", "onnxslim"])
    with pytest.raises(OSError):
        socket.create_connection(("1.1.1.1", 80), timeout=1)
    assert len(network_guard["network"]) == 3, network_guard
    assert network_guard["local"] == [["uname", "-s"]]
    assert not reaches_network(["file", "-b", sys.executable]) and not reaches_network("uname -p")
