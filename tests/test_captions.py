"""Official-style T5 caption cleaning."""

from __future__ import annotations

import pytest

from pixart.encoders.captions import clean_caption, simple_clean


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("A Red Circle", "a red circle"),
        ("Sunset over the sea https://example.com/x.jpg", "sunset over the sea"),
        ("<b>Bold</b> cat by @someone", "bold cat by"),
        ("cat 猫 on a mat", "cat on a mat"),
        ("A dog\u2014running \u201cfast\u201d", 'a dog-running "fast"'),
        ("free shipping red dress 1200x800 img_1234.jpg", "red dress"),
        ("server at 192.168.0.1 rack", "server at rack"),
        ("price tag #12 id 12345678", "price tag id"),
        ("caf&eacute; &amp; tea", "café tea"),
    ],
)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_cleaning_is_idempotent_on_clean_text():
    text = "a large red circle at the top left and a small blue square in the centre, on a grey background"
    assert clean_caption(text) == text


def test_simple_clean_is_diffusers_without_cleaning():
    assert simple_clean("  A Cat  ") == "a cat"
