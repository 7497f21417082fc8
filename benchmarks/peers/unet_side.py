"""The segmentation_models_pytorch side of ``benchmarks/peers.py``: U-Net(resnet18), random init.

Runs in the peers virtual environment only; one JSON argument per subcommand, one JSON out:

    unet_side.py train   '{"train": [[image, label_png], ...], "val": [...], "minutes": 30, ...}'
    unet_side.py predict '{"weights": ..., "images": [[image, out_png], ...], "size": 320}'
    unet_side.py latency '{"weights": ..., "size": 320, "threads": 1, ...}'

The loop gives the U-Net what the toolkit's segment task gets: the same label maps (written by
the harness with the toolkit's rasterisation; 0 background, k + 1 category index k, 255
unknown), the same geometry (long side resized to ``size``, random scale in [0.75, 1.25], a
random ``crop`` square padded with the mean colour / 255, horizontal flip; ImageNet
normalisation), batch size, precision, and the toolkit's optimiser recipe (AdamW, weight decay
on weights only, linear warm-up then a cosine that follows the clock down to min_lr_ratio). Loss:
cross-entropy + 0.5 x segmentation_models_pytorch's multiclass Dice. No colour augmentation
(the toolkit's config also shifts colours on the synthetic default). Validation runs after
every epoch inside the budget, as the toolkit's does.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peerlib  # noqa: E402

IGNORE = 255
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
MEAN_RGB = tuple(int(round(255 * m)) for m in MEAN)


def read_rgb(path: str, size: int) -> np.ndarray:
    """The image with its long side resized to ``size`` (area interpolation), RGB uint8."""
    image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return resize_long(image, size, cv2.INTER_AREA)


def resize_long(image: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """Resize so that the long side is ``size`` (a no-op when it already is)."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale == 1:
        return image
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, shape, interpolation=interpolation)


def normalise(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float, ImageNet-normalised."""
    return torch.from_numpy(((image.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1))


def augment(image: np.ndarray, label: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Random scale in [0.75, 1.25], a random ``crop`` square (padded), random h-flip."""
    scale = random.uniform(0.75, 1.25)
    height, width = image.shape[:2]
    shape = (max(1, int(width * scale)), max(1, int(height * scale)))
    image = cv2.resize(image, shape, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, shape, interpolation=cv2.INTER_NEAREST)
    pad_h, pad_w = max(0, crop - shape[1]), max(0, crop - shape[0])
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=MEAN_RGB)
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE)
    y = random.randint(0, image.shape[0] - crop)
    x = random.randint(0, image.shape[1] - crop)
    image, label = image[y : y + crop, x : x + crop], label[y : y + crop, x : x + crop]
    if random.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class Pairs(torch.utils.data.Dataset):
    """(image, label map) training pairs, augmented as the module docstring says."""

    def __init__(self, pairs: list[list[str]], size: int, crop: int) -> None:
        self.pairs, self.size, self.crop = pairs, size, crop

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image_path, label_path = self.pairs[i]
        image = read_rgb(image_path, self.size)
        label = cv2.imread(label_path, cv2.IMREAD_UNCHANGED)
        label = resize_long(label, self.size, cv2.INTER_NEAREST)
        image, label = augment(image, label, self.crop)
        return normalise(image), torch.from_numpy(label.astype(np.int64))


def build(num_classes: int) -> torch.nn.Module:
    """U-Net with a ResNet-18 encoder, random init (``encoder_weights=None``: no download)."""
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=num_classes)


def predict_label(model: torch.nn.Module, path: str, size: int) -> np.ndarray:
    """(H, W) uint8 class map at the image's original size (logits resized bilinearly)."""
    original = cv2.imread(path, cv2.IMREAD_COLOR)
    image = read_rgb(path, size)
    height, width = image.shape[:2]
    pad_h, pad_w = -height % 32, -width % 32
    padded = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=MEAN_RGB)
    with torch.inference_mode():
        logits = model(normalise(padded)[None])[:, :, :height, :width]
        logits = F.interpolate(logits, original.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].argmax(0).to(torch.uint8).numpy()


