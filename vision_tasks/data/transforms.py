"""albumentations pipelines per task, train vs eval; every one ends normalised, as a tensor."""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric
from albumentations.core.bbox_utils import denormalize_bboxes, normalize_bboxes
from albumentations.core.type_definitions import Targets
from albumentations.pytorch import ToTensorV2

from vision_tasks import ops
from vision_tasks.ops import IMAGENET_MEAN, IMAGENET_STD


def _finish() -> list[A.BasicTransform]:
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]


class Letterbox(A.DualTransform):
    """:func:`vision_tasks.ops.letterbox_image` as an albumentations transform: the image and
    its label mask, boxes and keypoints placed exactly where inference places them.

    Training pipelines and ``predict`` share one geometry this way; LongestMaxSize + PadIfNeeded
    rounds sides and resamples differently (a 1-px side, area vs linear downscaling).

    Args:
        size: side of the square output.
        fill: grey level of the padding around the image.
        fill_mask: label of the padding in a mask (the ignore index, where one is used).
    """

    _targets = (Targets.IMAGE, Targets.MASK, Targets.BBOXES, Targets.KEYPOINTS)

    def __init__(self, size: int, fill: int = 114, fill_mask: int = 0, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.size, self.fill, self.fill_mask = size, fill, fill_mask

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict[str, Any]:
        """``scale`` and ``pad_x`` / ``pad_y`` of :func:`vision_tasks.ops.letterbox_params`."""
        height, width = params["shape"][:2]
        scale, pad_x, pad_y = ops.letterbox_params(height, width, self.size)
        return {"scale": scale, "pad_x": pad_x, "pad_y": pad_y}

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        """The image, letterboxed."""
        return ops.letterbox_image(img, self.size, self.fill)[0]

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        """A label mask, letterboxed with nearest resampling, padding ``fill_mask``."""
        return ops.letterbox_label_map(mask, self.size, self.fill_mask)

    def apply_to_bboxes(
        self, bboxes: np.ndarray, scale: float, pad_x: int, pad_y: int, **params: Any
    ) -> np.ndarray:
        """(N, 4+) boxes normalised to the input -> normalised to the square."""
        if not len(bboxes):
            return bboxes
        pixels = denormalize_bboxes(bboxes, params["shape"])
        pixels[:, :4] = pixels[:, :4] * scale + (pad_x, pad_y, pad_x, pad_y)
        return normalize_bboxes(pixels, (self.size, self.size))

    def apply_to_keypoints(
        self, keypoints: np.ndarray, scale: float, pad_x: int, pad_y: int, **params: Any
    ) -> np.ndarray:
        """(N, 2+) keypoints in input pixels -> square pixels."""
        if not len(keypoints):
            return keypoints  # albumentations may hand over an empty 1-D array
        moved = fgeometric.keypoints_scale(keypoints, scale, scale)  # also their scale column
        moved[:, :2] += (pad_x, pad_y)
        return moved

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments shown in ``repr`` and serialised."""
        return ("size", "fill", "fill_mask")


def letterbox(size: int) -> list[A.BasicTransform]:
    """Resize the long side to ``size`` and pad centred to a square (aspect ratio kept)."""
    return [Letterbox(size)]


class HueTurn(A.ColorJitter):
    """The hue turned anywhere on its circle, nothing else: one of ``colour_shift``'s ways."""

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(brightness=0, contrast=0, saturation=0, hue=0.5, p=p)


# What photometric(colour_shift) may apply to an image, by the names albumentations records in
# ``applied_transforms``: after any of these an object's colours are no longer its own.
COLOUR_SHIFTS = frozenset({"ChannelShuffle", "HueTurn", "ToGray"})


def colour_shifted(applied_transforms: list[tuple[str, Any]]) -> bool:
    """Whether a pipeline run (its ``applied_transforms``) shifted the image's colours."""
    return any(name in COLOUR_SHIFTS for name, _ in applied_transforms)


def photometric(colour_shift: float = 0.0) -> list[A.BasicTransform]:
    """Colour jitter that keeps labels valid for every task.

    ``colour_shift``: the probability of also swapping the colour channels, turning the hue
    anywhere on its circle or dropping colour. For data where colour is no cue to the class: on
    the synthetic default every shape category comes in many colours and validation objects wear
    colours training never showed them, so a model left to learn "orange checks -> square"
    fails there. Keep it 0 where colour does tell classes apart.
    """
    shift = (
        []
        if colour_shift <= 0
        else [
            A.OneOf(
                [
                    A.ChannelShuffle(p=1.0),
                    HueTurn(p=1.0),
                    A.ToGray(p=1.0),
                ],
                p=colour_shift,
            )
        ]
    )
    return [
        *shift,
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
    ]


def normalize_only() -> A.Compose:
    """Evaluation pipeline for inputs already at network size."""
    return A.Compose(_finish())


def detect_transforms(train: bool, colour_shift: float = 0.0) -> A.Compose:
    """Detection, applied to a letterboxed square: random scale / translate / flip / colour.

    Boxes are ``pascal_voc`` (x1, y1, x2, y2 pixels) with ``label`` and ``crowd`` fields; a box
    less than a quarter visible after the affine is dropped, like the objects it stood for.
    """
    if not train:
        return normalize_only()
    augment = [
        A.Affine(
            scale=(0.6, 1.5),
            translate_percent=(-0.15, 0.15),
            border_mode=cv2.BORDER_CONSTANT,
            fill=114,
            p=0.8,
        ),
        A.HorizontalFlip(p=0.5),
        *photometric(colour_shift),
    ]
    boxes = A.BboxParams(
        format="pascal_voc",
        label_fields=["label", "crowd"],
        min_visibility=0.25,
        min_area=4.0,
        clip=True,
        filter_invalid_bboxes=True,
    )
    return A.Compose([*augment, *_finish()], bbox_params=boxes)


def classify_transforms(
    size: int, train: bool, already_cropped: bool, colour_shift: float = 0.0
) -> A.Compose:
    """Classification: crops arrive at ``size`` already; whole images are letterboxed."""
    geometry = [] if already_cropped else letterbox(size)
    if train:
        augment = [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), p=0.7),
            *photometric(colour_shift),
        ]
        return A.Compose([*geometry, *augment, *_finish()])
    return A.Compose([*geometry, *_finish()])


