"""Checkpoint files: loading a ``.pt`` never runs code hidden in it, and a kill never costs a run.

Loading
-------
A ``.pt`` file is a zip archive whose ``data.pkl`` is a pickle, and unpickling may call any function the file
names: Ultralytics loads checkpoints with ``weights_only=False``, so a file passed around in a chat group can run
anything. ``safe_load`` loads only what genuine checkpoints contain:

1. The pickle first runs against stand-ins (``inspect_pickle``): every global it names becomes an inert stand-in,
   so nothing is imported or called; the stand-ins record how the pickle uses each global: ``new`` (an object
   rebuilt from its saved state, without calling its class: how every nn.Module is saved), ``call`` (the pickle
   calls it with arguments: tensor rebuild functions, numpy scalars, ``set``), ``state`` (saved state applied to
   what such a call returned), ``ref`` (only referenced) and ``attr`` (``getattr(Detect, "forward")``).
2. Those uses are checked against ``checkpoint_allowlist.txt`` (derived from real checkpoints by
   ``scripts/checkpoint_allowlist.py``) plus one rule: any ``nn.Module`` subclass from torch.nn, Ultralytics, this
   package's ``nn``, timm or torchvision may be rebuilt (``new``), never called. A file that asks for anything
   else is refused with one line naming what it asked for, before anything of it runs.
3. Only then does Ultralytics' usual C unpickler run on the same bytes (torch hands both passes the ``data.pkl`` it
   read once), with ``find_class`` limited to the approved globals and ``getattr`` to the approved pairs.

The stand-in pass is sound because a pickle is straight-line code: the same opcodes run in both passes, and each
place where the C unpickler's behaviour depends on an object's type meets a stand-in that either records the use
or raises (a stand-in cannot be called, hashed, appended to or given attributes), so the check fails closed.
This is stricter than ``torch.load(weights_only=True)`` (which lets a file call any allowed class with arguments,
i.e. run its constructor) and runs at C speed: weights_only's pure-Python unpickler measured 3-4x stock's load
time; the stand-in pass adds about one C unpickling of ``data.pkl`` (+20-30 % on the first load of a YOLO11n/s
file, 5-10 ms) and nothing when the same bytes load again in the process (the verdict is remembered by content).
``benchmarks/checkpoint_load.py`` measures all three. No single pass can do this: the C unpickler calls whatever
a file puts before REDUCE and sets attributes on whatever it BUILDs, classes included.

TorchScript archives and the legacy (non-zip) format are refused too: Ultralytics never writes them and torch
would load them with code execution. ``ULTRALYTICS_ADDMODULES_TRUST_CHECKPOINTS`` opts in to stock loading for
files you made yourself (``1`` for all, or a list of paths separated by ``os.pathsep``): such a file can run
code with your permissions.

Saving
------
``save_atomically`` runs Ultralytics' own ``save_model`` with its output redirected into a staging folder beside
the weights and renames each file into place (``os.replace`` is atomic within a folder; ``last.pt`` last), so a
kill at any moment leaves the previous good file; ``strip_atomically`` does the same for the final optimizer
strip. ``drop_rows_after`` trims ``results.csv`` to the checkpoint's epoch on resume, so no epoch appears twice.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import gc
import hashlib
import importlib
import io
import os
import pickle
import shutil
import sys
import threading
import types
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

from .messages import bilingual

ALLOWLIST_FILE = Path(__file__).with_name("checkpoint_allowlist.txt")
TRUST_ENV = "ULTRALYTICS_ADDMODULES_TRUST_CHECKPOINTS"
KINDS = ("new", "call", "state", "ref", "attr")

# Packages whose nn.Module subclasses a checkpoint may rebuild without being listed: a model YAML can name any
# torch.nn or Ultralytics module, new modules of ours must not need a regenerated list, TimmBackbone wraps any timm
# model and Ultralytics 8.4's TorchVision layer any torchvision model. Rebuilt means created from saved state
# (nn.Module.__setstate__), never constructed: their constructors cannot be reached from a checkpoint.
MODULE_FAMILIES = ("torch.nn.modules", "ultralytics.nn", "ultralytics_addmodules.nn", "timm", "torchvision.models",
                   "torchvision.ops")

# Modules whose plain (non-layer) classes Ultralytics 8.4's own restricted loader (tasks._SafeLoad) rebuilds from
# their saved state: losses and assigners kept on a model (``model.criterion``) and distillation hooks.
STATE_CLASS_MODULES = ("ultralytics.utils.loss", "ultralytics.utils.tal", "ultralytics.nn.distill_model")

# Where older checkpoints' names live now: the same moves Ultralytics' own torch_safe_load maps, plus the numpy 2
# module rename (both spellings resolve on numpy 1.26 and 2.x) and both OS's pathlib classes.
MOVED_MODULES = {"ultralytics.yolo.utils": "ultralytics.utils", "ultralytics.yolo.v8": "ultralytics.models.yolo",
                 "ultralytics.yolo.data": "ultralytics.data", "torch.tensor": "torch._tensor",
                 "numpy.core": "numpy._core"}
MOVED_NAMES = {
    ("ultralytics.nn.modules.block", "Silence"): ("torch.nn.modules.linear", "Identity"),  # YOLOv9e
    ("ultralytics.nn.tasks", "YOLOv10DetectionModel"): ("ultralytics.nn.tasks", "DetectionModel"),
    ("ultralytics.utils.loss", "v10DetectLoss"): ("ultralytics.utils.loss", "E2EDetectLoss"),
    **{(m, c): ("pathlib", "Path") for m in ("pathlib", "pathlib._local") for c in ("PosixPath", "WindowsPath")},
}

# What to install when a checkpoint needs a module that is missing (never installed automatically).
INSTALL_HINTS = {"timm": "pip install ultralytics-addmodules[timm]",
                 "ultralytics_addmodules": "pip install -U ultralytics-addmodules",
                 "ultralytics": "pip install -U ultralytics"}


# --- errors: one line each, Chinese then English -------------------------------------------------------------
class UnsafeCheckpointError(pickle.UnpicklingError, TypeError):
    """The file asks for something genuine checkpoints never contain; nothing of it ran.

    An ``UnpicklingError`` like torch's weights_only refusal, and a ``TypeError`` like Ultralytics 8.4's own
    restricted loading, so code that catches either keeps working.
    """


class CorruptCheckpointError(OSError, RuntimeError, EOFError, pickle.UnpicklingError, TypeError):
    """The file is empty, truncated or not a checkpoint at all.

    An instance of every exception type stock Ultralytics raises for a damaged file on the supported releases
    (OSError, RuntimeError, EOFError, UnpicklingError on 8.3.0; TypeError on 8.4), so callers that catch the stock
    type still do.
    """


class MissingModuleError(ModuleNotFoundError):
    """A checkpoint refers to a module that is not installed (it is never pip-installed automatically)."""


class MissingClassError(AttributeError):
    """A checkpoint refers to a class the installed package does not have (saved by another version)."""


CHECKPOINT_ERRORS = (UnsafeCheckpointError, CorruptCheckpointError, MissingModuleError, MissingClassError)


def _trust_hint(source: str) -> tuple[str, str]:
    return (f"只加载你自己生成并信任的文件：设置环境变量 {TRUST_ENV}={source}（=1 信任所有文件；风险：文件里的代码会以你的权限运行）",
            f"to load a file you made yourself and trust, set {TRUST_ENV}={source} (=1 trusts every file; risk: "
            "code inside the file runs with your permissions)")


def _refusal(source: str, asked: list[str], zh_why: str = "", en_why: str = "") -> UnsafeCheckpointError:
    shown = ", ".join(asked[:6]) + (f" (+{len(asked) - 6})" if len(asked) > 6 else "")
    zh_hint, en_hint = _trust_hint(source)
    zh = f"拒绝加载 {source}：它要求 {shown}，正常的 Ultralytics / ultralytics-addmodules checkpoint 不含这些，加载它可能执行其中的代码"
    en = (f"refused to load {source}: it asks for {shown}, which genuine Ultralytics / ultralytics-addmodules "
          "checkpoints never contain; loading it could run code hidden in it")
    if any(a.startswith("models.") for a in asked):
        zh_why, en_why = ("它像是 YOLOv5 (github.com/ultralytics/yolov5) 的模型，Ultralytics 8 无法加载",
                          "it looks like a YOLOv5 model (github.com/ultralytics/yolov5), which Ultralytics 8 "
                          "cannot load")
    if zh_why:
        zh, en = f"{zh}（{zh_why}）", f"{en} ({en_why})"
    return UnsafeCheckpointError(bilingual(f"{zh}；{zh_hint}", f"{en}; {en_hint}"))


def _corrupt(source: str, detail: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(bilingual(
        f"无法加载 checkpoint {source}：文件已损坏、被截断或不是 checkpoint（{detail}）；请重新下载或使用训练时保存的另一个文件",
        f"cannot load checkpoint {source}: the file is corrupt or truncated, or not a checkpoint ({detail}); "
        "download it again or use another file the training saved"))


# --- names -------------------------------------------------------------------------------------------------
def canonical(module: str, name: str) -> tuple[str, str]:
    """Where a pickled global lives now: Python 2 names (torch saves with protocol 2), moved modules, aliases."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    for old, new in MOVED_MODULES.items():
        if module == old or module.startswith(old + "."):
            module = new + module[len(old):]
            break
    return MOVED_NAMES.get((module, name), (module, name))


