"""``predict``: run a checkpoint on image files, folders or a COCO file; write drawings and
COCO results.

Images are numbered 1, 2, ... in file order (``files.json`` maps the ids back to the files); a
``--coco`` file keeps its own image ids, so ``results.json`` scores against it directly. The
task draws and writes its own outputs (``BaseTask.write_predictions``).

The network runs in ONNX Runtime when it is installed and the task exports (``--engine auto``,
the default): exported once, checked against torch and cached beside the checkpoint, see
:mod:`vision_tasks.export.engine`. ``--engine torch`` runs the PyTorch model; ``--onnx FILE``
runs a given export, such as the int8 model of ``tools/export.py --int8``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from vision_tasks.checkpoint import load_task_checkpoint, read_checkpoint
from vision_tasks.console import log_to_console, quiet_lightning, user_errors
from vision_tasks.export import ENGINES, inference_network
from vision_tasks.tasks import TASKS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _image_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise SystemExit(f"no such image or folder: {item}")
    if not files:
        raise SystemExit("no image files found in " + ", ".join(map(str, inputs)))
    return files


def collate_predict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``image`` (and ``image_id``); keep every other key as a per-sample list."""
    batch: dict[str, Any] = {k: [s[k] for s in samples] for k in samples[0]}
    batch["image"] = torch.stack(batch["image"])
    batch["image_id"] = torch.as_tensor(batch["image_id"])
    return batch


def predict_main(argv: list[str] | None = None) -> list[Path]:
    """``tools/predict.py --ckpt PATH (IMAGES_OR_FOLDERS... | --coco JSON --images DIR)``."""
    parser = argparse.ArgumentParser(description=predict_main.__doc__)
    parser.add_argument("inputs", nargs="*", type=Path, help="image files or folders")
    parser.add_argument(
        "--coco",
        type=Path,
        help="a COCO JSON instead of IMAGES: results keep its image ids (re-ID: "
        "embeddings of its annotated boxes)",
    )
    parser.add_argument("--images", type=Path, help="folder the --coco file_names are relative to")
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--task", choices=sorted(TASKS), help="check the checkpoint's task")
    parser.add_argument("--output", type=Path, default=Path("predictions"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="auto (default): onnxruntime on an export cached beside --ckpt when onnxruntime is "
        "installed and the task exports, else torch; onnx: the same, or an error",
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        help="run this .onnx file with onnxruntime (e.g. CKPT.int8.onnx of tools/export.py --int8)",
    )
    args = parser.parse_args(argv)
    if bool(args.inputs) == bool(args.coco):
        parser.error("give image files / folders, or --coco JSON --images DIR (one of the two)")
    if args.coco and args.images is None:
        parser.error("--coco needs --images: the folder its file_names are relative to")
    if args.onnx is not None and args.engine == "torch":
        parser.error("--onnx runs onnxruntime: drop --engine torch")
    quiet_lightning()
    log_to_console()
    with user_errors():
        return _predict(args)


def _predict(args: argparse.Namespace) -> list[Path]:
    from vision_tasks.data.coco import CocoIndex, read_image, write_results_json
    from vision_tasks.utils import atomic_write_json

    model = load_task_checkpoint(args.ckpt, args.task)
    index = CocoIndex(args.coco, args.images) if args.coco else None
    files = None if index is not None else _image_files(args.inputs)  # bad paths before export
    network, engine = inference_network(
        model, args.ckpt, args.engine, args.onnx, threads=torch.get_num_threads()
    )
    if network is model:
        network = model.to(memory_format=torch.channels_last)  # NHWC: faster inference on CPU
    if index is not None:
        if hasattr(model, "predict_coco"):  # per-box outputs (re-ID embeddings)
            saved = read_checkpoint(args.ckpt, mmap=True)
            args.output.mkdir(parents=True, exist_ok=True)
            written = model.predict_coco(
                index,
                network,
                args.output,
                args.batch_size,
                saved.get("datamodule_hyper_parameters", {}),
            )
            print(f"{args.coco} -> {args.output}/ ({', '.join(p.name for p in written)})")
            return written
        image_ids = list(index.image_ids)
        files = [index.image_path(image_id) for image_id in image_ids]
    else:
        image_ids = list(range(1, len(files) + 1))  # 1-based, in file order (see files.json)
    args.output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    records: list[dict[str, Any]] = []
    per_head: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        ids = image_ids[start : start + args.batch_size]
        images = [
            index.load_image(i) if index is not None else read_image(p) for i, p in zip(ids, chunk)
        ]
        samples = [model.predict_sample(image) for image in images]
        for sample, image_id in zip(samples, ids):
            sample["image_id"] = image_id
        batch = collate_predict(samples)
        if network is model:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            predictions = model.decode(network(batch["image"]), batch)
        written += model.write_predictions(
            predictions, images, [p.name for p in chunk], args.output
        )
        records += model.to_results(predictions)
        if hasattr(model, "head_results"):  # the joint model: one results file per head
            for head, head_records in model.head_results(predictions).items():
                per_head.setdefault(head, []).extend(head_records)
    for head, head_records in per_head.items():
        written.append(write_results_json(head_records, args.output / f"results_{head}.json"))
    names = {image_id: str(path) for image_id, path in zip(image_ids, files)}
    written.append(atomic_write_json(args.output / "files.json", names))
    written.append(write_results_json(records, args.output / "results.json"))
    print(
        f"{len(files)} images -> {args.output}/ ({len(written)} files written; results.json "
        f"has {len(records)} records, image ids as in files.json; engine: {engine})"
    )
    return written
