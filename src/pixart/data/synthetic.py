"""The shapes world: procedural scenes of 1 to 9 objects on a plain background, with exact captions.

It is the project's embedded default data set, small enough to train a tiny PixArt on a laptop CPU
while keeping prompt following measurable: every image comes with its scene, so colour, shape, size,
position and attribute binding can be checked exactly (see pixart.evaluate.probe).

A scene places each object at the centre of one cell of a 3x3 grid (distinct cells per scene), so the
same scene renders at any canvas size and aspect. Object sizes are relative to the shorter side of a
cell, so circles stay round on non-square canvases. Edges are anti-aliased by 4x4 supersampling.

Rendering is batched: the coverage mask of every (shape, size, cell) is computed once per canvas size
and cached, and a batch of scenes is composited with a few vectorised blends (one per object slot).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

# Bump when the rendering changes in a way the tables below do not show; the probe cache keys on it.
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

_SUPERSAMPLE = 4
_SHAPE_INDEX = {name: i for i, name in enumerate(SHAPES)}
_COLOR_NAMES = tuple(COLORS)
_COLOR_INDEX = {name: i for i, name in enumerate(_COLOR_NAMES)}
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_BACKGROUND_INDEX = {name: i for i, name in enumerate(_BACKGROUND_NAMES)}
_SIZE_INDEX = {name: i for i, name in enumerate(SIZES)}
_POSITION_INDEX = {name: i for i, name in enumerate(POSITIONS)}
_COLOR_RGB = np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.float32)  # (C, 3)
_BACKGROUND_RGB = np.array([BACKGROUNDS[b] for b in _BACKGROUND_NAMES], dtype=np.float32)  # (B, 3)
# Seed-stream tags: evaluation prompts come from streams that training seeds (plain ints) never reach.
_SINGLE_PROMPT_STREAM = 0x5A11
_PAIR_PROMPT_STREAM = 0x5A12


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


# --- rendering ---------------------------------------------------------------------------------------


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u right, v down), in units of the object's half extent, lie inside `shape`."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        # Slightly smaller than its bounding box so its area stays close to the circle's.
        return (au <= 0.85) & (av <= 0.85)
    if shape == "triangle":
        # Apex up at v = -1, base at v = 0.8 spanning u in [-1, 1].
        return (v <= 0.8) & (au <= (v + 1.0) / 1.8)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return ((au <= 1.0) & (av <= 0.33)) | ((au <= 0.33) & (av <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=8)
def _coverage_masks(height: int, width: int) -> np.ndarray:
    """(S, Z, 9, H, W) float32 anti-aliased coverage of each shape, size and cell on an H x W canvas."""
    masks = np.zeros((len(SHAPES), len(SIZES), len(POSITIONS), height, width), dtype=np.float32)
    cell_h, cell_w = height / 3, width / 3
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE  # sample points inside a pixel
    for cell in range(len(POSITIONS)):
        row, col = divmod(cell, 3)
        cy, cx = (row + 0.5) * cell_h, (col + 0.5) * cell_w
        for z, size in enumerate(SIZES):
            r = SIZE_FRACTIONS[size] * min(cell_h, cell_w) / 2
            # Only the object's bounding box needs sampling; pixel i covers [i, i + 1).
            y0, y1 = max(0, int(np.floor(cy - r))), min(height, int(np.ceil(cy + r)))
            x0, x1 = max(0, int(np.floor(cx - r))), min(width, int(np.ceil(cx + r)))
            v = ((np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1) - cy) / r  # (ny * ss,)
            u = ((np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1) - cx) / r  # (nx * ss,)
            for s, shape in enumerate(SHAPES):
                inside = _inside(shape, u[None, :], v[:, None])  # (ny * ss, nx * ss)
                coverage = inside.reshape(y1 - y0, _SUPERSAMPLE, x1 - x0, _SUPERSAMPLE).mean(axis=(1, 3))
                masks[s, z, cell, y0:y1, x0:x1] = coverage
    masks.setflags(write=False)
    return masks


def _render_layout(layout: _Layout, height: int, width: int, chunk: int = 1024) -> np.ndarray:
    """(N, H, W, 3) uint8 images of a batch of scenes."""
    if height < 3 or width < 3:
        raise ValueError(f"canvas must be at least 3x3, got {height}x{width}")
    masks = _coverage_masks(height, width).reshape(-1, height * width)  # (S * Z * 9, HW)
    n = len(layout.background)
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        bg = _BACKGROUND_RGB[layout.background[sl]]  # (n, 3)
        index = (layout.shape[sl] * len(SIZES) + layout.size[sl]) * len(POSITIONS) + layout.cell[sl]  # (n, K)
        alpha = masks[index]  # (n, K, HW)
        # Objects sit in distinct cells and never leave them, so the image is the background plus each
        # object's coverage times its colour offset: one small batched matmul over the object slots.
        offset = (_COLOR_RGB[layout.color[sl]] - bg[:, None, :]) * layout.valid[sl, :, None]  # (n, K, 3)
        img = np.matmul(alpha.transpose(0, 2, 1), offset)  # (n, HW, 3)
        img += bg[:, None, :]
        np.rint(img, out=img)
        out[sl] = img.reshape(-1, height, width, 3)
    return out


def render(scene: Scene, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 image of one scene."""
    return _render_layout(_layout_from_scenes([scene]), height, width)[0]