def _in_family(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in MODULE_FAMILIES)


def _is_torch_storage(module: str, name: str) -> bool:
    """``torch.FloatStorage`` and friends: torch's loader maps these names to dtypes itself, importing nothing."""
    if module != "torch" or "Storage" not in name:
        return False
    import torch

    try:
        torch.serialization.StorageType(name)
    except (KeyError, AttributeError):
        return False
    return True


_resolved: dict[tuple[str, str], Any] = {}


def resolve(module: str, name: str, source: str = "") -> Any:
    """The object a (canonical) global names; a missing module or class is one clear line (never installed)."""
    key = (module, name)
    if key in _resolved:
        return _resolved[key]
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = (e.name or module).split(".")[0]
        hint = INSTALL_HINTS.get(top, f"pip install {top}")
        raise MissingModuleError(bilingual(
            f"无法加载 {source}：它需要模块 {module}，但没有安装；安装方法：{hint}",
            f"cannot load {source}: it needs module {module!r}, which is not installed; install it with: {hint}"),
            name=module) from None
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            top = module.split(".")[0]
            hint = INSTALL_HINTS.get(top, "")
            raise MissingClassError(bilingual(
                f"无法加载 {source}：它需要 {module}.{name}，已安装的版本没有（可能由其他版本保存）" + (f"；{hint}" if hint else ""),
                f"cannot load {source}: it needs {module}.{name}, which the installed version does not have (saved "
                "with another version?)" + (f"; {hint}" if hint else ""))) from None
    _resolved[key] = obj
    return obj


