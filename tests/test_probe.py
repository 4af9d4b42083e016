"""The attribute probe (a short training run, caching, scoring logic) and the Fréchet distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixart.data.synthetic import Scene, ShapeObject
from pixart.data.synthetic_dataset import make_dataset
from pixart.data.synthetic_render import render_batch
from pixart.evaluate import probe as probe_module
from pixart.evaluate import probe_training
from pixart.evaluate.frechet import frechet_distance, frechet_distance_from_statistics, gaussian_statistics
from pixart.evaluate.probe import PROBE_RESOLUTION, DetectedObject, Probe, ProbeNet, to_probe_input
from pixart.evaluate.probe_scores import (
    score_binding_detections,
    score_relation_detections,
    score_single,
    score_single_detections,
)
from pixart.evaluate.probe_training import default_cache_dir, load_or_train_probe, probe_accuracy, train_probe

# --- Fréchet distance --------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    got = frechet_distance_from_statistics(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    # |mu_a - mu_b|^2 + sum (sqrt(var_a) - sqrt(var_b))^2 for commuting (diagonal) covariances.
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert got == pytest.approx(expected, rel=1e-10)  # 1 + 6.25 + 4 + 1 + 0 = 12.25
    assert expected == pytest.approx(12.25)


def test_frechet_distance_matches_the_sqrtm_formula_for_full_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sigma_a, sigma_b = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    root = scipy_linalg.sqrtm(sigma_a @ sigma_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * root)
    assert frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(expected, rel=1e-8)
    # Symmetric in its arguments.
    assert frechet_distance_from_statistics(mu_b, sigma_b, mu_a, sigma_a) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_on_samples():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4)) * 2.0 + 3.0
    # Population value: 4 * 3^2 + 4 * (1 - 2)^2 = 40.
    assert frechet_distance(a, b) == pytest.approx(40.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(40.0, rel=0.03)
    mu, sigma = gaussian_statistics(a[:10])
    assert mu.shape == (4,)
    assert sigma.shape == (4, 4)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(a[:1], b)
    broken = a.copy()
    broken[3, 1] = np.nan  # numpy's error was "Eigenvalues did not converge", which names nothing
    with pytest.raises(ValueError, match="NaN or infinite"):
        frechet_distance(broken, b)


# --- scoring logic -----------------------------------------------------------------------------------


def det(position: str, color: str, shape: str, size: str = "small", confidence: float = 0.9) -> DetectedObject:
    return DetectedObject(position, 0, color, shape, size, confidence)


def one(color: str, shape: str, size: str = "small", position: str = "centre", background: str = "grey") -> Scene:
    return Scene((ShapeObject(shape, color, size, position),), background)


def test_score_single_uses_the_most_confident_detection():
    scenes = [
        one("red", "circle", "large", "top left"),
        one("blue", "square", "small", "centre"),
        one("green", "cross", "small", "right"),
        one("yellow", "diamond", "large", "bottom"),
    ]
    detections = [
        [det("top left", "red", "circle", "large")],  # all right
        # Judged by the more confident (left) one.
        [det("centre", "blue", "circle", "small", 0.6), det("left", "red", "square", "large", 0.99)],
        [],  # nothing drawn: all wrong
        [det("bottom", "yellow", "triangle", "large", 0.7)],  # shape wrong
    ]
    scores = score_single_detections(detections, scenes)
    assert scores == {"color": 0.5, "shape": 0.5, "size": 0.5, "position": 0.5}
    with pytest.raises(ValueError, match="detection lists"):
        score_single_detections(detections[:2], scenes)


def test_score_binding_needs_both_objects_with_colour_and_shape():
    pair = Scene(
        (ShapeObject("circle", "red", "large", "top left"), ShapeObject("square", "blue", "small", "right")), "grey"
    )
    red_circle, blue_square = det("bottom", "red", "circle"), det("top", "blue", "square")
    cases = [
        ([red_circle, blue_square], True),  # positions and sizes are not required
        ([blue_square, det("centre", "green", "cross"), red_circle], True),  # extras allowed
        ([det("top left", "blue", "circle"), det("right", "red", "square")], False),  # attributes swapped
        ([red_circle], False),  # one object missing
        ([], False),
    ]
    for found, expected in cases:
        assert score_binding_detections([found], [pair]) == float(expected)
    # One detection cannot stand for two prompted objects.
    twin = Scene((ShapeObject("circle", "red", "large", "top"), ShapeObject("circle", "red", "small", "left")), "grey")
    assert score_binding_detections([[red_circle]], [twin]) == 0.0
    assert score_binding_detections([[red_circle, det("left", "red", "circle")]], [twin]) == 1.0
    assert score_binding_detections([f for f, _ in cases], [pair] * len(cases)) == pytest.approx(0.4)
    # Three prompted objects, two of them alike: each needs its own detection.
    triple = Scene(
        (
            ShapeObject("circle", "red", "large", "top"),
            ShapeObject("circle", "red", "small", "left"),
            ShapeObject("square", "blue", "small", "right"),
        ),
        "grey",
    )
    found = [det("left", "red", "circle"), det("top", "red", "circle"), det("right", "blue", "square")]
    assert score_binding_detections([found], [triple]) == 1.0
    assert score_binding_detections([found[1:]], [triple]) == 0.0


class FakeProbe:
    """Reads back exactly what it is told; score_single only needs .read."""

    def __init__(self, detections):
        self.detections = detections

    def read(self, images):
        assert len(images) == len(self.detections)
        return self.detections


def test_score_single_reads_through_the_probe():
    scenes = [one("red", "circle"), one("blue", "square")]
    fake = FakeProbe([[det("centre", "red", "circle")], [det("centre", "blue", "cross")]])
    scores = score_single(fake, np.zeros((2, 8, 8, 3), np.uint8), scenes)
    assert scores == {"color": 1.0, "shape": 0.5, "size": 1.0, "position": 1.0}


# --- inputs and network ------------------------------------------------------------------------------


def test_to_probe_input_accepts_uint8_and_float_at_any_size():
    data = make_dataset(4, seed=0, height=48, width=64)
    from_uint8 = to_probe_input(data.images)
    as_float = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W) in [-1, 1]
    from_float = to_probe_input(as_float)
    assert from_uint8.shape == from_float.shape == (4, 3, PROBE_RESOLUTION, PROBE_RESOLUTION)
    assert from_uint8.dtype == torch.float32
    assert (from_uint8 - from_float).abs().max() < 2 / 127.5  # the uint8 path rounds once
    assert from_uint8.min() >= -1 and from_uint8.max() <= 1
    with pytest.raises(ValueError, match="N, H, W, 3"):
        to_probe_input(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="4 dims"):
        to_probe_input(np.zeros((8, 8, 3), np.uint8))


def test_network_shapes():
    net = ProbeNet().eval()
    features, logits = net(torch.zeros(2, 3, PROBE_RESOLUTION, PROBE_RESOLUTION))
    assert features.shape == (2, 9 * 32)
    assert logits.shape == (2, 9, 1 + 7 + 5 + 2)


# --- a short training run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_probe() -> Probe:
    return train_probe(seed=0, steps=60, batch_size=128, pool_size=4000)


@pytest.mark.slow
def test_short_training_beats_chance_clearly(quick_probe):
    data = make_dataset(300, seed=123, height=32, width=32)
    accuracy = probe_accuracy(quick_probe, data.images, data.scenes)
    # Chance: colour 1/7, shape 1/5, size 1/2; an all-empty guess gets occupancy 7/9.
    assert accuracy["color"] > 0.6
    assert accuracy["shape"] > 0.3
    assert accuracy["size"] > 0.65
    assert accuracy["occupancy"] > 0.9


@pytest.mark.slow
def test_read_and_features(quick_probe):
    scenes = [
        Scene((ShapeObject("circle", "red", "large", "top left"),), "grey"),
        Scene(
            (ShapeObject("square", "blue", "large", "centre"), ShapeObject("cross", "yellow", "large", "right")),
            "black",
        ),
    ]
    images = render_batch(scenes, 48, 64)
    found = quick_probe.read(images)
    assert len(found) == 2
    for objects in found:
        for o in objects:
            assert isinstance(o, DetectedObject)
            assert 0.5 < o.confidence <= 1
            assert o.position == probe_module.POSITIONS[o.cell]
    assert {o.position for o in found[0]} == {"top left"}
    assert {o.position for o in found[1]} == {"centre", "right"}
    assert found[0][0].color == "red"
    features = quick_probe.features(images)
    assert features.shape == (2, 9 * 32)
    # uint8 and [-1, 1] float inputs read the same.
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(quick_probe.features(as_float), features, atol=0.1, rtol=0.05)
    # One pass gives both, the same as the two calls.
    found_too, features_too = quick_probe.read_with_features(images)
    assert found_too == found and torch.equal(features_too, features)


# --- caching -----------------------------------------------------------------------------------------


def test_cache_round_trip_and_version_key(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(seed=0, steps=1, device="cpu", progress=False):
        calls.append((seed, steps))
        torch.manual_seed(len(calls))
        return Probe(ProbeNet())

    monkeypatch.setattr(probe_training, "train_probe", fake_train)
    first = load_or_train_probe(tmp_path, steps=5, version="v-test")
    assert calls == [(0, 5)]
    assert len(list(tmp_path.glob("*v-test*.safetensors"))) == 1
    assert not list(tmp_path.glob("*.partial"))

    again = load_or_train_probe(tmp_path, steps=5, version="v-test")
    assert calls == [(0, 5)]  # loaded, not retrained
    assert again.version == "v-test"
    images = make_dataset(3, seed=0, height=32, width=32).images
    torch.testing.assert_close(again.features(images), first.features(images), rtol=0, atol=0)

    load_or_train_probe(tmp_path, steps=5, version="v-other")
    assert calls == [(0, 5), (0, 5)]  # a changed version retrains
    load_or_train_probe(tmp_path, steps=5, seed=1, version="v-test")
    assert calls[-1] == (1, 5)

    # A cache file cut short (an interrupted copy, a full disk) is trained again and replaced, with a note
    # naming it: it was a traceback, on this and every later run.
    cached = next(tmp_path.glob("*v-test-seed1*.safetensors"))
    cached.write_bytes(cached.read_bytes()[:100])
    load_or_train_probe(tmp_path, steps=5, seed=1, version="v-test")
    assert calls[-1] == (1, 5) and len(calls) == 4
    assert f"note: the cached probe {cached} cannot be read" in capsys.readouterr().err
    assert load_or_train_probe(tmp_path, steps=5, seed=1, version="v-test").version == "v-test"
    assert len(calls) == 4  # the replacement is read back


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXART_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("PIXART_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "pixart")


def test_score_relation_also_needs_each_object_in_its_prompted_cell():
    pair = Scene(
        (ShapeObject("circle", "red", "large", "top left"), ShapeObject("square", "blue", "small", "right")), "grey"
    )
    placed = [det("top left", "red", "circle", "small"), det("right", "blue", "square", "large")]  # sizes free
    swapped = [det("right", "red", "circle"), det("top left", "blue", "square")]  # bound, places exchanged
    one_off = [det("top left", "red", "circle"), det("centre", "blue", "square")]
    for found, binding, relation in ((placed, 1.0, 1.0), (swapped, 1.0, 0.0), (one_off, 1.0, 0.0)):
        assert score_binding_detections([found], [pair]) == binding
        assert score_relation_detections([found], [pair]) == relation
    assert score_relation_detections([placed, swapped, one_off, placed], [pair] * 4) == 0.5
