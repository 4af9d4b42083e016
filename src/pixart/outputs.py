"""Writing generated images: PNGs whose metadata hold prompt, seed and settings, a JSON sidecar each,
and a contact sheet when there are several."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pixart.files import atomic_write, write_json
from pixart.generation_settings import GeneratedImage
from pixart.grids import image_grid

CONTACT_SHEET = "contact_sheet.png"
# The names write_images gives: "0003-a-red-circle-seed7.png", its "....json" sidecar, and CONTACT_SHEET.
OUTPUT_NAME = re.compile(r"\d{4,}-[a-z0-9-]+-seed-?\d+\.(png|json)")


def slug(text: str, limit: int = 40) -> str:
    """The prompt's ASCII letters and digits for a file name; "unconditional" for an empty prompt only (a
    prompt in another script, 一只猫, was named as if it had none)."""
    if not text.strip():
        return "unconditional"
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def image_record(result: GeneratedImage, model: str | None = None, extra: dict | None = None) -> dict:
    """What remakes the image: prompt, seed, settings, the model, and `extra` (the command's other inputs)."""
    return {
        "prompt": result.prompt,
        "seed": result.seed,
        **result.settings,
        **({"model": model} if model else {}),
        **(extra or {}),
    }


def earlier_outputs(folder: str | Path) -> list[Path]:
    """The files in `folder` that write_images wrote (none when the folder does not exist), sorted.

    A new run into such a folder would overwrite some of them and leave the rest beside its own images,
    under a contact sheet that no longer shows them: callers refuse it (see `pixart generate --out`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name == CONTACT_SHEET or OUTPUT_NAME.fullmatch(p.name))


def save_png(image: Image.Image, path: Path, info: PngInfo | None = None) -> None:
    """`image` as a PNG at `path`, whole or not at all (through a temporary file)."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def write_images(
    results: list[GeneratedImage], out_dir: str | Path, *, model: str | None = None, extra: dict | None = None
) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, result in enumerate(results):
        record = image_record(result, model, extra)
        info = PngInfo()
        info.add_text("parameters", json.dumps(record))
        info.add_text("prompt", result.prompt)
        info.add_text("seed", str(result.seed))
        path = out_dir / f"{index:04d}-{slug(result.prompt)}-seed{result.seed}.png"
        # each file whole or absent: a process stopped mid-write (a server's Ctrl+C) leaves no torn image
        save_png(result.image, path, info)
        write_json(path.with_suffix(".json"), record)
        paths.append(path)
    if len(results) > 1:
        sheet = image_grid([r.image for r in results], labels=[f"{r.prompt} (seed {r.seed})" for r in results])
        save_png(sheet, out_dir / CONTACT_SHEET)
    return paths
