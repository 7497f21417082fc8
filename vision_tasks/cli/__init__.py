"""The command line: ``train`` (LightningCLI), ``evaluate`` and ``predict``.

Every entry function and helper is importable from here (``from vision_tasks.cli import
train_main``), as it was from the single module ``cli.py``.
"""

from vision_tasks.cli.train import (
    CONFIG_DIR,
    USER_ERRORS,
    RunFolder,
    VisionCLI,
    check_task,
    collate_predict,
    evaluate_main,
    linked_from_data,
    load_task_checkpoint,
    log_to_console,
    predict_main,
    print_summary,
    read_checkpoint,
    train_main,
    user_errors,
)

__all__ = [
    "CONFIG_DIR",
    "USER_ERRORS",
    "RunFolder",
    "VisionCLI",
    "check_task",
    "collate_predict",
    "evaluate_main",
    "linked_from_data",
    "load_task_checkpoint",
    "log_to_console",
    "predict_main",
    "print_summary",
    "read_checkpoint",
    "train_main",
    "user_errors",
]