def lr_multiplier(step: int, warmup_steps: float, fraction: float, min_ratio: float) -> float:
    """Linear warm-up, then a cosine on the share of the budget spent (the toolkit's recipe)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, fraction)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimiser(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decayed = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def _val_miou(model: torch.nn.Module, pairs: list[list[str]], size: int, classes: int) -> float:
    """mIoU over the val pairs (this loop's own progress check; the harness scores the PNGs)."""
    model.eval()
    confusion = np.zeros((classes, classes), np.int64)
    for image_path, label_path in pairs:
        truth = cv2.imread(label_path, cv2.IMREAD_UNCHANGED).astype(np.int64)
        predicted = predict_label(model, image_path, size).astype(np.int64)
        known = truth != IGNORE
        confusion += np.bincount(
            truth[known] * classes + predicted[known], minlength=classes * classes
        ).reshape(classes, classes)
    model.train()
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    return float(np.mean(hits[union > 0] / union[union > 0]))


def train(args: dict[str, Any]) -> dict[str, Any]:
    """Train for ``minutes`` of wall time (validation included), then save the weights."""
    from segmentation_models_pytorch.losses import DiceLoss

    peerlib.block_network()
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    random.seed(0)
    model = build(args["num_classes"]).train()
    data = Pairs(args["train"], args["size"], args["crop"])
    loader = torch.utils.data.DataLoader(
        data, batch_size=args["batch"], shuffle=True, drop_last=True, num_workers=0
    )
    optimiser = _optimiser(model, args["lr"], args["weight_decay"])
    dice = DiceLoss(mode="multiclass", ignore_index=IGNORE)
    bf16 = args["precision"] == "bf16-mixed"
    budget, warmup = args["minutes"] * 60, args["warmup_epochs"] * len(loader)
    start = time.perf_counter()
    step, images, train_s, curve, done = 0, 0, 0.0, [], False
    while not done:
        tick = time.perf_counter()
        for image, label in loader:
            fraction = (time.perf_counter() - start) / budget
            for group in optimiser.param_groups:
                group["lr"] = args["lr"] * lr_multiplier(
                    step, warmup, fraction, args["min_lr_ratio"]
                )
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(image)
            logits = logits.float()
            loss = F.cross_entropy(logits, label, ignore_index=IGNORE) + 0.5 * dice(logits, label)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step, images = step + 1, images + len(image)
            now = time.perf_counter()
            train_s, tick = train_s + now - tick, now
            if now - start >= budget:
                done = True
                break
        curve.append(_val_miou(model, args["val"], args["size"], args["num_classes"]))
        done = done or time.perf_counter() - start >= budget
    torch.save(model.state_dict(), args["weights"])
    return {
        "epochs": len(curve),
        "steps": step,
        "train_images": images,
        "train_s": train_s,
        "train_images_per_s": images / max(train_s, 1e-9),
        "fit_s": time.perf_counter() - start,
        "val_miou_per_epoch": curve,
        "threads_seen": [torch.get_num_threads()],
        "network_attempts": list(peerlib.ATTEMPTS),
    }


def _load(args: dict[str, Any]) -> torch.nn.Module:
    model = build(args["num_classes"])
    model.load_state_dict(torch.load(args["weights"], map_location="cpu"))
    return model.eval()


def predict(args: dict[str, Any]) -> dict[str, Any]:
    """One label PNG per image (0 background, k + 1 category index k), original size."""
    peerlib.block_network()
    model = _load(args)
    for image_path, out_png in args["images"]:
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(out_png, predict_label(model, image_path, args["size"]))
    return {"images": len(args["images"]), "network_attempts": list(peerlib.ATTEMPTS)}


def latency(args: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 latency in torch and ONNX Runtime (exported here, opset 17); parameters."""
    peerlib.block_network()
    torch.set_num_threads(args["threads"])
    model = _load(args)
    size = args["size"]
    onnx_path = Path(args["weights"]).with_suffix(".onnx")
    example = torch.zeros(1, 3, size, size)
    torch.onnx.export(model, (example,), str(onnx_path), opset_version=17, dynamo=False)
    timing = peerlib.latency(
        model, onnx_path, size, args["threads"], args["warmup"], args["repeats"]
    )
    return {
        **timing,
        "parameters": sum(p.numel() for p in model.parameters()),
        "onnx": str(onnx_path),
        "network_attempts": list(peerlib.ATTEMPTS),
    }


if __name__ == "__main__":
    peerlib.serve({"train": train, "predict": predict, "latency": latency})
