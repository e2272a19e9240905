"""Pretrained weights: the one module that loads them, after a model is built.

Two kinds of source:

- ImageNet weights of a backbone, as a state dict written by timm or torchvision (a file), or "timm" /
  "torchvision" to get them through that library. Each family maps the keys (``Backbone.convert_state_dict``,
  next to the architecture); loading is strict and all-or-nothing: every backbone tensor must be matched
  with the right shape, otherwise nothing changes.
- An Ultralytics checkpoint (``yolo11n.pt``, ...): its neck and head are copied into ours, aligned by role
  (``transfer.py``).

Modules only record what a YAML line asked for (``Backbone.requested_weights``); ``apply_requested_weights``
loads it once the whole model exists (Ultralytics' stride probe runs the model in training mode while it is
being built, which would shift the BatchNorm statistics of weights loaded any earlier). Weights loaded into a
YOLO object with ``load_pretrained`` are also the starting point of that object's next ``train()``,
whichever model Ultralytics' trainer builds for it.

Files are read with ``torch.load(weights_only=True)``; an Ultralytics checkpoint additionally needs its module
classes, allowed by ``checkpoint_safe_globals``. Online sources are offline-first: a cached file is used
without network; otherwise a short reachability check fails in seconds with what to download.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import re
import socket
import threading
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urlsplit

import torch
from torch import nn

from .messages import bilingual
from .nn.backbone import Backbone

LOGGER = logging.getLogger("ultralytics")
ONLINE_SOURCES = ("timm", "torchvision")
HF_MIRROR = "https://hf-mirror.com"  # the Hugging Face mirror users in mainland China set as HF_ENDPOINT
REACHABILITY_TIMEOUT = 3.0  # seconds for the TCP probe of the download host (DNS included)
# Checkpoint dicts from training frameworks keep the weights under one of these keys.
_STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net")
_NO_SOURCE = (None, False, "", "none", "None")


class WeightsError(ValueError):
    """Pretrained weights that cannot be loaded; ``str(error)`` is one bilingual line naming the source."""


class WeightsFileNotFoundError(WeightsError, FileNotFoundError):
    """A weights file that does not exist (where it was looked for is in the message)."""


@dataclass
class PretrainedReport:
    """What ``load_pretrained`` did for one backbone."""

    backbone: str  # our class name
    architecture: str  # the reference model the weights belong to, e.g. "timm:efficientnet_b0"
    source: str  # file path, "timm" or "torchvision"
    tensors: int  # tensors loaded

    def __str__(self) -> str:
        return f"{self.backbone}: {self.tensors} tensors from {self.source} ({self.architecture})"


# --------------------------------------------------------------------------------------------------------
# Finding the parts of a model
# --------------------------------------------------------------------------------------------------------
def find_backbones(model) -> list[Backbone]:
    """Backbones inside a YOLO object, an Ultralytics model, or the backbone itself."""
    module = model  # a YOLO object is an nn.Module too, holding the Ultralytics model as a submodule
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a YOLO object, an Ultralytics model or a backbone module, "
                        f"got {type(model).__name__}")
    found = [m for m in module.modules() if isinstance(m, Backbone)]
    if not found:
        raise WeightsError(bilingual(
            f"{type(module).__name__} 中没有 ultralytics-addmodules 主干，ImageNet 权重只能加载到 MobileNetV1/V4、"
            "EfficientNet V1/V2 或 TimmBackbone 层（Ultralytics 检查点如 yolo11n.pt 可以加载到任何 YOLO 模型）",
            f"{type(module).__name__} contains no ultralytics-addmodules backbone; pretrained ImageNet weights load "
            "into MobileNetV1/V4, EfficientNet V1/V2 or TimmBackbone layers (an Ultralytics checkpoint such as "
            "yolo11n.pt loads into any YOLO model)"))
    return found


def _split_target(model) -> tuple[object | None, nn.Module]:
    """(YOLO object or None, the nn.Module whose state-dict keys the loaded tensors use)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a YOLO object, an Ultralytics model or a backbone module, "
                        f"got {type(model).__name__}")
    inner = model._modules.get("model")
    if hasattr(model, "add_callback") and isinstance(inner, nn.Module):  # an Ultralytics YOLO (Model) object
        return model, inner
    return None, model


