"""Build-time inclusion of the device profiles.

The profiles live in the top-level profiles/ folder, where users look for them; the wheel carries them as the data
package edgekd/profiles/ (read with importlib.resources). The mapping below is the one thing pyproject.toml cannot
say: a package whose folder is outside edgekd/ next to packages that are found automatically.
"""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["edgekd", "edgekd.*"]), "edgekd.profiles", "edgekd.profiles.calibration"],
    package_dir={"edgekd.profiles": "profiles"},
    package_data={"edgekd.profiles": ["*.yaml"], "edgekd.profiles.calibration": ["*.json"]},
)