# Homography patches are grey (2 stacked channels), not ImageNet RGB: a plain 0.5 / 0.25 scaling.
GRAY_MEAN = 0.5
GRAY_STD = 0.25


def homography_photometric() -> A.Compose:
    """Photometric change applied to each grey patch of a training pair on its own."""
    return A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.8),
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
            A.GaussNoise(std_range=(0.01, 0.03), p=0.3),
        ]
    )


def homography_transforms(size: int) -> A.Compose:
    """Stacked (P, P, 2) uint8 patches -> (2, size, size) normalised tensor (area-resized)."""
    return A.Compose(
        [
            A.Resize(size, size, interpolation=cv2.INTER_AREA),
            A.Normalize(mean=(GRAY_MEAN, GRAY_MEAN), std=(GRAY_STD, GRAY_STD)),
            ToTensorV2(),
        ]
    )


def reid_transforms(height: int, width: int, train: bool) -> A.Compose:
    """Re-ID crops: resized to (height, width); flip, shift, colour jitter and random erasing."""
    resize = [A.Resize(height, width, interpolation=cv2.INTER_LINEAR)]
    if not train:
        return A.Compose([*resize, *_finish()])
    augment = [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), p=0.5),
        # Cameras differ in colour cast and brightness: identity must survive both.
        A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.2, hue=0.0, p=0.8),
    ]
    # Erasing after normalisation fills with 0, the ImageNet mean (Zhong et al. 2020).
    erase = A.Erasing(scale=(0.02, 0.25), fill=0, p=0.5)
    normalize, to_tensor = _finish()
    return A.Compose([*resize, *augment, normalize, erase, to_tensor])


def keypoint_transforms(train: bool) -> A.Compose:
    """Top-down keypoint crops (already at network size): flip, scale / rotate / shift, colour.

    Training keypoints are ``xy`` pixels and never dropped (an instance has K of them; one pushed
    out of the crop gets weight 0 later). ``applied_transforms`` in the result says whether the
    crop was flipped: the caller then swaps left / right keypoints, which albumentations cannot
    know. Evaluation only normalises: the keypoints stay where the crop put them.
    """
    if not train:
        return normalize_only()
    keypoints = A.KeypointParams(format="xy", remove_invisible=False)
    augment = [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.75, 1.25),
            rotate=(-30, 30),
            translate_percent=(-0.05, 0.05),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=0.8,
        ),
        *photometric(),
    ]
    return A.Compose([*augment, *_finish()], keypoint_params=keypoints, save_applied_params=True)


