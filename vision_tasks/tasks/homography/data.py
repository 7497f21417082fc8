"""Homography pairs from any COCO image: cut, warp, seed, and the data module that serves them."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vision_tasks import ops
from vision_tasks.data.coco import CocoIndex, Policy
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import homography_photometric, homography_transforms


def random_pair(
    gray: np.ndarray, rng: np.random.Generator, patch_size: int, rho: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut one training pair from a grey (H, W) uint8 image.

    Returns:
        ``(patch_a, patch_b, corners, origin)``: two (P, P) uint8 patches, the (4, 2) float32
        moved corners in patch-A pixels and the (2,) top-left (x, y) of patch A in the image.
    """
    height, width = gray.shape
    margin = int(np.ceil(rho))
    if min(width, height) < patch_size + 2 * margin:
        raise ValueError(
            f"a {width}x{height} image is too small for patch_size {patch_size} + 2 * rho {rho}"
        )
    # The moved corners stay inside the image, so patch B never samples the border.
    x = int(rng.integers(margin, width - margin - patch_size + 1))
    y = int(rng.integers(margin, height - margin - patch_size + 1))
    square = ops.square_corners(patch_size).numpy()
    corners = (square + rng.uniform(-rho, rho, (4, 2))).astype(np.float32)
    origin = np.array([x, y], dtype=np.float32)
    patch_a = np.ascontiguousarray(gray[y : y + patch_size, x : x + patch_size])
    # Warping the image by the inverse homography, then cutting the window = mapping the moved
    # quadrilateral straight onto the square.
    to_square = cv2.getPerspectiveTransform(corners + origin, square)
    size = (patch_size, patch_size)
    patch_b = cv2.warpPerspective(
        gray, to_square, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return patch_a, patch_b, corners, origin


def to_gray(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> grey uint8 resized to ``size`` = (width, height)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    same = gray.shape[::-1] == tuple(size)
    return gray if same else cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


class HomographyDataset(Dataset):
    """Every image of a COCO split as ``{"image", "corners", "patches", "image_id"}`` pairs.

    Training pairs are drawn afresh at every access, ``pairs_per_image`` of them per image and
    epoch (fewer, longer epochs on a small set); evaluation pairs are one per image, fixed by
    ``(pair_seed, image_id)``, so every run, epoch and baseline sees the same pairs.

    A ``refine_fraction`` of the training pairs are refinement pairs, as the model's
    ``refine_steps`` passes see them: patch B undone by an estimate that is off by up to
    ``refine_jitter`` pixels per corner coordinate; ``corners`` is then the residual's.
    """

    def __init__(
        self,
        index: CocoIndex,
        image_size: int,
        train: bool,
        patch_size: int = 128,
        rho: float = 32.0,
        resize: tuple[int, int] = (320, 240),
        pair_seed: int = 0,
        photometric: bool = False,
        pairs_per_image: int = 1,
        refine_fraction: float = 0.0,
        refine_jitter: float = 8.0,
    ) -> None:
        if pairs_per_image < 1:
            raise ValueError(f"data.pairs_per_image must be >= 1, got {pairs_per_image}")
        if min(resize) < patch_size + 2 * int(np.ceil(rho)):
            raise ValueError(
                f"data.resize_width/height {resize} too small for data.patch_size "
                f"{patch_size} + 2 * data.rho {rho}"
            )
        self.index = index
        self.train = train
        self.patch_size = patch_size
        self.rho = rho
        self.resize = tuple(resize)
        self.pair_seed = pair_seed
        self.photometric = homography_photometric() if train and photometric else None
        self.transform = homography_transforms(image_size)
        self.pairs_per_image = pairs_per_image if train else 1
        self.refine_fraction = refine_fraction if train else 0.0
        self.refine_jitter = refine_jitter

    def __len__(self) -> int:
        return len(self.index.image_ids) * self.pairs_per_image

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.index.image_ids[i % len(self.index.image_ids)]
        gray = to_gray(self.index.load_image(image_id), self.resize)
        # torch's generator is seeded per worker (and by seed_everything); NumPy's is not.
        seed = int(torch.randint(2**62, ())) if self.train else (self.pair_seed, image_id)
        patch_a, patch_b, corners, _ = random_pair(
            gray, np.random.default_rng(seed), self.patch_size, self.rho
        )
        if self.photometric is not None:
            patch_a, patch_b = (self.photometric(image=p)["image"] for p in (patch_a, patch_b))
        patches = np.stack([patch_a, patch_b], axis=-1)
        image, corners = self.transform(image=patches)["image"], torch.from_numpy(corners)
        if self.refine_fraction > 0 and torch.rand(()) < self.refine_fraction:
            image, corners = self._refinement_pair(image, corners)
        return {
            "image": image,
            "corners": corners,
            "patches": torch.from_numpy(patches).permute(2, 0, 1).contiguous(),
            "image_id": image_id,
        }

    def _refinement_pair(self, image: Tensor, corners: Tensor) -> tuple[Tensor, Tensor]:
        """(2, S, S) input and (4, 2) true corners -> the input and corners a refinement pass
        sees after an estimate off by up to ``refine_jitter`` px per coordinate.
        """
        # A random scale per pair: later passes see small residuals, and must see them here.
        scale = float(torch.rand(())) * self.refine_jitter
        jitter = (torch.rand(4, 2, dtype=torch.float64) * 2 - 1) * scale
        estimate = corners.double() + jitter
        aligned = ops.align_second_patch(image[None], estimate[None], self.patch_size)[0]
        # Aligned B shows A at R q with R = H H_estimate^-1, the map of the estimated corners
        # onto the true ones; the pair's corners are R's image of the square.
        residual = ops.four_point_to_homography(estimate, corners.double())
        square = ops.square_corners(self.patch_size, torch.float64)
        return aligned, ops.apply_homography(residual, square).float()


class HomographyData(VisionDataModule):
    """Homography pairs: the shared splits plus the pair geometry.

    ``image_size`` is the network input side: pairs are cut at ``patch_size`` and area-resized
    to it (corners stay in ``patch_size`` pixels). ``patch_size`` and ``rho`` must match the
    model's. ``pairs_per_image`` training pairs are drawn per image and epoch; a
    ``refine_fraction`` of them are refinement pairs (see :class:`HomographyDataset`).
    """

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 128,
        batch_size: int = 32,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        patch_size: int = 128,
        rho: float = 32.0,
        resize_width: int = 320,
        resize_height: int = 240,
        pair_seed: int = 0,
        photometric: bool = False,
        pairs_per_image: int = 1,
        refine_fraction: float = 0.0,
        refine_jitter: float = 8.0,
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
        self.patch_size = patch_size
        self.rho = rho
        self.resize = (resize_width, resize_height)
        self.pair_seed = pair_seed
        self.photometric = photometric
        self.pairs_per_image = pairs_per_image
        self.refine = (refine_fraction, refine_jitter)

    needs_categories = False  # pairs cut from images; annotations are not read

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """One pair per image (annotations ignored)."""
        return HomographyDataset(
            index,
            self.image_size,
            train,
            self.patch_size,
            self.rho,
            self.resize,
            self.pair_seed,
            self.photometric,
            self.pairs_per_image,
            *self.refine,
        )