# --- the allowlist -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Allowlist:
    """How genuine checkpoints use each global: ``uses[name]`` is a set of KINDS; ``attributes`` holds the
    ``"module.Class.attribute"`` pairs that ``getattr`` may fetch."""

    uses: dict[str, frozenset[str]]
    attributes: frozenset[str]

    @classmethod
    def read(cls, path: Path = ALLOWLIST_FILE) -> Allowlist:
        uses: dict[str, set[str]] = {}
        attributes = set()
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            kind, _, name = line.partition(" ")
            name = name.strip()
            if kind not in KINDS or not name or " " in name:
                raise ValueError(f"{path}:{number}: expected '<{'|'.join(KINDS)}> <dotted.name>', got {raw!r}")
            if kind == "attr":
                attributes.add(name)
            else:
                uses.setdefault(name, set()).add(kind)
        return cls({k: frozenset(v) for k, v in uses.items()}, frozenset(attributes))

    @cached_property
    def attribute_pairs(self) -> frozenset[tuple[Any, str]]:
        """The getattr pairs as (class, attribute), so that an alias of a class (``ultralytics.nn.modules.Detect``
        in early YOLOv8 files) matches too; entries whose module is not installed are left out."""
        pairs = set()
        for entry in self.attributes:
            owner, _, attribute = entry.rpartition(".")
            try:
                pairs.add((resolve(*canonical(*owner.rsplit(".", 1))), attribute))
            except (MissingModuleError, MissingClassError):
                continue
        return frozenset(pairs)

    def permits(self, module: str, name: str, kinds: set[str], source: str = "") -> bool:
        """Whether a global may be used in these ways; resolving a rule-family class may raise Missing*Error."""
        listed = self.uses.get(f"{module}.{name}")
        if listed is not None and kinds <= listed | {"ref"}:
            return True
        if kinds == {"ref"} and _is_torch_storage(module, name):
            return True
        if kinds <= {"new", "ref"} and _in_family(module):
            import torch

            obj = resolve(module, name, source)
            if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
                return True
        if kinds <= {"new", "ref"} and module in STATE_CLASS_MODULES:
            obj = resolve(module, name, source)  # a class defined there, rebuilt from state: no code of its own runs
            return isinstance(obj, type) and obj.__module__ == module and "__setstate__" not in vars(obj)
        if kinds <= {"new", "ref"}:
            return _is_user_layer(module, name)
        return False


