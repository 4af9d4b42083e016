"""Robust image reading for data preparation: decode fully, normalise to 8-bit RGB, or say why not.

Every failure is an ImageSkipped with a short machine-readable `reason` (one of REASONS) and a message
for people, so a preparation run can count and report what it left out instead of crashing. Nothing
here changes Pillow's global settings (LOAD_TRUNCATED_IMAGES stays off, so truncation is an error).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from io import BytesIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pixart.data.buckets import ratio_in_range, ratio_range

EMPTY = "empty file"
UNREADABLE = "unreadable"  # the file itself could not be read (missing, permissions, a directory)
NOT_IMAGE = "not an image"  # no image format recognised the header
CORRUPT = "truncated or corrupt"  # recognised, but the pixel data (or its metadata) does not decode
TOO_LARGE = "too large"  # beyond Pillow's decompression-bomb limit
UNSUPPORTED = "unsupported mode"  # decodes, but to a pixel format with no faithful 8-bit RGB mapping
TOO_SMALL = "too small"
BAD_ASPECT = "aspect ratio beyond table"
REASONS = (EMPTY, UNREADABLE, NOT_IMAGE, CORRUPT, TOO_LARGE, UNSUPPORTED, TOO_SMALL, BAD_ASPECT)

WHITE = (255, 255, 255)
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class ImageSkipped(Exception):
    """An input that preparation leaves out; `reason` is one of REASONS, `message` says more."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _read(source: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "<bytes>"
    name = os.fspath(source)
    try:
        with open(name, "rb") as f:
            return f.read(), name
    except OSError as e:
        raise ImageSkipped(UNREADABLE, f"{name}: {e.strerror or e}") from e


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """16-bit greyscale ('I;16*', or 'I' holding 0..65535 as 16-bit PNG and TIFF decode to) to 8-bit 'L'.

    Pillow's own convert('L') clips at 255, which turns almost every pixel white; we scale by 255/65535.
    """
    values = np.asarray(img).astype(np.float64)
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if low < 0 or high > 65535:  # a 32-bit or signed image: clipped, it came out near white or half black
        raise ImageSkipped(
            UNSUPPORTED, f"integer pixels from {low:.0f} to {high:.0f} (beyond 16 bits) have no agreed range"
        )
    scaled = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(scaled)


def _tiff_bits(img: Image.Image) -> int:
    """A TIFF's bits per sample (its widest channel's); 16 for any other image ('I' is 16-bit PNG's mode)."""
    bits = getattr(img, "tag_v2", {}).get(258, 16)  # 258: the BitsPerSample tag, one value per channel
    return max(bits) if isinstance(bits, tuple) else int(bits)


def _min_is_white(img: Image.Image) -> bool:
    """A 16-bit greyscale TIFF stored with 0 as white (PhotometricInterpretation 0): Pillow inverts 8-bit and
    1-bit ones as it reads them, 16-bit ones not, so a scanner's negative-free scan came out as a negative."""
    unsigned = img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I")  # not I;16S: its values are signed
    return unsigned and getattr(img, "tag_v2", {}).get(262) == 0


def _inverted_sixteen_bit(img: Image.Image) -> Image.Image:
    values = np.asarray(img).astype(np.int64)  # (H, W), 0..65535: its bits per sample were checked
    return Image.fromarray((65535 - values).astype(np.uint16))


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an image with alpha over white, so transparent pixels come out white, not black."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


SRGB = ImageCms.createProfile("sRGB")


