"""Details of the evaluation code and the app's request checks that the end-to-end tests cannot see.

The shapes suite's seeds, its scoring step and its Frechet reference; the probe's chunked forward and its
input clamping; the Inception feature check; the probe's position accuracy; the Frechet statistics' unbiased
covariance; and the page's limit on the number of images. The code handled each already; a mutation run
(twenty-third session) found that no test would have noticed it going wrong, which each docstring describes.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pixart.data import synthetic_dataset, synthetic_render
from pixart.data.synthetic import POSITIONS, SHAPES, SIZES, Scene, ShapeObject
from pixart.evaluate import suite
from pixart.evaluate.frechet import frechet_distance, gaussian_statistics
from pixart.evaluate.inception import inception_features
from pixart.evaluate.probe import COLOR_NAMES, DetectedObject, Probe, ProbeNet, to_probe_input
from pixart.evaluate.probe_training import probe_accuracy, scene_targets
from pixart.weights import WeightsError


class ScriptedProbe:
    """Reads back scripted detections, one list per read_with_features call, and gives random features."""

    def __init__(self, detections: list[list[list[DetectedObject]]]):
        self.detections = list(detections)
        self.generator = torch.Generator().manual_seed(0)

    def features(self, images) -> torch.Tensor:
        return torch.randn(len(images), 4, generator=self.generator)

    def read_with_features(self, images):
        return self.detections.pop(0), self.features(images)


def detected(obj: ShapeObject, position: str | None = None):
    """What the probe would report for `obj`, drawn in `position` (its own cell unless given)."""
    where = position or obj.position
    return DetectedObject(where, POSITIONS.index(where), obj.color, obj.shape, obj.size, 0.9)


def run_suite(monkeypatch, *, single: int, pairs: int, seed: int, swap_pairs: bool = False) -> tuple[dict, dict]:
    """shapes_suite with generation and the probe scripted: the scores, and what it generated and rendered."""
    single_set = synthetic_dataset.single_object_prompts(single, seed=seed)
    pair_set = synthetic_dataset.two_object_prompts(pairs, seed=seed)
    singles = [[detected(scene.objects[0])] for scene, _ in single_set]
    doubles = []
    for scene, _ in pair_set:
        a, b = scene.objects
        if swap_pairs:  # each object drawn in the other's cell
            doubles.append([detected(a, b.position), detected(b, a.position)])
        else:
            doubles.append([detected(a), detected(b)])
    seen: dict[str, list] = {"seeds": [], "rendered": []}

    def generate(pipe, prompts, settings, *, seed, batch_size, progress):
        seen["seeds"].append(seed)
        return np.zeros((len(prompts), 36, 36, 3), np.uint8)

    real_render = synthetic_render.render_batch

    def render(scenes, height, width):
        seen["rendered"].append(list(scenes))
        return real_render(scenes, height, width)

    monkeypatch.setattr(suite, "generate_arrays", generate)
    monkeypatch.setattr(synthetic_render, "render_batch", render)
    probe = ScriptedProbe([singles, doubles])
    scores = suite.shapes_suite(None, probe, single=single, pairs=pairs, seed=seed)  # type: ignore[arg-type]
    seen["pair_scenes"] = [scene for scene, _ in pair_set]
    return scores, seen


def test_two_object_images_are_made_from_their_own_seeds(monkeypatch):
    """The report says the two-object images came from seed + PAIR_SEED_OFFSET (what `pixart generate --seed`
    needs to make one again); had the suite generated them from the single-object seed, they would have
    reused the single images' noise and no seed in the report would remake them."""
    _, seen = run_suite(monkeypatch, single=4, pairs=4, seed=11)
    assert seen["seeds"] == [11, 11 + suite.PAIR_SEED_OFFSET]


def test_relation_needs_each_object_in_its_own_cell_where_binding_does_not(monkeypatch):
    """Every two-object image drawn with its objects swapped between their cells binds colour to shape
    rightly but gets the spatial relation wrong: a suite that scored relation as binding would have told the
    user the model places objects perfectly."""
    right, _ = run_suite(monkeypatch, single=4, pairs=6, seed=2)
    assert right["binding"] == 1.0 and right["relation"] == 1.0
    swapped, _ = run_suite(monkeypatch, single=4, pairs=6, seed=2, swap_pairs=True)
    assert swapped["binding"] == 1.0 and swapped["relation"] == 0.0


def test_the_frechet_reference_is_other_scenes_than_the_prompts(monkeypatch):
    """The Frechet reference must be renders of other scenes drawn alike: had its two-object scenes come from
    the prompts' own seed, the reference would hold the very scenes the baseline renders, and the baseline
    (and the generated images' distance) would read lower than for an independent reference."""
    _, seen = run_suite(monkeypatch, single=5, pairs=8, seed=4)
    prompts, reference = seen["rendered"][-2:]  # the prompts' scenes, then the reference's
    assert prompts[5:] == seen["pair_scenes"]
    assert len(reference) == 13
    assert not set(reference[:5]) & set(prompts[:5])
    assert not set(reference[5:]) & set(prompts[5:])


