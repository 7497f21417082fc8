"""The task configs ship inside the package: a non-editable install (a wheel) must carry them."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

import vision_tasks
import vision_tasks.configs
from vision_tasks.benchmark import measure
from vision_tasks.cli import train
from vision_tasks.configs import CONFIG_DIR
from vision_tasks.tasks import TASKS

PACKAGE = Path(vision_tasks.__file__).resolve().parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"


def test_config_dir_is_inside_the_package() -> None:
    # A folder beside the package (the old top-level configs/) is left out of a wheel.
    assert CONFIG_DIR.is_relative_to(PACKAGE) and CONFIG_DIR != PACKAGE
    assert train.CONFIG_DIR == CONFIG_DIR and measure.CONFIG_DIR == CONFIG_DIR


def test_every_registered_task_has_its_config() -> None:
    names = [f"{name}.yaml" for name in [*TASKS, "trainer"]]
    missing = [name for name in names if not (CONFIG_DIR / name).is_file()]
    assert not missing, f"{CONFIG_DIR} lacks {missing}"


def test_package_data_declares_every_config() -> None:
    # setuptools puts a file that is not Python into the wheel only if package-data names it.
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    package_data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data[vision_tasks.configs.__name__]
    files = [p.name for p in CONFIG_DIR.iterdir() if p.is_file() and p.suffix != ".py"]
    undeclared = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert "detect.yaml" in files and not undeclared, f"package-data leaves out {undeclared}"