def _is_user_layer(module: str, name: str) -> bool:
    """A layer class from a module that registered YAML modules (a user's plugin, imported already): models
    built from the user's own blocks save them, and the process runs that code anyway. Nothing is imported."""
    import torch

    from .registry import user_modules

    if module not in user_modules() or module not in sys.modules:
        return False
    obj = sys.modules[module]
    for part in name.split("."):
        obj = getattr(obj, part, None)
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


_allowlist_lock = threading.Lock()
_allowlist: list[Allowlist] = []


def allowlist() -> Allowlist:
    """The package's allowlist, read once per process."""
    with _allowlist_lock:
        if not _allowlist:
            _allowlist.append(Allowlist.read())
        return _allowlist[0]


# --- pass 1: the pickle against stand-ins ------------------------------------------------------------------
class _Trace:
    """What a pickle asked for, collected while it ran against stand-ins."""

    def __init__(self):
        self.uses: dict[str, set[str]] = {}
        self.where: dict[str, tuple[str, str]] = {}  # "module.name" -> (module, name)
        self.attributes: set[tuple[str, str]] = set()  # (owner global, attribute)
        self.problems: list[str] = []

    def use(self, name: str, kind: str) -> None:
        kinds = self.uses.get(name)
        if kinds is None:
            self.uses[name] = {kind}
        else:
            kinds.add(kind)


class _GlobalStandIn(type):
    """Metaclass of the stand-ins for a pickle's globals: calling one (pickle REDUCE) records the call.

    Each stand-in class carries ``_global`` (its name), ``_uses`` (the trace's set of uses for it), ``_instance``
    (what creating one returns) and ``_result`` (what calling it returns): one inert object each, so that the
    pass stays cheap."""

    def __call__(cls, *args, **kwargs):
        cls._uses.add("call")
        if cls._global == "builtins.getattr":
            _record_getattr(cls._trace, args)
        elif (args and _holds_global(args)) or (kwargs and _holds_global(kwargs.values())):
            cls._trace.problems.append(f"{cls._global} (call with a global as argument)")
        return cls._result


class _Rebuilt:
    """Base of the stand-in classes; an instance is an object the pickle rebuilds without calling its class."""

    __hash__ = None  # genuine checkpoints never use an object as a dict key or set member

    def __new__(cls, *args, **kwargs):  # pickle NEWOBJ (and INST/OBJ without arguments)
        cls._uses.add("new")
        if (args and _holds_global(args)) or (kwargs and _holds_global(kwargs.values())):
            cls._trace.problems.append(f"{cls._global} (created with a global as argument)")
        return cls._instance

    def __setstate__(self, state):  # BUILD: the real class restores its own saved state. Being defined here
        pass  # also makes BUILD on a stand-in class itself fail (unbound call), never set class attributes


class _Built:
    """What a recorded call returned: inert, so the pickle cannot call it, fill it or use it as a key."""

    __slots__ = ("origin", "trace")
    __hash__ = None

    def __init__(self, origin: str, trace: _Trace):
        self.origin, self.trace = origin, trace

    def __setstate__(self, state):  # BUILD on a call's result (numpy dtype, SimpleNamespace): recorded
        self.trace.use(self.origin, "state")


_PLAIN_TYPES = frozenset({int, float, bool, str, bytes, type(None)})


def _holds_global(values: Iterable) -> bool:
    """Whether a bare global (a class or function, not an object) is among ``values``, nested containers
    included: passing one to a call is how a pickle gets a constructor or function called indirectly."""
    kinds = set(map(type, values))
    if kinds <= _PLAIN_TYPES:  # the common case (sizes, strides, flags), decided in C
        return False
    if _GlobalStandIn in kinds:
        return True
    for v in values:
        t = type(v)
        if (t is tuple or t is list) and v and _holds_global(v):
            return True
        if (t is dict or t is OrderedDict) and v and (_holds_global(v.keys()) or _holds_global(v.values())):
            return True
    return False  # (nesting deep enough to exhaust the stack raises RecursionError: the pickle is refused)


