"""Decode every image of a dataset once, on all cores, and remember the verdicts.

Ultralytics' own pre-training scan (``verify_image_label``) only runs ``PIL.Image.verify()``, which does not
decode the pixels, plus a JPEG end-marker test; a file that fails is dropped with one warning deep in the
log, and a file whose middle is broken is not noticed at all. Here every image is decoded for real
(JPEGs at 1/8 scale: libjpeg still reads every byte of the entropy-coded data, so truncation and broken
data are found, at a fraction of the cost of a full-size decode).

Verdicts are cached per data YAML in the user cache folder (see ``cache_dir``), keyed by the image's
absolute path, size and modification time, so a second check of an unchanged dataset decodes nothing.
The cache lives there rather than next to the dataset (where Ultralytics puts its ``labels.cache``) so that
read-only datasets (network shares, container mounts) get one too and nothing is written into folders a
user may keep under version control.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

CACHE_VERSION = 1
POOL_MIN_IMAGES = 256  # fewer images than this: decoding them is quicker than starting worker processes
PROGRESS_MIN_IMAGES = 1000  # show a progress bar from this many images to decode
MIN_SIDE = 10  # Ultralytics drops images with a side under 10 pixels


@dataclass(frozen=True)
class Verdict:
    """Result of decoding one image: ``ok`` and its size, or why it failed."""

    ok: bool
    width: int = 0
    height: int = 0
    reason: str = ""


def cache_dir() -> Path:
    """Folder for this package's caches: ``$ULTRALYTICS_ADDMODULES_CACHE_DIR``, else the platform's user cache
    folder (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``%LOCALAPPDATA%`` on Windows,
    ``~/Library/Caches`` on macOS) plus ``ultralytics-addmodules``."""
    override = os.environ.get("ULTRALYTICS_ADDMODULES_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ultralytics-addmodules"


def verdict_cache_file(key: str | os.PathLike) -> Path:
    """Cache file for the images of one dataset (``key``: the data YAML's absolute path)."""
    digest = hashlib.sha1(str(key).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return cache_dir() / "image-verdicts" / f"{digest}.json"


def decode(path: str) -> Verdict:
    """Decode one image file; never raises."""
    from PIL import Image, ImageFile

    truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # some libraries switch this on; a truncated file must fail here
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
            im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return Verdict(False, reason=" ".join(f"{type(e).__name__}: {e}".split()))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    if min(width, height) < MIN_SIDE:
        return Verdict(False, width, height, f"{width}x{height} pixels, smaller than {MIN_SIDE}")
    return Verdict(True, width, height)


def _decode_many(paths: Sequence[str]) -> list[Verdict]:
    return [decode(p) for p in paths]


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _load_cache(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    images = data.get("images")
    return images if isinstance(images, dict) else {}


def _save_cache(file: Path, entries: dict) -> None:
    """Write atomically (temporary file, then rename); a cache that cannot be written is simply skipped."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "images": entries}), encoding="utf-8")
        os.replace(tmp, file)
    except OSError:
        pass


def default_workers() -> int:
    """Processes to decode with: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _pool_context():
    # fork (Linux): workers start instantly with this module already imported; elsewhere the platform's
    # default start method, whose workers re-import the package (a few seconds, paid once per check).
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _Progress:
    """A one-line progress counter on stderr (tqdm is not a dependency of every supported Ultralytics)."""

    def __init__(self, total: int, label: str = "检查图片 | verifying images"):
        self.total, self.done, self.label, self.last = total, 0, label, 0.0
        self.start = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 0.2 or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            print(f"\r{self.label}: {self.done}/{self.total} ({self.done / self.total:.0%}, {rate:.0f} img/s)",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr, flush=True)


def _decode_all(paths: list[str], workers: int, progress: bool | None) -> list[Verdict]:
    show = len(paths) >= PROGRESS_MIN_IMAGES if progress is None else progress
    bar = _Progress(len(paths)) if show and paths else None
    chunk = 32
    verdicts: list[Verdict] = []
    try:
        if workers > 1 and len(paths) >= POOL_MIN_IMAGES:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                for result in pool.map(_decode_many, _chunks(paths, chunk)):
                    verdicts.extend(result)
                    if bar is not None:
                        bar.update(len(result))
        else:
            for part in _chunks(paths, chunk):
                verdicts.extend(_decode_many(part))
                if bar is not None:
                    bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    return verdicts


@dataclass
class VerifyStats:
    """How a ``verify_images`` call got its verdicts (for benchmarks and tests)."""

    decoded: int = 0
    cached: int = 0
    workers: int = 1


def verify_images(images: Sequence[str | os.PathLike], cache_key: str | os.PathLike | None = None,
                  workers: int | None = None, progress: bool | None = None,
                  stats: VerifyStats | None = None) -> dict[str, Verdict]:
    """Verdict for every image (by ``str(path)``), decoding only those not in the cache.

    ``cache_key`` names the cache file (the data YAML's path); ``None`` uses no cache. ``workers`` defaults to
    every available core; ``progress`` None shows a bar on large sets only.
    """
    paths = list(dict.fromkeys(str(p) for p in images))
    keys = {p: _stat_key(p) for p in paths}
    cache_file = verdict_cache_file(cache_key) if cache_key is not None else None
    cached = _load_cache(cache_file) if cache_file is not None else {}
    results: dict[str, Verdict] = {}
    todo = []
    for p in paths:
        entry = cached.get(p)
        key = keys[p]
        if key is None:
            results[p] = Verdict(False, reason="file cannot be read")
        elif isinstance(entry, list) and len(entry) == 6 and tuple(entry[:2]) == key:
            results[p] = Verdict(bool(entry[2]), int(entry[3]), int(entry[4]), str(entry[5]))
        else:
            todo.append(p)
    n_workers = default_workers() if workers is None else max(1, workers)
    for p, verdict in zip(todo, _decode_all(todo, n_workers, progress)):
        results[p] = verdict
    if stats is not None:
        stats.decoded, stats.cached, stats.workers = len(todo), len(paths) - len(todo), n_workers
    if cache_file is not None and (todo or len(cached) != len(paths)):
        entries = {p: [*keys[p], v.ok, v.width, v.height, v.reason] for p, v in results.items() if keys[p]}
        _save_cache(cache_file, entries)
    return results