def _prefix_of(root: nn.Module, module: nn.Module) -> str:
    """State-dict key prefix of ``module`` inside ``root`` ('' for root itself)."""
    for name, m in root.named_modules():
        if m is module:
            return f"{name}." if name else ""
    raise ValueError(f"{type(module).__name__} is not part of {type(root).__name__}")


# --------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------
@dataclass
class UltralyticsCheckpoint:
    """An Ultralytics checkpoint read with the safe loader: its model (float32) and where it came from."""

    path: str
    model: nn.Module


def checkpoint_safe_globals() -> list[type]:
    """Classes an Ultralytics checkpoint pickles that ``torch.load(weights_only=True)`` may rebuild.

    Module classes only (torch.nn, Ultralytics' modules and task models, this package's modules): rebuilding
    one restores attributes and tensors and runs no code of the file's choosing. Checkpoints of stock
    Ultralytics 8.3.0 models need nothing else. Kept in this one function so that the package-wide checkpoint
    allowlist can replace it.
    """
    import ultralytics.nn.modules as ultralytics_modules
    from ultralytics.nn import tasks

    from . import nn as our_modules

    modules = [torch.nn, tasks]
    for package in (ultralytics_modules, our_modules):
        submodules = pkgutil.iter_modules(package.__path__)
        modules += [importlib.import_module(f"{package.__name__}.{m.name}") for m in submodules]
    found = {obj for module in modules for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, nn.Module)}
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _sniff(path: Path) -> tuple[str, str]:
    """What a file that is not a weights file looks like, as (Chinese, English) descriptions."""
    head = path.read_bytes()[:512] if path.stat().st_size else b""
    text = head.lstrip().lower()
    if not head:
        return "一个空文件", "an empty file"
    if head.startswith(b"PK"):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = ", ".join(z.namelist()[:3])
            return (f"一个 zip 压缩包（内含 {names}），请先解压，再传入其中的 .pth/.pt/.safetensors 文件",
                    f"a zip archive (holding {names}); unpack it and pass the .pth/.pt/.safetensors file inside")
        return "一个损坏或不完整的 zip/PyTorch 文件（下载中断？）", "a damaged or truncated zip/PyTorch file (an interrupted download?)"
    if head.startswith(b"\x1f\x8b"):
        return "一个 gzip 压缩文件（.tar.gz？），请先解压", "a gzip-compressed file (.tar.gz?); unpack it first"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "一个 tar 压缩包，请先解压", "a tar archive; unpack it first"
    if head.startswith((b"7z\xbc\xaf", b"Rar!")):
        return "一个 7z/rar 压缩包，请先解压", "a 7z/rar archive; unpack it first"
    if text.startswith((b"<!doctype html", b"<html")):
        return "一个 HTML 网页（下载失败或被重定向？）", "an HTML page (a failed or redirected download?)"
    if head.startswith(b"version https://git-lfs"):
        return "一个 Git LFS 指针文件，不是权重本身（git lfs pull）", "a Git LFS pointer, not the weights (run git lfs pull)"
    try:
        head.decode("utf-8")
        return "一个文本文件", "a text file"
    except UnicodeDecodeError:
        return "无法识别的二进制数据（不是 PyTorch、safetensors 或压缩包文件）", \
            "unrecognised bytes (not a PyTorch, safetensors or archive file)"


def _not_weights(path: Path, what: tuple[str, str]) -> WeightsError:
    return WeightsError(bilingual(
        f"无法读取预训练权重 {path}：它是{what[0]}，不是 state dict 或 Ultralytics 检查点",
        f"cannot read pretrained weights from {str(path)!r}: it is {what[1]}, not a state dict or an Ultralytics "
        "checkpoint"))


