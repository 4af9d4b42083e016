"""Input edge cases a user meets in real data: odd crops, colour keys, 16-bit PGMs, tars cut or linked in
unusual ways, manifests with spaces or a byte-order mark, whitespace in captions, over-long captions, an edited
shard and the rounding of decoded pixels. The code handled each already; a mutation run (twenty-third
session) found that no test would have noticed it going wrong, which each docstring describes."""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_dataset import make_dataset
from test_prepare import add_link, add_member, noise, options, png_bytes, write_image

from pixart.data.dataset import FeatureDataset
from pixart.data.images import UNREADABLE, load_rgb, resize_cover_crop
from pixart.data.items import BAD_TAR, Blob, InputError, Item
from pixart.data.prepare import prepare
from pixart.data.prepare_report import format_summary
from pixart.data.records import DamagedData
from pixart.data.shards import report_path
from pixart.data.sources import list_inputs
from pixart.encoders import SDVAE, T5Encoder
from pixart.encoders.codecs import to_uint8

MAX_LENGTH = 8  # tokens the tiny T5 keeps: "a cat" is 3 (with </s>), LONG is 11
LONG = "a red circle on the top left of the picture"


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


# --- images ---


def test_an_odd_leftover_is_cropped_as_the_official_centre_crop():
    """torchvision's CenterCrop (the official transform) starts the crop at int(round(leftover / 2)): 3 px
    over gives an offset of round(1.5) = 2. Truncating would give 1, every such image shifted a pixel from the
    official preparation's, whether it was resized first (70x64 -> 35x32) or was already at that size."""
    img = noise(32, 35, 0)  # 35 wide, 32 high: no resize for a 32x32 bucket, 3 columns over
    assert np.array_equal(pixels(resize_cover_crop(img, 32, 32)), pixels(img.crop((2, 0, 34, 32))))
    img = noise(64, 70, 1)  # scale 0.5: 35 x 32, 3 columns over
    expected = img.resize((35, 32), Image.Resampling.BICUBIC).crop((2, 0, 34, 32))
    assert np.array_equal(pixels(resize_cover_crop(img, 32, 32)), pixels(expected))
    tall = noise(70, 64, 2)  # the same down the rows: 32 x 35, cropped from row 2
    expected = tall.resize((32, 35), Image.Resampling.BICUBIC).crop((0, 2, 32, 34))
    assert np.array_equal(pixels(resize_cover_crop(tall, 32, 32)), pixels(expected))


def test_an_rgb_png_with_a_colour_key_is_put_on_white(tmp_path):
    """An RGB PNG may mark one colour transparent (a tRNS chunk), as a palette PNG marks an index: its keyed
    pixels would keep their key colour (black here), where every other transparent pixel comes out white."""
    data = np.full((4, 6, 3), (10, 200, 30), np.uint8)
    data[0] = 0  # the key colour
    path = tmp_path / "keyed.png"
    Image.fromarray(data).save(path, transparency=(0, 0, 0))
    assert Image.open(path).mode == "RGB" and Image.open(path).info["transparency"] == (0, 0, 0)
    out = pixels(load_rgb(path))
    assert (out[0] == 255).all()
    assert (out[1:] == (10, 200, 30)).all()


def test_a_16_bit_pgm_decoded_as_mode_i_loads_scaled():
    """A 16-bit PGM (maxval 65535) decodes to mode 'I' with no TIFF tags, so it is 16-bit: it must not be
    skipped as "16-bit integer pixels have no agreed range", as a 32-bit TIFF is, but scaled by 255/65535."""
    values = np.array([[0, 257, 32896, 65535]], dtype=">u2")
    data = b"P5\n4 1\n65535\n" + values.tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = pixels(load_rgb(data, name="grey16.pgm"))
    assert out[0].tolist() == [[0, 0, 0], [1, 1, 1], [128, 128, 128], [255, 255, 255]]


# --- WebDataset tars ---


