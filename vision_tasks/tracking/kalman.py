"""Constant-velocity Kalman filter on (centre x, centre y, aspect w/h, height), as in SORT/DeepSORT.

State ``[x, y, a, h, vx, vy, va, vh]``; one frame is one time step. The noise model is
DeepSORT's (Wojke et al. 2017, ``deep_sort/kalman_filter.py``): position and velocity standard
deviations proportional to the box height (``1/20`` and ``1/160`` of it), the aspect ratio's
fixed, so one filter suits near and far objects alike. Every function works on a batch of
tracks at once: ``mean`` (N, 8), ``covariance`` (N, 8, 8); predicting 30 tracks is one call.
"""

from __future__ import annotations

import numpy as np

STD_POSITION = 1.0 / 20
STD_VELOCITY = 1.0 / 160

_MOTION = np.eye(8)
_MOTION[:4, 4:] = np.eye(4)  # x_{t+1} = x_t + v_t
_OBSERVE = np.eye(4, 8)


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) corner boxes -> (N, 4) centre x, centre y, aspect (w / h), height."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    return np.column_stack([centre, width / np.maximum(height, 1e-6), height])


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(N, 4) centre x, centre y, aspect, height -> (N, 4) corner boxes."""
    xyah = np.asarray(xyah, dtype=np.float64).reshape(-1, 4)
    half = np.column_stack([xyah[:, 2] * xyah[:, 3], xyah[:, 3]]) / 2
    return np.column_stack([xyah[:, :2] - half, xyah[:, :2] + half])


def _std(height: np.ndarray, position: float, aspect: float) -> np.ndarray:
    """(N, 4) standard deviations ``[p h, p h, aspect, p h]`` for heights (N,)."""
    scaled = position * height
    return np.column_stack([scaled, scaled, np.full_like(height, aspect), scaled])


def initiate(measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New tracks from (N, 4) xyah measurements: mean (N, 8) at rest, covariance (N, 8, 8)."""
    measurement = np.asarray(measurement, dtype=np.float64).reshape(-1, 4)
    height = measurement[:, 3]
    std = np.hstack([_std(height, 2 * STD_POSITION, 1e-2), _std(height, 10 * STD_VELOCITY, 1e-5)])
    mean = np.hstack([measurement, np.zeros_like(measurement)])
    return mean, _diagonal(std**2)


def predict(mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step ahead: ``F m`` and ``F P F^T + Q`` (Q from the predicted-from height)."""
    height = mean[:, 3]
    std = np.hstack([_std(height, STD_POSITION, 1e-2), _std(height, STD_VELOCITY, 1e-5)])
    mean = mean @ _MOTION.T
    covariance = _MOTION @ covariance @ _MOTION.T + _diagonal(std**2)
    return mean, covariance


def update(
    mean: np.ndarray, covariance: np.ndarray, measurement: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Correct with (N, 4) xyah measurements: Kalman gain ``K = P H^T S^-1``, S = H P H^T + R."""
    measurement = np.asarray(measurement, dtype=np.float64).reshape(-1, 4)
    noise = _diagonal(_std(mean[:, 3], STD_POSITION, 1e-1) ** 2)
    projected_cov = _OBSERVE @ covariance @ _OBSERVE.T + noise  # S (N, 4, 4)
    cross = covariance @ _OBSERVE.T  # P H^T (N, 8, 4)
    # K = P H^T S^-1, solved as S^T K^T = (P H^T)^T: S is symmetric positive definite.
    gain = np.linalg.solve(projected_cov, cross.transpose(0, 2, 1)).transpose(0, 2, 1)
    innovation = measurement - mean[:, :4]
    mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    covariance = covariance - gain @ projected_cov @ gain.transpose(0, 2, 1)
    return mean, covariance


def _diagonal(values: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D, D) diagonal matrices."""
    out = np.zeros((*values.shape, values.shape[-1]))
    index = np.arange(values.shape[-1])
    out[:, index, index] = values
    return out
