"""The task configs, shipped inside the package (as Ultralytics ships ``ultralytics/cfg``).

``trainer.yaml`` (the shared Trainer block) and one ``NAME.yaml`` per task in ``TASKS``: the
LightningCLI default config files of ``vision-tasks train --task NAME``. They live here, not in
a top-level ``configs/`` folder, so that a wheel (``pip install .``, non-editable) carries them;
``pyproject.toml`` lists them as package data.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent

__all__ = ["CONFIG_DIR"]