def _is_torch_zip(path: Path) -> bool:
    """A file in torch.save's zip format (a pickle named data.pkl plus tensor storages)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("data.pkl") for name in z.namelist())


def _torch_load_checkpoint(path: Path):
    """``torch.load`` with ``weights_only=True``; Ultralytics checkpoints with their module classes allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as plain_error:
        if not _is_torch_zip(path):
            raise _not_weights(path, _sniff(path)) from plain_error
        try:
            needed = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:
            needed = []
        if not any(name.startswith("ultralytics.") for name in needed):
            shown = ", ".join(needed[:3]) or type(plain_error).__name__
            raise WeightsError(bilingual(
                f"{path} 是一个保存了 Python 对象（{shown}）的 PyTorch 文件，不是 state dict；为安全起见不加载它"
                "（反序列化可能执行任意代码）。请在可信的环境中用 torch.save(model.state_dict(), 文件) 保存权重",
                f"{str(path)!r} is a PyTorch file that pickles Python objects ({shown}), not a state dict; it is not "
                "loaded because unpickling them could run code. Save the weights with torch.save(model.state_dict(), "
                "file) where you trust the file")) from None
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:
                allowed = {f"{c.__module__}.{c.__qualname__}" for c in checkpoint_safe_globals()}
                outside = ", ".join([n for n in needed if n not in allowed][:3]) or "?"
                raise WeightsError(bilingual(
                    f"{path} 是 Ultralytics 检查点，但它包含安全加载白名单之外的类（{outside}），因此不加载",
                    f"{str(path)!r} is an Ultralytics checkpoint that pickles classes outside the safe-loading "
                    f"allowlist ({outside}); it is not loaded")) from None


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor] | UltralyticsCheckpoint:
    """A state dict (.pth/.pt/.bin/.safetensors, common checkpoint dicts unwrapped) or an Ultralytics checkpoint.

    Raises ``WeightsFileNotFoundError`` for a missing file and ``WeightsError`` saying what the file is when it
    holds neither (an archive, an HTML page, random bytes, pickled objects, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileNotFoundError(bilingual(f"预训练权重文件 {path} 不存在",
                                                 f"pretrained weights file {str(path)!r} does not exist"))
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            obj = load_file(str(path))
        except Exception as e:
            raise _not_weights(path, _sniff(path)) from e
    else:
        obj = _torch_load_checkpoint(path)
    model = obj if isinstance(obj, nn.Module) else None
    if isinstance(obj, Mapping) and isinstance(obj.get("ema") or obj.get("model"), nn.Module):
        model = obj.get("ema") or obj.get("model")  # Ultralytics keeps the EMA weights in 'ema' while training
    if model is not None:
        if not isinstance(getattr(model, "model", None), nn.Sequential):
            raise WeightsError(bilingual(f"{path} 保存的是模型对象 {type(model).__name__}，不是 Ultralytics 检查点或 state dict",
                                         f"{str(path)!r} holds a {type(model).__name__} module, neither an Ultralytics "
                                         "checkpoint nor a state dict"))
        return UltralyticsCheckpoint(str(path), model.float())
    for key in _STATE_DICT_KEYS:  # unwrap {"state_dict": {...}} and friends
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        raise WeightsError(bilingual(f"{path} 保存的是 {kind}，不是 state dict（名称到张量的映射）",
                                     f"{str(path)!r} does not hold a state dict (a mapping of names to tensors) "
                                     f"but a {kind}"))
    return {k.removeprefix("module."): v for k, v in obj.items()}


# --------------------------------------------------------------------------------------------------------
# Online sources, offline-first
# --------------------------------------------------------------------------------------------------------
@dataclass
class OnlineWeights:
    """Where a library publishes weights: a Hugging Face hub repository (timm) or a URL (torchvision)."""

    library: str  # "timm" or "torchvision"
    name: str  # the library's model name
    hub_id: str | None = None
    url: str | None = None

    @property
    def download(self) -> str:
        """What to download, exactly."""
        if self.hub_id:
            return f"https://huggingface.co/{self.hub_id} (model.safetensors)"
        return str(self.url)


def locate_online(source: str, name: str) -> OnlineWeights | None:
    """Where ``source`` publishes ImageNet weights of model ``name``; None when it publishes none. No network."""
    if source == "timm":
        from .nn.timm_backbone import INSTALL_HINT

        try:
            import timm
        except ImportError:
            raise WeightsError(bilingual(
                f"从 timm 获取 {name} 的权重需要安装 timm：{INSTALL_HINT}",
                f"getting the weights of {name} from timm needs timm: {INSTALL_HINT}")) from None
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            return None
        return OnlineWeights("timm", name, hub_id=cfg.hf_hub_id or None, url=None if cfg.hf_hub_id else cfg.url)
    import torchvision

    try:
        return OnlineWeights("torchvision", name, url=torchvision.models.get_model_weights(name).DEFAULT.url)
    except (ValueError, AttributeError):
        return None


def _cached_file(where: OnlineWeights) -> str | None:
    """The already-downloaded file, if the library's cache has it."""
    if where.hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(where.hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(str(where.url)).path)
    return str(cached) if cached.is_file() else None


