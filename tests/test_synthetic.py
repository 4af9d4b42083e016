"""The shapes world: determinism, captions that match their scenes, layout at any canvas size."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pixart.data.synthetic import (
    BACKGROUNDS,
    COLORS,
    MIN_CONTRAST,
    NUM_CLASSES,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    allowed_colors,
    random_scene,
    scene_from_dict,
    scene_to_dict,
)
from pixart.data.synthetic_dataset import (
    class_label,
    class_name,
    dense_caption,
    make_dataset,
    parse_dense_caption,
    short_caption,
    single_object_prompts,
    two_object_prompts,
)
from pixart.data.synthetic_render import render, render_batch

CANVASES = [(32, 32), (48, 48), (48, 64), (64, 48)]


def cell_centre_pixel(position: str, height: int, width: int) -> tuple[int, int]:
    row, col = divmod(POSITIONS.index(position), 3)
    return int((row + 0.5) * height / 3), int((col + 0.5) * width / 3)


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(600, seed=7, height=32, width=32)


def test_make_dataset_is_deterministic_per_seed():
    a = make_dataset(200, seed=3, height=48, width=64)
    b = make_dataset(200, seed=3, height=48, width=64)
    c = make_dataset(200, seed=4, height=48, width=64)
    assert a.images.shape == (200, 48, 64, 3)
    assert a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.scenes == b.scenes
    assert a.short_captions == b.short_captions
    assert a.dense_captions == b.dense_captions
    assert a.dense_captions != c.dense_captions
    assert not np.array_equal(a.images, c.images)


def test_dataset_fields_agree_with_their_scenes(dataset):
    assert len(dataset) == 600
    for scene, short, dense, label in zip(
        dataset.scenes, dataset.short_captions, dataset.dense_captions, dataset.labels
    ):
        assert parse_dense_caption(dense) == scene
        assert short == short_caption(scene)
        first = scene.objects[0]
        assert re.fullmatch(rf"an? {first.color} {first.shape}", short)
        assert label == class_label(scene)
        assert class_name(label) == short


def test_dense_caption_wording():
    scene = Scene(
        (
            ShapeObject("circle", "red", "large", "top left"),
            ShapeObject("square", "blue", "small", "centre"),
        ),
        "grey",
    )
    assert dense_caption(scene) == (
        "a large red circle at the top left and a small blue square in the centre, on a grey background"
    )
    three = Scene((*scene.objects, ShapeObject("cross", "orange", "small", "right")), "black")
    assert dense_caption(three) == (
        "a large red circle at the top left, a small blue square in the centre and a small orange cross "
        "on the right, on a black background"
    )
    assert short_caption(three) == "a red circle"
    assert short_caption(Scene((three.objects[2],), "white")) == "an orange cross"
    assert parse_dense_caption(dense_caption(three)) == three


def test_class_labels_cover_shape_times_colour():
    labels = {class_label(Scene((ShapeObject(s, c, "small", "centre"),), "grey")) for s in SHAPES for c in COLORS}
    assert labels == set(range(NUM_CLASSES))
    assert len(SHAPES) * len(COLORS) == NUM_CLASSES


def test_scenes_use_distinct_cells_and_contrasting_colours(dataset):
    counts = set()
    for scene in dataset.scenes:
        positions = [o.position for o in scene.objects]
        assert len(set(positions)) == len(positions)
        counts.add(len(scene.objects))
        for o in scene.objects:
            assert o.color != scene.background
            assert o.color in allowed_colors(scene.background)
            assert np.linalg.norm(np.subtract(COLORS[o.color], BACKGROUNDS[scene.background])) >= MIN_CONTRAST
    assert counts == {1, 2, 3}
    assert "white" not in allowed_colors("white")
    # Every attribute value shows up.
    objects = [o for s in dataset.scenes for o in s.objects]
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.color for o in objects} == set(COLORS)
    assert {o.size for o in objects} == set(SIZES)
    assert {o.position for o in objects} == set(POSITIONS)
    assert {s.background for s in dataset.scenes} == set(BACKGROUNDS)


def test_invalid_scenes_are_rejected():
    obj = ShapeObject("circle", "red", "small", "top")
    with pytest.raises(ValueError, match="distinct cells"):
        Scene((obj, ShapeObject("square", "blue", "large", "top")), "grey")
    with pytest.raises(ValueError, match="does not show"):
        Scene((ShapeObject("circle", "white", "small", "top"),), "white")
    with pytest.raises(ValueError, match="unknown shape"):
        ShapeObject("hexagon", "red", "small", "top")
    with pytest.raises(ValueError, match="at least one"):
        Scene((), "grey")
    with pytest.raises(ValueError, match="min_objects"):
        random_scene(np.random.default_rng(0), min_objects=0)


def test_random_scene_respects_object_counts():
    rng = np.random.default_rng(0)
    counts = {len(random_scene(rng, 2, 4).objects) for _ in range(200)}
    assert counts == {2, 3, 4}
    assert len(random_scene(rng, 9, 9).objects) == 9


@pytest.mark.parametrize(("height", "width"), CANVASES)
def test_render_puts_each_object_in_its_cell(height, width):
    rng = np.random.default_rng(height * 100 + width)
    scenes = [random_scene(rng) for _ in range(50)]
    images = render_batch(scenes, height, width)
    assert images.shape == (50, height, width, 3)
    for scene, image in zip(scenes, images):
        np.testing.assert_array_equal(image, render(scene, height, width))
        taken = {o.position: o for o in scene.objects}
        for position in POSITIONS:
            y, x = cell_centre_pixel(position, height, width)
            expected = COLORS[taken[position].color] if position in taken else BACKGROUNDS[scene.background]
            np.testing.assert_array_equal(image[y, x], expected)
        # Corners are always background: objects never leave their cells.
        for y, x in [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1)]:
            np.testing.assert_array_equal(image[y, x], BACKGROUNDS[scene.background])


def test_dataset_images_are_renders_of_their_scenes():
    data = make_dataset(40, seed=1, height=48, width=64)
    np.testing.assert_array_equal(data.images, render_batch(data.scenes, 48, 64))


def foreground(image: np.ndarray, background: str) -> np.ndarray:
    return np.abs(image.astype(np.int32) - BACKGROUNDS[background]).sum(-1) > 0


@pytest.mark.parametrize(("height", "width"), [(48, 64), (64, 48), (96, 96)])
def test_same_scene_has_the_same_layout_at_any_size(height, width):
    """Each object's centroid, relative to the canvas, sits at its cell centre at every size."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        scene = random_scene(rng, 1, 1)
        (o,) = scene.objects
        row, col = divmod(POSITIONS.index(o.position), 3)
        for h, w in [(32, 32), (height, width)]:
            mask = foreground(render(scene, h, w), scene.background)
            ys, xs = np.nonzero(mask)
            # The triangle's centroid sits below its box centre, so allow a tenth of a cell.
            assert abs((ys.mean() + 0.5) / h - (row + 0.5) / 3) < 1 / 30
            assert abs((xs.mean() + 0.5) / w - (col + 0.5) / 3) < 1 / 30