@pytest.mark.parametrize("count", [1, 3, 5])
def test_the_probes_chunked_forward_reads_every_image(count):
    """The probe reads images in chunks: a chunk loop that stopped one image short would drop the last image
    of N = k * chunk + 1 (its features and detections silently missing) and fail outright on one image."""
    torch.manual_seed(0)
    probe = Probe(ProbeNet())
    images = torch.randint(0, 256, (count, 36, 36, 3), dtype=torch.uint8)
    features, logits = probe._forward(images, chunk=2)
    assert features.shape[0] == logits.shape[0] == count
    for i in range(count):
        one_features, one_logits = probe._forward(images[i : i + 1], chunk=2)
        torch.testing.assert_close(features[i : i + 1], one_features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[i : i + 1], one_logits, rtol=1e-5, atol=1e-5)


def test_float_images_are_clamped_to_the_probes_range():
    """A sampler or VAE decoder overshoots [-1, 1] a little: unclamped, those pixels would reach the probe
    beyond anything it was trained on (a shapes-world render never leaves [-1, 1]) and could misread colours."""
    x = to_probe_input(torch.full((1, 3, 36, 36), 3.0))
    assert x.max().item() == 1.0
    x = to_probe_input(torch.full((1, 3, 48, 36), -3.0))  # resized too
    assert x.shape == (1, 3, 36, 36) and x.min().item() == -1.0


def test_a_detector_giving_the_wrong_number_of_rows_is_refused():
    """A file that is not NVIDIA's Inception may give (N + 1, 2048) or (1, 2048) rows for N images: taken as
    features, the FID would be computed on rows that belong to no image, with no error."""

    def one_row_too_many(x, return_features=False):
        return torch.zeros(len(x) + 1, 2048)

    images = [np.zeros((8, 8, 3), np.uint8) for _ in range(3)]
    with pytest.raises(WeightsError, match="returned shape"):
        inception_features(one_row_too_many, images, batch_size=2)


def test_position_accuracy_counts_whole_images():
    """Position accuracy is the share of images whose set of occupied cells is exactly right: counted per
    cell instead, one wrong cell out of 18 would read as 0.94 where half the images are wrong."""
    obj = ShapeObject("circle", "red", "small", "top left")
    scenes = [Scene((obj,), "white"), Scene((obj,), "white")]
    targets = scene_targets(scenes)
    occupancy = targets[..., 0].float()
    occupancy[1, 4] = 1.0  # image 1 also reads an object in the centre cell

    def one_hot(k: int, classes: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(targets[..., k].clamp(min=0), classes).float()

    predictions = {
        "occupancy": occupancy,
        "color": one_hot(1, len(COLOR_NAMES)),
        "shape": one_hot(2, len(SHAPES)),
        "size": one_hot(3, len(SIZES)),
    }
    probe = SimpleNamespace(predict=lambda images: predictions)
    result = probe_accuracy(probe, torch.zeros(2, 3, 36, 36), scenes)  # type: ignore[arg-type]
    assert result["position"] == 0.5
    assert result["occupancy"] == pytest.approx(17 / 18)
    assert result["color"] == result["shape"] == result["size"] == 1.0


def test_frechet_statistics_use_the_unbiased_covariance():
    """Standard FID tools (pytorch-fid, clean-fid) use np.cov's unbiased covariance (N - 1): a biased one
    shrinks every covariance by (N - 1) / N, and at the small N of a quick eval its distances would not be
    comparable with theirs."""
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3))
    b = rng.normal(loc=0.5, size=(6, 3)) * 1.5
    mu, sigma = gaussian_statistics(a)
    np.testing.assert_allclose(mu, a.mean(axis=0))
    np.testing.assert_allclose(sigma, np.cov(a, rowvar=False, ddof=1))
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(sigma_a @ sigma_b).real
    diff = a.mean(axis=0) - b.mean(axis=0)
    expected = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_the_api_is_refused_one_image_more_than_the_page_allows(tmp_path):
    """The page's slider stops at MAX_IMAGES but gradio's API passes any number: MAX_IMAGES + 1 images must
    be refused with the allowed range before anything is generated or any request folder is made."""
    from pixart.app import MAX_IMAGES, Studio

    calls = []

    def generate_batches(*args, **kwargs):
        calls.append(kwargs)
        raise AssertionError("nothing may be generated for a refused request")

    studio = Studio(SimpleNamespace(generate_batches=generate_batches), tmp_path)  # type: ignore[arg-type]
    reply = studio.request("a cat", None, "1.0", None, None, 2, 4.5, 5, False, MAX_IMAGES + 1)
    plain = reply.notice.replace("\\", "")
    assert "Cannot generate" in plain and f"must lie in 1..{MAX_IMAGES}, got {MAX_IMAGES + 1}" in plain
    assert not calls and not reply.files and list(tmp_path.iterdir()) == []
