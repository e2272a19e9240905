"""Suite-wide settings: keep Ultralytics offline and quiet (no connectivity probes, no telemetry), and give
every test session its own Ultralytics config directory, so no result depends on what an earlier run (or the
user's own ~/.config/Ultralytics settings and caches) left behind."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Must be set before Ultralytics is imported: it probes connectivity at import time unless offline.
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")
if "YOLO_CONFIG_DIR" not in os.environ:  # CI sets its own; subprocesses of the tests inherit this one
    _config_dir = tempfile.mkdtemp(prefix="ultralytics-addmodules-tests-")
    os.environ["YOLO_CONFIG_DIR"] = _config_dir
    atexit.register(shutil.rmtree, _config_dir, ignore_errors=True)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from helpers import ...` in every test module
