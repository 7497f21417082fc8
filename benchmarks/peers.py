#!/usr/bin/env python
"""The toolkit side by side with its peers: Ultralytics YOLOv8n and segmentation_models_pytorch.

Each part trains the toolkit and a peer from random init on the same data at the same image
size, for the same wall budget, one thread each, started together as two subprocesses; then
scores both with the same function on the same validation split and times both at batch 1 in
eager torch and in ONNX Runtime (one thread, median after warm-up, the same input):

- ``detect-bccd``: BCCD (Pascal VOC -> COCO JSON by ``tools/convert.py voc``, trainval / test;
  -> YOLO labels by ``tools/convert.py coco2yolo``) at 320 px, toolkit detector vs YOLOv8n;
  COCO box AP by pycocotools (``coco_evaluate``) on the test JSON for both.
- ``detect-bccd-light``, ``detect-bccd-c3c4``, ``detect-bccd-c3c4-224``: the same, but the
  toolkit's detector in lighter configurations of ``benchmarks/detect_latency.py`` (``LIGHTER``:
  224 px with neck width 32; neck 32 on levels c3-c4 only at 256 and at 224 px) against YOLOv8n
  at its 320 px: points of the latency / AP curve near YOLOv8n's latency.
- ``detect-synthetic``: the same on the synthetic default (``tools/make_synthetic.py``) at
  its 320 px.
- ``segment-synthetic``: the toolkit's segment task vs U-Net(resnet18) of
  segmentation_models_pytorch at 320 px (256-px training crops), training images/s and mIoU
  (the toolkit's ``SegmentationMetric`` on both sides' label PNGs).

The peers live in their own virtual environment (default ``~/.cache/vision_tasks/peers-venv``,
created and filled with pinned versions on first use; never a dependency of the package), run
by ``benchmarks/peers/yolo_side.py`` and ``unet_side.py`` with the network refused. Generated
data and runs go to ``runs/peers/`` (ignored by git); figures to ``benchmarks/peers.json``.

    python benchmarks/peers.py                                   # every part, 30 min each
    python benchmarks/peers.py --only detect-bccd --minutes 1    # a smoke run of one part

Threads: each side gets one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``) and no
loader workers (``--data.num_workers 0``; Ultralytics forces ``workers=0`` on CPU anyway), so
data loading shares that thread on both sides and the two runs use one core each of two.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing
SIDES = ROOT / "benchmarks" / "peers"
sys.path.insert(0, str(SIDES))

import peerlib  # noqa: E402
from peer_data import (  # noqa: E402
    Data,
    prepare,
    score_boxes,
    score_label_maps,
    segment_config,
    to_yolo,
    write_label_maps,
)

WORK = ROOT / "runs" / "peers"
RESULTS = ROOT / "benchmarks" / "peers.json"
DEFAULT_VENV = Path.home() / ".cache" / "vision_tasks" / "peers-venv"
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")  # on this machine's disk: no big download
PEER_PINS = (
    "ultralytics==8.4.190",
    "segmentation-models-pytorch==0.6.0",
    # What Ultralytics' ONNX export would otherwise try to install at run time:
    "onnx==1.23.2",
    "onnxslim==0.1.98",
    "onnxruntime==1.32.0",
)
# The toolkit's side of the lighter BCCD parts, points of benchmarks/detect_latency.json: input
# size and the model options that differ from detect.yaml (YOLOv8n stays at the data's 320 px).
LIGHTER = {
    "detect-bccd-light": (224, {"neck_width": "32"}),
    "detect-bccd-c3c4": (256, {"neck_width": "32", "levels": "[c3, c4]"}),
    "detect-bccd-c3c4-224": (224, {"neck_width": "32", "levels": "[c3, c4]"}),
}
PARTS = ("detect-bccd", *LIGHTER, "detect-synthetic", "segment-synthetic")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def ensure_venv(venv: Path) -> dict[str, Any]:
    """Create the peers' virtual environment with the pinned versions (once); their versions."""
    marker, pins = venv / "peers-pins.txt", "\n".join((*TORCH_PINS, *PEER_PINS))
    start = time.perf_counter()
    commands = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", *TORCH_PINS],
        [str(venv / "bin" / "pip"), "install", *PEER_PINS],
    ]
    if not (marker.is_file() and marker.read_text() == pins):
        for command in commands:
            print("$", " ".join(command), flush=True)
            subprocess.run(command, check=True)
        marker.write_text(pins)
    probe = (
        "import json, torch, ultralytics, segmentation_models_pytorch as smp, onnxruntime\n"
        "print(json.dumps({'torch': torch.__version__, 'ultralytics': ultralytics.__version__,"
        " 'segmentation_models_pytorch': smp.__version__, 'onnxruntime': onnxruntime.__version__"
        "}))"
    )
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(venv / "ultralytics")}
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    versions = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "venv": str(venv),
        "versions": versions,
        "pins": pins.splitlines(),
        "commands": [" ".join(c) for c in commands],
        "setup_s": round(time.perf_counter() - start, 1),
    }


