"""Captions, class labels and bulk generation for the shapes world (scenes in pixart.data.synthetic).

Dense captions name every object exactly and parse back into their scene; short captions and class
labels name only the first object. make_dataset renders batches of random scenes with all of these;
the evaluation prompt sets come from seed streams that training never reaches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pixart.data.synthetic import (
    _BACKGROUND_NAMES,
    _COLOR_INDEX,
    _COLOR_NAMES,
    _SHAPE_INDEX,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    _sample_layout,
    _scenes_from_layout,
    allowed_colors,
)
from pixart.data.synthetic_render import _render_layout

# Seed-stream tags: evaluation prompts come from streams that training seeds (plain ints) never reach.
_SINGLE_PROMPT_STREAM = 0x5A11
_PAIR_PROMPT_STREAM = 0x5A12


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
        Image.fromarray(grid).resize((8 * 64 * 3, 4 * 48 * 3), Image.Resampling.NEAREST).save(args.sheet)
        print("\n".join(sheet.dense_captions[:8]))


if __name__ == "__main__":
    main()