def reachable(url: str, timeout: float = REACHABILITY_TIMEOUT) -> bool:
    """Whether a TCP connection to ``url``'s host (or the configured HTTPS/HTTP proxy) opens within ``timeout``.

    Runs in a daemon thread so that a hanging DNS lookup cannot hold the caller longer than ``timeout``.
    """
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or 80
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _offline_reason(where: OnlineWeights) -> tuple[str, str] | None:
    """Why the download cannot work now, (Chinese, English); None when the host answers."""
    if where.hub_id:
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            return "已设置 HF_HUB_OFFLINE，且本地缓存中没有该文件", "HF_HUB_OFFLINE is set and the file is not in the local cache"
        url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    else:
        url = str(where.url)
    if reachable(url):
        return None
    host = urlsplit(url).netloc
    return (f"{REACHABILITY_TIMEOUT:g} 秒内无法连接 {host}，本地缓存中也没有该文件",
            f"{host} cannot be reached within {REACHABILITY_TIMEOUT:g} s and the file is not in the local cache")


def _download_hint(where: OnlineWeights, line: str) -> tuple[str, str]:
    """What to download and how to load it afterwards, (Chinese, English)."""
    file_line = line.replace("<FILE>", "path/to/file")
    if where.hub_id:
        zh = (f"请在能联网的机器上下载 {where.download}（中国大陆可设置 HF_ENDPOINT={HF_MIRROR}，或从 "
              f"{HF_MIRROR}/{where.hub_id} 下载），然后在 YAML 中写 {file_line} 或使用 --pretrained path/to/file")
        en = (f"download {where.download} on a machine with network access (in mainland China set "
              f"HF_ENDPOINT={HF_MIRROR} or get it from {HF_MIRROR}/{where.hub_id}), then write {file_line} in the "
              "YAML or pass --pretrained path/to/file")
    else:
        zh = (f"请在能联网的机器上下载 {where.download}（或从已下载过的机器的 ~/.cache/torch/hub/checkpoints/ 复制），"
              f"然后在 YAML 中写 {file_line} 或使用 --pretrained path/to/file")
        en = (f"download {where.download} on a machine with network access (or copy it from "
              f"~/.cache/torch/hub/checkpoints/ of a machine that has it), then write {file_line} in the YAML or pass "
              "--pretrained path/to/file")
    return zh, en


