"""What a script or notebook reaches for: the package's names, and calls a Python user gets wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pixart
from pixart.config import ConfigError, apply_overrides
from pixart.recipes import get_recipe


def test_the_package_names_what_scripts_use_without_importing_torch_on_its_own():
    """`pixart.TextToImage`, `pixart.load_transformer`... were AttributeErrors, and dir(pixart) (tab
    completion) showed none of the lazy names, PixArt included."""
    from pixart.generate import TextToImage
    from pixart.generation_settings import Settings
    from pixart.model import PixArt, PixArtConfig
    from pixart.weights import load_transformer, save_transformer

    expected = [PixArt, PixArtConfig, TextToImage, Settings, load_transformer, save_transformer]
    assert [getattr(pixart, thing.__name__) for thing in expected] == expected
    assert {thing.__name__ for thing in expected} <= set(dir(pixart)) and set(pixart.__all__) <= set(dir(pixart))
    with pytest.raises(AttributeError, match="no attribute 'Pixart'"):
        pixart.Pixart  # noqa: B018
    code = "import sys, pixart; dir(pixart); print('torch' in sys.modules)"
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert said.strip() == "False"  # `pixart --help` stays quick


@pytest.mark.parametrize("given", ["steps=5", {"steps": 5}])
def test_overrides_given_as_one_string_or_a_dict_are_named_as_such(given):
    """A string was read one character at a time ("override 's' must look like key=value")."""
    with pytest.raises(ConfigError, match=f"overrides are a list of 'key=value' strings.*got a {type(given).__name__}"):
        apply_overrides(get_recipe("tiny"), given)
    assert apply_overrides(get_recipe("tiny"), ["steps=5"]).steps == 5


def test_progress_false_draws_no_bars_of_the_libraries_either_and_gives_them_back(tmp_path, capfd):
    """train(progress=False) and generate(progress=False) still drew transformers' "Loading weights" bars as
    the text encoder loaded: noise in a notebook that asked for none (review)."""
    from transformers.utils import logging as transformers_logging

    from pixart.generate import TextToImage
    from pixart.generation_settings import Settings
    from pixart.train.loop import train

    train(apply_overrides(get_recipe("tiny"), ["steps=2", "previews=False"]), tmp_path / "run", progress=False)
    TextToImage.from_path(tmp_path / "run").generate(["a red circle"], Settings(steps=2), progress=False)
    said = capfd.readouterr().err
    assert "Loading weights" not in said and "it/s" not in said, said
    assert transformers_logging.is_progress_bar_enabled()  # as it was before