# ImageNet mean colour: padding that normalises to 0, the same value the model pads with.
_MEAN_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)


def segment_transforms(
    size: int,
    crop_size: int,
    train: bool,
    scale_range: tuple[float, float] = (0.75, 1.25),
    ignore_index: int = 255,
    square: bool = True,
    colour_shift: float = 0.0,
    soft_masks: bool = False,
) -> A.Compose:
    """Semantic segmentation: image + ``mask`` label map; masks only ever use nearest resampling.

    Both stages first resize the long side to ``size``. Training then rescales by a random
    factor in ``scale_range``, cuts a random ``crop_size`` square (padding: mean colour,
    ``ignore_index`` in the mask), flips and jitters colours. Evaluation pads bottom/right to a
    square of ``size`` rounded up to 32, so every image of a batch has the same shape, or with
    ``square=False`` only each side up to a multiple of 32 (less padding to compute on; the
    caller's collate then pads a batch to one shape).

    ``soft_masks``: the mask is an (H, W, C) float map of class fractions (one-hot at the
    original size; all zeros where unknown), resampled by area / linear interpolation, so a
    pixel on an object's edge keeps the share of it the object covers; padding is all zeros.
    """
    nearest = cv2.INTER_NEAREST
    if soft_masks:
        ignore_index = 0
    resize = A.LongestMaxSize(
        max_size=size,
        interpolation=cv2.INTER_AREA,
        mask_interpolation=cv2.INTER_AREA if soft_masks else nearest,
    )
    if not train:
        side = -(-size // 32) * 32
        extent = (
            {"min_height": side, "min_width": side}
            if square
            else {
                "min_height": None,
                "min_width": None,
                "pad_height_divisor": 32,
                "pad_width_divisor": 32,
            }
        )
        pad = A.PadIfNeeded(
            **extent,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=_MEAN_RGB,
            fill_mask=ignore_index,
        )
        return A.Compose([resize, pad, *_finish()])
    low, high = scale_range
    # RandomScale truncates each side (int(side * scale)): a 1-px side (a 2000x1 image) would
    # become 0 px. Sides this short are padded first; longer ones are left alone.
    shortest = math.ceil(1 / low) + 1
    augment = [
        A.PadIfNeeded(
            shortest,
            shortest,
            position="center",
            border_mode=cv2.BORDER_CONSTANT,
            fill=_MEAN_RGB,
            fill_mask=ignore_index,
        ),
        A.RandomScale(
            scale_limit=(low - 1, high - 1),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_LINEAR if soft_masks else nearest,
            p=1.0,
        ),
        A.RandomCrop(
            crop_size,
            crop_size,
            pad_if_needed=True,
            pad_position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=_MEAN_RGB,
            fill_mask=ignore_index,
        ),
        A.HorizontalFlip(p=0.5),
        *photometric(colour_shift),
    ]
    return A.Compose([resize, *augment, *_finish()])


def multitask_transforms(
    train: bool, colour_shift: float = 0.0, ignore_index: int = 255
) -> A.Compose:
    """Joint model, on a letterboxed square: one geometry for the image, its boxes (``pascal_voc``
    with an ``instance`` field naming each box's annotation), its keypoints (``xy``, never
    dropped) and its label ``mask`` (nearest, filled with ``ignore_index``).

    As in :func:`keypoint_transforms`, ``applied_transforms`` tells whether the image was
    flipped: the caller swaps left / right keypoints.
    """
    if not train:
        return normalize_only()
    augment = [
        A.Affine(
            scale=(0.75, 1.25),
            translate_percent=(-0.1, 0.1),
            border_mode=cv2.BORDER_CONSTANT,
            fill=114,
            fill_mask=ignore_index,
            p=0.8,
        ),
        A.HorizontalFlip(p=0.5),
        *photometric(colour_shift),
    ]
    boxes = A.BboxParams(
        format="pascal_voc",
        label_fields=["instance"],
        min_visibility=0.25,
        min_area=4.0,
        clip=True,
        filter_invalid_bboxes=True,
    )
    keypoints = A.KeypointParams(format="xy", remove_invisible=False)
    return A.Compose(
        [*augment, *_finish()],
        bbox_params=boxes,
        keypoint_params=keypoints,
        save_applied_params=True,
    )
