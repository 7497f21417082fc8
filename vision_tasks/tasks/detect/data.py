"""Detection data: COCO images letterboxed with their boxes in network pixels, the ragged
collate and the data module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vision_tasks import ops
from vision_tasks.data.coco import CocoIndex, Policy
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import detect_transforms


class DetectDataset(Dataset):
    """COCO images letterboxed to ``image_size`` with their boxes in network pixels.

    Sample keys: ``image`` (3, S, S), ``boxes_xyxy`` (n, 4), ``label`` (n,) class indices,
    ``crowd`` (n,) bool, ``image_id``, and ``scale`` / ``pad`` / ``orig_size`` that map network
    pixels back to the original image (``ops.boxes_to_original``).
    """

    def __init__(
        self, index: CocoIndex, image_size: int, train: bool, colour_shift: float = 0.0
    ) -> None:
        self.index = index
        self.image_size = image_size
        self.train = train
        self.transform = detect_transforms(train, colour_shift)

    def __len__(self) -> int:
        return len(self.index.image_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.index.image_ids[i]
        image = self.index.load_image(image_id)
        anns = self.index.annotations(image_id)
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        square, scale, pad_x, pad_y = ops.letterbox_image(image, self.image_size)
        boxes = np.clip(boxes * scale + [pad_x, pad_y, pad_x, pad_y], 0, self.image_size)
        labels = [self.index.cat_to_index[a["category_id"]] for a in anns]
        crowd = [bool(a.get("iscrowd", 0)) for a in anns]
        if self.train:
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out = self.transform(
                image=square,
                bboxes=boxes[keep],
                label=np.array(labels)[keep],
                crowd=np.array(crowd)[keep],
            )
            tensor, boxes = out["image"], np.asarray(out["bboxes"]).reshape(-1, 4)
            labels, crowd = list(out["label"]), list(out["crowd"])
        else:
            tensor = self.transform(image=square)["image"]
        return {
            "image": tensor,
            "boxes_xyxy": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "label": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
            "crowd": torch.as_tensor(np.asarray(crowd, dtype=bool)),
            "image_id": image_id,
            "scale": scale,
            "pad": (pad_x, pad_y),
            "orig_size": image.shape[:2],
        }


def collate_detection(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and letterbox metadata; boxes, labels and crowd flags stay per-image lists."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "boxes_xyxy": [s["boxes_xyxy"] for s in samples],
        "label": [s["label"] for s in samples],
        "crowd": [s["crowd"] for s in samples],
        "image_id": torch.tensor([s["image_id"] for s in samples]),
        "scale": torch.tensor([s["scale"] for s in samples], dtype=torch.float64),
        "pad": torch.tensor([s["pad"] for s in samples], dtype=torch.float64),
        "orig_size": torch.tensor([s["orig_size"] for s in samples]),
    }


class DetectData(VisionDataModule):
    """Detection data: the shared splits, letterboxed to ``image_size``; ``colour_shift`` as in
    :func:`vision_tasks.data.transforms.photometric`."""

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 256,
        batch_size: int = 16,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        colour_shift: float = 0.0,
    ) -> None:
        super().__init__(
            train_json=train_json,
            train_images=train_images,
            val_json=val_json,
            val_images=val_images,
            test_json=test_json,
            test_images=test_images,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            policy=policy,
            synthetic_seed=synthetic_seed,
            synthetic_train=synthetic_train,
            synthetic_val=synthetic_val,
        )
        self.colour_shift = colour_shift

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """Every image of the split (images without objects are negatives)."""
        return DetectDataset(index, self.image_size, train, self.colour_shift)

    collate = staticmethod(collate_detection)
