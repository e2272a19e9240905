"""Hatch build hook: ship the start-up hook (.pth + its module) at the top of site-packages.

Hatchling ignores ``force-include`` for editable wheels, so editable builds get the same two files through
``force_include_editable``; both install modes then activate the add-on the same way.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

STARTUP_FILES = {
    "autoload/ultralytics_addmodules.pth": "ultralytics_addmodules.pth",
    "autoload/ultralytics_addmodules_autoload.py": "ultralytics_addmodules_autoload.py",
}


class StartupHookFiles(BuildHookInterface):
    def initialize(self, version, build_data):
        if self.target_name != "wheel":
            return
        key = "force_include_editable" if version == "editable" else "force_include"
        build_data[key].update(STARTUP_FILES)
