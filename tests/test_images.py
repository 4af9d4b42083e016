"""Robust image loading: each kind of bad input gets its reason; odd pixel formats convert correctly."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms, features

from pixart.data.buckets import bucket_table
from pixart.data.images import (
    BAD_ASPECT,
    CORRUPT,
    EMPTY,
    NOT_IMAGE,
    REASONS,
    TOO_LARGE,
    TOO_SMALL,
    UNREADABLE,
    UNSUPPORTED,
    ImageSkipped,
    check_aspect,
    check_size,
    load_rgb,
    resize_cover_crop,
    to_rgb,
)


def noise_image(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def saved(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


def reason_of(source) -> str:
    with pytest.raises(ImageSkipped) as info:
        load_rgb(source)
    assert info.value.reason in REASONS
    assert info.value.message
    assert info.value.reason in str(info.value)
    return info.value.reason


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


# --- inputs that are skipped, with the exact reason ---


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert reason_of(path) == EMPTY
    assert reason_of(b"") == EMPTY


def test_garbage_named_jpg(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"definitely not a JPEG, just some text\n" * 50)
    assert reason_of(path) == NOT_IMAGE
    assert reason_of(str(path)) == NOT_IMAGE


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_files(tmp_path, fmt, keep):
    data = saved(noise_image(), tmp_path / f"full.{fmt.lower()}", format=fmt).read_bytes()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    assert reason_of(path) == CORRUPT
    assert load_rgb(data).size == (96, 64)  # the complete file is fine


AVIF = pytest.param("AVIF", marks=pytest.mark.skipif("avif" not in features.get_supported_modules(), reason="no AVIF"))


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "TIFF", "WEBP", "BMP", "JPEG", AVIF])
def test_a_header_cut_short_is_corrupt_not_not_an_image(fmt):
    """A recognised format cut inside its header was "not an image", the reason an HTML error page gets: the
    one means download it again, the other throw it away."""
    buffer = io.BytesIO()
    noise_image().save(buffer, format=fmt)
    for cut in (12, 20):
        with pytest.raises(ImageSkipped) as info:
            load_rgb(buffer.getvalue()[:cut])
        assert info.value.reason == CORRUPT, (cut, info.value)
    assert reason_of(b"<html><body>404 Not Found</body></html>") == NOT_IMAGE


def test_truncation_is_not_masked_globally(tmp_path):
    from PIL import ImageFile

    data = saved(noise_image(), tmp_path / "full.jpg", format="JPEG").read_bytes()
    reason_of(data[: len(data) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_corrupt_png_data(tmp_path):
    data = bytearray(saved(noise_image(), tmp_path / "full.png", format="PNG").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    assert reason_of(bytes(data)) == CORRUPT


def test_unreadable_paths(tmp_path):
    assert reason_of(tmp_path / "missing.png") == UNREADABLE
    assert reason_of(tmp_path) == UNREADABLE  # a directory


def test_decompression_bomb_limit(tmp_path, monkeypatch):
    data = saved(noise_image(40, 40), tmp_path / "big.png", format="PNG").read_bytes()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x 100: Pillow refuses
    assert reason_of(data) == TOO_LARGE


def test_float_images_are_unsupported():
    with pytest.raises(ImageSkipped) as info:
        to_rgb(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)))
    assert info.value.reason == UNSUPPORTED


# --- inputs that load, converted correctly ---


def test_plain_rgb_round_trips_exactly(tmp_path):
    img = noise_image()
    out = load_rgb(saved(img, tmp_path / "ok.png"))
    assert out.mode == "RGB"
    assert out.size == img.size
    assert np.array_equal(pixels(out), pixels(img))


def test_exif_orientation_6_is_applied(tmp_path):
    # Stored 40 wide x 20 high, left half red, right half blue; orientation 6 = rotate 90 degrees clockwise.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = saved(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert Image.open(path).size == (40, 20)
    out = load_rgb(path)
    assert out.size == (20, 40)  # displayed: 20 wide x 40 high
    top, bottom = pixels(out)[8, 10], pixels(out)[32, 10]
    assert np.abs(top - (255, 0, 0)).max() < 12  # the stored left (red) is now on top
    assert np.abs(bottom - (0, 0, 255)).max() < 12


XMP_ROTATED = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_an_orientation_in_xmp_alone_is_not_applied(tmp_path, fmt):
    """Browsers and torchvision turn an image by its EXIF orientation only; Pillow's getexif falls back to
    XMP's tiff:Orientation, so an edited export (already turned, EXIF stripped, XMP kept) was turned again.
    With the same orientation in EXIF it is turned, as before."""
    img = noise_image(96, 64)
    path = saved(img, tmp_path / f"xmp.{fmt.lower()}", xmp=XMP_ROTATED.encode(), quality=100)
    assert Image.open(path).getexif().get(0x0112) == 6  # what Pillow reads
    assert load_rgb(path).size == (96, 64)  # as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = saved(img, tmp_path / f"exif.{fmt.lower()}", exif=exif.tobytes(), xmp=XMP_ROTATED.encode(), quality=100)
    assert load_rgb(turned).size == (64, 96)


def test_cmyk_jpeg(tmp_path):
    colours = {
        (0, 0, 0, 0): (255, 255, 255),
        (255, 0, 0, 0): (0, 255, 255),
        (0, 255, 0, 0): (255, 0, 255),
        (0, 0, 255, 0): (255, 255, 0),
        (0, 0, 0, 255): (0, 0, 0),
        (0, 0, 0, 128): (127, 127, 127),
        (255, 255, 0, 0): (0, 0, 255),
    }
    tile = 16
    img = Image.new("CMYK", (tile * len(colours), tile))
    for i, cmyk in enumerate(colours):
        img.paste(cmyk, (i * tile, 0, (i + 1) * tile, tile))
    path = saved(img, tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(path).mode == "CMYK"
    out = load_rgb(path)
    assert out.mode == "RGB"
    for i, rgb in enumerate(colours.values()):
        got = pixels(out)[tile // 2, i * tile + tile // 2]
        assert np.abs(got - rgb).max() <= 3, (i, got, rgb)


def s15fixed16(*values: float) -> bytes:
    return b"".join(round(v * 65536).to_bytes(4, "big", signed=True) for v in values)


def rgb_matrix_profile(description: str, primaries: list[tuple[float, float, float]], gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 display profile (matrix and gamma curves), written by hand from the ICC spec: the
    primaries' D50 XYZ columns for R, G and B."""
    text = description.encode() + b"\0"
    tags = {
        b"desc": b"desc" + bytes(4) + len(text).to_bytes(4, "big") + text + bytes(4 + 4 + 2 + 1 + 67),
        b"wtpt": b"XYZ " + bytes(4) + s15fixed16(0.9642, 1.0, 0.8249),
        b"cprt": b"text" + bytes(4) + b"none\0",
        **{sig: b"XYZ " + bytes(4) + s15fixed16(*xyz) for sig, xyz in zip((b"rXYZ", b"gXYZ", b"bXYZ"), primaries)},
        **{
            sig: b"curv" + bytes(4) + (1).to_bytes(4, "big") + round(gamma * 256).to_bytes(2, "big") + bytes(2)
            for sig in (b"rTRC", b"gTRC", b"bTRC")
        },
    }
    table_size = 4 + 12 * len(tags)
    offset, entries, data = 128 + table_size, b"", b""
    for sig, body in tags.items():
        body += bytes(-len(body) % 4)  # each tag starts on a 4-byte boundary
        entries += sig + (offset + len(data)).to_bytes(4, "big") + len(body).to_bytes(4, "big")
        data += body
    size = 128 + table_size + len(data)
    header = (
        size.to_bytes(4, "big")
        + bytes(4)
        + bytes([2, 0x10, 0, 0])
        + b"mntr"
        + b"RGB "
        + b"XYZ "
        + bytes(12)
        + b"acsp"
        + bytes(4 + 4 + 4 + 4 + 8 + 4)
        + s15fixed16(0.9642, 1.0, 0.8249)
        + bytes(4 + 44)
    )
    assert len(header) == 128
    return header + len(tags).to_bytes(4, "big") + entries + data