def _record_getattr(trace: _Trace, args: tuple) -> None:
    if len(args) == 2 and isinstance(args[1], str):
        owner = args[0]
        if type(owner) is _GlobalStandIn:
            trace.attributes.add((owner._global, args[1]))
            return
        if type(type(owner)) is _GlobalStandIn:
            trace.attributes.add((type(owner)._global, args[1]))
            return
    trace.problems.append("builtins.getattr (on something other than a class or an object of one)")


class _Inspector(pickle.Unpickler):
    """Runs a pickle against stand-ins, recording every global it names and how it uses it."""

    def __init__(self, file, trace: _Trace, **kwargs):
        super().__init__(file, **kwargs)
        self.trace = trace
        self.stand_ins: dict[str, type] = {}
        self.storage = _Built("<storage>", trace)

    def find_class(self, module, name):
        storage = _is_torch_storage(module, name)  # torch maps these names before any find_class sees them
        module, name = canonical(module, name)
        full = f"{module}.{name}"
        stand_in = self.stand_ins.get(full)
        if stand_in is None:
            self.trace.use(full, "ref")
            self.trace.where[full] = (module, name)
            if full == "collections.OrderedDict":  # state dicts are filled in by the pickle; a C type it cannot change
                return OrderedDict
            stand_in = _GlobalStandIn(name.rpartition(".")[2], (_Rebuilt,),
                                      {"_global": full, "_trace": self.trace, "_uses": self.trace.uses[full],
                                       "_storage": storage, "_result": _Built(full, self.trace)})
            stand_in._instance = object.__new__(stand_in)
            self.stand_ins[full] = stand_in
        return stand_in

    def persistent_load(self, pid):
        # torch's storage references: ("storage", <torch.XStorage>, key, location, numel)
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] in ("storage", b"storage")
                and getattr(pid[1], "_storage", False) is True and isinstance(pid[2], (str, bytes))
                and isinstance(pid[3], (str, bytes)) and type(pid[4]) is int):
            self.trace.problems.append("a persistent id that is not a torch storage reference")
        return self.storage


def inspect_pickle(data: bytes, encoding: str = "utf-8") -> _Trace:
    """Run one pickle against stand-ins and return what it asked for; never imports or calls anything of it.

    Raises CorruptCheckpointError (with the reason) if the pickle ends early or is not a pickle.
    """
    trace = _Trace()
    _clear_extension_cache()
    collecting = gc.isenabled()
    gc.disable()  # the pass creates thousands of small containers: collecting them would cost more than the pass
    try:
        _Inspector(io.BytesIO(data), trace, encoding=encoding).load()
    except EOFError as e:
        raise CorruptCheckpointError(f"the pickle ends early ({e})") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e) or "invalid load key" in str(e):
            raise CorruptCheckpointError(f"not a complete pickle ({e})") from None
        trace.problems.append(f"{type(e).__name__}: {e}")
    except Exception as e:  # a stand-in was called, hashed, filled in...: genuine checkpoints never do that
        trace.problems.append(f"{type(e).__name__}: {e}")
    finally:
        if collecting:
            gc.enable()
        _clear_extension_cache()
    return trace


def _clear_extension_cache() -> None:
    """Pickle's EXT opcodes return objects cached by earlier loads without asking find_class; with extensions
    registered (copyreg.add_extension, used by nothing in torch or Ultralytics) the cache is emptied around an
    inspection, so that it sees stand-ins only and leaves none behind."""
    if copyreg._inverted_registry:
        copyreg._extension_cache.clear()


@dataclass
class Verdict:
    """The globals (canonical ``(module, name)``) and ``getattr`` pairs an inspected pickle may use."""

    globals: set[tuple[str, str]]
    attributes: set[tuple[Any, str]]  # (resolved class, attribute)


def check(trace: _Trace, allow: Allowlist, source: str) -> Verdict:
    """The verdict on an inspected pickle: UnsafeCheckpointError naming everything not allowed, or what it may use."""
    refused, refused_names = [], set()
    for full, kinds in sorted(trace.uses.items()):
        module, name = trace.where.get(full, (full.rpartition(".")[0], full.rpartition(".")[2]))
        if allow.permits(module, name, kinds, source):
            continue
        listed = allow.uses.get(full)
        extra = sorted(kinds - (listed or set()) - {"ref"}) if listed or _in_family(module) else []
        refused.append(f"{full} ({', '.join(extra)})" if extra else full)
        refused_names.add(full)
    pairs = set()
    for owner, attribute in sorted(trace.attributes):
        cls = None if owner in refused_names else resolve(*trace.where[owner], source)
        if (cls, attribute) not in allow.attribute_pairs:
            refused.append(f"getattr({owner}, {attribute!r})")
            continue
        pairs.add((cls, attribute))
    if refused:
        raise _refusal(source, refused + trace.problems[:3])
    if trace.problems:
        raise _refusal(source, trace.problems[:3], "它的 pickle 做了正常 checkpoint 不会做的事",
                       "its pickle does what genuine checkpoints never do")
    return Verdict({trace.where[full] for full in trace.uses}, pairs)