@functools.lru_cache(maxsize=16)
def _to_srgb_transform(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from an embedded ICC profile's colour space to sRGB for `mode` pixels (RGB, RGBA, CMYK),
    or None where there is nothing to do: an sRGB profile, a profile of another kind of space than the
    pixels', or one that cannot be read (the pixels are then taken as stored, as everywhere before)."""
    try:
        source = ImageCms.ImageCmsProfile(BytesIO(profile))
        space = source.profile.xcolor_space.strip()
        if (space, mode) not in {("RGB", "RGB"), ("RGB", "RGBA"), ("CMYK", "CMYK")}:
            return None
        if "srgb" in ImageCms.getProfileDescription(source).lower():  # most web images: already sRGB
            return None
        out_mode = "RGBA" if mode == "RGBA" else "RGB"
        return ImageCms.buildTransform(source, SRGB, mode, out_mode, ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def to_rgb(img: Image.Image, icc_profile: bytes | None = None) -> Image.Image:
    """Any decoded Pillow image as 8-bit RGB (see load_rgb for the rules); `icc_profile`, the file's
    embedded one, converts RGB and CMYK pixels of another colour space to sRGB."""
    if icc_profile:
        if img.mode in ("P", "PA") or (img.mode == "RGB" and "transparency" in img.info):
            # a palette or a colour key as alpha first: the transform keeps no key, and the converted
            # colours would no longer match it (transparent pixels came out black)
            img = img.convert("RGBA")
        if (transform := _to_srgb_transform(bytes(icc_profile), img.mode)) is not None:
            img = ImageCms.applyTransform(img, transform) or img  # None only when asked to work in place
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        grey = _sixteen_bit_to_l(img)
        key = img.info.get("transparency")
        if isinstance(key, int):  # a colour key among the 16-bit values: those pixels are transparent
            pixels = np.asarray(grey).copy()  # (H, W) uint8
            pixels[np.asarray(img) == key] = WHITE[0]
            grey = Image.fromarray(pixels)
        return grey.convert("RGB")
    if mode == "F":
        # Float images have no agreed range (0..1? 0..255?); guessing would produce black or white images.
        raise ImageSkipped(UNSUPPORTED, "32-bit float pixels have no agreed range")
    if mode == "RGB" and "transparency" not in img.info:
        return img
    try:
        if mode in ALPHA_MODES or "transparency" in img.info:
            return _on_white(img)
        # CMYK without a profile: Pillow's JPEG decoder already undoes Adobe's inverted storage, so this is
        # the plain C/M/Y/K -> R/G/B formula (as in official training).
        return img.convert("RGB")
    except ValueError as e:
        raise ImageSkipped(UNSUPPORTED, f"no conversion from mode {mode} to RGB") from e


# The first bytes of the formats prepare lists, for a file no decoder could open: a recognised format cut
# short is "truncated or corrupt" (download it again), where "not an image" is an error page or the like.
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def format_by_signature(data: bytes) -> str | None:
    """The image format `data`'s first bytes announce (WebP's RIFF....WEBP and AVIF's ftyp box too), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    return next((name for magic, name in SIGNATURES if data.startswith(magic)), None)


def exif_orientation(img: Image.Image) -> int:
    """The orientation an EXIF block (or a TIFF's own tag) gives, 1 without one. Not XMP's tiff:Orientation,
    which Pillow's getexif falls back to: browsers and torchvision leave such an image as stored (an edited
    export, rotated already, whose EXIF was stripped and XMP kept, came out turned a second time)."""
    if "exif" in img.info:
        exif = Image.Exif()
        exif.load(img.info["exif"])
        return int(exif.get(0x0112, 1))
    tags = getattr(img, "tag_v2", None)
    return int(tags.get(0x0112, 1)) if tags is not None else 1


def load_rgb(source: str | os.PathLike[str] | bytes, name: str | None = None) -> Image.Image:
    """Read and fully decode an image as 8-bit RGB, or raise ImageSkipped saying why not.

    - The whole file is decoded (img.load()), so truncation and corrupt data are found here, not later.
    - EXIF orientation is applied, so the returned size is the displayed one (orientation 6: W x H swap).
    - 16-bit greyscale is scaled to 8 bits; CMYK is converted; palette images with a transparent index,
      colour-keyed ('transparency') images and RGBA/LA images are composited over white.
    - An embedded ICC profile of another colour space than sRGB (Display P3, Adobe RGB, a press CMYK) is
      applied, so the pixels are those a browser shows: official training and torchvision ignore it, and
      an iPhone photo's colours came out up to 64/255 off.
    """
    data, read_name = _read(source)
    name = name or read_name  # bytes have no name of their own: the caller's (the input's) says which file
    if not data:
        raise ImageSkipped(EMPTY, f"{name} has 0 bytes")
    try:
        img: Image.Image = Image.open(BytesIO(data))  # an ImageFile; exif_transpose below gives a plain Image
    except Image.DecompressionBombError as e:
        raise ImageSkipped(TOO_LARGE, f"{name}: {e}") from e
    except UnidentifiedImageError as e:
        if (known := format_by_signature(data)) is not None:  # a download cut short, not an HTML page
            raise ImageSkipped(CORRUPT, f"{name}: a {known} file whose header is cut short or broken") from e
        raise ImageSkipped(NOT_IMAGE, f"{name}: no image format recognised") from e
    except Exception as e:  # Pillow plugins raise assorted types on broken headers
        raise ImageSkipped(CORRUPT, f"{name}: {type(e).__name__}: {e}") from e
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageSkipped(TOO_LARGE, f"{name}: {e}") from e
    except Exception as e:  # OSError ("image file is truncated"), SyntaxError, ValueError, EOFError, ...
        raise ImageSkipped(CORRUPT, f"{name}: {type(e).__name__}: {e}") from e
    if img.mode == "I" and (bits := _tiff_bits(img)) > 16:  # read before exif_transpose drops the tags
        # A 32-bit TIFF decodes to 'I' as 16-bit PNGs do: its values (0..255 as often as 0..65535) have no
        # agreed range, and scaled as 16-bit ones, 200 came out as 1, a black image.
        raise ImageSkipped(UNSUPPORTED, f"{name}: {bits}-bit integer pixels have no agreed range")
    min_is_white = _min_is_white(img)  # the tags too
    icc_profile = img.info.get("icc_profile")
    try:
        if exif_orientation(img) != 1:
            img = ImageOps.exif_transpose(img)
    except Exception as e:  # a broken EXIF block: better to say so than to train on a sideways image
        raise ImageSkipped(CORRUPT, f"{name}: unreadable EXIF orientation ({type(e).__name__}: {e})") from e
    return to_rgb(_inverted_sixteen_bit(img) if min_is_white else img, icc_profile)


def resize_cover_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Bicubic resize so the image covers height x width, then centre crop to exactly that size.

    This is PixArt's multi-aspect transform (Resize to cover the bucket, then CenterCrop) to the pixel:
    the side whose scale is larger is set to the target and the other is scaled by it and truncated, in
    the official expression's order (InternalData_ms: int(w * H / h)); rounding instead made half of all
    images one pixel larger and shifted their crop. The guard keeps a side from falling below the target
    when the two scales tie in floating point, so the crop never has to pad.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    if height / img.height > width / img.width:
        new_h, new_w = height, max(width, int(img.width * height / img.height))
    else:
        new_h, new_w = max(height, int(img.height * width / img.width)), width
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top = int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


def check_size(img: Image.Image, height: int, width: int, upscale: bool) -> bool:
    """Whether covering height x width needs upscaling (a side shorter than the target's).

    Returns True if so and `upscale` allows it (resize_cover_crop then enlarges the image), False if no
    upscaling is needed; raises ImageSkipped('too small') if it is needed and not allowed.
    """
    needs = img.height < height or img.width < width
    if needs and not upscale:
        raise ImageSkipped(TOO_SMALL, f"{img.width}x{img.height} (WxH) is smaller than the bucket {width}x{height}")
    return needs


def check_aspect(img: Image.Image, table: Mapping[str, tuple[int, int]]) -> None:
    """Raise ImageSkipped('aspect ratio beyond table') unless the table's key range holds height/width."""
    if not ratio_in_range(img.height, img.width, table):
        low, high = ratio_range(table)
        raise ImageSkipped(
            BAD_ASPECT,
            f"{img.width}x{img.height} (WxH; height/width {img.height / img.width:.4g}) is outside the table's "
            f"[{float(low):g}, {float(high):g}]",
        )
