"""Aspect-ratio buckets: the official PixArt-alpha table, its derivations, and snapping sizes to it.

A bucket key is the rounded height/width ratio as a string ('0.57', '1.0', '4.0'); its value is the
(height, width) in pixels that images of about that ratio are resized and centre-cropped to. The
official 1024 px table is written out once; every other table (512, 256, the inference subsets, the
tiny resolutions of the CPU demo) is derived from it, so the numbers cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from types import MappingProxyType

# The official multi-aspect table of PixArt-alpha (diffusion/data/datasets/utils.py), key -> (H, W).
# Every side is a multiple of 64, so the 512 and 256 tables (halves and quarters) are exact integers.
ASPECT_RATIO_1024: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "0.25": (512, 2048),
        "0.26": (512, 1984),
        "0.27": (512, 1920),
        "0.28": (512, 1856),
        "0.32": (576, 1792),
        "0.33": (576, 1728),
        "0.35": (576, 1664),
        "0.4": (640, 1600),
        "0.42": (640, 1536),
        "0.48": (704, 1472),
        "0.5": (704, 1408),
        "0.52": (704, 1344),
        "0.57": (768, 1344),
        "0.6": (768, 1280),
        "0.68": (832, 1216),
        "0.72": (832, 1152),
        "0.78": (896, 1152),
        "0.82": (896, 1088),
        "0.88": (960, 1088),
        "0.94": (960, 1024),
        "1.0": (1024, 1024),
        "1.07": (1024, 960),
        "1.13": (1088, 960),
        "1.21": (1088, 896),
        "1.29": (1152, 896),
        "1.38": (1152, 832),
        "1.46": (1216, 832),
        "1.67": (1280, 768),
        "1.75": (1344, 768),
        "2.0": (1408, 704),
        "2.09": (1472, 704),
        "2.4": (1536, 640),
        "2.5": (1600, 640),
        "2.89": (1664, 576),
        "3.0": (1728, 576),
        "3.11": (1792, 576),
        "3.62": (1856, 512),
        "3.75": (1920, 512),
        "3.88": (1984, 512),
        "4.0": (2048, 512),
    }
)

# Keys the official *_TEST tables (and diffusers' ASPECT_RATIO_*_BIN) leave out: inference uses 33 buckets.
TRAIN_ONLY_KEYS: frozenset[str] = frozenset({"0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88"})

BASE_RESOLUTION = 1024
OFFICIAL_RESOLUTIONS = (256, 512, 1024)  # the official tables' base sizes, which `pixart prepare` prepares at


def _canonical_keys(keys: Sequence[str], available: Sequence[str]) -> list[str]:
    """Map each requested key to the table key of the same value ('1' and '1.00' name '1.0')."""
    by_value = {Fraction(k): k for k in available}
    chosen = []
    for key in keys:
        try:
            value = Fraction(str(key).strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"bucket key {key!r} is not a number") from None
        if value not in by_value:
            raise ValueError(f"bucket key {key!r} is not in the table; choose from {', '.join(available)}")
        chosen.append(by_value[value])
    if not chosen:
        raise ValueError("keys must name at least one bucket")
    return chosen


def _round_to_multiple(side: int, resolution: int, multiple: int) -> int:
    """side * resolution / 1024 rounded to the nearest multiple (ties up), in exact integer arithmetic."""
    denominator = BASE_RESOLUTION * multiple
    units = (2 * side * resolution + denominator) // (2 * denominator)
    return max(1, units) * multiple


def bucket_table(
    resolution: int,
    *,
    inference: bool = False,
    multiple: int | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, tuple[int, int]]:
    """The bucket table for a base resolution: key -> (H, W), sorted by ratio.

    Each side is the 1024 table's side scaled by resolution / 1024 and rounded to the nearest `multiple`
    (ties round up; default 8 for resolutions >= 256, else 4). For 256, 512 and 1024 the scaled sides are
    already multiples of 16, so the default rounding changes nothing and the result is exactly the
    official ASPECT_RATIO_256/512/1024 (or *_TEST with `inference=True`, the 33 buckets diffusers bins to).

    `keys` keeps only the named buckets. They must be keys of the table (compared by value, so '1' names
    '1.0'): ratios such as '0.75' or '1.33' are not in it, and an inference table also lacks TRAIN_ONLY_KEYS.

    At very small resolutions neighbouring keys can round to the same size (at 32 px, '0.94' and '1.0'
    are both 32x32); they stay separate buckets. Pass `keys` for a coarser set, or bucket by size instead.
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if multiple is None:
        multiple = 8 if resolution >= 256 else 4
    if multiple <= 0:
        raise ValueError(f"multiple must be positive, got {multiple}")
    available = [k for k in ASPECT_RATIO_1024 if not (inference and k in TRAIN_ONLY_KEYS)]
    selected = set(_canonical_keys(keys, available)) if keys is not None else set(available)
    table = {}
    for key in sorted(selected, key=float):
        height, width = ASPECT_RATIO_1024[key]
        table[key] = (
            _round_to_multiple(height, resolution, multiple),
            _round_to_multiple(width, resolution, multiple),
        )
    return table