def test_a_tar_without_end_blocks_keeps_a_last_member_that_ends_at_the_end_of_the_file(tmp_path):
    """A tar cut right after its last member (its data a whole number of blocks, the end-of-archive blocks
    gone, as a copy stopped at a block boundary leaves it) must not lose that last member as "cut short": every
    byte of it is there, and the sample would lose its caption. It is kept, and the missing end blocks are reported."""
    caption = b"a cat".ljust(512)  # exactly one block: the member ends at the file's end
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "cat.png", png_bytes(noise(32, 32, 1)))
        add_member(tar, "cat.txt", caption)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        info = tar.getmember("cat.txt")
        end = info.offset_data + info.size
    data = (tmp_path / "00000.tar").read_bytes()
    assert end % 512 == 0 and len(data) > end
    (tmp_path / "00000.tar").write_bytes(data[:end])
    inputs = list_inputs(tmp_path / "00000.tar")
    [item] = inputs.items
    assert item.name == "00000.tar/cat.png" and item.fields() == {"alt": "a cat"}
    assert [(p.path, p.reason, p.message) for p in inputs.problems] == [
        ("00000.tar", BAD_TAR, "damaged after member cat.txt (no end-of-archive block); the members up to it are kept")
    ]


def test_a_hard_link_to_a_member_stored_twice_reads_its_last_copy(tmp_path):
    """A tar updated with `tar -rf` holds a.png twice; a hard link b.png -> a.png stored after both is, as
    `tar -x` writes it, the file a.png is then: the second copy, not the first (stale) one."""
    old, new = png_bytes(noise(32, 32, 1)), png_bytes(noise(32, 32, 2))
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "a.png", old)
        add_member(tar, "a.png", new)
        add_link(tar, "b.png", "a.png", kind=tarfile.LNKTYPE)
    read = {item.name: item.image.read() for item in list_inputs(tmp_path / "00000.tar").items}
    assert read == {"00000.tar/a.png": new, "00000.tar/b.png": new}


def test_a_tar_holding_no_images_says_it_holds_no_inputs(tmp_path):
    """A whole, readable tar of captions only (no image member) gets the error naming what an input must hold."""
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "cat.txt", b"a cat")
        add_member(tar, "dog.txt", b"a dog")
    with pytest.raises(InputError, match="holds no inputs"):
        list_inputs(tmp_path / "00000.tar")


def test_an_absolute_link_in_a_tar_is_not_followed_to_a_member(tmp_path):
    """A symbolic link a.png -> /b.png names the system's /b.png, which `tar -x` leaves dangling: read as the
    tar's own b.png (the leading / dropped), it would be a sample the extracted data does not hold."""
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "b.png", png_bytes(noise(32, 32, 1)))
        add_link(tar, "a.png", "/b.png")
    inputs = list_inputs(tmp_path / "00000.tar")
    assert [item.name for item in inputs.items] == ["00000.tar/b.png"]
    assert [(p.path, p.reason) for p in inputs.problems] == [("00000.tar/a.png", UNREADABLE)]
    assert "a link to /b.png, which leads to no file member" in inputs.problems[0].message


# --- manifests and captions ---


def test_a_csv_manifest_with_spaces_around_the_path_finds_the_image(tmp_path):
    """CSV written by hand as `cat.png, a cat` (spaces after the commas, or before them): the path cell
    ' cat.png ' names no file unless stripped, and every such row would be skipped as unreadable."""
    noise(32, 32, 1).save(tmp_path / "cat.png")
    (tmp_path / "m.csv").write_text("path, alt\n cat.png , a cat\n")
    inputs = list_inputs(tmp_path / "m.csv")
    [item] = inputs.items
    assert item.name == "cat.png" and not inputs.problems
    assert item.image.read() == (tmp_path / "cat.png").read_bytes()