# sRGB's primaries as D50 XYZ (the sRGB ICC profile's rXYZ, gXYZ, bXYZ)
SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_embedded_colour_profile_is_applied(tmp_path, fmt):
    """Stored values mean what the file's ICC profile says, as browsers show them: here a profile whose red
    channel holds sRGB's green primary and whose green holds its red. The values were taken as sRGB (an
    iPhone's Display P3 photo came out up to 64/255 off); an sRGB profile changes nothing."""
    swapped = rgb_matrix_profile("red and green swapped", [SRGB_GREEN, SRGB_RED, SRGB_BLUE])
    img = Image.new("RGB", (32, 16), (255, 0, 0))
    img.paste((0, 0, 255), (16, 0, 32, 16))
    options = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    out = load_rgb(saved(img, tmp_path / f"swapped.{fmt.lower()}", icc_profile=swapped, **options))
    assert np.abs(pixels(out)[8, 4] - (0, 255, 0)).max() <= 8, pixels(out)[8, 4]  # shown green, not red
    assert np.abs(pixels(out)[8, 28] - (0, 0, 255)).max() <= 8, pixels(out)[8, 28]  # blue stays blue
    rgba = img.convert("RGBA")  # with alpha too, before compositing over white
    assert (
        np.abs(
            pixels(load_rgb(saved(rgba, tmp_path / "swapped-rgba.png", icc_profile=swapped)))[8, 4] - (0, 255, 0)
        ).max()
        <= 8
    )

    palette = img.quantize(4)  # a palette image with the profile: its colours converted too
    assert (
        np.abs(
            pixels(load_rgb(saved(palette, tmp_path / "swapped-p.png", icc_profile=swapped)))[8, 4] - (0, 255, 0)
        ).max()
        <= 8
    )
    keyed = saved(img, tmp_path / "swapped-keyed.png", icc_profile=swapped, transparency=(0, 0, 255))
    assert pixels(load_rgb(keyed))[8, 28].tolist() == [255, 255, 255]  # the key's pixels: white, not black

    noise = noise_image()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert np.array_equal(pixels(load_rgb(saved(noise, tmp_path / "srgb.png", icc_profile=srgb))), pixels(noise))
    broken = saved(noise, tmp_path / "broken-profile.png", icc_profile=b"not a profile at all")
    assert np.array_equal(pixels(load_rgb(broken)), pixels(noise))  # an unreadable profile: taken as stored


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    gradient = np.linspace(0, 65535, 32 * 8).round().astype(np.uint16).reshape(8, 32)
    path = saved(Image.fromarray(gradient), tmp_path / "grey16.png")
    assert Image.open(path).mode.startswith("I")
    out = pixels(load_rgb(path))
    expected = np.rint(gradient / 257.0).astype(int)
    assert np.array_equal(out[..., 0], expected)
    assert np.array_equal(out[..., 0], out[..., 1])
    assert np.array_equal(out[..., 1], out[..., 2])
    assert out.min() == 0
    assert out.max() == 255
    assert abs(out.mean() - 127.5) < 1  # Pillow's own convert('L') would leave nearly all of it at 255


