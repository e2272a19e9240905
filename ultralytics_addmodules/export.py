"""Export to the runtimes users deploy to: what each format needs, checked before anything is written.

``patch.py`` wraps ``Model.export`` and calls ``prepare_export`` first; everything here is plain functions
that know nothing about how Ultralytics is patched:

- ``prepare_export``: validates a request and fills in our defaults (ONNX opset, INT8 calibration data),
  raising ``ExportSetupError`` (one line, Chinese then English) for what cannot work, before any file exists:
  a missing converter (with its pip command), ``optimize=True`` on a torch build without XNNPACK, INT8
  without calibration data;
- ``pnnx_dir``: the folder holding the pnnx converter binary of the ``pnnx`` pip package (Ultralytics 8.3.0
  looks only in the working directory and its own package folder, then tries to download it);
- ``write_tflite_metadata``: TFLite metadata in the form Ultralytics' AutoBackend reads (a zip archive
  appended to the flatbuffer, its first member the metadata dict as a Python literal), without tflite_support;
- ``onnx2tf_sample_data`` / ``without_requirement``: for the two steps of 8.3.0's TensorFlow export that
  would download or pip-install something it does not need;
- ``import_torchvision_ops``: loads torchvision's compiled ops before TensorFlow can be imported (the other
  order crashes NMS in a fresh process).
"""

from __future__ import annotations

import contextlib
import importlib.util
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .messages import bilingual

# ONNX opset of our exports unless the user gives one (docs/benchmarks.md, "ONNX opset"). Ultralytics 8.3.0 asks
# torch for its newest opset minus one, which torch 2.14 answers with 9 (deprecated Upsample). From opset 13 on,
# DFL's softmax over dim 1 is exported as Softmax(axis=1), which ONNX Runtime runs on a non-last axis slower
# than the Transpose + last-axis Softmax + Transpose that opsets <= 12 produce (per-op profile); the rest of the
# graph is the same. 12 is the newest opset without that cost, and every shipped YAML exports with parity
# (tests/test_export.py).
DEFAULT_ONNX_OPSET = 12

# Formats 8.3.0 builds from an ONNX export (so the opset matters) and formats built through TensorFlow.
ONNX_BASED_FORMATS = frozenset({"onnx", "engine", "saved_model", "pb", "tflite", "edgetpu", "tfjs"})
TENSORFLOW_FORMATS = frozenset({"saved_model", "pb", "tflite", "edgetpu", "tfjs"})
INT8_FORMATS = frozenset({"openvino", "engine", "tflite", "edgetpu"})  # formats whose int8=True calibrates

# 8.3.0 and onnx2tf download this sample into the cwd unless it is there (see onnx2tf_sample_data).
ONNX2TF_CALIBRATION_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


@dataclass(frozen=True)
class Converter:
    """What a format needs installed: importable top-level modules and the pip command that installs them."""

    modules: tuple[str, ...]
    pip: str


CONVERTERS = {
    "torchscript": Converter((), ""),
    "onnx": Converter(("onnx", "onnxruntime"), "pip install onnx onnxruntime"),
    "openvino": Converter(("openvino",), 'pip install "ultralytics-addmodules[openvino]"  (openvino, nncf)'),
    "ncnn": Converter(("ncnn", "pnnx"), "pip install ncnn pnnx"),
    "tflite": Converter(("tensorflow", "onnx2tf", "tf_keras", "sng4onnx", "onnx_graphsurgeon", "onnxslim"),
                        'pip install "ultralytics-addmodules[tflite]"  (tensorflow, onnx2tf; about 2 GB)'),
}
for _name in TENSORFLOW_FORMATS - {"tflite", "edgetpu"}:
    CONVERTERS[_name] = CONVERTERS["tflite"]


class ExportSetupError(RuntimeError):
    """An export that cannot work as requested; ``str(error)`` is one bilingual line saying what to do."""


def is_installed(module: str) -> bool:
    """Whether a top-level module can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules(fmt: str) -> list[str]:
    """Modules that ``fmt``'s converter needs and this environment lacks (empty when ready or unknown)."""
    converter = CONVERTERS.get(fmt)
    return [m for m in converter.modules if not is_installed(m)] if converter else []