def test_manifests_starting_with_a_byte_order_mark_list_every_row(tmp_path):
    """Excel's "CSV UTF-8" and some editors start the file with a UTF-8 byte-order mark: read without it, the
    CSV's first column is '\\ufeffpath' (no row has an image column), and a JSONL's first row is not JSON."""
    for i in range(2):
        noise(32, 32, i).save(tmp_path / f"{i}.png")
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        writer.writerows([["path", "alt"], ["0.png", "a cat"], ["1.png", "a dog"]])
    rows = [{"path": "0.png", "alt": "a cat"}, {"path": "1.png", "alt": "a dog"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8-sig")
    for name in ("m.csv", "m.jsonl"):
        assert (tmp_path / name).read_bytes().startswith(b"\xef\xbb\xbf")
        inputs = list_inputs(tmp_path / name)
        assert not inputs.problems, name
        assert [(item.name, item.fields()["alt"]) for item in inputs.items] == [("0.png", "a cat"), ("1.png", "a dog")]


def test_a_json_sidecar_wins_over_the_txt_beside_it(tmp_path):
    """The folder rule (pixart.data.sources): cat.txt holds `alt`, and cat.json, beside it, wins over it.
    Read the other way round, the .txt would replace the .json's `alt` caption."""
    write_image(tmp_path, "cat.png", noise(32, 32, 1), caption="A")
    (tmp_path / "cat.json").write_text(json.dumps({"alt": "B", "dense": "C"}))
    [item] = list_inputs(tmp_path).items
    assert item.fields() == {"alt": "B", "dense": "C"}


def test_a_json_caption_that_is_not_text_hides_no_txt_caption_and_is_named(tmp_path):
    """{"alt": 5} in cat.json replaced cat.txt's good caption and was then reported as "no 'alt' caption"."""
    from pixart.data.images import ImageSkipped

    write_image(tmp_path, "cat.png", noise(32, 32, 1), caption="a cat")
    (tmp_path / "cat.json").write_text(json.dumps({"alt": 5, "dense": ["a", "b"]}))
    [item] = list_inputs(tmp_path).items
    assert item.captions(["alt"]) == {"alt": "a cat"}  # the .txt's, not hidden by a number
    with pytest.raises(ImageSkipped, match=re.escape("""the 'dense' caption is list ["a", "b"], not text""")):
        item.captions(["dense"])
    long_row = Item("x.png", Blob(Path("x.png")), row={"alt": {"en": "a cat " * 20}})
    shown = json.dumps({"en": "a cat " * 20})[:37] + "..."  # cut to 40 characters
    with pytest.raises(ImageSkipped, match=re.escape(f"the 'alt' caption is dict {shown}, not text")):
        long_row.captions(["alt"])


def test_a_file_name_with_a_newline_is_one_line_of_the_printed_report():
    """report.json escapes it; the summary printed it raw, splitting its line in two."""
    report = {
        "shards": {"done": 1, "total": 1},
        "complete": True,
        "samples": 0,
        "inputs": 1,
        "buckets": {},
        "truncated_captions": {},
        "skip_reasons": {"not an image": 1},
        "skipped": [{"path": "odd\nname.png", "reason": "not an image", "message": "odd\nname.png: no format"}],
    }
    lines = format_summary(report, "out").splitlines()
    assert lines[-1] == "  odd\\nname.png: not an image (odd\\nname.png: no format)"
    assert format_summary({**report, "skipped": [{**report["skipped"][0], "path": "café ü.png"}]}, "out").endswith(
        "  café ü.png: not an image (odd\\nname.png: no format)"
    )  # printable text as it is


def test_captions_are_stripped_of_surrounding_whitespace():
    """A JSONL row's caption "  a cat \\n" is stored without its spaces and newline: kept, they would reach
    the records, and two rows differing only there would read as two captions."""
    item = Item("x.png", Blob(Path("x.png")), row={"alt": "  a cat \n", "dense": "\ta dog"})
    assert item.captions(["alt", "dense"]) == {"alt": "a cat", "dense": "a dog"}


def test_over_long_captions_are_counted_in_every_report(tmp_path, model_dirs):
    """Of three captions one is longer than the text encoder keeps: the shard's report, the merged report.json and
    its summary count that one (counting every caption encoded, or none, passed every other test); and a
    caption with surrounding whitespace is stored stripped."""
    t5, vae = model_dirs
    text = T5Encoder(t5, max_length=MAX_LENGTH)
    assert text.encode(["a cat", LONG]).dropped == [0, 11 - MAX_LENGTH]
    rows = [{"path": "0.png", "alt": "  a cat \n"}, {"path": "1.png", "alt": LONG}, {"path": "2.png", "alt": "a dog"}]
    for i in range(3):
        noise(40, 40, i).save(tmp_path / f"{i}.png")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    report = prepare(list_inputs(tmp_path / "m.jsonl"), out, options(), SDVAE(vae), text).report
    assert report["samples"] == 3 and report["shards"] == {"done": 1, "total": 1}
    assert json.loads(report_path(out, 0).read_text())["truncated"] == {"alt": 1}
    assert report["truncated_captions"] == {"alt": 1}
    assert json.loads((out / "report.json").read_text())["truncated_captions"] == {"alt": 1}
    summary = format_summary(report, out)
    assert "  1 'alt' captions were longer than the text encoder's max length (cut)" in summary
    data = FeatureDataset(out)
    captions = {data.record(i)["source"]: data.record(i)["captions"]["alt"] for i in range(len(data))}
    assert captions == {"0.png": "a cat", "1.png": LONG, "2.png": "a dog"}


def test_a_short_prompt_drops_no_tokens(model_dirs):
    """`dropped` counts the tokens cut from each prompt: a prompt shorter than max_length must give 0, not a
    negative count (3 - 8 = -5), which a caller summing or testing it ("if dropped") took for tokens cut."""
    text = T5Encoder(model_dirs[0], max_length=MAX_LENGTH)
    full = len(text.tokenizer(LONG)["input_ids"])
    assert full == 11
    assert text.encode(["a cat", "", LONG], padding="longest").dropped == [0, 0, full - MAX_LENGTH]


# --- shards and pixels ---


def test_a_shard_whose_first_caption_offset_was_edited_is_refused(tmp_path):
    """A shard's first caption offset edited in place to 2 (its size unchanged, the offsets still in order)
    is refused: read, the first sample's caption would lose its first two feature rows without a word."""
    make_dataset(tmp_path)
    path = tmp_path / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    header_size = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8 : 8 + header_size])["text_offsets.dense"]["data_offsets"]
    at = 8 + header_size + start
    offsets = np.frombuffer(bytes(data[at : 8 + header_size + end]), dtype=np.int64).copy()
    assert offsets[0] == 0 and offsets[1] > 2  # the first caption has more than 2 rows: still in order
    offsets[0] = 2
    data[at : at + offsets.nbytes] = offsets.tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedData, match="the 'dense' caption offsets do not match its features"):
        FeatureDataset(tmp_path)


def test_decoded_pixels_are_rounded_as_diffusers_postprocesses_them():
    """to_uint8 must give the bytes diffusers' VaeImageProcessor gives (numpy_to_pil rounds): truncating
    would make every pixel up to one level darker, 0.0 (mid grey) 127 instead of 128."""
    from diffusers.image_processor import VaeImageProcessor

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2.2 - 1.1  # a little beyond [-1, 1]: clamped
    images[0, :, 0, 0] = torch.tensor([0.0, -1.0, 1.0])
    reference = VaeImageProcessor().postprocess(images.clone(), output_type="np")
    expected = (reference * 255).round().astype(np.uint8)
    out = to_uint8(images)
    assert out.dtype == torch.uint8 and out.shape == (2, 8, 8, 3)
    assert out[0, 0, 0].tolist() == [128, 0, 255]
    assert np.array_equal(out.numpy(), expected)