# --- pass 2: the real load, limited to what pass 1 approved ----------------------------------------------
class _CheckedUnpickler(pickle.Unpickler):
    """The unpickler torch.load uses for our loads: inspects its pickle first, then loads it at C speed."""

    allowlist: Allowlist
    source: str

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._file, self._encoding = file, kwargs.get("encoding", "ASCII")
        self._verdict: Verdict | None = None

    def load(self):
        if not isinstance(self._file, io.BytesIO):  # torch hands the zip format's data.pkl over as bytes
            raise _refusal(self.source, ["a pickle outside a zip checkpoint"])
        data = self._file.getvalue()
        key = (hashlib.sha256(data).digest(), self._encoding) if self.allowlist is allowlist() else None
        self._verdict = _verdicts.get(key) if key else None
        if self._verdict is None:
            self._verdict = check(inspect_pickle(data, self._encoding), self.allowlist, self.source)
            if key:
                _remember(key, self._verdict)
        return super().load()

    def find_class(self, module, name):
        module, name = canonical(module, name)
        if self._verdict is None or (module, name) not in self._verdict.globals:
            raise _refusal(self.source, [f"{module}.{name}"])
        if (module, name) == ("builtins", "getattr"):
            return self._getattr
        return resolve(module, name, self.source)

    def _getattr(self, owner, attribute):
        cls = owner if isinstance(owner, type) else type(owner)
        if (cls, attribute) not in self._verdict.attributes:
            raise _refusal(self.source, [f"getattr({cls.__qualname__}, {attribute!r})"])
        return getattr(owner, attribute)


# Verdicts on pickles already inspected in this process, by content: a file loaded again (a YOLO object and its
# predictor, the steps of a resume) skips the inspection. Identical bytes run identically, so this is exact.
_verdicts: dict[tuple[bytes, str], Verdict] = {}
_VERDICTS_KEPT = 64


def _remember(key: tuple[bytes, str], verdict: Verdict) -> None:
    _verdicts[key] = verdict
    while len(_verdicts) > _VERDICTS_KEPT:
        _verdicts.pop(next(iter(_verdicts)), None)


def _refuse_pickle_module_load(*args, **kwargs):
    raise UnsafeCheckpointError("legacy-format pickle")  # never reached: non-zip files are refused before torch.load


def _pickle_module(source: str, allow: Allowlist) -> types.SimpleNamespace:
    """What torch.load takes as ``pickle_module``: our unpickler, bound to this load's file name and allowlist."""

    class Unpickler(_CheckedUnpickler):
        pass

    Unpickler.source, Unpickler.allowlist = source, allow
    return types.SimpleNamespace(__name__=__name__, Unpickler=Unpickler, load=_refuse_pickle_module_load)


# --- the loading functions ---------------------------------------------------------------------------------
def trusted(path: str | os.PathLike) -> bool:
    """Whether ``ULTRALYTICS_ADDMODULES_TRUST_CHECKPOINTS`` opts this file in to stock (code-running) loading."""
    value = os.environ.get(TRUST_ENV, "").strip()
    if not value or value.lower() in {"0", "false", "no"}:
        return False
    if value.lower() in {"1", "true", "yes", "all"}:
        return True
    wanted = {os.path.realpath(p) for p in value.split(os.pathsep) if p.strip()}
    return os.path.realpath(path) in wanted


