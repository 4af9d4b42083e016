"""README's "From Python" blocks run as they stand, in order, and do what their comments say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of README's `## {section}` (up to the next `## ` heading)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end >= 0 else None], flags=re.S)


def test_the_from_python_blocks_train_generate_and_convert_as_they_say(tmp_path, monkeypatch, capsys):
    from pixart.sample import sample
    from pixart.weights import WeightsError, load_transformer, save_transformer

    blocks = python_blocks("From Python")
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), names)  # noqa: S102 - README's own code, run as a reader would

    summary = names["summary"]
    assert (summary["status"], summary["steps"]) == ("finished", 100) and (
        tmp_path / "runs/tiny/final.safetensors"
    ).is_file()
    assert f"finished {summary['final_loss']}" in capsys.readouterr().out
    first, second = (Image.open(tmp_path / f"red-circle-{seed}.png") for seed in (0, 1))
    assert first.size == second.size == (32, 32) and first.tobytes() != second.tobytes()  # two seeds, two images

    model, out = names["model"], names["out"]
    assert out.shape == (2, 2 * model.config.in_channels, 32, 32) and torch.isfinite(out).all()
    # the official layout reads back to the same model: the same output on the same inputs, to the bit
    again = load_transformer(tmp_path / "tiny.pth")
    with torch.no_grad():
        assert torch.equal(again(names["x"], names["t"], names["y"], names["mask"]), out)
    with pytest.raises(WeightsError, match="caption_norm have a diffusers layout"):  # as the prose says
        save_transformer(model, tmp_path / "tiny-diffusers", to="diffusers")

    # the prose after the blocks: pipe.encode gives what pixart.sample.sample takes
    pipe = names["pipe"]
    assert pipe.transformer.sampling["objective"] == "iddpm"  # the tiny recipe's: sampled with dpm-solver++
    (cond, cond_mask, null, null_mask), _ = pipe.encode(["a red circle"])
    noise = torch.randn(1, model.config.in_channels, 32, 32)
    latents = sample(pipe.transformer, noise, cond, cond_mask, null, null_mask, steps=5, cfg_scale=4.5, progress=False)
    assert latents.shape == noise.shape and torch.isfinite(latents).all()
