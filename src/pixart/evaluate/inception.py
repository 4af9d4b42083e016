"""The Inception-v3 of FID: NVIDIA's TorchScript `inception-2015-12-05.pt`, as StyleGAN2-ADA, EDM and clean-fid use it.

The file is a TorchScript port of the TensorFlow graph the original FID used. Its forward is
`forward(img, return_features=False, use_fp16=False, no_output_bias=False)`: `img` is (N, 3, H, W) pixels
in [0, 255] of any dtype (it casts to float32 itself), which it resizes to 299 x 299 with TensorFlow 1's
bilinear sampling (affine_grid + grid_sample, border padding, no antialiasing: output pixel j reads source
position j * in / 299), then normalises with (x - 128) / 128; `return_features=True` gives the (N, 2048)
pool features FID is computed on. StyleGAN2-ADA and EDM call it as `detector(images, return_features=True)`
with uint8 NCHW images at their native size.

Here each image is resized to 299 x 299 first with that same sampling (resize_for_inception), so images of
any size batch together; the network's own resize is then the identity, and the features are those of
feeding each image at its native size. (clean-fid's "clean" mode resizes with PIL bicubic instead; its
numbers differ slightly from these.) Reference images are read as preparation reads them
(pixart.data.images.load_rgb): transparency composited over white, an embedded colour profile other than
sRGB applied, EXIF orientation applied; those tools' PIL `.convert("RGB")` drops the alpha channel and takes
the stored values as sRGB, so on such images their FIDs differ from ours.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from pixart.weights import WeightsError

INCEPTION_SIZE = 299
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{INCEPTION_FILE}"
INCEPTION_HINT = (
    f"--inception FILE is required for FID; download {INCEPTION_FILE} on a connected machine from "
    f"{INCEPTION_URL} and pass its path"
)


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript detector at `path` (never downloads): FileNotFoundError or WeightsError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--inception: no file at {path}. {INCEPTION_HINT}")
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated, but TorchScript is what this file is
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    except Exception as error:  # a pickle, a state dict or a truncated download all land here
        raise WeightsError(
            f"--inception {path} is not a TorchScript module ({type(error).__name__}: {error}). {INCEPTION_HINT}"
        ) from error


def _taps(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (lo, hi) and weights of hi for TF1 bilinear resizing: output j reads j * in / out."""
    position = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    lo = position.floor().long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)  # past the last pixel: border padding repeats it
    return lo, hi, (position - lo).float()


def resize_for_inception(image: np.ndarray | torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, size, size) in [0, 255], resized the way the Inception network resizes.

    Bilinear, sampled as TensorFlow 1 did (no half-pixel offset, no antialiasing), which is what
    inception-2015-12-05.pt does internally; at 299 x 299 input that resize is the identity.
    The whole image is resized, without cropping, as the network would.
    """
    x = torch.tensor(np.asarray(image)).permute(2, 0, 1).float()  # (3, H, W); a copy: PIL arrays are read-only
    height, width = x.shape[-2:]
    lo, hi, weight = _taps(height, size)
    x = x[:, lo] * (1 - weight)[:, None] + x[:, hi] * weight[:, None]  # (3, size, W)
    lo, hi, weight = _taps(width, size)
    return x[:, :, lo] * (1 - weight) + x[:, :, hi] * weight  # (3, size, size)


@torch.no_grad()
def inception_features(
    detector: torch.nn.Module,
    images: Iterable[np.ndarray],
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(N, F) float64 pool features (F = 2048 for the real network) of uint8 (H, W, 3) images of any sizes."""
    chunks: list[torch.Tensor] = []  # (B, F) float64 features per flushed batch
    batch: list[torch.Tensor] = []  # (3, 299, 299) float32 images waiting

    def flush() -> None:
        x = torch.stack(batch).to(device)  # (B, 3, 299, 299) float32 in [0, 255]
        try:
            features = detector(x, return_features=True)
        except Exception as error:  # TorchScript reports a wrong signature as a RuntimeError
            raise WeightsError(
                f"the --inception network failed on a (B, 3, 299, 299) batch with return_features=True "
                f"({type(error).__name__}: {error}); expected NVIDIA's {INCEPTION_FILE}"
            ) from error
        if features.ndim != 2 or len(features) != len(batch):
            raise WeightsError(f"the --inception network returned shape {tuple(features.shape)}, expected (N, 2048)")
        chunks.append(features.double().cpu())
        batch.clear()

    for image in images:
        batch.append(resize_for_inception(image))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not chunks:
        return torch.zeros(0, 0, dtype=torch.float64)
    return torch.cat(chunks)