def budget(minutes: float) -> str:
    """Lightning's ``max_time`` (DD:HH:MM:SS) for ``minutes``."""
    seconds = round(minutes * 60)
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def toolkit_train_command(task: str, data: Data, minutes: float, extra: list[str], speed: Path):
    """``tools/train.py`` on the part's data for ``minutes``, with the speed callback."""
    splits = [
        *("--data.train_json", str(data.train_json), "--data.train_images", str(data.train_images)),
        *("--data.val_json", str(data.val_json), "--data.val_images", str(data.val_images)),
    ]
    callback = {"class_path": "toolkit_speed.TrainSpeed", "init_args": {"output": str(speed)}}
    return [
        sys.executable,
        str(ROOT / "tools" / "train.py"),
        *("--task", task),
        *splits,
        *data.toolkit_args,
        *extra,
        *("--data.num_workers", "0"),
        *("--trainer.max_epochs", "1000"),  # the budget ends the run, not an epoch cap
        *("--trainer.max_time", budget(minutes)),
        f"--trainer.callbacks+={json.dumps(callback)}",
    ]


def toolkit_predictions(data: Data, checkpoint: str, work: Path) -> Path:
    """``tools/predict.py --coco`` on the part's validation split -> the predictions folder."""
    predictions = work / "toolkit" / "predictions"
    predict = [sys.executable, str(ROOT / "tools" / "predict.py"), "--ckpt", checkpoint]
    predict += ["--coco", str(data.val_json), "--images", str(data.val_images)]
    run_side([*predict, "--output", str(predictions)], work / "toolkit-predict.log")
    return predictions


def side_command(venv: Path, script: str, command: str, payload: dict[str, Any]) -> list[str]:
    """A peer script's command line in the peers' virtual environment."""
    return [str(venv / "bin" / "python"), str(SIDES / script), command, json.dumps(payload)]


