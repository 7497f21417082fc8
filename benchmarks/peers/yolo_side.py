"""The Ultralytics side of ``benchmarks/peers.py``: YOLOv8n from ``yolov8n.yaml``, random init.

Runs in the peers virtual environment only (``benchmarks/peers.py`` starts it there); one JSON
argument per subcommand, one JSON file out:

    yolo_side.py train   '{"data": ".../data.yaml", "imgsz": 320, "minutes": 30, ...}'
    yolo_side.py predict '{"weights": ..., "images": [[id, path], ...], "category_ids": ...}'
    yolo_side.py latency '{"weights": ..., "size": 320, "threads": 1, ...}'

Nothing is fetched: the process refuses every connection (``peerlib.block_network``, tries are
recorded in the output), ``YOLO_OFFLINE=1`` turns off Ultralytics' online check (so its
analytics events, pip update check and requirement auto-install stay off), settings ``sync`` and
every logger integration are off, ``plots=False``, ``amp=False`` (its AMP check downloads a
model, on CUDA only), ``pretrained=False``, and the Arial.ttf check of its dataset loader (run
on every ``check_det_dataset``, plots or not) only looks on disk.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peerlib  # noqa: E402

INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


def offline_ultralytics(config_dir: Path) -> None:
    """Import Ultralytics with every network path closed (see the module docstring)."""
    os.environ["YOLO_OFFLINE"] = "1"  # read at import: ONLINE = False
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)  # settings.json here, not in ~/.config
    os.environ.pop("ULTRALYTICS_API_KEY", None)  # the platform callbacks need one to send
    peerlib.block_network()
    import ultralytics.data.utils as data_utils
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    SETTINGS.update({"sync": False, **{name: False for name in INTEGRATIONS}})

    def font_on_disk(font: str = "Arial.ttf") -> Path | None:
        # The original falls back to a download; label plots (off here) are its only user.
        file = USER_CONFIG_DIR / Path(font).name
        return file if file.exists() else None

    data_utils.check_font = font_on_disk


class TrainSpeed:
    """Ultralytics callbacks: training images/s over the batches (loading included, validation
    not), the epochs started and the torch threads the training loop ran with."""

    def __init__(self, threads: int) -> None:
        self.threads, self.seconds, self.images, self.epochs = threads, 0.0, 0, 0
        self.threads_seen: set[int] = set()
        self._start = 0.0
        self._batches = 0

    def on_train_start(self, trainer: Any) -> None:
        import torch

        torch.set_num_threads(self.threads)  # select_device set its own NUM_THREADS

    def on_train_epoch_start(self, trainer: Any) -> None:
        self.epochs += 1
        self._batches = 0
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any) -> None:
        import torch

        now = time.perf_counter()
        self.seconds += now - self._start
        self._start = now
        self._batches += 1
        # The loop's batch is not exposed: every batch is full but an epoch's last.
        size = len(trainer.train_loader.dataset)
        self.images += min(trainer.batch_size, size - (self._batches - 1) * trainer.batch_size)
        self.threads_seen.add(torch.get_num_threads())


def train(args: dict[str, Any]) -> dict[str, Any]:
    """Train YOLOv8n for ``minutes`` of wall time (Ultralytics' ``time=``, hours)."""
    out = Path(args["out"])
    offline_ultralytics(Path(args["config_dir"]))
    import torch
    import ultralytics
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    torch.set_num_threads(args["threads"])
    torch_utils.NUM_THREADS = args["threads"]
    model = YOLO("yolov8n.yaml")  # the architecture only: no weights
    speed = TrainSpeed(args["threads"])
    for event in ("on_train_start", "on_train_epoch_start", "on_train_batch_end"):
        model.add_callback(event, getattr(speed, event))
    start = time.perf_counter()
    model.train(
        data=args["data"],
        imgsz=args["imgsz"],
        time=args["minutes"] / 60,
        epochs=1000,  # re-planned from the clock after the first epoch
        batch=args["batch"],
        workers=0,
        device="cpu",
        pretrained=False,
        amp=False,
        plots=False,
        project=str(out),
        name="train",
        exist_ok=True,
        seed=0,
        verbose=False,
    )
    trainer = model.trainer
    own = {k: float(v) for k, v in (trainer.metrics or {}).items() if isinstance(v, (int, float))}
    return {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "fit_s": time.perf_counter() - start,
        "epochs": speed.epochs,
        "train_images": speed.images,
        "train_s": speed.seconds,
        "train_images_per_s": speed.images / max(speed.seconds, 1e-9),
        "threads_seen": sorted(speed.threads_seen),
        "last": str(trainer.last),
        "best": str(trainer.best),
        "own_final_val_best": own,  # Ultralytics' own evaluator, on best.pt
        "network_attempts": list(peerlib.ATTEMPTS),
    }


def predict(args: dict[str, Any]) -> dict[str, Any]:
    """COCO results (xywh in original pixels, the JSON's category ids) for the val images."""
    offline_ultralytics(Path(args["config_dir"]))
    from ultralytics import YOLO

    model = YOLO(args["weights"])
    category_ids = args["category_ids"]  # class index i -> category_ids[i] (coco2yolo's order)
    records = []
    for image_id, path in args["images"]:
        result = model.predict(
            path,
            imgsz=args["imgsz"],
            conf=0.001,
            iou=0.7,
            max_det=100,
            device="cpu",
            verbose=False,
        )[0]
        boxes = result.boxes
        for (x0, y0, x1, y1), cls, score in zip(
            boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist()
        ):
            records.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[int(cls)]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    Path(args["out"]).write_text(json.dumps(records))
    return {"records": len(records), "network_attempts": list(peerlib.ATTEMPTS)}


def latency(args: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 latency in torch (fused, as its predictor runs it) and ONNX Runtime; parameters."""
    offline_ultralytics(Path(args["config_dir"]))
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(args["threads"])
    yolo = YOLO(args["weights"])
    parameters = sum(p.numel() for p in yolo.model.parameters())
    onnx_path = yolo.export(format="onnx", imgsz=args["size"], batch=1, device="cpu")
    network = YOLO(args["weights"]).model.float().fuse().eval()
    timing = peerlib.latency(
        network, Path(onnx_path), args["size"], args["threads"], args["warmup"], args["repeats"]
    )
    return {
        **timing,
        "parameters": parameters,
        "onnx": str(onnx_path),
        "network_attempts": list(peerlib.ATTEMPTS),
    }


if __name__ == "__main__":
    peerlib.serve({"train": train, "predict": predict, "latency": latency})
