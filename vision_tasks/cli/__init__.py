"""The command line, one module per command; ``vision-tasks`` (``__main__.py``) dispatches here.

- :mod:`.train`: ``train_main`` -- LightningCLI over ``TASKS`` (``VisionCLI``), the task configs
  as default config files, run folders (``RunFolder``), resuming, the report after ``fit``.
- :mod:`.evaluate`: ``evaluate_main`` -- a checkpoint scored on a split into a fresh report
  folder, and the multitask comparison with single-task checkpoints (``--compare``).
- :mod:`.predict`: ``predict_main`` -- a checkpoint run on images or a COCO file.

What a run prints (Lightning's chatter filtered, the progress bar, the epoch line, user errors in
one line) is :mod:`vision_tasks.console`; reading checkpoints is :mod:`vision_tasks.checkpoint`.
Every name below stays importable from here, as from the single ``cli.py`` this package was;
library code imports from the module that defines it instead.
"""

from vision_tasks.checkpoint import check_task, load_task_checkpoint, read_checkpoint
from vision_tasks.cli.evaluate import evaluate_main, fresh_report_dir
from vision_tasks.cli.predict import collate_predict, predict_main
from vision_tasks.cli.train import CONFIG_DIR, RunFolder, VisionCLI, linked_from_data, train_main
from vision_tasks.console import USER_ERRORS, log_to_console, print_summary, user_errors

__all__ = [
    "CONFIG_DIR",
    "USER_ERRORS",
    "RunFolder",
    "VisionCLI",
    "check_task",
    "collate_predict",
    "evaluate_main",
    "fresh_report_dir",
    "linked_from_data",
    "load_task_checkpoint",
    "log_to_console",
    "predict_main",
    "print_summary",
    "read_checkpoint",
    "train_main",
    "user_errors",
]
