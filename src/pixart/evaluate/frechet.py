"""Fréchet distance between two sets of features, each summarised as a Gaussian (as FID does).

FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

The trace of the matrix square root is computed without a general (non-symmetric) sqrtm: S_a S_b is
similar to S_a^(1/2) S_b S_a^(1/2), which is symmetric positive semi-definite, so
tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)). Two symmetric eigen-
decompositions in float64 give it with no complex round-off to discard.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_float64(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got shape {array.shape}")
    if not np.isfinite(array).all():  # else numpy's "Eigenvalues did not converge", which names nothing
        raise ValueError("the features hold NaN or infinite values: the feature network gave them (a broken detector?)")
    return array


def gaussian_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of (N, F) features, in float64."""
    array = _as_float64(features)
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_statistics(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, dtype=np.float64), np.asarray(sigma_b, dtype=np.float64)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise ValueError(f"statistics disagree in shape: {mu_a.shape} {sigma_a.shape} vs {mu_b.shape} {sigma_b.shape}")
    root_a = _sqrt_psd(sigma_a)
    middle = root_a @ sigma_b @ root_a  # (F, F) symmetric PSD, similar to sigma_a @ sigma_b
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))  # exact arithmetic never goes below 0; round-off can


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two (N, F) feature sets."""
    return frechet_distance_from_statistics(*gaussian_statistics(features_a), *gaussian_statistics(features_b))
