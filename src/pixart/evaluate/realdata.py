"""The real-data suite: FID and CLIP score of a model's images for a prompt file, against reference images.

Prompts come from a text file (one a line) or a JSONL manifest (a caption field per row). Image k is made
with seed + k, one per prompt, in chunks, and each chunk is scored and dropped: only the features stay in
memory (2048 float64 numbers an image, about 0.5 GB a side for 30k images). FID compares the Inception
features (pixart.evaluate.inception) of the generated images with those of every readable image in the
reference folder; CLIP score pairs each image with its own prompt (pixart.evaluate.clipscore). Either
metric is skipped when its network is not given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from pixart.data.images import ImageSkipped, load_rgb
from pixart.data.items import InputError, Problem, is_utf8
from pixart.data.manifests import MANIFEST_SUFFIXES, manifest_rows
from pixart.data.sources import image_files
from pixart.evaluate.clipscore import ClipScorer, clip_score
from pixart.evaluate.frechet import frechet_distance
from pixart.evaluate.inception import inception_features
from pixart.files import text_lines
from pixart.generate import TextToImage
from pixart.generation_settings import Settings

PROMPT_FIELDS = ("caption", "prompt", "text", "alt")  # tried in this order when no field is named
# Structured files that are neither a manifest nor one prompt a line (PartiPrompts ships as a .tsv)
UNREAD_SUFFIXES = frozenset({".tsv", ".json", ".parquet", ".yaml", ".yml"})


class RealDataError(ValueError):
    """Prompts or reference images that cannot be used as given."""


def _prompt_from_row(row: dict, field: str | None, where: str) -> str:
    names = [field] if field else [name for name in PROMPT_FIELDS if name in row]
    if not names or not isinstance(row.get(names[0]), str):
        wanted = repr(field) if field else f"one of {list(PROMPT_FIELDS)}"
        raise RealDataError(f"{where}: no text field {wanted} (fields: {sorted(row)}); name one with --field")
    if not is_utf8(row[names[0]]):
        raise RealDataError(f"{where}: the {names[0]!r} field is not valid UTF-8")
    return row[names[0]]


def read_prompts(path: str | Path, field: str | None = None) -> list[str]:
    """Prompts from a .jsonl or .csv manifest (`field`, else the first of PROMPT_FIELDS) or a text file (one
    a line).

    Blank prompts are left out: neither metric means anything for an empty caption.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts: no file at {path}")
    if path.suffix.lower() in UNREAD_SUFFIXES:  # read a line a prompt, the header and columns would be prompts
        parti = (
            f" (PartiPrompts: cut -f1 {path.name} | tail -n +2 > prompts.txt)" if path.suffix.lower() == ".tsv" else ""
        )
        raise RealDataError(
            f"--prompts {path}: a {path.suffix} file is not read (one prompt a line would take its header, brackets "
            f"or other columns as prompts); give a text file of one prompt a line or a JSONL or CSV manifest{parti}"
        )
    manifest = path.suffix.lower() in MANIFEST_SUFFIXES  # as `pixart prepare` reads them
    if field is not None and not manifest:  # it would be ignored
        raise RealDataError(f"--field picks a field of a JSONL or CSV manifest; --prompts {path} is one prompt a line")
    if manifest:
        prompts = []
        try:
            rows = manifest_rows(path)
        except InputError as error:
            raise RealDataError(str(error)) from None
        for number, row in rows:
            if isinstance(row, Problem):
                raise RealDataError(f"{path}:{number}: {row.message}")
            prompts.append(_prompt_from_row(row, field, f"{path}:{number}"))
    else:
        try:
            prompts = text_lines(path, encoding=None)  # UTF-8, or UTF-16 where its byte-order mark says so
        except UnicodeDecodeError as error:
            raise RealDataError(
                f"--prompts {path} is not UTF-8 text (byte {error.start}; nor UTF-16 with a byte-order mark): "
                "save it as UTF-8"
            ) from None
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise RealDataError(f"--prompts {path} holds no prompts")
    return prompts


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively, hidden ones left out), sorted, and links named as images whose
    target is gone: reading them reports them as skipped (left out here, they vanished without a count)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--real: no folder at {folder}")
    broken_links: list[Path] = []
    return sorted(image_files(folder, broken_links) + broken_links)