def test_16_bit_greyscale_with_a_colour_key_is_composited_over_white(tmp_path):
    """Its transparent value (a 16-bit key) came out grey, where every other transparent image is white."""
    values = np.full((4, 6), 30000, np.uint16)
    values[0] = 1234  # the key: 5 grey levels once scaled, were it opaque
    path = saved(Image.fromarray(values), tmp_path / "keyed16.png", transparency=1234)
    assert Image.open(path).info["transparency"] == 1234
    out = pixels(load_rgb(path))
    assert (out[0] == 255).all() and (out[1:] == round(30000 / 257)).all()


def test_32_bit_integer_greyscale_uses_the_16_bit_range_and_skips_what_lies_beyond():
    """Mode 'I' is how Pillow decodes 16-bit PNG and TIFF. Values beyond 0..65535 (a 32-bit or signed image)
    were clipped: a 0..2^31 ramp came out almost all white, a signed one half black. Skipped, as floats are."""
    values = np.array([[0, 257, 32896, 65535]], dtype=np.int32)
    out = pixels(to_rgb(Image.fromarray(values)))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    for beyond in ([[0, 70000]], [[-5, 100]]):
        with pytest.raises(ImageSkipped, match="beyond 16 bits") as info:
            to_rgb(Image.fromarray(np.array(beyond, dtype=np.int32)))
        assert info.value.reason == UNSUPPORTED