def render_batch(scenes: list[Scene], height: int, width: int) -> np.ndarray:
    """(N, H, W, 3) uint8 images of a list of scenes."""
    return _render_layout(_layout_from_scenes(scenes), height, width)


# --- captions and labels -----------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def short_caption(scene: Scene) -> str:
    """Alt-text style: the first object's colour and shape only, e.g. "a red circle"."""
    o = scene.objects[0]
    return f"{_article(o.color)} {o.color} {o.shape}"


def _describe(o: ShapeObject) -> str:
    return f"a {o.size} {o.color} {o.shape} {POSITION_PHRASES[o.position]}"


def dense_caption(scene: Scene) -> str:
    """Every object with size, colour, shape and position, in scene order, then the background.

    "a large red circle at the top left, a small blue square in the centre and a small white cross on
    the right, on a grey background"
    """
    parts = [_describe(o) for o in scene.objects]
    objects = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{objects}, on {_article(scene.background)} {scene.background} background"


_OBJECT_PATTERN = re.compile(
    r"a (?P<size>{}) (?P<color>{}) (?P<shape>{}) (?P<position>{})".format(
        "|".join(SIZES),
        "|".join(_COLOR_NAMES),
        "|".join(SHAPES),
        "|".join(re.escape(p) for p in POSITION_PHRASES.values()),
    )
)
_PHRASE_POSITION = {phrase: name for name, phrase in POSITION_PHRASES.items()}


def parse_dense_caption(caption: str) -> Scene:
    """The scene a dense caption describes (the inverse of dense_caption)."""
    match = re.fullmatch(r"(?P<objects>.+), on an? (?P<background>\w+) background", caption)
    if match is None:
        raise ValueError(f"not a dense caption: {caption!r}")
    pieces = re.split(r", | and ", match["objects"])
    objects = []
    for piece in pieces:
        found = _OBJECT_PATTERN.fullmatch(piece)
        if found is None:
            raise ValueError(f"cannot parse object {piece!r} in {caption!r}")
        position = _PHRASE_POSITION[found["position"]]
        objects.append(ShapeObject(found["shape"], found["color"], found["size"], position))
    return Scene(tuple(objects), match["background"])


def class_label(scene: Scene) -> int:
    """Class for class-conditional training: shape x colour of the first object, in [0, NUM_CLASSES)."""
    o = scene.objects[0]
    return _SHAPE_INDEX[o.shape] * len(_COLOR_NAMES) + _COLOR_INDEX[o.color]


def class_name(label: int) -> str:
    """The short caption of a class label, e.g. "a red circle"."""
    shape, color = divmod(label, len(_COLOR_NAMES))
    return f"{_article(_COLOR_NAMES[color])} {_COLOR_NAMES[color]} {SHAPES[shape]}"


def scene_to_dict(scene: Scene) -> dict:
    return {
        "objects": [
            {"shape": o.shape, "color": o.color, "size": o.size, "position": o.position} for o in scene.objects
        ],
        "background": scene.background,
    }


def scene_from_dict(data: dict) -> Scene:
    return Scene(tuple(ShapeObject(**o) for o in data["objects"]), data["background"])


# --- bulk generation and prompt sets -----------------------------------------------------------------