def side_env() -> dict[str, str]:
    """The environment of every side: ``benchmarks/peers`` importable, Ultralytics offline."""
    path = os.pathsep.join(filter(None, (str(SIDES), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, "YOLO_OFFLINE": "1"}


def run_together(commands: dict[str, list[str]], cwd: dict[str, Path], logs: Path) -> dict:
    """Start every command at once (one thread each); wait for all; wall time and exit code."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**side_env(), **ONE_THREAD}
    running, results = {}, {}
    for name, command in commands.items():
        cwd[name].mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed below)
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=cwd[name], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        running[name] = (process, log, started)
    while running:  # each side's own wall time: poll, not wait in turn
        for name, (process, log, started) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            log.close()
            del running[name]
            results[name] = {"wall_s": round(time.perf_counter() - started, 1), "returncode": code}
            if code != 0:
                for other, other_log, _ in running.values():  # no orphan left training
                    other.terminate()
                    other.wait()
                    other_log.close()
                tail = (logs / f"{name}.log").read_text()[-3000:]
                raise SystemExit(f"{name} failed (exit {code}); end of {logs / name}.log:\n{tail}")
        time.sleep(0.5)
    return results


def run_side(command: list[str], log: Path, threads: int | None = None) -> float:
    """Run one scoring or timing command to its end; its wall time."""
    env = side_env()
    if threads:
        env |= {k: str(threads) for k in ONE_THREAD}
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code.returncode != 0:
        raise SystemExit(f"failed (exit {code.returncode}): {log}\n{log.read_text()[-3000:]}")
    return round(time.perf_counter() - start, 1)


def toolkit_run(folder: Path, task: str) -> dict[str, Any]:
    """The newest toolkit run under ``folder``: its last checkpoint and its own report."""
    run = sorted((folder / "runs" / task).iterdir())[-1]
    report = run / "report" / "report.json"
    headline = json.loads(report.read_text()).get("headline", {}) if report.is_file() else {}
    return {
        "run": str(run),
        "checkpoint": str(run / "checkpoints" / "last.ckpt"),
        "own_report_best": headline,  # the toolkit's own test of its best checkpoint
    }


def toolkit_latency(payload: dict[str, Any]) -> None:
    """In a one-thread subprocess: the toolkit checkpoint's batch-1 latency, like the peers'."""
    import torch

    from vision_tasks.checkpoint import load_task_checkpoint
    from vision_tasks.export import export_onnx

    torch.set_num_threads(payload["threads"])
    model = load_task_checkpoint(payload["checkpoint"]).eval()
    parameters = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux_"))
    onnx_path = export_onnx(model, payload["onnx"])  # not beside the checkpoint: predict's cache
    model = model.to(memory_format=torch.channels_last)  # as tools/predict.py runs it
    model.peers_memory_format = torch.channels_last
    timing = peerlib.latency(
        model, onnx_path, payload["size"], payload["threads"], payload["warmup"], payload["repeats"]
    )
    summary = {**timing, "parameters": parameters, "onnx": str(onnx_path)}
    Path(payload["summary"]).write_text(json.dumps(summary, indent=1))


def detect_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    """Toolkit detector vs YOLOv8n on one dataset (see the module docstring)."""
    from vision_tasks.data.coco import CocoIndex

    work, start = args.work / part, time.perf_counter()
    name = part.split("-")[1]
    size, options = LIGHTER.get(part, (None, {}))
    lighter = ["--data.image_size", str(size)] if size else []
    lighter += [arg for key, value in options.items() for arg in (f"--model.{key}", value)]
    data = prepare(name, args.work / "data")
    to_yolo(data, args.work / "data" / f"{name}-yolo")
    category_ids = CocoIndex(data.train_json, data.train_images).index_to_cat
    val_index = CocoIndex(data.val_json, data.val_images)
    val_images = [[i, str(val_index.image_path(i))] for i in val_index.image_ids]
    yolo = {"config_dir": str(work / "ultralytics-config"), "imgsz": data.image_size}
    speed = work / "toolkit" / "speed.json"
    commands = {
        "toolkit": toolkit_train_command("detect", data, args.minutes, lighter, speed),
        "peer": side_command(
            args.venv,
            "yolo_side.py",
            "train",
            {
                **yolo,
                "data": str(data.yolo_yaml),
                "minutes": args.minutes,
                "batch": 16,  # Ultralytics' default, as the toolkit keeps its config's 8
                "threads": 1,
                "out": str(work / "yolo"),
                "summary": str(work / "yolo" / "train.json"),
            },
        ),
    }
    timing = {"prepare_s": round(time.perf_counter() - start, 1)}
    walls = run_together(commands, {"toolkit": work / "toolkit", "peer": work / "yolo"}, work)
    toolkit = {**toolkit_run(work / "toolkit", "detect"), **json.loads(speed.read_text())}
    peer = json.loads((work / "yolo" / "train.json").read_text())
    start = time.perf_counter()
    predictions = toolkit_predictions(data, toolkit["checkpoint"], work)
    peer_results = work / "yolo" / "results.json"
    payload = {**yolo, "weights": peer["last"], "images": val_images, "category_ids": category_ids}
    payload |= {"out": str(peer_results), "summary": str(work / "yolo" / "predict.json")}
    run_side(side_command(args.venv, "yolo_side.py", "predict", payload), work / "yolo-predict.log")
    toolkit["scores"] = score_boxes(data, predictions / "results.json")
    peer["scores"] = score_boxes(data, peer_results)
    peer["network_attempts"] += json.loads((work / "yolo" / "predict.json").read_text())[
        "network_attempts"
    ]
    timing["score_s"] = round(time.perf_counter() - start, 1)
    latency = {
        "warmup": args.warmup,
        "repeats": args.repeats,
        "threads": 1,
        "size": data.image_size,
    }
    start = time.perf_counter()
    toolkit["image_size"] = size or data.image_size
    toolkit["options"] = options
    toolkit["latency"] = time_toolkit(
        toolkit["checkpoint"], {**latency, "size": toolkit["image_size"]}, work
    )
    payload = {
        **yolo,
        **latency,
        "weights": peer["last"],
        "summary": str(work / "yolo" / "lat.json"),
    }
    run_side(
        side_command(args.venv, "yolo_side.py", "latency", payload), work / "yolo-latency.log", 1
    )
    peer["latency"] = json.loads((work / "yolo" / "lat.json").read_text())
    timing["latency_s"] = round(time.perf_counter() - start, 1)
    return _entry(part, data, args, "YOLOv8n (Ultralytics)", toolkit, peer, walls, timing, commands)


def time_toolkit(checkpoint: str, latency: dict[str, Any], work: Path) -> dict[str, Any]:
    """:func:`toolkit_latency` in a one-thread subprocess; its summary."""
    summary = work / "toolkit" / "latency.json"
    payload = {**latency, "checkpoint": checkpoint, "summary": str(summary)}
    payload["onnx"] = str(work / "toolkit" / "latency.onnx")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--toolkit-latency",
        json.dumps(payload),
    ]
    run_side(command, work / "toolkit-latency.log", threads=1)
    return json.loads(summary.read_text())


def segment_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    """Toolkit segment task vs U-Net(resnet18) on the synthetic default."""
    from vision_tasks.data.coco import CocoIndex

    work, start = args.work / part, time.perf_counter()
    data = prepare("synthetic", args.work / "data")
    labels = args.work / "data" / "synthetic-labels"
    train_pairs = write_label_maps(data.train_json, data.train_images, labels / "train")
    val_pairs = write_label_maps(data.val_json, data.val_images, labels / "val")
    classes = CocoIndex(data.train_json, data.train_images).num_classes + 1
    crop = 256  # the toolkit's 192 / 128 config scaled to the images' 320
    speed, weights = work / "toolkit" / "speed.json", work / "unet" / "unet.pt"
    unet = {"num_classes": classes, "size": data.image_size, "weights": str(weights)}
    # One pass each: the committed config's flip test (+0.01-0.02 mIoU, 2x inference) is off.
    extra = ["--data.crop_size", str(crop), "--model.flip_test", "false"]
    commands = {
        "toolkit": toolkit_train_command("segment", data, args.minutes, extra, speed),
        "peer": side_command(
            args.venv,
            "unet_side.py",
            "train",
            {
                **unet,
                **segment_config(),
                "train": train_pairs,
                "val": val_pairs,
                "crop": crop,
                "minutes": args.minutes,
                "threads": 1,
                "summary": str(work / "unet" / "train.json"),
            },
        ),
    }
    timing = {"prepare_s": round(time.perf_counter() - start, 1)}
    walls = run_together(commands, {"toolkit": work / "toolkit", "peer": work / "unet"}, work)
    toolkit = {**toolkit_run(work / "toolkit", "segment"), **json.loads(speed.read_text())}
    peer = json.loads((work / "unet" / "train.json").read_text())
    start = time.perf_counter()
    predictions = toolkit_predictions(data, toolkit["checkpoint"], work)
    peer_predictions = work / "unet" / "predictions"
    images = [
        [image, str(peer_predictions / f"{Path(image).stem}_label.png")] for image, _ in val_pairs
    ]
    payload = {**unet, "images": images, "summary": str(work / "unet" / "predict.json")}
    run_side(side_command(args.venv, "unet_side.py", "predict", payload), work / "unet-predict.log")
    toolkit["scores"] = score_label_maps(data, predictions)
    peer["scores"] = score_label_maps(data, peer_predictions)
    timing["score_s"] = round(time.perf_counter() - start, 1)
    latency = {
        "warmup": args.warmup,
        "repeats": args.repeats,
        "threads": 1,
        "size": data.image_size,
    }
    start = time.perf_counter()
    toolkit["latency"] = time_toolkit(toolkit["checkpoint"], latency, work)
    payload = {**unet, **latency, "summary": str(work / "unet" / "lat.json")}
    run_side(
        side_command(args.venv, "unet_side.py", "latency", payload), work / "unet-latency.log", 1
    )
    peer["latency"] = json.loads((work / "unet" / "lat.json").read_text())
    timing["latency_s"] = round(time.perf_counter() - start, 1)
    peer_name = "U-Net resnet18 (segmentation_models_pytorch)"
    return _entry(part, data, args, peer_name, toolkit, peer, walls, timing, commands)


def _entry(
    part: str,
    data: Data,
    args: argparse.Namespace,
    peer_name: str,
    toolkit: dict[str, Any],
    peer: dict[str, Any],
    walls: dict[str, Any],
    timing: dict[str, Any],
    commands: dict[str, list[str]],
) -> dict[str, Any]:
    """One part's JSON entry: both sides' figures, the commands, where the time went."""
    launch = "OMP_NUM_THREADS=1 PYTHONPATH=benchmarks/peers "  # run in toolkit/ of the part
    toolkit |= {"train_wall_s": walls["toolkit"]["wall_s"]}
    toolkit["command"] = launch + _shown(commands["toolkit"])
    peer |= {"name": peer_name, "train_wall_s": walls["peer"]["wall_s"]}
    peer["command"] = _shown(commands["peer"][:3]) + " '{...}'"  # the JSON is in the log folder
    return {
        "part": part,
        "dataset": data.name,
        "image_size": data.image_size,
        "minutes": args.minutes,
        "threads_each": 1,
        "data_commands": data.commands,
        "toolkit": toolkit,
        "peer": peer,
        "timing_s": timing,
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }


def _shown(command: list[str]) -> str:
    """A command as typed from the repository root (paths inside it relative)."""
    return " ".join(
        str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT) + "/") else a for a in command
    )


def markdown_table(entries: list[dict[str, Any]]) -> str:
    """Both sides of every part, one row each."""
    lines = [
        "| part | model | score | epochs | train img/s | torch b1 ms | ORT b1 ms | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        for side, name in (("toolkit", "vision_tasks"), ("peer", entry["peer"]["name"])):
            figures = entry[side]
            scores, lat = figures["scores"], figures["latency"]
            if "miou" in scores:
                score = f"mIoU {scores['miou']:.3f}"
            else:
                score = f"AP {scores['AP']:.3f} / AP50 {scores['AP50']:.3f}"
            if side == "toolkit" and entry["part"] in LIGHTER:
                size, options = LIGHTER[entry["part"]]
                name += f" ({size} px, " + ", ".join(f"{k} {v}" for k, v in options.items()) + ")"
            lines.append(
                f"| {entry['part']} ({entry['minutes']:g} min) | {name} | {score} | "
                f"{figures['epochs']} | {figures['train_images_per_s']:.1f} | "
                f"{lat['torch']['median_ms']:.1f} | {lat['onnxruntime']['median_ms']:.1f} | "
                f"{lat['parameters'] / 1e6:.2f}M |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Set up the peers' environment, run the chosen parts, write JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--minutes", type=float, default=30.0, help="wall budget of each side")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the peers' venv")
    parser.add_argument("--work", type=Path, default=WORK, help="data and runs (not in git)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--warmup", type=int, default=10, help="latency: untimed calls")
    parser.add_argument("--repeats", type=int, default=50, help="latency: timed calls")
    parser.add_argument("--toolkit-latency", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.toolkit_latency:
        return toolkit_latency(json.loads(args.toolkit_latency))
    from vision_tasks.benchmark import environment
    from vision_tasks.utils import atomic_write_json

    args.work = args.work.resolve()
    setup = ensure_venv(args.venv.expanduser().resolve())
    args.venv = Path(setup["venv"])
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    done = {e["part"]: e for e in previous.get("parts", [])}
    for part in args.only:
        print(f"{part}: {args.minutes:g} min each side, started together", flush=True)
        start = time.perf_counter()
        done[part] = (segment_part if part.startswith("segment") else detect_part)(part, args)
        done[part]["timing_s"]["total_s"] = round(time.perf_counter() - start, 1)
        entries = [done[p] for p in PARTS if p in done]
        payload = {"environment": environment(), "peers": setup, "parts": entries}
        atomic_write_json(args.output, payload)
        print(markdown_table([done[part]]), flush=True)
    if len(args.only) > 1:
        print(markdown_table([done[p] for p in args.only]))


if __name__ == "__main__":
    main()