def pnnx_dir() -> Path | None:
    """The folder of the pnnx converter binary: the working directory's copy first (as 8.3.0 looks), then the
    binary inside the ``pnnx`` pip package. None when neither exists."""
    name = "pnnx.exe" if platform.system() == "Windows" else "pnnx"
    if Path(name).is_file():
        return Path.cwd()
    try:
        spec = importlib.util.find_spec("pnnx")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / name).is_file():
            return Path(folder)
    return None


def xnnpack_available() -> bool:
    """Whether this torch build has XNNPACK, which ``optimize_for_mobile`` (TorchScript optimize=True) needs."""
    import torch

    probe = getattr(torch._C, "_is_xnnpack_enabled", None)
    return bool(probe()) if probe else False


def bundled_data_yaml() -> Path | None:
    """The sample dataset shipped beside the package in a source checkout (``dataset/data.yaml``), if present."""
    candidate = Path(__file__).resolve().parent.parent / "dataset" / "data.yaml"
    return candidate if candidate.is_file() else None


def _training_data(model) -> str | None:
    """The data YAML a checkpoint was trained on, when that file exists here."""
    args = getattr(model, "overrides", None) or {}
    for source in (args, getattr(getattr(model, "model", None), "args", None) or {}):
        data = source.get("data") if isinstance(source, dict) else None
        if isinstance(data, str) and data.endswith((".yaml", ".yml")) and Path(data).is_file():
            return data
    return None


def _is_ultralytics_83() -> bool:
    import ultralytics

    return ultralytics.__version__.startswith("8.3.")


def prepare_export(model, kwargs: dict) -> dict:
    """Validate an export request and fill in our defaults; returns the arguments to pass on.

    ``model`` is the ``YOLO`` object being exported, ``kwargs`` the user's ``export(...)`` arguments. Raises
    ``ExportSetupError`` before anything is written when the request cannot succeed.
    """
    kwargs = dict(kwargs)
    fmt = str(kwargs.get("format", "torchscript")).lower()
    missing = missing_modules(fmt)
    if missing:
        pip = CONVERTERS[fmt].pip
        raise ExportSetupError(bilingual(
            f"导出格式 {fmt!r} 需要的转换器未安装（缺少 {', '.join(missing)}）；请先运行：{pip}",
            f"export format {fmt!r} needs a converter that is not installed (missing {', '.join(missing)}); "
            f"install it with: {pip}"))
    if fmt == "ncnn" and pnnx_dir() is None:
        raise ExportSetupError(bilingual(
            "导出 NCNN 需要 pnnx 转换器，但在当前目录和 pnnx pip 包中都没有找到；请运行：pip install ncnn pnnx",
            "NCNN export needs the pnnx converter, found neither in the working directory nor in the pnnx pip "
            "package; install it with: pip install ncnn pnnx"))
    if fmt == "torchscript" and kwargs.get("optimize") and not xnnpack_available():
        raise ExportSetupError(bilingual(
            "optimize=True（移动端优化）需要带 XNNPACK 的 torch，当前 torch 构建没有 XNNPACK；"
            "请用 optimize=False 导出，或换用带 XNNPACK 的 torch",
            "optimize=True (mobile optimisation) needs a torch build with XNNPACK, and this torch build has "
            "none; export with optimize=False, or use a torch build with XNNPACK"))
    # 8.3.0 exports at torch's newest opset (slower on ONNX Runtime, see DEFAULT_ONNX_OPSET); 8.4 chooses its own.
    if fmt in ONNX_BASED_FORMATS and kwargs.get("opset") is None and _is_ultralytics_83():
        kwargs["opset"] = DEFAULT_ONNX_OPSET
    # Every release would otherwise fetch a COCO sample to calibrate on, which fails offline.
    if kwargs.get("int8") and fmt in INT8_FORMATS and not kwargs.get("data"):
        data = _training_data(model) or bundled_data_yaml()
        if data is None:
            raise ExportSetupError(bilingual(
                f"int8=True 需要校准图片：请用 data=你的数据集.yaml 指定（格式 {fmt!r}）",
                f"int8=True needs calibration images: pass data=your_dataset.yaml (format {fmt!r})"))
        kwargs["data"] = str(data)
    return kwargs


