"""The shapes world: procedural scenes of 1 to 9 objects on a plain background, with exact captions.

It is the project's embedded default data set, small enough to train a tiny PixArt on a laptop CPU
while keeping prompt following measurable: every image comes with its scene, so colour, shape, size,
position and attribute binding can be checked exactly (see pixart.evaluate.probe).

A scene places each object at the centre of one cell of a 3x3 grid (distinct cells per scene), so the
same scene renders at any canvas size and aspect. Object sizes are relative to the shorter side of a
cell, so circles stay round on non-square canvases.

This module holds the world itself: its vocabulary and the tables that define its images (and their
fingerprint), the scene model, its dict form, and scene sampling. Turning scenes into pixels lives in
pixart.data.synthetic_render; captions, class labels, data sets and prompt sets in
pixart.data.synthetic_dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

# Bump when the rendering (pixart.data.synthetic_render) changes in a way the tables below do not show;
# the probe cache keys on it.
WORLD_VERSION = "shapes-1"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
# Pairwise RGB distances are all >= 80, so colours stay apart after blurring and resampling.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 225, 50),
    "purple": (150, 60, 200),
    "orange": (240, 130, 20),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
    "white": (235, 235, 235),
}
SIZES: tuple[str, ...] = ("small", "large")
# Object extent (bounding-box side) as a fraction of the shorter side of a cell. Large objects leave a
# margin so neighbours never touch; small ones stay about 6 px wide at 32x32, enough to tell shapes apart.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.6, "large": 0.9}
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
NUM_CLASSES = len(SHAPES) * len(COLORS)  # class_label: shape x colour of the first object
MIN_CONTRAST = 80.0  # an object colour closer than this (RGB distance) to the background is not used on it

# Edges are anti-aliased by this many samples per pixel side; kept here with the other tables that
# define the images, so world_fingerprint covers it.
_SUPERSAMPLE = 4
_SHAPE_INDEX = {name: i for i, name in enumerate(SHAPES)}
_COLOR_NAMES = tuple(COLORS)
_COLOR_INDEX = {name: i for i, name in enumerate(_COLOR_NAMES)}
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_BACKGROUND_INDEX = {name: i for i, name in enumerate(_BACKGROUND_NAMES)}
_SIZE_INDEX = {name: i for i, name in enumerate(SIZES)}
_POSITION_INDEX = {name: i for i, name in enumerate(POSITIONS)}


def _contrast(color: str, background: str) -> bool:
    distance = np.linalg.norm(np.subtract(COLORS[color], BACKGROUNDS[background], dtype=np.float64))
    return color != background and bool(distance >= MIN_CONTRAST)


# (colour, background) pairs that may meet; a set, because Scene checks it for every object it builds.
_CONTRASTING = frozenset((c, b) for c in COLORS for b in BACKGROUNDS if _contrast(c, b))


def allowed_colors(background: str) -> tuple[str, ...]:
    """Object colours that may appear on `background` (white objects never sit on white)."""
    return tuple(c for c in _COLOR_NAMES if (c, background) in _CONTRASTING)


# (B, C) table of allowed colour indices per background, padded with -1, and how many each has.
_ALLOWED = np.full((len(_BACKGROUND_NAMES), len(_COLOR_NAMES)), -1, dtype=np.int64)
for _b, _name in enumerate(_BACKGROUND_NAMES):
    _ids = [_COLOR_INDEX[c] for c in allowed_colors(_name)]
    _ALLOWED[_b, : len(_ids)] = _ids
_NUM_ALLOWED = (_ALLOWED >= 0).sum(axis=1)  # (B,)


def world_fingerprint() -> str:
    """A short hash of everything that defines the world's images; changes whenever they would."""
    spec = {
        "version": WORLD_VERSION,
        "shapes": SHAPES,
        "colors": COLORS,
        "backgrounds": BACKGROUNDS,
        "sizes": SIZE_FRACTIONS,
        "positions": POSITIONS,
        "supersample": _SUPERSAMPLE,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for value, names, what in (
            (self.shape, _SHAPE_INDEX, "shape"),
            (self.color, _COLOR_INDEX, "colour"),
            (self.size, _SIZE_INDEX, "size"),
            (self.position, _POSITION_INDEX, "position"),
        ):
            if value not in names:
                raise ValueError(f"unknown {what} {value!r}; expected one of {tuple(names)}")


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: str

    def __post_init__(self) -> None:
        if self.background not in _BACKGROUND_INDEX:
            raise ValueError(f"unknown background {self.background!r}; expected one of {_BACKGROUND_NAMES}")
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        positions = [o.position for o in self.objects]
        if len(set(positions)) != len(positions):
            raise ValueError(f"objects must occupy distinct cells, got {positions}")
        for o in self.objects:
            if (o.color, self.background) not in _CONTRASTING:
                raise ValueError(f"a {o.color} object does not show on a {self.background} background")


def scene_to_dict(scene: Scene) -> dict:
    return {
        "objects": [
            {"shape": o.shape, "color": o.color, "size": o.size, "position": o.position} for o in scene.objects
        ],
        "background": scene.background,
    }


def scene_from_dict(data: dict) -> Scene:
    return Scene(tuple(ShapeObject(**o) for o in data["objects"]), data["background"])


# --- sampling ----------------------------------------------------------------------------------------


class _Layout(NamedTuple):
    """A batch of scenes as index arrays; object slot k of scene i is used where valid[i, k]."""

    shape: np.ndarray  # (N, K) int
    color: np.ndarray  # (N, K) int
    size: np.ndarray  # (N, K) int
    cell: np.ndarray  # (N, K) int
    valid: np.ndarray  # (N, K) bool
    background: np.ndarray  # (N,) int


def _sample_layout(rng: np.random.Generator, n: int, min_objects: int, max_objects: int) -> _Layout:
    if not 1 <= min_objects <= max_objects <= len(POSITIONS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 9, got {min_objects}, {max_objects}")
    K = max_objects
    count = rng.integers(min_objects, max_objects + 1, size=n)  # (N,)
    background = rng.integers(0, len(_BACKGROUND_NAMES), size=n)  # (N,)
    cell = np.argsort(rng.random((n, len(POSITIONS))), axis=1)[:, :K]  # (N, K) distinct cells per row
    shape = rng.integers(0, len(SHAPES), size=(n, K))  # (N, K)
    size = rng.integers(0, len(SIZES), size=(n, K))  # (N, K)
    # A uniform pick among the colours allowed on each scene's background.
    pick = (rng.random((n, K)) * _NUM_ALLOWED[background][:, None]).astype(np.int64)  # (N, K)
    color = _ALLOWED[background[:, None], pick]  # (N, K)
    valid = np.arange(K)[None, :] < count[:, None]  # (N, K)
    return _Layout(shape, color, size, cell, valid, background)


@lru_cache(maxsize=1)
def _object_table() -> list[ShapeObject]:
    """Every possible object (630 of them), indexed like _object_index; building scenes reuses them."""
    return [
        ShapeObject(shape, color, size, position)
        for shape in SHAPES
        for color in _COLOR_NAMES
        for size in SIZES
        for position in POSITIONS
    ]


def _object_index(layout: _Layout) -> np.ndarray:
    """(N, K) index of each slot's object in _object_table."""
    index = (layout.shape * len(_COLOR_NAMES) + layout.color) * len(SIZES) + layout.size
    return index * len(POSITIONS) + layout.cell


def _scenes_from_layout(layout: _Layout) -> list[Scene]:
    table = _object_table()
    index = _object_index(layout).tolist()
    valid = layout.valid.tolist()
    backgrounds = [_BACKGROUND_NAMES[b] for b in layout.background.tolist()]
    return [
        Scene(tuple(table[j] for j, ok in zip(row, ok_row) if ok), background)
        for row, ok_row, background in zip(index, valid, backgrounds)
    ]


def _layout_from_scenes(scenes: list[Scene]) -> _Layout:
    n, K = len(scenes), max(len(s.objects) for s in scenes)
    arrays = {key: np.zeros((n, K), dtype=np.int64) for key in ("shape", "color", "size", "cell")}
    valid = np.zeros((n, K), dtype=bool)
    for i, scene in enumerate(scenes):
        for k, o in enumerate(scene.objects):
            arrays["shape"][i, k] = _SHAPE_INDEX[o.shape]
            arrays["color"][i, k] = _COLOR_INDEX[o.color]
            arrays["size"][i, k] = _SIZE_INDEX[o.size]
            arrays["cell"][i, k] = _POSITION_INDEX[o.position]
            valid[i, k] = True
    background = np.array([_BACKGROUND_INDEX[s.background] for s in scenes], dtype=np.int64)
    return _Layout(valid=valid, background=background, **arrays)


def random_scene(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 3) -> Scene:
    """A uniformly drawn scene: object count, distinct cells, shapes, sizes, background, then colours."""
    return _scenes_from_layout(_sample_layout(rng, 1, min_objects, max_objects))[0]
