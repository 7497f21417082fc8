"""Pure geometry shared by the tasks: box formats, letterbox and affine crop maps.

Every format conversion in the package lives here, so a box never changes meaning silently
between the data layer, a head and the results writer.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_convert, clip_boxes_to_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO ``[x, y, w, h]`` (N, 4) -> corner form ``[x1, y1, x2, y2]`` (N, 4)."""
    return box_convert(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Corner form ``[x1, y1, x2, y2]`` (N, 4) -> COCO ``[x, y, w, h]`` (N, 4)."""
    return box_convert(boxes, "xyxy", "xywh")


def letterbox_params(height: int, width: int, size: int) -> tuple[float, int, int]:
    """Scale and top-left padding that fit an (H, W) image into a ``size`` square, aspect kept.

    Returns:
        ``(scale, pad_x, pad_y)``: input pixel ``p`` maps to ``p * scale + pad``.
    """
    scale = min(size / height, size / width)
    new_w, new_h = letterbox_size(height, width, scale)
    return scale, (size - new_w) // 2, (size - new_h) // 2


def letterbox_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(new_w, new_h)`` of an (H, W) image scaled by ``scale``: rounded, at least 1 px (a
    2000x1 image would otherwise round to 0 rows, which ``cv2.resize`` refuses)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def letterbox_image(
    image: np.ndarray, size: int, fill: int = 114
) -> tuple[np.ndarray, float, int, int]:
    """Resize an (H, W, 3) image to fit a ``size`` square, aspect kept, padded centred.

    Returns:
        ``(square_image, scale, pad_x, pad_y)``, the parameters of :func:`letterbox_params`.
    """
    height, width = image.shape[:2]
    scale, pad_x, pad_y = letterbox_params(height, width, size)
    new_w, new_h = letterbox_size(height, width, scale)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    padded = cv2.copyMakeBorder(
        resized,
        pad_y,
        size - new_h - pad_y,
        pad_x,
        size - new_w - pad_x,
        cv2.BORDER_CONSTANT,
        value=(fill, fill, fill),
    )
    return padded, scale, pad_x, pad_y


def unletterbox_boxes(boxes_xyxy: Tensor, scale: float, pad_x: int, pad_y: int) -> Tensor:
    """Map (N, 4) xyxy boxes from letterboxed network pixels back to original image pixels."""
    offset = boxes_xyxy.new_tensor([pad_x, pad_y, pad_x, pad_y])
    return (boxes_xyxy - offset) / scale


def letterbox_label_map(label: np.ndarray, size: int, fill: int) -> np.ndarray:
    """Letterbox an (H, W) uint8 label map like :func:`letterbox_image`: nearest resampling (no
    blended labels), padding ``fill`` (the ignore index: padding is no class)."""
    height, width = label.shape[:2]
    scale, pad_x, pad_y = letterbox_params(height, width, size)
    new_w, new_h = letterbox_size(height, width, scale)
    resized = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    return cv2.copyMakeBorder(
        resized,
        pad_y,
        size - new_h - pad_y,
        pad_x,
        size - new_w - pad_x,
        cv2.BORDER_CONSTANT,
        value=fill,
    )


def unletterbox_map(
    maps: Tensor, scale: float, pad_x: int, pad_y: int, original_hw: tuple[int, int]
) -> Tensor:
    """(C, S, S) maps of a letterboxed input -> (C, H0, W0) at the original size (bilinear)."""
    height, width = (int(v) for v in original_hw)
    new_w, new_h = letterbox_size(height, width, scale)
    valid = maps[None, :, pad_y : pad_y + new_h, pad_x : pad_x + new_w]
    if (new_h, new_w) != (height, width):
        valid = torch.nn.functional.interpolate(
            valid, size=(height, width), mode="bilinear", align_corners=False
        )
    return valid[0]


def crop_regions(boxes_xyxy: Tensor, output_size: tuple[int, int], margin: float) -> Tensor:
    """(N, 4) boxes -> (N, 4) xyxy regions that :func:`box_affine` maps onto its output.

    The same enlargement (``margin``) and aspect-ratio growth, as boxes: RoI-Align over these
    regions samples what the top-down crop of the box shows.
    """
    out_w, out_h = output_size
    centre = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2
    size = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).clamp(min=1.0) * (1 + margin)
    aspect = out_w / out_h
    w = torch.maximum(size[:, 0], size[:, 1] * aspect)
    half = torch.stack([w, w / aspect], dim=1) / 2
    return torch.cat([centre - half, centre + half], dim=1)


def jitter_boxes(boxes_xyxy: Tensor, copies: int, jitter: float) -> Tensor:
    """(N, 4) boxes -> (N, copies, 4): each box, then ``copies - 1`` versions of it shifted by up
    to ``jitter`` of its size and rescaled by a factor in [1 - jitter, 1 + jitter] (uniform, from
    torch's generator): the boxes a detector might have found, for training per-box heads."""
    size = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2])[:, None]
    centre = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:])[:, None] / 2
    n = boxes_xyxy.shape[0]
    draw = (torch.rand(n, copies, 3, device=boxes_xyxy.device) * 2 - 1) * jitter
    centre = centre + draw[..., :2] * size
    half = size * (1 + draw[..., 2:]) / 2
    jittered = torch.cat([centre - half, centre + half], dim=-1)
    jittered[:, 0] = boxes_xyxy  # the first copy is the box itself
    return jittered


