"""Both install modes (regular and editable) activate the add-on in a fresh interpreter.

Each case builds a throw-away venv that reuses the main environment's packages (path lines pointing at the
main site-packages and at the directories its own path lines add; its .pth files are not run, so the main
install of this project stays invisible) and installs this project into it with ``--no-deps
--no-build-isolation`` (no network needed).
"""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest
from helpers import REPO, fresh_python

CHECK = textwrap.dedent("""
    import sys
    assert 'torch' not in sys.modules and 'ultralytics' not in sys.modules, 'start-up imported heavy modules'
    from ultralytics.nn import tasks
    import ultralytics_addmodules
    print('RESULT', tasks.parse_model.__module__, ultralytics_addmodules.__file__)
    from ultralytics_addmodules.model_yamls import list_model_yamls
    print('YAMLS', len(list_model_yamls()))
""")


def main_env_paths() -> list[str]:
    """The main environment's site-packages, then each directory a path line of its .pth files adds (CI keeps
    torch in one shared directory, inside the checkout, reached that way), leaving out any that would make this
    project importable."""
    main_site = Path(sysconfig.get_paths()["purelib"])
    paths = [str(main_site)]
    for pth in sorted(main_site.glob("*.pth")):
        for line in pth.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue  # the same lines site.py skips or executes rather than adds
            folder = (main_site / line).resolve()
            ours = (folder / "ultralytics_addmodules").is_dir()  # an editable install's line (the checkout)
            if folder.is_dir() and not ours and str(folder) not in paths:
                paths.append(str(folder))
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_install_mode(tmp_path, editable):
    pytest.importorskip("hatchling")  # test extra: installs without build isolation, so offline
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    child_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    with open(f"{child_site}/zz_main_env.pth", "w") as f:  # runs last: our own .pth files come first
        f.write("\n".join(main_env_paths()) + "\n")
    args = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
            "--no-build-isolation", "--no-index"]
    if editable:
        args.append("-e")
    build = subprocess.run([*args, str(REPO)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]

    # PYTHONPATH emptied: a developer's PYTHONPATH pointing at a checkout would shadow the installed copy
    r = fresh_python(CHECK, cwd=tmp_path, python=str(python), env={"PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    result = [line.split() for line in r.stdout.splitlines() if line[:6] in ("RESULT", "YAMLS ")]
    module, location = result[0][1:]
    assert module == "ultralytics_addmodules.patch"
    if editable:
        assert location.startswith(str(REPO))
    else:
        assert location.startswith(child_site)
    assert int(result[1][1]) == len(list((REPO / "yaml").glob("*.yaml")))
    assert site  # keep the import explicit: the main env's site layout is what we point at


def _oldest_python() -> tuple[str, str | None]:
    """The oldest Python version pyproject.toml claims, and an interpreter of it on this machine (or None)."""
    import re
    import shutil
    from pathlib import Path

    claim = re.search(r'requires-python\s*=\s*">=\s*([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    candidates = [str(p) for p in sorted(Path.home().glob(f".pyenv/versions/{claim}.*/bin/python{claim}"))]
    candidates.append(shutil.which(f"python{claim}"))  # may be a pyenv shim that only works where selected
    for interpreter in filter(None, candidates):
        if subprocess.run([interpreter, "-c", "pass"], capture_output=True).returncode == 0:
            return claim, interpreter
    return claim, None


@pytest.mark.slow
def test_installs_and_imports_on_the_oldest_claimed_python(tmp_path):
    """requires-python is true: the wheel installs into the oldest claimed Python, every module compiles there,
    and the torch-free parts (start-up hook, registry, messages, version guard) import and work."""
    claim, interpreter = _oldest_python()
    if interpreter is None:
        pytest.skip(f"no Python {claim} on this machine to check the requires-python claim against")
    pytest.importorskip("hatchling")
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(wheel_dir), str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    env_dir = tmp_path / "old"
    subprocess.run([interpreter, "-m", "venv", str(env_dir)], check=True)  # its bundled pip: newer ones drop 3.9
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                              "--disable-pip-version-check", *map(str, wheel_dir.glob("*.whl"))],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    code = textwrap.dedent("""
        import compileall, sys, pathlib
        import ultralytics_addmodules as addon  # no Ultralytics here: activation waits for its import
        from ultralytics_addmodules import compat, messages, registry
        ok = compileall.compile_dir(pathlib.Path(addon.__file__).parent, quiet=1)
        finders = [type(f).__name__ for f in sys.meta_path]
        print('RESULT', sys.version_info[:2], ok, 'torch' in sys.modules, 'UltralyticsFinder' in finders,
              compat.is_supported('8.3.0'), registry.make_divisible(20))
    """)
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    major, minor = map(int, claim.split("."))
    assert f"RESULT ({major}, {minor}) True False True True 24" in r.stdout
