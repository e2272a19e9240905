"""One way to measure a model, shared by ``compare``, ``benchmarks/run.py`` and the deployment checks.

Latency protocol (``protocol()`` prints it under every table):

- every candidate is a plain callable that runs ONE forward pass (batch 1) and returns when the result is
  ready (``torch_runner`` builds one for a PyTorch model: a fused copy in eval mode, CUDA synchronised;
  ONNX Runtime / OpenVINO / NCNN sessions are wrapped the same way by their callers);
- the thread count is fixed for the whole measurement (``torch.set_num_threads``; other runtimes take the
  same number from their own session options);
- warm-up rounds first, then timed rounds; in each round every candidate runs once, interleaved, and the
  order rotates from round to round, so background load and cache state hit every candidate alike;
- the garbage collector is paused while timing;
- reported: the median and the interquartile range (IQR = q3 - q1) in milliseconds; FPS = 1000 / median;
  runs more than 1.5 x IQR outside the quartiles (Tukey's fences) are flagged as outliers, and kept.

``model_size`` gives parameters and GFLOPs exactly as Ultralytics' ``model.info(imgsz=...)`` reports them.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Mapping, TypeVar

DEFAULT_WARMUP = 5
DEFAULT_RUNS = 20
OUTLIER_IQR_FACTOR = 1.5  # Tukey's fences
NOISY_IQR_RATIO = 0.25  # an IQR above this share of the median means the machine was busy while timing
K = TypeVar("K", bound=Hashable)


def default_threads() -> int:
    """The fixed CPU thread count used when none is given: all logical CPUs, at most 4 (an edge-class CPU)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one candidate: median and quartiles in ms over ``n`` timed runs, and the flagged outliers.

    ``error`` is set (and the numbers are NaN, ``n`` 0) when the candidate raised instead of running.
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    n: int
    outliers: tuple[float, ...] = ()  # the timed runs (ms) outside Tukey's fences, in the order they ran
    error: str = ""
    samples_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_samples(cls, samples_ms: list[float] | tuple[float, ...]) -> LatencyStats:
        """Statistics of timed runs in milliseconds (at least one)."""
        samples = tuple(float(s) for s in samples_ms)
        if not samples:
            raise ValueError("no timed runs to summarise")
        median = statistics.median(samples)
        if len(samples) > 1:
            q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        else:
            q1 = q3 = median
        iqr = q3 - q1
        low, high = q1 - OUTLIER_IQR_FACTOR * iqr, q3 + OUTLIER_IQR_FACTOR * iqr
        outliers = tuple(s for s in samples if s < low or s > high)
        return cls(median, q1, q3, iqr, len(samples), outliers, "", samples)

    @classmethod
    def failed(cls, error: str) -> LatencyStats:
        """A candidate that could not be timed."""
        nan = math.nan
        return cls(nan, nan, nan, nan, 0, (), error)

    @property
    def fps(self) -> float:
        """Frames per second derived from the median (batch 1): 1000 / median_ms."""
        return 1000.0 / self.median_ms if self.median_ms > 0 else math.nan

    def cell(self, digits: int = 1) -> str:
        """Table cell: ``"18.2 (IQR 0.6)"``, with ``"; 2/20 outliers"`` added when any run was flagged."""
        if self.error or self.n == 0:
            return ""
        text = f"{self.median_ms:.{digits}f} (IQR {self.iqr_ms:.{digits}f}"
        if self.outliers:
            text += f"; {len(self.outliers)}/{self.n} outliers"
        return text + ")"

    @property
    def noisy(self) -> bool:
        """The spread is large (IQR above NOISY_IQR_RATIO of the median): medians are not reliable to a few %."""
        return self.n > 1 and self.iqr_ms > NOISY_IQR_RATIO * self.median_ms

    def overlaps(self, other: LatencyStats) -> bool:
        """Whether the two interquartile ranges [q1, q3] overlap (the medians agree within the stated spread)."""
        return self.q1_ms <= other.q3_ms and other.q1_ms <= self.q3_ms


def measure_latency(runners: Mapping[K, Callable[[], object]], warmup: int = DEFAULT_WARMUP,
                    runs: int = DEFAULT_RUNS, threads: int | None = None) -> dict[K, LatencyStats]:
    """Time every callable in ``runners`` interleaved; returns their statistics under the same keys.

    ``runners`` maps any key (a model name, or a (model, runtime) pair) to a callable that runs one forward
    pass and returns when its result is ready. ``warmup`` untimed rounds, then ``runs`` timed rounds; in
    round r the candidates run in turn, starting at the (r mod k)-th, so none always follows the same
    neighbour. ``threads`` (default ``default_threads()``) is set for PyTorch during the measurement and
    restored afterwards. A candidate that raises is dropped from the remaining rounds and reported with
    ``LatencyStats.error``; the others keep running.
    """
    if warmup < 0 or runs < 1:
        raise ValueError(f"need warmup >= 0 and runs >= 1, got warmup={warmup}, runs={runs}")
    import torch

    threads = threads or default_threads()
    keys = list(runners)
    samples: dict[K, list[float]] = {k: [] for k in keys}
    errors: dict[K, str] = {}
    previous_threads = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    torch.set_num_threads(threads)
    gc.collect()
    gc.disable()
    try:
        for r in range(warmup + runs):
            live = [k for k in keys if k not in errors]
            if not live:
                break
            shift = r % len(live)
            for key in live[shift:] + live[:shift]:
                try:
                    start = time.perf_counter()
                    runners[key]()
                    elapsed = time.perf_counter() - start
                except Exception as e:  # one broken candidate must not lose the others' numbers
                    errors[key] = one_line(e)
                    continue
                if r >= warmup:
                    samples[key].append(1000.0 * elapsed)
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(previous_threads)
    return {k: LatencyStats.failed(errors[k]) if k in errors else LatencyStats.from_samples(samples[k])
            for k in keys}