def to_region_pixels(points: Tensor, regions: Tensor, output_size: tuple[int, int]) -> Tensor:
    """(R, K, 2) continuous image coordinates -> pixels of an ``output_size`` (w, h) resampling of
    each (R, 4) xyxy region, pixel centres on integers (OpenCV, as the top-down crops)."""
    out = points.new_tensor(output_size)
    extent = (regions[:, 2:] - regions[:, :2]).clamp(min=1e-6)
    return (points - regions[:, None, :2]) * (out / extent)[:, None] - 0.5


def from_region_pixels(points: Tensor, regions: Tensor, output_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`to_region_pixels`: region pixels (R, K, 2) -> image coordinates."""
    out = points.new_tensor(output_size)
    extent = regions[:, 2:] - regions[:, :2]
    return (points + 0.5) * (extent / out)[:, None] + regions[:, None, :2]


def box_affine(
    box_xyxy: np.ndarray | list[float],
    output_size: tuple[int, int],
    margin: float = 0.25,
) -> np.ndarray:
    """2x3 affine that maps a box, enlarged by ``margin`` and grown to the output's aspect ratio,
    onto an output of ``(width, height)`` pixels.

    The box is centred and never distorted: the shorter side is extended, as top-down keypoint
    and re-ID crops expect.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    out_w, out_h = output_size
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w = max(x2 - x1, 1.0) * (1 + margin)
    h = max(y2 - y1, 1.0) * (1 + margin)
    aspect = out_w / out_h
    if w / h > aspect:
        h = w / aspect
    else:
        w = h * aspect
    scale = out_w / w
    return np.array(
        [[scale, 0.0, out_w / 2 - scale * cx], [0.0, scale, out_h / 2 - scale * cy]],
        dtype=np.float64,
    )


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_affine(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` with a 2x3 affine to ``(width, height)``; outside pixels are black."""
    return cv2.warpAffine(
        image,
        matrix,
        output_size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def denormalize(images: Tensor, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> Tensor:
    """(B, 3, H, W) normalised float -> (B, 3, H, W) uint8, for drawing."""
    mean_t = images.new_tensor(mean).view(1, -1, 1, 1)
    std_t = images.new_tensor(std).view(1, -1, 1, 1)
    return ((images * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)


# ---- homographies (batched torch; the convention of cv2.getPerspectiveTransform) --------------


def square_corners(size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Corner pixel centres of a ``size`` x ``size`` patch, clockwise from top-left: (4, 2)."""
    last = float(size - 1)
    return torch.tensor([[0.0, 0.0], [last, 0.0], [last, last], [0.0, last]], dtype=dtype)


def four_point_to_homography(src: Tensor, dst: Tensor) -> Tensor:
    """3x3 homographies mapping 4 points onto 4 points, as ``cv2.getPerspectiveTransform``.

    Solves the 8x8 direct linear system with ``H[2, 2] = 1`` in float64 (differentiable).

    Args:
        src: (..., 4, 2) source points (x, y).
        dst: (..., 4, 2) destination points.

    Returns:
        (..., 3, 3) homographies ``H`` with ``dst ~ H @ [src, 1]``, in ``src``'s dtype.
    """
    if src.shape[-2:] != (4, 2) or dst.shape != src.shape:
        raise ValueError(
            f"expected two (..., 4, 2) point sets, got {tuple(src.shape)} and {tuple(dst.shape)}"
        )
    batch_shape = src.shape[:-2]
    s = src.reshape(-1, 4, 2).double()
    d = dst.reshape(-1, 4, 2).double()
    x, y, u, v = s[..., 0], s[..., 1], d[..., 0], d[..., 1]
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    system = torch.cat([rows_u, rows_v], dim=1)  # (N, 8, 8)
    h = torch.linalg.solve(system, torch.cat([u, v], dim=1))  # (N, 8)
    matrices = torch.cat([h, torch.ones_like(h[:, :1])], dim=1).reshape(-1, 3, 3)
    return matrices.reshape(*batch_shape, 3, 3).to(src.dtype)


def apply_homography(homography: Tensor, points: Tensor) -> Tensor:
    """Map (..., N, 2) points through (..., 3, 3) homographies (perspective divide included)."""
    mapped = points @ homography[..., :2, :2].transpose(-1, -2) + homography[..., None, :2, 2]
    scale = points @ homography[..., 2:, :2].transpose(-1, -2) + homography[..., None, 2:, 2]
    return mapped / scale


def weighted_dlt(src: Tensor, dst: Tensor, weights: Tensor) -> Tensor:
    """Least-squares homographies from weighted correspondences (normalised DLT, float64).

    Args:
        src: (B, N, 2) source points (x, y), N >= 4.
        dst: (B, N, 2) destination points.
        weights: (B, N) non-negative weights (0 drops a correspondence).

    Returns:
        (B, 3, 3) homographies ``H`` with ``dst ~ H @ [src, 1]`` and ``H[2, 2] = 1``, in ``src``'s
        dtype; on exact correspondences the one ``cv2.findHomography(method=0)`` returns.
    """
    s, d, w = src.double(), dst.double(), weights.double().clamp_min(0)
    # Hartley normalisation: without it the 9x9 normal matrix mixes 1 and 1e8 entries in pixels.
    t_src, t_dst = _hartley(s, w), _hartley(d, w)
    sn, dn = apply_homography(t_src, s), apply_homography(t_dst, d)
    x, y, u, v = sn[..., 0], sn[..., 1], dn[..., 0], dn[..., 1]
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y, -u], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y, -v], dim=-1)
    system = torch.cat([rows_u, rows_v], dim=1) * w.sqrt().repeat(1, 2)[..., None]
    # The solution is the normal matrix's eigenvector of the smallest eigenvalue (eigh: ascending).
    h = torch.linalg.eigh(system.transpose(1, 2) @ system)[1][..., 0].reshape(-1, 3, 3)
    homography = torch.linalg.inv(t_dst) @ h @ t_src
    return (homography / homography[:, 2:, 2:]).to(src.dtype)


def _hartley(points: Tensor, weights: Tensor) -> Tensor:
    """(B, N, 2) points, (B, N) weights -> (B, 3, 3) similarity moving their weighted centroid
    to the origin and their weighted mean distance from it to sqrt(2)."""
    total = weights.sum(-1, keepdim=True).clamp_min(1e-12)
    centre = (points * weights[..., None]).sum(1) / total
    spread = ((points - centre[:, None]).norm(dim=-1) * weights).sum(-1, keepdim=True) / total
    scale = (2**0.5 / spread.clamp_min(1e-12)).squeeze(-1)
    transform = torch.zeros(points.shape[0], 3, 3, dtype=points.dtype, device=points.device)
    transform[:, 0, 0] = transform[:, 1, 1] = scale
    transform[:, :2, 2] = -scale[:, None] * centre
    transform[:, 2, 2] = 1
    return transform


def offsets_to_corners(offsets: Tensor, size: int) -> Tensor:
    """(B, 8) corner offsets in pixels -> (B, 4, 2) corners of a moved ``size`` square."""
    return square_corners(size, offsets.dtype).to(offsets.device) + offsets.reshape(-1, 4, 2)


def corners_to_homography(corners: Tensor, size: int) -> Tensor:
    """(B, 4, 2) moved corners of a ``size`` square -> (B, 3, 3) square-to-corners homographies."""
    square = square_corners(size, corners.dtype).to(corners.device).expand_as(corners)
    return four_point_to_homography(square, corners)


def cell_grid(
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """(h w, 2) (x, y) integer coordinates of the cells of an h x w map, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2)


def warp_perspective(
    images: Tensor, homography: Tensor, size: tuple[int, int], padding_mode: str = "zeros"
) -> Tensor:
    """Warp (B, C, H, W) images by (B, 3, 3) homographies to (B, C, h, w) like
    ``cv2.warpPerspective``: output pixel ``p`` samples the input at ``H^-1 p`` (bilinear;
    outside the input ``padding_mode`` of ``grid_sample``: zeros, border, reflection).
    Differentiable in both the images and the homographies.
    """
    out_h, out_w = size
    in_h, in_w = images.shape[-2:]
    grid = cell_grid(out_h, out_w, images.dtype, images.device)[None]  # output pixel centres
    source = apply_homography(torch.linalg.inv(homography), grid)  # (B, h*w, 2)
    # align_corners=True puts -1 / +1 on the outer pixel centres: OpenCV's pixel convention.
    scale = source.new_tensor([2.0 / max(in_w - 1, 1), 2.0 / max(in_h - 1, 1)])
    normalised = (source * scale - 1).reshape(-1, out_h, out_w, 2)
    return torch.nn.functional.grid_sample(
        images, normalised, mode="bilinear", padding_mode=padding_mode, align_corners=True
    )


def align_second_patch(images: Tensor, corners: Tensor, patch_size: int) -> Tensor:
    """Undo an estimated homography on patch B of network inputs (for a refinement pass).

    Args:
        images: (B, 2, S, S) network inputs (patches area-resized from ``patch_size`` to S).
        corners: (B, 4, 2) estimated corners in patch pixels.
        patch_size: side P of the patches the corners are measured in.

    Returns:
        (B, 2, S, S): patch A and patch B resampled at ``H^-1 q``, which shows what A shows
        where the estimate is right (the border is replicated where B has no pixels).
    """
    size = images.shape[-1]
    scale = size / patch_size
    # Area resizing maps patch pixel centre x to network pixel centre scale * (x + 0.5) - 0.5.
    to_net = torch.tensor(
        [[scale, 0.0, 0.5 * scale - 0.5], [0.0, scale, 0.5 * scale - 0.5], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
        device=images.device,
    )
    homography = to_net @ corners_to_homography(corners.double(), patch_size)
    homography = homography @ torch.linalg.inv(to_net)
    # B at q shows A's content at H q, so sampling B at H^-1 q shows A's content at q.
    aligned = warp_perspective(images[:, 1:].double(), homography, (size, size), "border")
    return torch.cat([images[:, :1], aligned.to(images.dtype)], dim=1)


# ---- back to the original image ----------------------------------------------------------------


def boxes_to_original(
    boxes_xyxy: Tensor,
    scale: float,
    pad: tuple[float, float],
    original_hw: tuple[int, int],
) -> Tensor:
    """(N, 4) xyxy boxes in letterboxed network pixels -> (N, 4) xyxy float64 boxes on the CPU
    in original image pixels, clipped to the (H, W) image.

    The one way back for every task that letterboxes (as torchvision's ``resize_boxes`` then
    ``clip_boxes_to_image``): :func:`unletterbox_boxes`, then clipped, since a box may reach
    into the padding.
    """
    pad_x, pad_y = (float(v) for v in pad)
    boxes = unletterbox_boxes(boxes_xyxy.detach().double().cpu(), float(scale), pad_x, pad_y)
    return clip_boxes_to_image(boxes, tuple(int(v) for v in original_hw))
