"""The one error type of weight reading and writing: its message names the problem and the fix."""

from __future__ import annotations


class WeightsError(ValueError):
    """A checkpoint that cannot become this PixArt: wrong format, architecture or keys."""