def fetch_online(source: str, name: str, owner: str = "", line: str = "",
                 others: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The published state dict of ``name`` through timm or torchvision: from the local cache if it is there,
    else downloaded; fails within seconds (one line saying what to download) when the host cannot be reached.

    ``owner`` (our backbone's name) and ``line`` (its YAML line with ``<FILE>`` where the file goes) only
    make the error message concrete; ``others`` lists the other sources the backbone has.
    """
    owner = owner or name
    line = line or "[..., <FILE>]"
    where = locate_online(source, name)
    if where is None:
        alternatives = ", ".join(others) or "-"
        raise WeightsError(bilingual(f"{source} 没有发布 {name} 的预训练权重（{owner}）；可用的其它来源：{alternatives}",
                                     f"{source} publishes no pretrained weights for {name} ({owner}); other sources: "
                                     f"{alternatives}"))
    cached = _cached_file(where)
    if cached is None:
        reason = _offline_reason(where)
        if reason is not None:
            hint = _download_hint(where, line)
            what = f"{source} {where.hub_id or name}"
            raise WeightsError(bilingual(
                f"无法获取 {owner} 的预训练权重（{what}）：{reason[0]}。{hint[0]}",
                f"cannot get the pretrained weights of {owner} ({what}): {reason[1]}. {hint[1]}"))
    try:
        if source == "timm":
            from .nn.timm_backbone import import_timm

            overlay = {"file": cached} if cached else None  # a cached file loads without any network call
            return import_timm().create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).state_dict()
        import torchvision  # its loader reads the cache first

        return torchvision.models.get_model(name, weights="DEFAULT").state_dict()
    except Exception as e:
        hint = _download_hint(where, line)
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise WeightsError(bilingual(
            f"下载 {owner} 的预训练权重失败（{detail}）。{hint[0]}",
            f"downloading the pretrained weights of {owner} failed ({detail}). {hint[1]}")) from e


# --------------------------------------------------------------------------------------------------------
# Which configuration of each family has published weights (used in messages)
# --------------------------------------------------------------------------------------------------------
def _yaml_name(cls: type) -> str:
    from .registry import lookup, registered_names

    return next((n for n in registered_names() if lookup(n).cls is cls), cls.__name__)


def published_line(backbone: Backbone, source: str | None = None) -> str | None:
    """The YAML backbone line of ``backbone``'s architecture at the configuration with published weights,
    with ``source`` as its last argument; None for backbones this package does not know."""
    from .nn.efficientnet import EfficientNet
    from .nn.mobilenetv1 import MobileNetV1
    from .nn.mobilenetv4 import MobileNetV4
    from .nn.timm_backbone import TimmBackbone

    if isinstance(backbone, MobileNetV1):
        name, args = "MobileNetV1", ["1.0"]  # the fixed-width names (MobileNetV1_n, ...) have no weights
    elif isinstance(backbone, MobileNetV4):
        name, args = _yaml_name(type(backbone)), ["1.0"]
    elif isinstance(backbone, EfficientNet):
        name, args = _yaml_name(type(backbone)), [backbone.version, "1.0", "1.0"]
    elif isinstance(backbone, TimmBackbone):
        name, args = "TimmBackbone", [backbone.model_name]
    else:
        return None
    return f"[-1, 1, {name}, [{', '.join(args + ([source] if source else []))}]]"


def pretrained_ready_yaml(backbone: Backbone) -> str | None:
    """The shipped YAML (scale n) whose backbone is this family at a width with published weights."""
    from .nn.efficientnet import EfficientNetV1, EfficientNetV2
    from .nn.mobilenetv1 import MobileNetV1
    from .nn.mobilenetv4 import MobileNetV4

    for family, yaml_name in ((MobileNetV1, "yolo11n-MobileNetV1-pretrained.yaml"),
                              (MobileNetV4, "yolo11n-MobileNetV4-pretrained.yaml"),
                              (EfficientNetV1, "yolo11n-EfficientNetV1-pretrained.yaml"),
                              (EfficientNetV2, "yolo11n-EfficientNetV2-pretrained.yaml")):
        if isinstance(backbone, family):
            return yaml_name
    return None


def _no_weights_error(backbone: Backbone) -> WeightsError:
    name = type(backbone).__name__
    line = published_line(backbone)
    ready = pretrained_ready_yaml(backbone)
    fix_zh = f"把主干行写成 - {line}" if line else ""
    fix_en = f"write the backbone line as - {line}" if line else ""
    if ready:
        fix_zh += f"，或直接使用 {ready}（python train.py --model {ready} --pretrained 文件）"
        fix_en += f", or use {ready} (python train.py --model {ready} --pretrained FILE)"
    return WeightsError(bilingual(
        f"{name} 在当前配置下没有已发布的 ImageNet 权重，{backbone.weight_hint()} 才有；{fix_zh}",
        f"{name} in this configuration has no published ImageNet weights; {backbone.weight_hint()} has them; {fix_en}"))


# --------------------------------------------------------------------------------------------------------
# Planning a load (nothing changes until every source has been checked)
# --------------------------------------------------------------------------------------------------------
def _problems(backbone: Backbone, converted: Mapping[str, torch.Tensor]) -> list[str]:
    """Every way ``converted`` fails to cover the backbone exactly (missing, unexpected, mis-shaped)."""
    ours = backbone.state_dict()
    problems = []
    for key, tensor in ours.items():
        if key not in converted:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"missing {key} {tuple(tensor.shape)}")
        elif converted[key].shape != tensor.shape:
            problems.append(f"shape of {key}: ours {tuple(tensor.shape)}, source {tuple(converted[key].shape)}")
    problems += [f"unexpected {key}" for key in converted if key not in ours]
    return problems


def _match(backbone: Backbone, state_dict: Mapping[str, torch.Tensor] | None, source: str) -> tuple[str, dict]:
    """(reference architecture, converted state dict) for the first published source that fits exactly."""
    sources = backbone.weight_sources()
    name = type(backbone).__name__
    if not sources:
        raise _no_weights_error(backbone)
    if source in ONLINE_SOURCES:
        if source not in sources:
            raise WeightsError(bilingual(f"{name} 没有 {source} 权重；可用的来源：{', '.join(sources)}",
                                         f"{name} has no {source} weights; available sources: {', '.join(sources)}"))
        candidates = {source: sources[source]}
        state_dict = fetch_online(source, sources[source], name, published_line(backbone, "<FILE>") or "",
                                  [s for s in sources if s != source])
    else:
        candidates = sources
    attempts = []
    for kind, reference in candidates.items():
        try:
            converted = backbone.convert_state_dict(state_dict, kind)
        except (KeyError, ValueError, NotImplementedError) as e:
            attempts.append((kind, reference, [f"cannot map keys: {e}"]))
            continue
        problems = _problems(backbone, converted)
        if not problems:
            return f"{kind}:{reference}", converted
        attempts.append((kind, reference, problems))
    kind, reference, problems = min(attempts, key=lambda a: len(a[2]))
    shown = "; ".join(problems[:5])
    raise WeightsError(bilingual(
        f"{source} 中的权重与 {name} 不匹配（最接近：{kind} {reference}），共 {len(problems)} 处问题，未加载任何权重",
        f"weights from {source!r} do not fit {name} (closest: {kind} {reference}); {len(problems)} problem(s), "
        f"first ones: {shown}. Nothing was loaded."))


def _plan_backbone(root: nn.Module, backbone: Backbone, source: str, state_dict) -> tuple[dict, PretrainedReport]:
    architecture, converted = _match(backbone, state_dict, source)
    ours = backbone.state_dict()
    prefix = _prefix_of(root, backbone)
    tensors = {prefix + k: v.to(ours[k].dtype) for k, v in converted.items()}
    count = sum(not k.endswith("num_batches_tracked") for k in converted)  # counters are not weights
    return tensors, PretrainedReport(type(backbone).__name__, architecture, source, count)


@dataclass
class _Loaded:
    """One source, checked and ready: tensors keyed like the model's state dict, or for an Ultralytics checkpoint
    its model, aligned anew with each model it goes into (the trainer's may have another class count)."""

    tensors: dict[str, torch.Tensor]
    checkpoint: nn.Module | None = None
    source: str = ""

    def tensors_for(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], list]:
        if self.checkpoint is None:
            return self.tensors, []
        from .transfer import plan_transfer

        tensors, report = plan_transfer(model, self.checkpoint, self.source)
        return tensors, [report]


def _plan(root: nn.Module, backbones: Sequence[Backbone] | None, source: str | Path) -> tuple[_Loaded, list]:
    """One source checked against ``root`` (the loaded part, reports); raises before anything changes."""
    source = str(source)
    loaded = None if source in ONLINE_SOURCES else read_weights_file(source)
    if isinstance(loaded, UltralyticsCheckpoint):
        if not isinstance(getattr(root, "model", None), nn.Sequential):
            raise WeightsError(bilingual(
                f"{source} 是 Ultralytics 检查点，只能加载到整个 YOLO 模型（YOLO 对象或 DetectionModel），不能加载到 {type(root).__name__}",
                f"{source} is an Ultralytics checkpoint; it loads into a whole YOLO model (a YOLO object or a "
                f"DetectionModel), not into a {type(root).__name__}"))
        part = _Loaded({}, loaded.model, source)
        part.tensors, reports = part.tensors_for(root)
        return part, reports
    tensors, reports = {}, []
    for bb in backbones if backbones is not None else find_backbones(root):
        t, r = _plan_backbone(root, bb, source, loaded)
        tensors.update(t)
        reports.append(r)
    return _Loaded(tensors), reports


def _copy_into(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Copy every tensor whose key and shape match into ``module`` in place; (copied, keys skipped)."""
    state = module.state_dict()
    copied, skipped = 0, []
    with torch.no_grad():
        for key, value in tensors.items():
            target = state.get(key)
            if target is None or target.shape != value.shape:
                skipped.append(key)
                continue
            target.copy_(value.to(device=target.device, dtype=target.dtype))
            copied += 1
    return copied, skipped


# --------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------
def load_pretrained(model, source: str | Path | Sequence[str | Path], verbose: bool = True) -> list:
    """Load pretrained weights into ``model``; every source is checked before anything changes.

    Args:
        model: a YOLO object, an Ultralytics model (DetectionModel, ...) or a Backbone.
        source: one source or a list of them, applied in order:
            - a state-dict file written by timm or torchvision (a checkpoint dict holding one works too), or
              "timm" / "torchvision" (the library's cache, else a download): ImageNet weights for every backbone,
              strict and all-or-nothing;
            - an Ultralytics checkpoint (yolo11n.pt, a segment/pose/obb one, your own best.pt): its neck and head,
              aligned with ours by role, every same-shape tensor copied (see ``transfer.py``).
        verbose: log one line per report.

    With a YOLO object, the loaded tensors are also the starting point of its next ``train()``: Ultralytics'
    trainer builds a new model, and a one-shot callback copies them into it before training starts.

    Returns:
        one report per backbone (``PretrainedReport``) or checkpoint (``transfer.TransferReport``).

    Raises:
        WeightsError (a ValueError): no backbone, no published weights for this width, tensors that do not
            match, a file that holds no weights, an online source that cannot be reached.
        WeightsFileNotFoundError (also a FileNotFoundError): the file does not exist.
    """
    yolo, root = _split_target(model)
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise WeightsError(bilingual("没有给出预训练权重来源", "no pretrained weights source given"))
    parts, reports = [], []
    for src in sources:
        part, src_reports = _plan(root, None, src)
        parts.append(part)
        reports += src_reports
    for part in parts:
        _copy_into(root, part.tensors)
    if yolo is not None:
        _carry_into_next_training(yolo, parts)
    if verbose:
        for report in reports:
            LOGGER.info(f"ultralytics-addmodules: loaded pretrained {report}")
    return reports


def _normalise_request(backbone: Backbone):
    """The source a YAML line asked for: None, "timm", "torchvision" or a path string."""
    requested = getattr(backbone, "requested_weights", None)
    if requested in _NO_SOURCE:
        return None
    if requested is True:
        return "timm"
    if not isinstance(requested, (str, Path)):
        raise WeightsError(bilingual(
            f"{type(backbone).__name__} 的权重参数 {requested!r} 无效；有效值：文件路径、timm 或 torchvision",
            f"{type(backbone).__name__}: weights argument {requested!r} is not valid; valid: a file path, timm or "
            "torchvision"))
    return str(requested)


def _yaml_folder(yaml_file: str | Path | None) -> Path | None:
    """The folder of the model YAML (Ultralytics keeps the name with the scale letter, e.g. yolo11n-x.yaml)."""
    if not yaml_file:
        return None
    path = Path(yaml_file)
    unified = path.with_name(re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", path.name))  # yolo11n-x.yaml -> yolo11-x.yaml
    for candidate in (path, unified):
        if candidate.is_file():
            return candidate.resolve().parent
    from .model_yamls import find_model_yaml

    shipped = find_model_yaml(unified) or find_model_yaml(path)
    return shipped.parent if shipped else None


def resolve_weights_path(source: str, yaml_file: str | Path | None = None) -> Path:
    """A weights path from a YAML line: next to the YAML first, then the working directory."""
    path = Path(source).expanduser()
    if path.is_absolute():
        places = [path]
    else:
        folder = _yaml_folder(yaml_file)
        places = ([folder / path] if folder else []) + [Path.cwd() / path]
    for place in places:
        if place.is_file():
            return place
    looked = ", ".join(str(p) for p in dict.fromkeys(places))
    where = f" ({yaml_file})" if yaml_file else ""
    raise WeightsFileNotFoundError(bilingual(
        f"找不到模型 YAML{where} 中写的权重文件 {source}，已查找：{looked}；请写该文件的路径（相对 YAML 所在目录或当前目录）、timm 或 torchvision",
        f"weights file {source!r} named in the model YAML{where} not found; looked in: {looked}; valid: a path to the "
        "file (relative to the YAML's folder or the working directory), timm or torchvision"))


def apply_requested_weights(model: nn.Module, yaml_file: str | Path | None = None) -> list:
    """Load the weights that YAML lines asked for (``Backbone.requested_weights``) into a freshly built model.

    Called once the whole model exists. A relative file path resolves next to ``yaml_file`` first, then in the
    working directory; errors name the weights file. All-or-nothing over the model's backbones.
    """
    requests = [(bb, _normalise_request(bb)) for bb in model.modules() if isinstance(bb, Backbone)]
    requests = [(bb, src) for bb, src in requests if src is not None]
    parts, reports = [], []
    for bb, source in requests:
        if source not in ONLINE_SOURCES:
            source = str(resolve_weights_path(source, yaml_file))
        part, src_reports = _plan(model, [bb], source)
        parts.append(part)
        reports += src_reports
    for part in parts:
        _copy_into(model, part.tensors)
    for report in reports:
        LOGGER.info(f"ultralytics-addmodules: loaded pretrained {report}")
    return reports


# --------------------------------------------------------------------------------------------------------
# Keeping loaded weights for the next train()
# --------------------------------------------------------------------------------------------------------
_PENDING = "_addmodules_pretrained"  # attribute of the YOLO object: loaded parts waiting for its next train()


def _trained_module(model: nn.Module) -> nn.Module:
    """The Ultralytics model inside DDP / torch.compile wrappers."""
    for attribute in ("module", "_orig_mod"):
        while isinstance(getattr(model, attribute, None), nn.Module):
            model = getattr(model, attribute)
    return model


def _carry_into_next_training(yolo, parts: Sequence[_Loaded]) -> None:
    """Make the loaded ``parts`` the starting point of ``yolo``'s next train().

    Ultralytics' trainer trains a model of its own (rebuilt from the YAML, with the dataset's class count), so
    a callback copies them into it and into its EMA copy at ``on_pretrain_routine_end``: after the model, EMA and
    optimizer exist (8.3 and 8.4 create them at different points) and before the first step; copying in place
    keeps the optimizer's references valid. A checkpoint's neck and head are aligned anew with that model. The
    parts are consumed by that one train(). Callbacks do not reach multi-GPU (DDP) worker processes.
    """
    yolo.__dict__.setdefault(_PENDING, []).extend(parts)
    registered = yolo.callbacks.get("on_pretrain_routine_end", [])
    if any(getattr(f, "_addmodules_pretrained", False) for f in registered):
        return

    def start_from_pretrained(trainer) -> None:
        waiting = yolo.__dict__.pop(_PENDING, None)
        if not waiting:
            return
        if getattr(trainer, "start_epoch", 0) > 0:
            LOGGER.warning("ultralytics-addmodules: resumed training continues from its checkpoint; the pretrained "
                           "weights loaded into this YOLO object were not applied")
            return
        model = _trained_module(trainer.model)
        ema = getattr(getattr(trainer, "ema", None), "ema", None)
        copied, skipped = 0, []
        for part in waiting:
            tensors, reports = part.tensors_for(model)
            n, missed = _copy_into(model, tensors)
            copied, skipped = copied + n, skipped + missed
            if isinstance(ema, nn.Module):
                _copy_into(ema, tensors)
            for report in reports:
                LOGGER.info(f"ultralytics-addmodules: into the model being trained: {report}")
        note = f"; {len(skipped)} not copied (other shape here): {', '.join(skipped[:3])}" if skipped else ""
        LOGGER.info(f"ultralytics-addmodules: training starts from the loaded pretrained weights "
                    f"({copied} tensors{note})")

    start_from_pretrained._addmodules_pretrained = True
    yolo.add_callback("on_pretrain_routine_end", start_from_pretrained)


__all__ = [
    "ONLINE_SOURCES",
    "PretrainedReport",
    "UltralyticsCheckpoint",
    "WeightsError",
    "WeightsFileNotFoundError",
    "apply_requested_weights",
    "checkpoint_safe_globals",
    "fetch_online",
    "find_backbones",
    "load_pretrained",
    "read_weights_file",
    "resolve_weights_path",
]