def test_a_32_bit_tiff_is_skipped_whatever_its_values():
    """Pillow decodes a 32-bit integer TIFF to mode 'I', as it does 16-bit PNGs: one holding 0..255 was
    scaled as 16-bit values (200 became 1, a black image). Its bits per sample say it is not 16-bit; a
    16-bit TIFF still loads, scaled."""
    for dtype, expected in ((np.int32, None), (np.uint16, 1)):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8), 200, dtype=dtype)).save(buffer, format="TIFF")
        if expected is None:
            with pytest.raises(ImageSkipped, match="32-bit integer pixels") as info:
                load_rgb(buffer.getvalue())
            assert info.value.reason == UNSUPPORTED
        else:
            assert pixels(load_rgb(buffer.getvalue()))[0, 0].tolist() == [expected] * 3  # 200 * 255 / 65535


def greyscale_tiff(values: np.ndarray, photometric: int, orientation: int = 1) -> bytes:
    """An uncompressed greyscale TIFF written by hand: Pillow's writer does not store 16-bit min-is-white."""
    height, width = values.shape
    data = values.astype("<u2" if values.dtype == np.uint16 else "u1").tobytes()
    bits = 8 * values.dtype.itemsize
    entries = [(256, width), (257, height), (258, bits), (259, 1), (262, photometric), (273, 8), (274, orientation)]
    entries += [(277, 1), (278, height), (279, len(data))]
    ifd = struct.pack("<H", len(entries))
    for tag, value in entries:  # tags in ascending order; offsets and byte counts as LONG, the rest SHORT
        long = tag in (273, 279)
        ifd += struct.pack("<HHII", tag, 4, 1, value) if long else struct.pack("<HHIHH", tag, 3, 1, value, 0)
    return b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd + struct.pack("<I", 0)


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_16_bit_min_is_white_tiff_reads_as_its_8_bit_twin(orientation):
    """PhotometricInterpretation 0 (0 is white): Pillow inverts it as it reads 8-bit TIFFs, not 16-bit ones,
    so a 16-bit scan of a page came out as its negative. Pillow's 8-bit reading is the reference."""
    eight = np.array([[0, 10, 200], [255, 128, 3]], np.uint8)
    sixteen = eight.astype(np.uint16) * 257  # the same levels on 16 bits
    reference = pixels(load_rgb(greyscale_tiff(eight, 0, orientation)))
    assert reference[..., 0].tolist() == (255 - eight if orientation == 1 else np.rot90(255 - eight, -1)).tolist()
    assert np.array_equal(pixels(load_rgb(greyscale_tiff(sixteen, 0, orientation))), reference)
    black_is_zero = pixels(load_rgb(greyscale_tiff(sixteen, 1, orientation)))
    assert np.array_equal(black_is_zero, 255 - reference)


def test_palette_png_with_a_transparent_index(tmp_path):
    img = Image.new("P", (8, 8))
    img.putpalette([0, 0, 0, 0, 255, 0, 200, 30, 40] + [0] * (253 * 3))
    data = np.zeros((8, 8), np.uint8)  # index 0: black in the palette, but transparent
    data[:, 4:] = 1
    data[6:, :] = 2
    img.putdata(data.flatten().tolist())
    path = saved(img, tmp_path / "palette.png", transparency=0)
    out = pixels(load_rgb(path))
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent comes out white, not black
    assert out[0, 5].tolist() == [0, 255, 0]
    assert out[7, 0].tolist() == [200, 30, 40]