def inference_buckets(table: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]] | None:
    """The buckets a model trained on `table` generates at: a training table (every official key, as
    `pixart prepare` records) loses TRAIN_ONLY_KEYS, as official inference and diffusers' binning do, so the
    same request gets the same size however the weights are loaded; a table of other sizes stays as it is."""
    if table is None:
        return None
    train_only = TRAIN_ONLY_KEYS if table.keys() >= TRAIN_ONLY_KEYS else frozenset()
    return {key: list(hw) for key, hw in table.items() if key not in train_only}


# The official derived tables, as constants for readers who look for them by name.
ASPECT_RATIO_512: Mapping[str, tuple[int, int]] = MappingProxyType(bucket_table(512))
ASPECT_RATIO_256: Mapping[str, tuple[int, int]] = MappingProxyType(bucket_table(256))
ASPECT_RATIO_1024_TEST: Mapping[str, tuple[int, int]] = MappingProxyType(bucket_table(1024, inference=True))
ASPECT_RATIO_512_TEST: Mapping[str, tuple[int, int]] = MappingProxyType(bucket_table(512, inference=True))
ASPECT_RATIO_256_TEST: Mapping[str, tuple[int, int]] = MappingProxyType(bucket_table(256, inference=True))


def _check_size(height: float, width: float) -> None:
    if not (height > 0 and width > 0):
        raise ValueError(f"height and width must be positive, got {height}x{width}")


def closest_bucket(height: float, width: float, table: Mapping[str, tuple[int, int]]) -> tuple[str, tuple[int, int]]:
    """The (key, (H, W)) whose key is nearest to height / width: argmin |float(key) - h / w|.

    This is the rule of official training (get_closest_ratio) and of diffusers' resolution binning: it
    compares ratios, not log-ratios. On an exact tie the bucket that comes first in the table wins.
    """
    _check_size(height, width)
    if not table:
        raise ValueError("the bucket table is empty")
    keys = [float(k) for k in table]
    # Clamped to the table's range first, which picks the same key for every ratio: beyond the range the
    # extreme key is the nearest. Unclamped, a ratio past about 4e16 (or one overflowing to inf) was as far
    # from every key in floats, and the first key won: the widest bucket for the tallest request.
    ratio = min(max(height / width, min(keys)), max(keys))
    key = min(table, key=lambda k: abs(float(k) - ratio))
    return key, table[key]


def ratio_range(table: Mapping[str, tuple[int, int]]) -> tuple[Fraction, Fraction]:
    """The smallest and largest key of the table, as exact fractions (Fraction('0.25'), Fraction(4))."""
    if not table:
        raise ValueError("the bucket table is empty")
    values = [Fraction(k) for k in table]
    return min(values), max(values)


def ratio_in_range(height: int, width: int, table: Mapping[str, tuple[int, int]]) -> bool:
    """Whether min key <= height / width <= max key, compared exactly (no float rounding).

    For the full tables that is 0.25 <= h/w <= 4: a 512x2048 or 2048x512 image is in, 511x2048 and
    2049x512 are out. Official training drops only h/w > 4 (its metadata filter is `ratio <= 4`); we
    drop the mirror image below 0.25 as well, because cover-cropping a 0.1 image into the 0.25 bucket
    would throw away most of it.
    """
    _check_size(height, width)
    low, high = ratio_range(table)
    ratio = Fraction(height) / Fraction(width)
    return low <= ratio <= high


def parse_aspect(text: str) -> tuple[float, float]:
    """'H:W' -> (H, W) as positive floats, e.g. '9:16' -> (9.0, 16.0), '2.35:1' -> (2.35, 1.0).

    Height comes first, like the bucket keys (h / w): '16:9' is a tall image (ratio 1.78). Screen
    conventions write width first, so a command line should say which order it takes.
    """
    parts = text.strip().split(":")
    if len(parts) != 2:
        raise ValueError(f"aspect must look like H:W (e.g. 3:4), got {text!r}")
    try:
        height, width = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"aspect must look like H:W with numbers, got {text!r}") from None
    if not (0 < height < float("inf") and 0 < width < float("inf")):
        raise ValueError(f"aspect sides must be positive and finite, got {text!r}")
    return height, width


def snap_size(height: float, width: float, table: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """The bucket (H, W) to generate at for a requested size or aspect (closest ratio, any scale)."""
    return closest_bucket(height, width, table)[1]


def bucket_key(height: int, width: int) -> str:
    """The bucket name of a canvas: its height / width to two decimals without trailing zeros, one kept after
    the point ("0.67", "0.5", "2.0"), as the official table names them (a 2:1 canvas was "2")."""
    text = f"{height / width:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def bucket_table_of(sizes: list[tuple[int, int]]) -> dict[str, list[int]]:
    """{bucket_key: [height, width]} of canvas sizes, as dataset.json records its buckets."""
    return {bucket_key(h, w): [h, w] for h, w in sizes}


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' (height x width; 'X' and '×' work too, spaces are ignored) -> (512, 768)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"a size must look like 512x768 (height x width), got {text!r}")
    if max(len(match.group(1)), len(match.group(2))) > 9:  # int() refuses 4300 digits, with advice of its own
        raise ValueError("a side of a size has more than 9 digits: sizes are a few thousand pixels a side")
    height, width = int(match.group(1)), int(match.group(2))
    if not (height > 0 and width > 0):  # the pattern lets 0 through; no bucket has a ratio for it
        raise ValueError(f"each side of a size must be positive, got {text!r}")
    return height, width