def _legacy_refusal(source: str, fh, allow: Allowlist) -> Exception:
    """Why a non-zip file is not loaded: the globals its pickles ask for that are not allowed (read, never run),
    else that it is damaged or in the legacy format, which Ultralytics never writes."""
    fh.seek(0)
    head = fh.read(2)
    if not head:
        return _corrupt(source, "empty file")
    if head[:1] != b"\x80":  # every pickle since protocol 2 starts with PROTO
        return _corrupt(source, "neither a zip archive nor a pickle")
    fh.seek(0)
    refused: list[str] = []
    for _ in range(5):  # the legacy format is a few pickles in a row: magic number, version, info, data, keys
        trace = _Trace()
        try:
            _Inspector(fh, trace).load()
        except Exception:
            break
        finally:
            for full, kinds in trace.uses.items():
                module, name = trace.where.get(full, ("", full))
                try:
                    allowed = allow.permits(module, name, kinds, source)
                except (MissingModuleError, MissingClassError):
                    allowed = False
                if not allowed and full not in refused:
                    refused.append(full)
    if refused:
        return _refusal(source, refused)
    return _corrupt(source, "a legacy-format (non-zip) pickle, which Ultralytics never writes")


def _is_torchscript(fh) -> bool:
    """Whether torch.load would hand this zip to torch.jit.load (it has constants.pkl); uses torch's own reader
    so that both see the same records."""
    import torch

    fh.seek(0)
    try:
        records = torch._C.PyTorchFileReader(fh).get_all_records()
    except Exception:  # not a readable zip: torch.load reports that below
        return False
    finally:
        fh.seek(0)
    return "constants.pkl" in records


def _is_corrupt_file_error(e: Exception) -> bool:
    if isinstance(e, (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError)):
        return not isinstance(e, FileNotFoundError)
    return isinstance(e, RuntimeError) and any(s in str(e) for s in ("PytorchStreamReader", "zip archive"))