def write_tflite_metadata(file: str | Path, metadata: dict) -> None:
    """Append ``metadata`` to a .tflite file the way Ultralytics' AutoBackend reads it back.

    AutoBackend opens the .tflite as a zip archive and ``ast.literal_eval``s its first member; a zip appended
    after the flatbuffer leaves the model itself untouched (TFLite ignores bytes after the buffer it reads).
    """
    with zipfile.ZipFile(file, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.txt", repr(dict(metadata)))


def read_tflite_metadata(file: str | Path) -> dict | None:
    """The metadata ``write_tflite_metadata`` (or tflite_support) stored in ``file``; None if there is none."""
    import ast

    try:
        with zipfile.ZipFile(file) as archive:
            return ast.literal_eval(archive.read(archive.namelist()[0]).decode("utf-8"))
    except (zipfile.BadZipFile, IndexError, ValueError, SyntaxError):
        return None


@contextlib.contextmanager
def onnx2tf_sample_data(seed: int = 0):
    """Provide onnx2tf's sample-image file in the working directory for the duration of a TensorFlow export.

    onnx2tf (and 8.3.0 before it) downloads ``calibration_image_sample_data_20x128x128x3_float32.npy`` into
    the working directory for every 4-D image input, even for fp32, and uses it only to check its converted
    layers against ONNX Runtime (INT8 calibration uses the ``data=`` images). Seeded uniform noise in [0, 1]
    serves that check; a file the user already has is left alone, ours is removed afterwards.
    """
    import numpy as np

    path = Path(ONNX2TF_CALIBRATION_SAMPLE)
    ours = not path.exists()
    if ours:
        np.save(path, np.random.default_rng(seed).random((20, 128, 128, 3), dtype=np.float32))
    try:
        yield path
    finally:
        if ours:
            path.unlink(missing_ok=True)


def without_requirement(check: Callable, package: str) -> Callable:
    """``check_requirements`` that leaves ``package`` out of the list it checks (and would try to pip-install)."""

    def check_requirements(requirements=(), *args, **kwargs):
        if isinstance(requirements, (list, tuple)):
            requirements = type(requirements)(r for r in requirements if not str(r).startswith(package))
        elif isinstance(requirements, str) and requirements.startswith(package):
            return True
        return check(requirements, *args, **kwargs)

    return check_requirements


def import_torchvision_ops() -> None:
    """Load torchvision's compiled operators (NMS) now, before TensorFlow may be imported: TensorFlow first,
    then torchvision's ops library, crashes the process at the first NMS call."""
    import torchvision.ops  # noqa: F401


__all__ = [
    "CONVERTERS",
    "DEFAULT_ONNX_OPSET",
    "Converter",
    "ExportSetupError",
    "bundled_data_yaml",
    "import_torchvision_ops",
    "is_installed",
    "missing_modules",
    "pnnx_dir",
    "prepare_export",
    "quantize_onnx_int8",
    "read_tflite_metadata",
    "onnx2tf_sample_data",
    "without_requirement",
    "write_tflite_metadata",
]


def quantize_onnx_int8(onnx_file: str | Path, images: list, output: str | Path) -> Path:
    """Static INT8 quantisation of an exported YOLO ONNX model for ONNX Runtime (QDQ, per-channel weights).

    ``images`` are calibration inputs (float32 NCHW arrays in [0, 1], the model's input size). The Detect head's
    box decoding (everything in the last layer except its convolutions' inputs) stays float: coordinates of up
    to hundreds of pixels in 8 bits would move boxes by whole pixels (Ultralytics' OpenVINO INT8 export leaves
    the same operations out).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(onnx_file))
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        # per-channel QuantizeLinear/DequantizeLinear (their axis attribute) need opset 13
        from onnx import version_converter

        model = version_converter.convert_version(model, 13)
        onnx_file = Path(output).with_name(Path(output).stem + "_opset13.onnx")
        onnx.save(model, str(onnx_file))
    graph = model.graph
    last = max((n.name.split("/")[1] for n in graph.node if n.name.startswith("/model.")),
               key=lambda s: int(s.split(".")[1]))
    head = [n.name for n in graph.node if n.name.startswith(f"/{last}/") and
            (n.op_type != "Conv" or "/dfl/" in n.name)]
    name = graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(images)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {name: x}

    quantize_static(str(onnx_file), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=head)
    return Path(output)
