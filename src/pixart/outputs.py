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
# The sheet's cells at most this wide (200 images of 1024 px at full size made a 230-megapixel sheet that
# Pillow refused to open) and its images the first SHEET_IMAGES of a run.
SHEET_CELL = 256
SHEET_MIN_CELL = 128  # px: room for a label's prompt and seed under each image
SHEET_IMAGES = 100
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


REQUEST_FOLDER = re.compile(r"\d{5,}")  # the web app's request folders: "00042"
# What a server killed mid-write leaves there: atomic_write's temporary of one of those files, or its probe
# of the folder's file mode (files.temporary_path, files.ordinary_mode)
OUTPUT_LEFTOVER = re.compile(rf"\.(?:{OUTPUT_NAME.pattern}|{re.escape(CONTACT_SHEET)}|mode-probe)\..+-\d+\.tmp")


# What file browsers leave in a folder they showed: macOS's Finder its .DS_Store (and ._ files on disks
# without its metadata), Windows' Explorer Thumbs.db and desktop.ini. Opening --out to look at the images
# made the next `pixart serve` refuse the folder; these hold the folder's names and thumbnails, which the
# page serves anyway.
BROWSER_METADATA = re.compile(r"\.DS_Store|Thumbs\.db|desktop\.ini", re.IGNORECASE)


def is_browser_metadata(path: Path) -> bool:
    """A file a file browser wrote beside the images it showed (BROWSER_METADATA, or "._x" beside an "x":
    a "._notes" with no "notes" is someone's file), not a folder."""
    if path.is_dir():
        return False
    if path.name.startswith("._") and len(path.name) > 2:
        return (path.parent / path.name[2:]).exists()
    return BROWSER_METADATA.fullmatch(path.name) is not None


def foreign_files(path: Path) -> list[str]:
    """The names in a numbered folder that ImageWriter did not write (nor a kill of it leave, nor a file
    browser), sorted."""
    ours = {p.name for p in earlier_outputs(path)}
    return sorted(
        p.name
        for p in path.iterdir()
        if p.name not in ours and not OUTPUT_LEFTOVER.fullmatch(p.name) and not is_browser_metadata(p)
    )


def is_numbered_folder(path: Path) -> bool:
    """Named as the web app names its request folders ("00042"; ASCII digits: int() refuses "²")."""
    return path.is_dir() and path.name.isascii() and REQUEST_FOLDER.fullmatch(path.name) is not None


def is_request_folder(path: Path) -> bool:
    """A request folder of the web app: a numbered folder holding only what ImageWriter writes (and what a
    kill leaves of it). A folder named by a year ("2023") of someone's documents passed for one, and was
    served to the page's visitors."""
    return is_numbered_folder(path) and not foreign_files(path)


def save_png(image: Image.Image, path: Path, info: PngInfo | None = None, *, replace: bool = True) -> None:
    """`image` as a PNG at `path`, whole or not at all (through a temporary file); with replace=False a
    `path` that exists by then is FileExistsError, and kept."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info), replace=replace)


class ImageWriter:
    """Writes a run's images into `out_dir` as they come, each a PNG whose metadata say how to make it again
    and a JSON sidecar, then (finish) a contact sheet of the first SHEET_IMAGES as thumbnails.

    Every name must be new: a second run writing into the same folder at the same time (prepare_out's check
    passed for both) is FileExistsError at its first clash, where each had overwritten the other's images.
    """

    def __init__(
        self, out_dir: str | Path, *, model: str | None = None, extra: dict | None = None, number_from: int = 0
    ) -> None:
        self.out_dir = Path(out_dir)
        self.model, self.extra = model, extra
        self.number_from = number_from  # the first file's number: a run's rest (--skip) numbered as in the whole
        self.paths: list[Path] = []
        self.first: GeneratedImage | None = None
        self.last: GeneratedImage | None = None
        self._thumbnails: list[tuple[Image.Image, str]] = []  # the sheet's, not every image kept in memory

    def write(self, result: GeneratedImage) -> Path:
        record = image_record(result, self.model, self.extra)
        info = PngInfo()
        info.add_text("parameters", json.dumps(record))
        info.add_text("prompt", result.prompt)
        info.add_text("seed", str(result.seed))
        path = self.out_dir / f"{self.number_from + len(self.paths):04d}-{slug(result.prompt)}-seed{result.seed}.png"
        # each file whole or absent: a process stopped mid-write (a server's Ctrl+C) leaves no torn image
        save_png(result.image, path, info, replace=False)
        write_json(path.with_suffix(".json"), record, replace=False)
        self.paths.append(path)
        self.first, self.last = self.first or result, result
        if len(self._thumbnails) < SHEET_IMAGES:
            thumbnail = result.image.copy()
            thumbnail.thumbnail((SHEET_CELL, SHEET_CELL), Image.Resampling.LANCZOS)  # only ever smaller
            # the seed first: a long prompt wrapped past the label's lines and cut it, and every label read alike
            self._thumbnails.append((thumbnail, f"seed {result.seed}: {result.prompt}"))
        return path

    def finish(self) -> Path | None:
        """The contact sheet, where there are several images (None otherwise)."""
        if len(self.paths) < 2:
            return None
        images, labels = zip(*self._thumbnails)
        # small images (the demo's 36 px) drawn larger: in their own width a label wrapped at 8 characters
        # and cut every seed from 10 on, so a thumbnail could not be matched to its file
        cell = max(SHEET_MIN_CELL, *(max(image.size) for image in images))
        sheet = image_grid(list(images), labels=list(labels), cell=cell)
        save_png(sheet, self.out_dir / CONTACT_SHEET, replace=False)
        return self.out_dir / CONTACT_SHEET


def write_images(
    results: list[GeneratedImage], out_dir: str | Path, *, model: str | None = None, extra: dict | None = None
) -> list[Path]:
    """Each image with its sidecar, and a contact sheet when there are several (ImageWriter)."""
    writer = ImageWriter(out_dir, model=model, extra=extra)
    for result in results:
        writer.write(result)
    writer.finish()
    return writer.paths
