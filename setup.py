"""Package list for setuptools (everything else is in pyproject.toml).

The repo keeps the user's top-level folders `flows/` and `storage_schemas/`, but installs them under the project's
namespace (`distillkit_flows`, `distillkit_schemas`) so that no generic top-level name lands in site-packages.
"""

from setuptools import find_packages, setup

FOLDERS = {"distillkit_flows": "flows", "distillkit_schemas": "storage_schemas"}

setup(packages=find_packages(include=["distillkit", "distillkit.*"]) + list(FOLDERS), package_dir=FOLDERS)