def test_sizes_scale_with_the_canvas_and_keep_shapes_round():
    obj = ShapeObject("circle", "red", "large", "centre")
    small = ShapeObject("circle", "red", "small", "centre")
    area = {}
    for h, w in [(32, 32), (64, 64), (48, 64)]:
        for o in (obj, small):
            mask = foreground(render(Scene((o,), "grey"), h, w), "grey")
            ys, xs = np.nonzero(mask)
            # Round on every canvas: equal extents along both axes (within a pixel).
            assert abs((ys.max() - ys.min()) - (xs.max() - xs.min())) <= 1
            # Anti-aliased area: each pixel's coverage, read back from its blend of colour and background.
            delta = np.subtract(COLORS["red"], BACKGROUNDS["grey"])
            image = render(Scene((o,), "grey"), h, w).astype(np.float64) - BACKGROUNDS["grey"]
            area[h, w, o.size] = (image @ delta).sum() / (delta @ delta) / min(h, w) ** 2
    # Relative to the shorter side, the area does not depend on the canvas; large is clearly larger.
    assert area[32, 32, "large"] == pytest.approx(area[64, 64, "large"], rel=0.03)
    assert area[48, 64, "large"] == pytest.approx(area[64, 64, "large"], rel=0.03)
    assert area[64, 64, "large"] > 2 * area[64, 64, "small"]


def test_shapes_render_differently():
    images = [render(Scene((ShapeObject(s, "white", "small", "centre"),), "black"), 32, 32) for s in SHAPES]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i].astype(int) - images[j].astype(int)).sum() > 300


def test_scene_dict_round_trip_through_json(dataset):
    for scene in dataset.scenes[:50]:
        assert scene_from_dict(json.loads(json.dumps(scene_to_dict(scene)))) == scene


def test_prompt_sets_have_known_ground_truth():
    singles = single_object_prompts(100, seed=0)
    pairs = two_object_prompts(100, seed=0)
    assert singles == single_object_prompts(100, seed=0)
    assert pairs == two_object_prompts(100, seed=0)
    assert singles != single_object_prompts(100, seed=1)
    for scene, caption in singles:
        assert len(scene.objects) == 1
        assert parse_dense_caption(caption) == scene
    for scene, caption in pairs:
        a, b = scene.objects
        assert a.color != b.color
        assert a.shape != b.shape
        assert a.position != b.position
        assert parse_dense_caption(caption) == scene
    # Different streams from training: the same integer seed does not give the same scenes.
    training = make_dataset(100, seed=0, height=8, width=8, max_objects=1).scenes
    assert [s for s, _ in singles] != training