@dataclass(frozen=True)
class ShapesDataset:
    images: np.ndarray  # (N, H, W, 3) uint8
    scenes: list[Scene]
    short_captions: list[str]
    dense_captions: list[str]
    labels: np.ndarray  # (N,) int64, see class_label

    def __len__(self) -> int:
        return len(self.scenes)


def make_dataset(
    num_images: int, seed: int, height: int, width: int, min_objects: int = 1, max_objects: int = 3
) -> ShapesDataset:
    """`num_images` random scenes rendered at H x W with their captions; identical for identical seeds."""
    layout = _sample_layout(np.random.default_rng(seed), num_images, min_objects, max_objects)
    scenes = _scenes_from_layout(layout)
    first = layout.valid.argmax(axis=1)  # slot of the first object (slot 0: every scene has one)
    rows = np.arange(num_images)
    labels = layout.shape[rows, first] * len(_COLOR_NAMES) + layout.color[rows, first]  # (N,)
    return ShapesDataset(
        images=_render_layout(layout, height, width),
        scenes=scenes,
        short_captions=[short_caption(s) for s in scenes],
        dense_captions=[dense_caption(s) for s in scenes],
        labels=labels.astype(np.int64),
    )


def _random_object(rng: np.random.Generator, color: str, shape: str, position: str) -> ShapeObject:
    return ShapeObject(shape, color, SIZES[rng.integers(len(SIZES))], position)


def single_object_prompts(n: int, seed: int = 0) -> list[tuple[Scene, str]]:
    """(scene, dense caption) pairs of one object each, from a seed stream training never uses."""
    rng = np.random.default_rng([_SINGLE_PROMPT_STREAM, seed])
    prompts = []
    for _ in range(n):
        background = _BACKGROUND_NAMES[rng.integers(len(_BACKGROUND_NAMES))]
        colors = allowed_colors(background)
        obj = _random_object(
            rng, colors[rng.integers(len(colors))], SHAPES[rng.integers(len(SHAPES))], POSITIONS[rng.integers(9)]
        )
        scene = Scene((obj,), background)
        prompts.append((scene, dense_caption(scene)))
    return prompts


def two_object_prompts(n: int, seed: int = 0) -> list[tuple[Scene, str]]:
    """(scene, dense caption) pairs of two objects with different colours AND different shapes.

    Both attributes differ so that swapping them between the objects (a binding error) is visible.
    """
    rng = np.random.default_rng([_PAIR_PROMPT_STREAM, seed])
    prompts = []
    for _ in range(n):
        background = _BACKGROUND_NAMES[rng.integers(len(_BACKGROUND_NAMES))]
        colors = allowed_colors(background)
        c1, c2 = rng.choice(len(colors), size=2, replace=False)
        s1, s2 = rng.choice(len(SHAPES), size=2, replace=False)
        p1, p2 = rng.choice(len(POSITIONS), size=2, replace=False)
        objects = (
            _random_object(rng, colors[c1], SHAPES[s1], POSITIONS[p1]),
            _random_object(rng, colors[c2], SHAPES[s2], POSITIONS[p2]),
        )
        scene = Scene(objects, background)
        prompts.append((scene, dense_caption(scene)))
    return prompts


def main(argv: list[str] | None = None) -> None:
    """Print the generation speed at 32x32 (one process) and optionally save a contact sheet."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--sheet", default=None, help="write 32 example scenes at 48x64 to this PNG")
    args = parser.parse_args(argv)
    make_dataset(64, 0, 32, 32)  # warm the mask cache
    start = time.perf_counter()
    data = make_dataset(20000, 0, 32, 32)
    elapsed = time.perf_counter() - start
    print(f"{len(data) / elapsed:,.0f} images/s at 32x32 (with scenes and captions)")
    if args.sheet:
        from PIL import Image

        sheet = make_dataset(32, 1, 48, 64)
        grid = sheet.images.reshape(4, 8, 48, 64, 3).transpose(0, 2, 1, 3, 4).reshape(4 * 48, 8 * 64, 3)
        Image.fromarray(grid).resize((8 * 64 * 3, 4 * 48 * 3), Image.NEAREST).save(args.sheet)
        print("\n".join(sheet.dense_captions[:8]))


if __name__ == "__main__":
    main()
