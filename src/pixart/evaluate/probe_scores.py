"""Scores of generated shapes-world images against their prompts, from what the probe reads in them.

score_single judges single-object prompts attribute by attribute; score_binding and score_relation judge
two-object prompts as a whole (colour with shape, and with position too). The `*_detections` forms take
detections already read (pixart.evaluate.probe.Probe.read), so one pass over the images serves them all.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from pixart.data.synthetic import Scene
from pixart.evaluate.probe import DetectedObject, Probe


def score_single_detections(detections: list[list[DetectedObject]], scenes: list[Scene]) -> dict[str, float]:
    """score_single from detections already read (see there)."""
    if len(detections) != len(scenes):
        raise ValueError(f"{len(detections)} detection lists for {len(scenes)} scenes")
    hits = dict.fromkeys(("color", "shape", "size", "position"), 0)
    for found, scene in zip(detections, scenes):
        if not found:
            continue  # nothing drawn (or nothing legible): every attribute misses
        best = max(found, key=lambda d: d.confidence)
        target = scene.objects[0]
        hits["color"] += best.color == target.color
        hits["shape"] += best.shape == target.shape
        hits["size"] += best.size == target.size
        hits["position"] += best.position == target.position
    return {k: v / max(1, len(scenes)) for k, v in hits.items()}


def score_single(probe: Probe, images: np.ndarray | torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Fractions of single-object prompts whose image shows the right colour, shape, size and position.

    Each image is judged by its most confident detected object, compared with the prompt's (first)
    object; an image with no detection misses on all four. Position is the grid cell.
    """
    return score_single_detections(probe.read(images), scenes)


def _matches(found: list[DetectedObject], scene: Scene, fields: tuple[str, ...]) -> bool:
    """Whether each prompted object has its own detection agreeing with it on `fields`.

    Matching on equality of those fields pairs objects and detections within equal classes only, so a
    one-to-one matching exists exactly when every class has as many detections as prompted objects.
    """
    wanted = Counter(tuple(getattr(o, f) for f in fields) for o in scene.objects)
    have = Counter(tuple(getattr(d, f) for f in fields) for d in found)
    return all(have[key] >= count for key, count in wanted.items())


BINDING_FIELDS = ("color", "shape")
RELATION_FIELDS = ("color", "shape", "position")


def _score_matches(detections: list[list[DetectedObject]], scenes: list[Scene], fields: tuple[str, ...]) -> float:
    if len(detections) != len(scenes):
        raise ValueError(f"{len(detections)} detection lists for {len(scenes)} scenes")
    return sum(_matches(found, scene, fields) for found, scene in zip(detections, scenes)) / max(1, len(scenes))


def score_binding_detections(detections: list[list[DetectedObject]], scenes: list[Scene]) -> float:
    """score_binding from detections already read (see there)."""
    return _score_matches(detections, scenes, BINDING_FIELDS)


def score_relation_detections(detections: list[list[DetectedObject]], scenes: list[Scene]) -> float:
    """Fraction of images in which every prompted object is found with its colour and shape in its own cell.

    Binding plus placement: "a red circle at the top left and a blue square on the right" also needs the
    spatial relation between the two objects right, which short alt-text captions never state.
    """
    return _score_matches(detections, scenes, RELATION_FIELDS)


def score_binding(probe: Probe, images: np.ndarray | torch.Tensor, scenes: list[Scene]) -> float:
    """Fraction of images in which every prompted object is found with the right colour AND shape.

    Each prompted object must match its own detection (two prompted objects cannot share one), and
    extra detections are allowed. Position and size are not required: this scores attribute binding
    (a "red circle and blue square" prompt drawn as a blue circle and a red square fails).
    """
    return score_binding_detections(probe.read(images), scenes)
