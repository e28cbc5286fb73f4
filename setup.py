"""Build step: copy the deployable files into the package as fcmon/assets/.

Everything else about the build is in pyproject.toml. The repository's
files stay the only copy: the wheel gets them here, at build time (from a
checkout or from the unpacked sdist, which carries them), so what ships
cannot drift from what is tested. See fcmon/assetfiles.py.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _assetfiles():
    # By path: fcmon/__init__ is light, but the build env has none of fcmon's
    # dependencies and no guarantee that the source tree is on sys.path.
    spec = importlib.util.spec_from_file_location("_fcmon_assetfiles", ROOT / "fcmon" / "assetfiles.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class BuildPyWithAssets(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout itself
        assets = _assetfiles()
        names = assets.collect(ROOT)
        if "systemd/fcmon.service" not in names or "config.ini" not in names:
            raise SystemExit(f"fcmon build: assets missing under {ROOT} (found {names})")
        for path in assets.copy_into(ROOT, Path(self.build_lib) / "fcmon", names):
            self.announce(f"fcmon asset {path}", level=2)


setup(cmdclass={"build_py": BuildPyWithAssets})