def spread_warning(stats: Mapping[object, LatencyStats]) -> str:
    """One bilingual line naming the candidates whose spread is large (``LatencyStats.noisy``), else ""."""
    from .messages import bilingual

    noisy = [str(k) for k, s in stats.items() if not s.error and s.noisy]
    if not noisy:
        return ""
    names = ", ".join(noisy)
    return bilingual(f"注意：{names} 的延迟四分位距超过中位数的 {NOISY_IQR_RATIO:.0%}，计时期间机器繁忙；"
                     "请在空闲时重测，或用更少的线程。",
                     f"warning: the latency IQR of {names} exceeds {NOISY_IQR_RATIO:.0%} of the median, so the "
                     "machine was busy while timing; rerun when it is idle, or with fewer threads.")


def one_line(error: BaseException) -> str:
    """``"TypeName: first line of the message"``."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def torch_runner(model, imgsz: int | tuple[int, int] = 640, device: str = "cpu", fuse: bool = True,
                 half: bool = False) -> Callable[[], object]:
    """A callable running one batch-1 forward pass of a fused copy of ``model`` on a fixed random image.

    The copy is put in eval mode and fused (BatchNorm folded into convolutions, as deployed) when the model
    has ``fuse()``; it runs under ``torch.inference_mode``. On CUDA the call synchronises, so its time covers
    the whole forward pass. The input is the same seeded random image for every model.
    """
    import torch

    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    net = copy.deepcopy(model).float().to(device).eval()
    if fuse and hasattr(net, "fuse"):
        try:
            net = net.fuse(verbose=False)  # Ultralytics models (also when wrapped as fuse(*args, **kwargs))
        except TypeError:  # a fuse() without that argument
            net = net.fuse()
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    if half:
        net, x = net.half(), x.half()
    cuda = torch.device(device).type == "cuda"

    def run():
        with torch.inference_mode():
            y = net(x)
        if cuda:
            torch.cuda.synchronize(device)
        return y

    return run


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def torch_runtime(device: str = "cpu") -> str:
    """``"PyTorch 2.x eager, CPU (name)"`` or ``"PyTorch 2.x eager, CUDA (GPU name)"``."""
    import torch

    if torch.device(device).type == "cuda":
        where = f"CUDA ({torch.cuda.get_device_name(torch.device(device))})"
    else:
        where = f"CPU ({cpu_name()})"
    return f"PyTorch {torch.__version__.split('+')[0]} eager fp32, {where}"


def protocol(warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, threads: int | None = None,
             runtime: str | None = None, imgsz: int | tuple[int, int] = 640, fused: bool = True,
             batch: int = 1) -> str:
    """The latency protocol in one paragraph, to print under a table of ``measure_latency`` results."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    threads = threads or default_threads()
    runtime = runtime or torch_runtime("cpu")
    return (f"Latency protocol: batch {batch}, {h}x{w} input, "
            f"{'fused model (BatchNorm folded into convolutions)' if fused else 'unfused model'}, "
            f"{runtime}, {threads} thread{'s' if threads != 1 else ''}; {warmup} warm-up rounds, then {runs} "
            "timed rounds with all models interleaved (one forward pass of each per round, rotating order); "
            "reported: median ms and interquartile range (IQR = q3 - q1); FPS = 1000 / median; runs beyond "
            f"{OUTLIER_IQR_FACTOR:g} x IQR outside the quartiles are counted as outliers and kept.")


def model_size(model, imgsz: int | list[int] = 640) -> tuple[int, float]:
    """(parameters, GFLOPs at ``imgsz``) of an Ultralytics model, exactly as ``model.info(imgsz=...)`` reports.

    ``info()`` returns nothing unless verbose, so the two Ultralytics functions it uses are called directly.
    """
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    return int(get_num_params(model)), float(get_flops(model, imgsz))


__all__ = [
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "LatencyStats",
    "cpu_name",
    "default_threads",
    "measure_latency",
    "model_size",
    "one_line",
    "protocol",
    "spread_warning",
    "torch_runner",
    "torch_runtime",
]
