"""Run an exported detection model in its own runtime, with a fixed thread count.

``load_runtime(fmt, path, threads)`` returns a callable ``model(x) -> np.ndarray``: ``x`` is a float32 NCHW image
batch in [0, 1] (what the PyTorch model takes), the result the raw Detect output ``(batch, 4 + classes, anchors)``
with boxes in pixels, as the PyTorch model returns it. The same callables serve parity checks and latency
(``measure.measure_latency`` times ``lambda: model(x)``), so every runtime is measured the way it is compared.

Each runtime is set to ``threads`` intra-op threads and one inter-op thread, so runtimes compete on equal terms
(their defaults differ: all cores, a latency hint, ...). Nothing here exports or imports Ultralytics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]

RUNTIME_NAMES = {  # format -> what runs it (for tables)
    "pytorch": "PyTorch eager (fused)",
    "torchscript": "TorchScript (torch.jit)",
    "onnx": "ONNX Runtime (CPU)",
    "openvino": "OpenVINO (CPU)",
    "ncnn": "NCNN (CPU)",
    "tflite": "TensorFlow Lite (CPU, XNNPACK delegate)",
}


def load_runtime(fmt: str, path: str | Path, threads: int = 1) -> Runner:
    """A callable running the exported model at ``path`` (file or export folder) in ``fmt``'s runtime."""
    loaders = {"torchscript": _torchscript, "onnx": _onnx, "openvino": _openvino, "ncnn": _ncnn, "tflite": _tflite}
    if fmt not in loaders:
        raise ValueError(f"no runtime for format {fmt!r}; known: {', '.join(loaders)}")
    return loaders[fmt](Path(path), threads)


def _torchscript(path: Path, threads: int) -> Runner:
    import torch

    model = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            y = model(torch.from_numpy(x))
        return (y[0] if isinstance(y, (list, tuple)) else y).numpy()

    return run


def _onnx(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # ONNX Runtime's worker threads spin after each run by default, taking the cores from whatever runs next
    # (another runtime timed interleaved, the rest of the application); let them sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino(path: Path, threads: int) -> Runner:
    import openvino as ov

    xml = path if path.suffix == ".xml" else next(path.glob("*.xml"))
    # fp32 means fp32: on CPUs with bf16 support OpenVINO otherwise computes in bf16 by default (measured here:
    # box / class outputs off by 0.4 / 1.0 of their scale on a random model)
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x):
        return np.array(request.infer({0: x})[output])

    return run


def _ncnn(path: Path, threads: int) -> Runner:
    import ncnn

    param = path if path.suffix == ".param" else next(path.glob("*.param"))
    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_vulkan_compute = False
    net.load_param(str(param))
    net.load_model(str(param.with_suffix(".bin")))
    input_name, output_name = net.input_names()[0], sorted(net.output_names())[0]

    def run(x):
        outputs = []
        for image in x:  # NCNN runs one image at a time
            with net.create_extractor() as extractor:
                extractor.input(input_name, ncnn.Mat(np.ascontiguousarray(image)))
                outputs.append(np.array(extractor.extract(output_name)[1]))
        return np.stack(outputs)

    return run


def _tflite(path: Path, threads: int) -> Runner:
    from . import export

    export.import_torchvision_ops()  # before TensorFlow, see export.import_torchvision_ops
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(x):
        h, w = x.shape[2:]
        image = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # TFLite models from onnx2tf take NHWC
        if inp["dtype"] in (np.int8, np.uint8):
            scale, zero = inp["quantization"]
            image = (image / scale + zero).round().astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], image)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] in (np.int8, np.uint8):
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        y = np.array(y, dtype=np.float32)
        y[:, [0, 2]] *= w  # the TFLite Detect head outputs boxes normalised to the image size
        y[:, [1, 3]] *= h
        return y

    return run


__all__ = ["RUNTIME_NAMES", "Runner", "load_runtime"]