def centre_crop_to_aspect(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The largest centred box of a (H, W, 3) image with the aspect height:width (Inception then resizes it):
    a 4:3 photo against square generated images would be squashed into the square, and FID would measure
    the squashing. The side cut is rounded, the box centred as torchvision's CenterCrop centres it."""
    rows, cols = image.shape[:2]
    if rows * width > cols * height:  # taller than the aspect: cut rows
        keep_rows, keep_cols = max(1, round(cols * height / width)), cols
    else:
        keep_rows, keep_cols = rows, max(1, round(rows * width / height))
    top, left = int(round((rows - keep_rows) / 2.0)), int(round((cols - keep_cols) / 2.0))
    return image[top : top + keep_rows, left : left + keep_cols]


def read_images(
    paths: Iterable[Path], skipped: list[dict], crop_to: tuple[int, int] | None = None
) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) arrays of the readable images, centre-cropped to `crop_to`'s (height, width) aspect when
    given; the others are appended to `skipped` with the reason and their absolute path (the report is read
    elsewhere)."""
    for path in paths:
        try:
            image = np.asarray(load_rgb(path))  # (H, W, 3) uint8
        except ImageSkipped as error:
            skipped.append({"path": os.path.abspath(path), "reason": error.reason, "message": error.message})
            continue
        yield image if crop_to is None else centre_crop_to_aspect(image, *crop_to)


def small_sample_warning(generated: int, real: int, dims: int) -> str | None:
    """FID from `dims` images or fewer (2048 for Inception) is biased upward, and by an amount that depends on
    the count: such a figure compares only with FIDs from as many images. (N images give a covariance of rank
    N - 1 at most: `dims` + 1 are the fewest with a full-rank one.)"""
    if min(generated, real) > dims:
        return None
    return (
        f"FID from {generated} generated and {real} reference images, no more than the {dims} feature dimensions "
        f"(their covariances are rank-deficient): it is biased upward and comparable only with FIDs from the same "
        f"numbers of images (use more than {dims}, as papers do with 10,000 to 30,000)"
    )


def real_suite(
    pipe: TextToImage,
    prompts: list[str],
    *,
    real_images: list[Path] | None = None,
    detector: torch.nn.Module | None = None,
    scorer: ClipScorer | None = None,
    settings: Settings | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    crop_real_to: tuple[int, int] | None = None,
) -> dict:
    """FID against `real_images` (when `detector` is given) and CLIP score (when `scorer` is), one image per prompt.

    `crop_real_to`: the generated images' (height, width), whose aspect the reference images are centre-cropped
    to before Inception resizes both (None: each reference image whole, squashed to Inception's square)."""
    from tqdm.auto import tqdm

    if detector is None and scorer is None:
        raise ValueError("nothing to compute: give an Inception detector, a CLIP scorer or both")
    result: dict = {"fid": None, "clip_score": None, "images": {"generated": len(prompts)}}
    if detector is not None:
        skipped: list[dict] = []
        # The reference set first: a broken detector or folder fails before the long part.
        real_features = inception_features(
            detector,
            read_images(tqdm(real_images or [], "reference images", disable=not progress), skipped, crop_real_to),
            batch_size=batch_size,
            device=device,
        )
        result["images"].update(real=len(real_features), real_skipped=skipped)
        if len(real_features) < 2 or len(prompts) < 2:
            raise RealDataError(
                f"FID needs at least 2 images on each side; got {len(real_features)} readable reference images "
                f"and {len(prompts)} prompts"
            )
    generated_features, pair_scores = [], []
    for start in tqdm(range(0, len(prompts), batch_size), "generating", disable=not progress):
        chunk = prompts[start : start + batch_size]
        results = pipe.generate(chunk, settings, seed=seed + start, batch_size=batch_size, progress=False)
        if start == 0:
            result["settings"] = results[0].settings
        if detector is not None:
            arrays = [np.asarray(r.image.convert("RGB")) for r in results]
            generated_features.append(inception_features(detector, arrays, batch_size=batch_size, device=device))
        if scorer is not None:
            pair_scores.append(scorer.pair_scores([r.image for r in results], chunk))
    if detector is not None:
        result["fid"] = frechet_distance(torch.cat(generated_features), real_features)
        result["fid_warning"] = small_sample_warning(len(prompts), len(real_features), real_features.shape[1])
    if scorer is not None:
        result["clip_score"] = clip_score(torch.cat(pair_scores))
    return result