def test_palette_png_with_partial_alpha(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    img.putdata([0, 1])
    path = saved(img, tmp_path / "palette_alpha.png", transparency=bytes([255, 128]))
    out = pixels(load_rgb(path))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert np.abs(out[0, 1] - (127, 127, 255)).max() <= 1  # half-transparent blue over white


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = np.array([[[0, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128], [10, 200, 30, 0]]], np.uint8)
    out = pixels(load_rgb(saved(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]
    assert np.abs(out[0, 2] - 127).max() <= 1
    assert out[0, 3].tolist() == [255, 255, 255]
    la = np.array([[[0, 0], [100, 255]]], np.uint8)
    out = pixels(load_rgb(saved(Image.fromarray(la, "LA"), tmp_path / "la.png")))
    assert out[0].tolist() == [[255, 255, 255], [100, 100, 100]]


def test_greyscale_and_bilevel_become_rgb(tmp_path):
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    out = pixels(load_rgb(saved(grey, tmp_path / "grey.png")))
    assert np.array_equal(out[..., 2], pixels(grey))
    bilevel = grey.convert("1")
    out = load_rgb(saved(bilevel, tmp_path / "bilevel.png"))
    assert out.mode == "RGB"
    assert set(np.unique(pixels(out))) <= {0, 255}


# --- resizing and size checks ---


def test_resize_cover_crop_matches_resize_then_centre_crop():
    img = noise_image(100, 50)
    out = resize_cover_crop(img, 32, 32)  # scale 0.64 -> 64 x 32, crop 16 px off each side
    expected = img.resize((64, 32), Image.Resampling.BICUBIC).crop((16, 0, 48, 32))
    assert np.array_equal(pixels(out), pixels(expected))
    small = noise_image(10, 10)
    out = resize_cover_crop(small, 32, 48)  # upscale 4.8 -> 48 x 48, crop 8 rows top and bottom
    expected = small.resize((48, 48), Image.Resampling.BICUBIC).crop((0, 8, 48, 40))
    assert np.array_equal(pixels(out), pixels(expected))
    same = resize_cover_crop(img, 50, 100)
    assert np.array_equal(pixels(same), pixels(img))


def test_resize_cover_crop_truncates_the_scaled_side_as_the_official_transform():
    """Official: the side with the larger scale takes the target, the other int(side * scale). A 1000x999
    (WxH) image at 512x512: 999 takes 512, 1000 becomes int(512.51) = 512, so no crop at all (rounding
    made it 513 and cropped a column); a 628x600 at height 512, width 491: 600 -> 512 is the larger scale
    (0.8533 against 0.7818), 628 -> int(535.89) = 535 (rounding: 536), cropped 22 px from the left."""
    img = noise_image(1000, 999)
    expected = img.resize((512, 512), Image.Resampling.BICUBIC)
    assert np.array_equal(pixels(resize_cover_crop(img, 512, 512)), pixels(expected))
    img = noise_image(628, 600)
    expected = img.resize((535, 512), Image.Resampling.BICUBIC).crop((22, 0, 513, 512))
    assert np.array_equal(pixels(resize_cover_crop(img, 512, 491)), pixels(expected))


def test_resize_cover_crop_keeps_the_centre():
    data = np.zeros((30, 90, 3), np.uint8)
    data[:, 30:60] = (0, 255, 0)  # the middle third is green
    out = pixels(resize_cover_crop(Image.fromarray(data), 20, 20))
    assert (out[:, 4:16] == (0, 255, 0)).all()


@pytest.mark.parametrize("size", [(333, 1000), (1000, 333), (1023, 767), (7, 3), (2048, 511), (640, 640)])
def test_resize_cover_crop_always_hits_the_bucket(size):
    img = Image.new("L", size)  # one channel keeps the many resizes quick; the geometry is the same
    for resolution in (256, 48, 32):
        for key, (h, w) in bucket_table(resolution).items():
            assert resize_cover_crop(img, h, w).size == (w, h), (resolution, key)


def test_check_size():
    img = Image.new("RGB", (100, 60))  # 100 wide, 60 high
    assert check_size(img, 60, 100, upscale=False) is False
    assert check_size(img, 40, 80, upscale=False) is False
    for h, w in [(64, 64), (32, 128)]:
        with pytest.raises(ImageSkipped) as info:
            check_size(img, h, w, upscale=False)
        assert info.value.reason == TOO_SMALL
        assert check_size(img, h, w, upscale=True) is True


def test_check_aspect():
    table = bucket_table(1024)
    check_aspect(Image.new("RGB", (10, 40)), table)  # h/w = 4: the last bucket
    check_aspect(Image.new("RGB", (40, 10)), table)
    for size in [(10, 41), (41, 10)]:
        with pytest.raises(ImageSkipped) as info:
            check_aspect(Image.new("RGB", size), table)
        assert info.value.reason == BAD_ASPECT


def test_skip_messages_name_the_file_and_its_size():
    with pytest.raises(ImageSkipped, match=r"h\.png has 0 bytes"):
        load_rgb(b"", name="h.png")  # bytes read from an input: the input's name, not "<bytes>"
    # .3g printed 4, inside [0.25, 4]; the size WxH, as the too-small message gives it (it was HxW here)
    with pytest.raises(ImageSkipped, match=r"512x2049 \(WxH; height/width 4\.002\)"):
        check_aspect(Image.new("RGB", (512, 2049)), bucket_table(256))
