"""Start-up hook of ultralytics-addmodules, run by ``ultralytics_addmodules.pth`` in every interpreter.

It only puts a tiny finder on ``sys.meta_path`` (standard library only, no torch, no wrapt: this runs in
every Python process of the environment). When the ``ultralytics`` package finishes importing, the finder's
loader activates the add-on. We wait for the whole package rather than ``ultralytics.nn.tasks`` itself
because tasks is first imported half-way through ``ultralytics/__init__``, when ``Model`` does not exist yet.
``ULTRALYTICS_ADDMODULES=0`` disables the hook.
"""

import os
import sys

TARGET = "ultralytics"


class _ActivateAfterExec:
    """Loader proxy: runs the real loader, then activates the add-on."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _activate()


class UltralyticsFinder:
    """Meta-path finder that only answers for ``ultralytics`` and wraps the loader the others found."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ActivateAfterExec(spec.loader)
                return spec
        return None


def _activate():
    try:
        import ultralytics_addmodules

        ultralytics_addmodules.activate()
    except Exception as e:  # never break Ultralytics itself because the add-on failed
        sys.stderr.write(
            f"ultralytics-addmodules: 激活失败 ({type(e).__name__}: {e})，Ultralytics 以原版运行 | "
            f"activation failed ({type(e).__name__}: {e}); Ultralytics runs stock\n"
        )


def install():
    """Put the finder first on sys.meta_path (once), unless ULTRALYTICS_ADDMODULES=0."""
    if os.environ.get("ULTRALYTICS_ADDMODULES", "1") == "0" or TARGET in sys.modules:
        return
    if not any(type(f).__name__ == "UltralyticsFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, UltralyticsFinder())


install()
