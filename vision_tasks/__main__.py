"""``vision-tasks`` (and ``python -m vision_tasks``): one command with a subcommand per tool.

Example:
    vision-tasks train --task detect --data.train_json train.json --data.train_images images
    vision-tasks evaluate --task detect --ckpt runs/detect/<run>/checkpoints/best-011.ckpt
    vision-tasks predict --ckpt best.ckpt photos/ --output predictions
    vision-tasks export --ckpt best.ckpt
    vision-tasks convert voc BCCD --split trainval --output bccd_trainval.json
    vision-tasks track --ckpt best.ckpt --source video.mp4 --output tracks

Each subcommand takes the options of the ``tools/<name>.py`` script of the same name, and
``vision-tasks <name> --help`` lists them. A subcommand's module is imported only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

# name -> (module, function, one-line help); every module is part of the installed package.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("vision_tasks.cli", "train_main", "train, validate or test a task (LightningCLI)"),
    "evaluate": ("vision_tasks.cli", "evaluate_main", "score a checkpoint and write its report"),
    "predict": ("vision_tasks.cli", "predict_main", "run a checkpoint on images or a COCO file"),
    "export": ("vision_tasks.export", "export_main", "export a checkpoint to ONNX and check it"),
    "convert": (
        "vision_tasks.data.convert.cli",
        "convert_main",
        "convert VOC, YOLO, ImageFolder, MOT to COCO",
    ),
    "track": ("vision_tasks.tracking.cli", "track_main", "track objects through a video"),
}


def usage() -> str:
    """The subcommand list that ``vision-tasks --help`` prints."""
    lines = ["usage: vision-tasks COMMAND [options]  (vision-tasks COMMAND --help for its options)"]
    lines += ["", "commands:"]
    lines += [f"  {name:<10}{text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def resolve(name: str) -> Callable[[list[str] | None], Any]:
    """The entry function of subcommand ``name``, imported now."""
    module_name, function, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # a dependency of the module is missing, not the module itself
        raise SystemExit(
            f"vision-tasks {name}: {module_name} is not part of this installation"
        ) from None
    return getattr(module, function)


def main(argv: list[str] | None = None) -> None:
    """Run ``vision-tasks COMMAND [options]``: the command's entry function on the options.

    Returns nothing: a console script exits with what ``main`` returns, and the entry functions
    return results (a report's numbers, the files written) meant for Python callers.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    name, options = argv[0], argv[1:]
    if name not in COMMANDS:
        raise SystemExit(
            f"vision-tasks: unknown command {name!r}; choose one of {', '.join(COMMANDS)}"
        )
    function = resolve(name)
    program = sys.argv[0]
    sys.argv[0] = f"vision-tasks {name}"  # what argparse prints as the program in usage lines
    try:
        function(options)
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    main()
