"""Suite-wide settings: keep Ultralytics offline and quiet (no connectivity probes, no telemetry)."""

import os
import sys
from pathlib import Path

# Must be set before Ultralytics is imported: it probes connectivity at import time unless offline.
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from helpers import ...` in every test module