def safe_load(file: str | os.PathLike, map_location: Any = "cpu", allow: Allowlist | None = None) -> Any:
    """``torch.load`` for files you did not necessarily make: loads genuine checkpoints and state dicts, refuses
    (before anything of it runs) a file that asks for globals genuine checkpoints never contain.

    This is the function other code should call to read a .pt/.pth file. Raises UnsafeCheckpointError,
    CorruptCheckpointError, MissingModuleError or MissingClassError, each with one bilingual line; a missing
    file is FileNotFoundError.
    """
    import torch

    source = str(file)
    allow = allow or allowlist()
    with open(file, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise _legacy_refusal(source, fh, allow)
        if _is_torchscript(fh):
            raise _refusal(source, ["TorchScript code (constants.pkl)"], "它是 TorchScript 模型，不是 checkpoint",
                           "it is a TorchScript archive, not a checkpoint; load it with YOLO('model.torchscript')")
        try:
            return torch.load(fh, map_location=map_location, weights_only=False,
                              pickle_module=_pickle_module(source, allow))
        except CHECKPOINT_ERRORS as e:
            if isinstance(e, CorruptCheckpointError) and source not in str(e):
                raise _corrupt(source, str(e)) from None
            raise
        except Exception as e:
            if _is_corrupt_file_error(e):
                raise _corrupt(source, f"{type(e).__name__}: {e}") from e
            raise


_warned_trusted: set[str] = set()


def load_ultralytics_checkpoint(weight: Any, stock_loader: Callable[..., tuple[dict, str]], *args: Any,
                                **kwargs: Any) -> tuple[dict, str]:
    """What Ultralytics' ``torch_safe_load(weight)`` returns, ``(checkpoint dict, file)``, loaded with ``safe_load``.

    Keeps stock's suffix check, its download of official assets that are missing locally, and its legacy
    renames (``canonical``); ``stock_loader`` (the original) runs only for files trusted through TRUST_ENV.
    """
    from ultralytics.utils import LOGGER
    from ultralytics.utils.checks import check_suffix
    from ultralytics.utils.downloads import attempt_download_asset

    check_suffix(file=weight, suffix=".pt")
    file = attempt_download_asset(weight)
    if trusted(file):
        if file not in _warned_trusted:
            _warned_trusted.add(file)
            LOGGER.warning(bilingual(f"按 {TRUST_ENV} 的设置，以完整 pickle 加载 {file}：文件里的代码会运行",
                                     f"{TRUST_ENV} trusts {file}: loading it with full pickle, code inside it runs"))
        return stock_loader(weight, *args, **kwargs)
    ckpt = safe_load(file)
    if not isinstance(ckpt, dict):  # a bare model saved with torch.save(model): what stock does with it
        LOGGER.warning(bilingual(f"{file} 不是 Ultralytics 保存的 checkpoint 字典；请用 model.save('name.pt') 保存",
                                 f"{file} is not a checkpoint dict as Ultralytics saves it; save with "
                                 "model.save('name.pt')"))
        ckpt = {"model": ckpt.model}
    return ckpt, file


def load_state(file: str | os.PathLike) -> dict:
    """The checkpoint dict of a file (safe_load), for reading ``epoch``/``train_args`` without building a YOLO."""
    ckpt = safe_load(file)
    if not isinstance(ckpt, dict):
        raise _corrupt(str(file), "not a checkpoint dict")
    return ckpt


def training_progress(ckpt: dict) -> tuple[int, int] | None:
    """(epochs done, epochs planned) of a training checkpoint, or None when the run finished (final files are
    stripped to ``epoch == -1``)."""
    epoch = ckpt.get("epoch", -1)
    epochs = int((ckpt.get("train_args") or {}).get("epochs", 0) or 0)
    if epoch is None or epoch < 0 or epoch + 1 >= epochs:
        return None
    return epoch + 1, epochs


# --- saving ------------------------------------------------------------------------------------------------
STAGING = ".saving"  # folder inside weights/ where a save is written before its files are renamed into place
PARTIAL = ".partial"  # so that a file left behind by a kill never matches Ultralytics' "last*.pt" resume search


def _fsync(path: Path) -> None:
    """Flush a file (or folder) to disk, so a rename never points at data still in the page cache."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on Windows; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomically(trainer: Any, stock_save: Callable[[Any], Any]) -> Any:
    """Run Ultralytics' ``save_model`` writing into ``weights/.saving/``, then rename each file into place.

    The trainer's ``wdir``/``last``/``best`` point into the staging folder only while stock saves; a failure or
    kill during the write leaves every previous file as it was. ``last.pt`` is renamed last, so a ``last.pt`` of
    epoch N means best.pt and epochN.pt of that save are in place too.
    """
    wdir, last, best = Path(trainer.wdir), Path(trainer.last), Path(trainer.best)
    staging = wdir / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed save
    staging.mkdir(parents=True)
    names = {f"{last.name}{PARTIAL}": last.name, f"{best.name}{PARTIAL}": best.name}
    trainer.wdir, trainer.last, trainer.best = staging, *(staging / partial for partial in names)
    try:
        result = stock_save(trainer)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        trainer.wdir, trainer.last, trainer.best = wdir, last, best
    written = sorted(staging.iterdir(), key=lambda p: names.get(p.name) == last.name)
    for f in written:
        _fsync(f)
        os.replace(f, wdir / names.get(f.name, f.name))
    _fsync(wdir)
    staging.rmdir()
    return result


def strip_atomically(stock_strip: Callable[..., dict], f: Any = "best.pt", s: str = "", updates: dict | None = None,
                     **kwargs: Any) -> dict:
    """Ultralytics' ``strip_optimizer`` (which rewrites last.pt/best.pt at the end of training) writing to a
    temporary file beside the target, renamed into place once complete."""
    target = Path(s or f)
    temporary = target.with_name(f".{target.name}{PARTIAL}")
    try:
        result = stock_strip(f, s=str(temporary), updates=updates, **kwargs)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if temporary.exists():  # stock returns {} without writing when the file is not a checkpoint
        _fsync(temporary)
        os.replace(temporary, target)
    return result


def drop_rows_after(csv_file: str | os.PathLike, epoch: int) -> int:
    """Remove the ``results.csv`` rows of epochs after ``epoch`` (1-based, as the csv counts), and any row cut
    short by a kill; returns how many were dropped. The file is rewritten atomically."""
    path = Path(csv_file)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < 2:
        return 0
    columns = lines[0].count(",")
    keep = [lines[0]]
    for line in lines[1:]:
        try:
            row_epoch = int(float(line.split(",", 1)[0]))
        except ValueError:
            row_epoch = None
        if row_epoch is not None and row_epoch <= epoch and line.endswith("\n") and line.count(",") == columns:
            keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        temporary = path.with_name(f".{path.name}{PARTIAL}")
        temporary.write_text("".join(keep), encoding="utf-8")
        os.replace(temporary, path)
    return dropped


__all__ = [
    "ALLOWLIST_FILE",
    "CHECKPOINT_ERRORS",
    "Allowlist",
    "CorruptCheckpointError",
    "MissingClassError",
    "MissingModuleError",
    "TRUST_ENV",
    "UnsafeCheckpointError",
    "allowlist",
    "drop_rows_after",
    "inspect_pickle",
    "load_state",
    "load_ultralytics_checkpoint",
    "safe_load",
    "save_atomically",
    "strip_atomically",
    "training_progress",
    "trusted",
]
