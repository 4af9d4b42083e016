"""pixart caption: a tiny random LLaVA end to end, prompts, resuming, the output manifest, caption statistics."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_t5, save_tiny_tokenizer, tiny_vae

from pixart.cli.caption import prepare_fields
from pixart.cli.main import main
from pixart.data.caption import (
    FAILURE_STREAK,
    FALLBACK_TEMPLATE,
    PROMPT,
    PROMPT_WITH_ALT,
    CaptionError,
    CaptionOptions,
    LlavaCaptioner,
    caption_inputs,
    caption_prompt,
    default_output,
    pad_to_square,
)
from pixart.data.caption_stats import collect, field_stats, format_table, load_spacy, words
from pixart.data.dataset import FeatureDataset
from pixart.data.items import BAD_CAPTION, BAD_SIDECAR, UNEXPECTED, has_text
from pixart.data.manifests import manifest_rows
from pixart.data.prepare import prepare
from pixart.data.prepare_options import PrepareOptions
from pixart.data.sources import list_inputs
from pixart.encoders import SDVAE, T5Encoder


def noise(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def image_folder(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        noise(64, 48 + 8 * i, i).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a red circle {i}")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "broken.txt").write_text("a broken image")
    return folder


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the real model path ---


def test_tiny_llava_end_to_end_then_prepare(tmp_path, llava_dir, capsys, monkeypatch):
    folder = image_folder(tmp_path / "in")
    args = ["caption", str(folder), "--model", str(llava_dir), "--batch-size", "2", "--max-new-tokens", "6"]
    assert main([*args, "--device", "cpu", "--no-progress"]) == 0
    out = folder / "dense.jsonl"
    assert default_output(folder) == out
    printed = capsys.readouterr().out
    assert "broken.png: not an image (broken.png: no image format recognised)" in printed  # named, not <bytes>
    rows = read_rows(out)
    assert [row["path"] for row in rows] == ["0.png", "1.png", "2.png"]
    assert all(has_text(row["dense"]) for row in rows)  # gibberish, but words
    assert [row["alt"] for row in rows] == [f"a red circle {i}" for i in range(3)]  # the original caption kept
    assert f"next: pixart prepare {out} --fields alt,dense ..." in printed

    import pixart.data.caption as caption_module

    reads = []  # the manifest, read to find where to resume: once a run (a large one takes a while)
    monkeypatch.setattr(caption_module, "manifest_rows", lambda path: reads.append(path) or manifest_rows(path))
    assert main([*args, "--device", "cpu", "--no-progress"]) == 0  # a rerun: nothing left but the broken image
    # ... which is skipped again, without loading the model for it (a 7B model, on every rerun)
    assert "captioned 0 images now, 3 were done already, 1 skipped; the model was not loaded" in capsys.readouterr().out
    assert reads == [out]
    assert read_rows(out) == rows
    # resumed with another model or prompt, its rows would mix two kinds of captions
    for other, named in (("--max-new-tokens=7", "max_new_tokens 6 there, 7 now"), ("--with-alt", "with_alt False")):
        error = main_error([*args[:-2], other], capsys)
        assert f"--out {out} holds captions made with other settings ({named}" in error
        assert "dense.jsonl.settings.json beside it records" in error

    save_tiny_t5(tmp_path / "t5")
    tiny_vae().save_pretrained(tmp_path / "vae")
    options = PrepareOptions(resolution=32, fields=["alt", "dense"], shard_size=2, progress=False)
    encoders = SDVAE(tmp_path / "vae"), T5Encoder(tmp_path / "t5")
    report = prepare(list_inputs(out), tmp_path / "features", options, *encoders).report
    assert report["samples"] == 3 and not report["skipped"]
    data = FeatureDataset(tmp_path / "features", {"dense": 1.0})
    assert [data[i]["caption"] for i in range(3)] == [row["dense"] for row in rows]


def test_a_run_that_captions_nothing_fails_and_leaves_no_empty_manifest(tmp_path, llava_dir, capsys):
    """Every image skipped: an empty dense.jsonl, exit 0, and a "next: pixart prepare" that failed on it."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["caption", str(folder), "--model", str(llava_dir), "--device", "cpu", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert f"no image of {folder} could be captioned" in captured.err and "next:" not in captured.out
    assert "broken.png: not an image" in captured.out and not (folder / "dense.jsonl").exists()


def main_error(args: list[str], capsys) -> str:
    assert main([*args, "--device", "cpu", "--no-progress"]) == 2
    return capsys.readouterr().err


def test_prompts_and_chat_template(llava_dir):
    assert caption_prompt() == PROMPT == "Describe this image and its style in a very detailed manner"
    assert caption_prompt("a  cat\non a mat") == PROMPT_WITH_ALT.format(alt="a cat on a mat")
    assert caption_prompt("a cat").startswith('Given the caption of this image "a cat", describe this image')
    captioner = LlavaCaptioner(llava_dir, max_new_tokens=3)
    assert captioner.chat(PROMPT) == f"USER: <image> {PROMPT} ASSISTANT:"
    captioner.processor.chat_template = None  # a processor saved without a template
    assert captioner.chat(PROMPT) == FALLBACK_TEMPLATE.format(prompt=PROMPT)
    captions = captioner([noise(40, 50, 0), noise(60, 30, 1)], [PROMPT, caption_prompt("a longer alt text here")])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


# --- the loop, with a fake model ---


class FakeCaptioner:
    """Records what it was asked; captions every image with its size."""

    def __init__(self):
        self.prompts: list[str] = []
        self.batches: list[int] = []

    def __call__(self, images, prompts):
        self.prompts += prompts
        self.batches.append(len(images))
        return [f"an image of {img.width} by {img.height}" for img in images]


def test_with_alt_quotes_the_original_caption(tmp_path):
    folder = image_folder(tmp_path / "in", n=2)
    noise(64, 64, 9).save(folder / "nocaption.png")
    fake = FakeCaptioner()
    options = CaptionOptions(with_alt=True, batch_size=8, progress=False)
    result = caption_inputs(list_inputs(folder), tmp_path / "out.jsonl", fake, options)
    assert result.written == 3 and [s["path"] for s in result.skipped] == ["broken.png"]
    assert fake.prompts == [caption_prompt("a red circle 0"), caption_prompt("a red circle 1"), PROMPT]
    rows = read_rows(tmp_path / "out.jsonl")
    assert rows[2] == {"path": "in/nocaption.png", "dense": "an image of 64 by 64"}  # paths relative to the manifest


def test_an_empty_caption_is_not_written_and_is_asked_for_again(tmp_path):
    """A captioner that answered "" (or whitespace) for an image: the row was written and counted as
    captioned, so no rerun asked again, and prepare then skipped the image for a missing caption."""
    from pixart.data.caption import EMPTY_CAPTION

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        noise(32, 32, i).save(folder / f"a{i}.png")
    out, options = tmp_path / "out.jsonl", CaptionOptions(progress=False)
    result = caption_inputs(list_inputs(folder), out, lambda images, prompts: ["", " \n", "a cat"], options)
    assert result.written == 1 and [(e["path"], e["reason"]) for e in result.skipped] == [
        ("a0.png", EMPTY_CAPTION),
        ("a1.png", EMPTY_CAPTION),
    ]
    assert read_rows(out) == [{"path": "in/a2.png", "dense": "a cat"}]
    result = caption_inputs(list_inputs(folder), out, lambda images, prompts: ["a dog"] * len(images), options)
    assert result.written == 2 and result.already_done == 1 and not result.skipped
    assert sorted(row["dense"] for row in read_rows(out)) == ["a cat", "a dog", "a dog"]


def unreadable_sidecars(folder: Path) -> Path:
    """a.png with a Latin-1 .txt, b.png with a .json that is not JSON, c.png with no caption file at all."""
    folder.mkdir()
    for i, key in enumerate("abc"):
        noise(32, 32, i).save(folder / f"{key}.png")
    (folder / "a.txt").write_bytes(b"caf\xe9")
    (folder / "b.json").write_text("{not json")
    return folder


def test_unreadable_old_captions_skip_an_image_only_with_alt(tmp_path, unloadable_model, monkeypatch, capsys):
    """Without --with-alt an image whose old caption file could not be read was skipped, never re-captioned,
    while one with no caption file at all was captioned; re-captioning is for exactly the bad alt-texts."""
    inputs = list_inputs(unreadable_sidecars(tmp_path / "in"))
    plain = caption_inputs(inputs, tmp_path / "plain.jsonl", FakeCaptioner(), CaptionOptions(progress=False))
    assert plain.written == 3 and not plain.skipped
    assert [(w["path"], w["reason"]) for w in plain.warnings] == [("a.png", BAD_CAPTION), ("b.png", BAD_SIDECAR)]
    assert [row["path"] for row in read_rows(tmp_path / "plain.jsonl")] == ["in/a.png", "in/b.png", "in/c.png"]

    with_alt = CaptionOptions(with_alt=True, progress=False)
    quoted = caption_inputs(inputs, tmp_path / "alt.jsonl", FakeCaptioner(), with_alt)
    assert quoted.written == 1 and not quoted.warnings
    assert [(s["path"], s["reason"]) for s in quoted.skipped] == [("a.png", BAD_CAPTION), ("b.png", BAD_SIDECAR)]
    assert quoted.skipped[0]["message"] == "a.txt: unexpected end of data at byte 3"
    assert quoted.skipped[1]["message"].startswith("b.json: not JSON")

    import pixart.data.caption as caption_module

    monkeypatch.setattr(caption_module, "LlavaCaptioner", lambda *args, **kwargs: FakeCaptioner())
    args = ["caption", str(tmp_path / "in"), "--model", str(unloadable_model), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "captioned 3 images now, 0 were done already, 0 skipped, 2 without their old captions" in printed
    assert "    a.png: caption not UTF-8 (a.txt: unexpected end of data at byte 3)" in printed
    assert "    b.png: unreadable caption file (b.json: not JSON" in printed


def test_resume_after_a_kill_mid_write(tmp_path):
    folder = image_folder(tmp_path / "in", n=5)
    out = tmp_path / "dense.jsonl"
    inputs = list_inputs(folder)
    whole = tmp_path / "whole.jsonl"
    caption_inputs(inputs, whole, FakeCaptioner(), CaptionOptions(batch_size=2, progress=False))
    first = caption_inputs(inputs, out, FakeCaptioner(), CaptionOptions(batch_size=2, progress=False, stop_after=1))
    assert first.written == 2
    with open(out, "a") as f:
        f.write('{"path": "2.png", "de')  # killed in the middle of a line
    fake = FakeCaptioner()
    again = caption_inputs(inputs, out, fake, CaptionOptions(batch_size=2, progress=False))
    assert again.already_done == 2 and again.written == 3 and fake.batches == [2, 1]
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [f"in/{i}.png" for i in range(5)]
    assert out.read_text() == whole.read_text()


def test_inputs_named_through_a_link_are_written_plainly_and_resumed_under_any_name(tmp_path, monkeypatch):
    """The output's folder was resolved and the images' paths were not: through a linked folder (a cluster's
    /home or $SCRATCH) every row read ../../link/images/0.png, and a rerun naming the folder another way
    captioned every image again and appended a second row for each (prepare then trained on both)."""
    real = image_folder(tmp_path / "real" / "images")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    linked = tmp_path / "link" / "images"
    first = caption_inputs(list_inputs(linked), linked / "dense.jsonl", FakeCaptioner(), CaptionOptions(progress=False))
    assert first.written == 3
    assert [r["path"] for r in read_rows(real / "dense.jsonl")] == ["0.png", "1.png", "2.png"]
    monkeypatch.chdir(tmp_path / "real")  # the same folder by its own name, relative
    fake = FakeCaptioner()
    again = caption_inputs(
        list_inputs(Path("images")), Path("images/dense.jsonl"), fake, CaptionOptions(progress=False)
    )
    assert (again.already_done, again.written, fake.batches) == (3, 0, [])
    assert len(read_rows(real / "dense.jsonl")) == 3
    # the output's folder itself a link to another disk, the images outside it: a path relative to the folder
    # as typed (../images/0.png) names another file, as the kernel takes ../ from the link's target
    (tmp_path / "disk").mkdir()
    (tmp_path / "real" / "out").symlink_to(tmp_path / "disk")
    out = Path("out/dense.jsonl")
    assert (
        caption_inputs(list_inputs(Path("images")), out, FakeCaptioner(), CaptionOptions(progress=False)).written == 3
    )
    written = list_inputs(out)  # as prepare reads the manifest
    assert not written.problems and all(item.image.path.is_file() for item in written.items), written.problems
    fake = FakeCaptioner()
    again = caption_inputs(list_inputs(Path("images")), out, fake, CaptionOptions(progress=False))
    assert (again.already_done, again.written) == (3, 0)


def test_an_input_failing_unforeseen_is_skipped_and_counted_as_prepare_does(tmp_path):
    """A manifest row whose path holds a NUL (a mangled export) raised ValueError from open(): a traceback,
    nothing of its batch written, and every rerun failed alike."""
    image_folder(tmp_path / "images", n=2)
    rows = [{"path": f"images/{i}.png", "alt": "a cat"} for i in range(2)] + [{"path": "images/bad\u0000.png"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = caption_inputs(
        list_inputs(manifest), tmp_path / "dense.jsonl", FakeCaptioner(), CaptionOptions(progress=False)
    )
    assert result.written == 2 and [s["reason"] for s in result.skipped] == [UNEXPECTED], result.skipped
    assert "ValueError: embedded null byte" in result.skipped[0]["message"]


def test_an_image_the_model_cannot_take_is_skipped_and_its_batch_mates_captioned(tmp_path):
    """The captioner failing on one image lost its whole batch, and every rerun stopped at the same batch;
    a model failing on every image (its own fault, not an image's) still stops the run with its error."""
    folder = image_folder(tmp_path / "in", n=3)
    noise(48, 64, 7).save(folder / "odd.png")
    (folder / "odd.txt").write_text("an odd one")

    class FailingOnWideImages(FakeCaptioner):
        def __call__(self, images, prompts):
            if any(img.height == 48 for img in images):  # odd.png alone
                raise RuntimeError("this image cannot be taken")
            return super().__call__(images, prompts)

    captioner, out = FailingOnWideImages(), tmp_path / "dense.jsonl"
    result = caption_inputs(list_inputs(folder), out, captioner, CaptionOptions(batch_size=8, progress=False))
    failed = [s for s in result.skipped if s["reason"] == UNEXPECTED]  # (broken.png is not an image at all)
    assert result.written == 3 and [s["path"] for s in failed] == ["odd.png"], result.skipped
    assert failed[0]["message"] == "RuntimeError: this image cannot be taken"
    assert captioner.batches == [1, 1, 1]  # the batch failed, then each image alone
    assert len(read_rows(out)) == 3

    def broken(images, prompts):
        raise RuntimeError("the model is broken")

    many = image_folder(tmp_path / "many", n=FAILURE_STREAK + 2)
    for batch_size in (16, 3):  # a streak within one batch, or over several
        options = CaptionOptions(batch_size=batch_size, progress=False)
        with pytest.raises(RuntimeError, match="the model is broken"):  # stopped, not every input skipped
            caption_inputs(list_inputs(many), tmp_path / f"other{batch_size}.jsonl", broken, options)

    class Unloadable(FakeCaptioner):
        def load(self):  # called before each batch: what fails here is no image's fault
            raise OSError("no weights in the model folder")

    with pytest.raises(OSError, match="no weights"):
        caption_inputs(list_inputs(folder), tmp_path / "unloaded.jsonl", Unloadable(), CaptionOptions(progress=False))


def test_a_thin_strip_is_padded_to_a_bounded_square():
    """A 1 x 60000 strip was padded to a 60000-pixel square (10.8 GB) before the processor shrank it."""
    strip = Image.new("RGB", (1, 60_000), (200, 10, 10))
    square = pad_to_square(strip, (0, 0, 0), max_side=4096)
    assert square.size == (4096, 4096) and strip.size == (1, 60_000)  # the input untouched
    assert square.getpixel((2047, 100)) == (200, 10, 10) and square.getpixel((0, 100)) == (0, 0, 0)  # centred
    small = Image.new("RGB", (30, 10))
    assert pad_to_square(small, (0, 0, 0)).size == (30, 30)  # under the bound: as before


def test_manifest_and_tar_inputs_keep_their_columns(tmp_path):
    (tmp_path / "img").mkdir()
    noise(64, 64, 0).save(tmp_path / "img" / "a.png")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        noise(48, 64, 1).save(tmp_path / "b.png")
        tar.add(tmp_path / "b.png", arcname="b.png")
        (tmp_path / "b.json").write_text(json.dumps({"caption": "a dog", "url": "http://example.com/b"}))
        tar.add(tmp_path / "b.json", arcname="b.json")
    rows = [{"image": "img/a.png", "caption": "a cat", "url": "http://example.com/a"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elsewhere = tmp_path / "captions" / "out.jsonl"
    caption_inputs(list_inputs(tmp_path / "m.jsonl"), elsewhere, FakeCaptioner(), CaptionOptions(progress=False))
    caption_inputs(list_inputs(tmp_path / "shard.tar"), elsewhere, FakeCaptioner(), CaptionOptions(progress=False))
    written = read_rows(elsewhere)
    assert [row.pop("dense") for row in written] == ["an image of 64 by 64", "an image of 64 by 48"]
    assert written == [
        {"path": "../img/a.png", "caption": "a cat", "url": "http://example.com/a", "alt": "a cat"},
        {"path": "../shard.tar/b.png", "caption": "a dog", "url": "http://example.com/b", "alt": "a dog"},
    ]
    items = list_inputs(elsewhere).items  # the manifest reads back, tar member included
    assert [item.captions(["alt", "dense"])["alt"] for item in items] == ["a cat", "a dog"]
    assert items[1].image.read()[:8] == b"\x89PNG\r\n\x1a\n"


# --- statistics ---

ALT = ["a cat", "A dog, a cat."]
DENSE = ["A small grey cat sits on a red mat.", "Don't panic: two dogs!"]


class FakeToken:
    def __init__(self, text: str, pos: str):
        self.text, self.pos_ = text, pos


class FakeNlp:
    """Tags a fixed list of words as nouns, like a spaCy pipeline's .pipe would."""

    NOUNS = {"cat", "dog", "mat", "dogs"}

    def pipe(self, texts):
        for text in texts:
            yield [FakeToken(w, "NOUN" if w.lower() in self.NOUNS else "X") for w in words(text)]


def test_stats_on_known_captions(tmp_path):
    assert words("Don't panic: two dogs!") == ["don't", "panic", "two", "dogs"]
    alt = field_stats("alt", ALT, missing=1)
    assert (alt.captions, alt.missing, alt.words_per_caption, alt.vocabulary) == (2, 1, 3.0, 3)
    assert alt.nouns_per_caption is None and alt.distinct_nouns is None
    dense = field_stats("dense", DENSE, nlp=FakeNlp())
    assert (dense.words_per_caption, dense.vocabulary) == (6.5, 12)
    assert (dense.nouns_per_caption, dense.distinct_nouns) == (1.5, 3)  # cat, mat | dogs

    save_tiny_tokenizer(tmp_path / "tok")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    lengths = [len(tokenizer(c).input_ids) for c in DENSE]
    stats = field_stats("dense", DENSE, tokenizers={"tiny": tokenizer}, max_length=min(lengths))
    assert stats.tokens_per_caption == {"tiny": sum(lengths) / 2}
    assert stats.over_max_length == {"tiny": 0.5 if lengths[0] != lengths[1] else 0.0}
    table = format_table([alt, stats], 120)
    assert table.splitlines()[0].split()[:5] == ["field", "captions", "missing", "words/cap", "vocabulary"]
    assert "tokens/cap (tiny)" in table


def test_stats_without_spacy(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy now raises ImportError
    nlp, note = load_spacy()
    assert nlp is None and "spaCy is not installed" in note


def test_stats_command(tmp_path, capsys):
    rows = [{"path": f"{i}.png", "alt": a, "dense": d} for i, (a, d) in enumerate(zip(ALT, DENSE))]
    rows.append({"path": "2.png", "alt": "only alt"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert collect(list_inputs(tmp_path / "m.jsonl"), ["dense"]) == {"dense": (DENSE, 1)}
    save_tiny_tokenizer(tmp_path / "t5")
    manifest = str(tmp_path / "m.jsonl")
    assert main(["caption", manifest, "--stats", "--fields", "alt,dense", "--tokenizer", str(tmp_path / "t5")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:5] == ["field", "captions", "missing", "words/cap", "vocabulary"]
    assert printed[1].split()[:5] == ["alt", "3", "0", "2.7", "5"]  # a cat dog only alt
    assert printed[2].split()[:5] == ["dense", "2", "1", "6.5", "12"]
    assert "tokens/cap (t5)" in printed[0]
    for pipeline in ("pipe", "llava"):  # pipelines' tokenizer folders share a name: one column hid the other
        save_tiny_tokenizer(tmp_path / pipeline / "tokenizer")
    both = [arg for pipeline in ("pipe", "llava") for arg in ("--tokenizer", str(tmp_path / pipeline / "tokenizer"))]
    assert main(["caption", manifest, "--stats", *both]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "tokens/cap (pipe/tokenizer)" in header and "tokens/cap (llava/tokenizer)" in header
    (tmp_path / "mine").symlink_to(tmp_path / "t5", target_is_directory=True)  # a link keeps its own name
    assert main(["caption", manifest, "--stats", "--tokenizer", str(tmp_path / "mine")]) == 0
    assert "tokens/cap (mine)" in capsys.readouterr().out.splitlines()[0]
    # a misspelt field was a row of zeros ("dens 0 captions, 4 missing"), where prepare refuses it (review)
    assert main(["caption", manifest, "--stats", "--fields", "alt,dens"]) == 2
    said = capsys.readouterr()
    assert "--fields alt,dens: no input has a caption field 'dens' (their fields: alt, dense)" in said.err
    assert said.out == ""
    # each encoder's cut where prepare makes it (MiniLM keeps 48 tokens, T5 120), unless --max-length says
    assert main(["caption", manifest, "--stats", "--tokenizer", "minilm", "--tokenizer", str(tmp_path / "t5")]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert ">48 tok (minilm)" in header and ">120 tok (t5)" in header
    assert main(["caption", manifest, "--stats", "--tokenizer", "minilm", "--max-length", "7"]) == 0
    assert ">7 tok (minilm)" in capsys.readouterr().out.splitlines()[0]
    # counted as prepare's encoder sees them: T5's cleaning drops a URL first (the raw text read as cut)
    from transformers import AutoTokenizer

    from pixart.encoders.captions import clean_caption

    web = "a red circle https://www.example.com/images/2019/red-circle-large-photo.html"
    (tmp_path / "web.jsonl").write_text(json.dumps({"path": "0.png", "alt": web}) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "t5")
    kept = len(tokenizer(clean_caption(web)).input_ids)
    assert len(tokenizer(web).input_ids) > kept
    web_stats = ["caption", str(tmp_path / "web.jsonl"), "--stats", "--fields", "alt", "--max-length", str(kept)]
    assert main([*web_stats, "--tokenizer", str(tmp_path / "t5")]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[5:7] == [f"{kept:.1f}", "0%"], row
    assert main(["caption", manifest]) == 2  # captioning needs --model
    capsys.readouterr()
    # Another suffix would be read back as CSV: a rerun would find nothing done and caption everything again.
    assert main(["caption", manifest, "--model", str(tmp_path), "--out", str(tmp_path / "dense.csv")]) == 2
    assert "the captions are written as a JSONL manifest; name it *.jsonl" in capsys.readouterr().err


# --- refused before any work ---


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"config.json": '{"model_type": "t5"}'}, "its config.json describes t5"),
        ({"config.json": '{"_class_name": "AutoencoderKL"}'}, "its config.json describes AutoencoderKL"),
        ({"config.json": '{"model_type": "llava"}', "tokenizer.json": "{}"}, "no LLaVA processor"),
        ({"config.json": '{"model_type": "llava"}', "processor_config.json": "{}"}, "no LLaVA processor"),
    ],
)
def test_a_folder_of_another_model_is_refused_as_llava_before_loading(tmp_path, capsys, files, message):
    """Another model's folder (a T5, a VAE) failed inside transformers with a traceback."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    assert main(["caption", str(manifest(tmp_path)), "--model", str(folder), "--out", str(tmp_path / "o.jsonl")]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_a_model_path_that_does_not_exist_is_named_as_such(tmp_path, capsys):
    """A typo in --model was "no LLaVA model in PATH", as if a folder were there holding something else (review)."""
    missing = tmp_path / "llava-1.5-7b-hf"
    assert main(["caption", str(manifest(tmp_path)), "--model", str(missing), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"--model {missing} does not exist" in capsys.readouterr().err


def manifest(tmp_path: Path, field: str = "alt") -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    rows = []
    for i in range(2):
        noise(32, 32, i).save(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", field: f"a red circle {i}"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "m.jsonl"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--field", "path"], "'path' is the image path column"),  # it overwrote every row's image path
        (["--field", "image"], "'image' is the image path column"),
        (["--field", ""], "--field is empty"),
        (["--field", " "], "--field is empty"),
        (["--field", "alt"], "'alt' holds each image's original caption"),  # the hint was --fields alt,alt
        (["--field", "caption"], "'caption' holds each image's original caption"),
        (["--field", "a,b"], "no commas"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
        (["--max-new-tokens", "-3"], "--max-new-tokens must be at least 1, got -3"),
        (["--temperature", "-1"], "--temperature must be 0 (greedy) or a positive number, got -1.0"),
        (["--temperature", "nan"], "--temperature must be 0 (greedy) or a positive number, got nan"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--device", "tpu"], "--device 'tpu' is not a device"),
    ],
)
def test_bad_caption_flags_are_refused_before_the_model_loads(tmp_path, unloadable_model, capsys, flags, message):
    source = manifest(tmp_path)
    before = source.read_bytes()
    out = tmp_path / "out.jsonl"
    assert main(["caption", str(source), "--model", str(unloadable_model), "--out", str(out), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not out.exists() and source.read_bytes() == before


def test_reserved_fields_are_refused_by_the_options_too():
    for name in ("path", "image", "", "alt", "text"):
        with pytest.raises(CaptionError, match="--field"):
            CaptionOptions(field=name)
    assert CaptionOptions(field="long").field == "long"


def test_another_field_into_an_existing_out_is_refused_the_same_field_resumes(tmp_path, unloadable_model, capsys):
    """A second field captioned into the same --out added a second row per image; prepare then skipped every
    image as a duplicate (0 samples)."""
    source = manifest(tmp_path)
    out = tmp_path / "out.jsonl"
    inputs = list_inputs(source)
    options = CaptionOptions(batch_size=1, progress=False)
    first = caption_inputs(inputs, out, FakeCaptioner(), CaptionOptions(batch_size=1, progress=False, stop_after=1))
    assert first.written == 1
    before = out.read_bytes()
    with pytest.raises(CaptionError, match=r"1 for 'dense'.*pass --field dense to resume it"):
        caption_inputs(inputs, out, FakeCaptioner(), CaptionOptions(field="long", progress=False))
    assert out.read_bytes() == before
    args = ["caption", str(source), "--model", str(unloadable_model), "--out", str(out), "--field", "long"]
    assert main(args) == 2  # refused before the model loads: this one would not
    assert f"--out {out} holds rows written for another field than 'long'" in capsys.readouterr().err
    assert out.read_bytes() == before

    resumed = caption_inputs(inputs, out, FakeCaptioner(), options)  # the same field resumes
    assert (resumed.already_done, resumed.written) == (1, 1)
    assert [row["path"] for row in read_rows(out)] == ["img/0.png", "img/1.png"]
    # A row written for 'long' from an input that has a 'dense' column carries 'dense' too: still refused.
    long_options = CaptionOptions(field="long", progress=False)
    assert caption_inputs(list_inputs(out), tmp_path / "long.jsonl", FakeCaptioner(), long_options).written == 2
    with pytest.raises(CaptionError, match="2 for 'long'"):
        caption_inputs(list_inputs(out), tmp_path / "long.jsonl", FakeCaptioner(), options)


def test_the_prepare_hint_names_alt_only_when_every_row_has_it(tmp_path):
    out = tmp_path / "out.jsonl"
    caption_inputs(list_inputs(manifest(tmp_path)), out, FakeCaptioner(), CaptionOptions(progress=False))
    assert prepare_fields(out, "dense") == "alt,dense"
    (tmp_path / "bare").mkdir()
    noise(32, 32, 0).save(tmp_path / "bare" / "a.png")  # no alt-text: prepare --fields alt,dense would skip it
    bare = list_inputs(tmp_path / "bare")
    caption_inputs(bare, tmp_path / "bare.jsonl", FakeCaptioner(), CaptionOptions(progress=False))
    assert prepare_fields(tmp_path / "bare.jsonl", "dense") == "dense"


def test_bad_stats_flags_are_refused_before_the_listing(tmp_path, capsys):
    missing = str(tmp_path / "no such input")  # listing it would fail: the flag's error must come first
    assert main(["caption", missing, "--stats", "--fields", ","]) == 2
    assert "--fields ',' names no field" in capsys.readouterr().err
    assert main(["caption", missing, "--stats", "--max-length", "0"]) == 2
    assert "--max-length must be at least 1, got 0" in capsys.readouterr().err
    assert main(["caption", missing, "--stats", "--tokenizer", str(tmp_path / "nothing")]) == 2
    error = capsys.readouterr().err
    assert f"--tokenizer {tmp_path / 'nothing'}: no folder" in error and "internet" not in error
    (tmp_path / "empty").mkdir()
    assert main(["caption", missing, "--stats", "--tokenizer", str(tmp_path / "empty")]) == 2
    assert "no tokenizer files in" in capsys.readouterr().err


def test_a_damaged_tar_is_reported_in_the_skip_list(tmp_path, llava_dir, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    for index in range(2):
        with tarfile.open(shards / f"0000{index}.tar", "w") as tar:
            for key in ("a", "b"):
                noise(32, 32, index).save(tmp_path / f"{key}.png")
                tar.add(tmp_path / f"{key}.png", arcname=f"{key}.png")
    with tarfile.open(shards / "00001.tar") as tar:
        cut = tar.getmember("a.png").offset_data + 10
    data = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(data[:cut])  # cut inside a.png: nothing of this tar is readable
    args = ["caption", str(shards), "--model", str(llava_dir), "--max-new-tokens", "2", "--no-progress"]
    assert main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "captioned 2 images now, 0 were done already, 1 skipped" in printed
    assert "00001.tar: damaged tar (unreadable (a.png is cut short))" in printed
    assert "--fields dense ..." in printed  # no alt-text in these shards


def test_a_whole_last_row_without_its_newline_is_kept_on_resume(tmp_path):
    """An editor that saves without a final newline: resume cut the hand-edited last row and captioned its
    image again; only a row cut mid-line (a killed run) is cut."""
    folder = image_folder(tmp_path / "in", n=3)
    out = tmp_path / "dense.jsonl"
    inputs = list_inputs(folder)
    caption_inputs(inputs, out, FakeCaptioner(), CaptionOptions(batch_size=2, progress=False, stop_after=1))
    rows = read_rows(out)
    rows[-1]["dense"] = "HAND EDITED"
    out.write_text("\n".join(json.dumps(row) for row in rows))  # no newline after the last row
    fake = FakeCaptioner()
    again = caption_inputs(inputs, out, fake, CaptionOptions(batch_size=2, progress=False))
    assert (again.already_done, again.written, fake.batches) == (2, 1, [1])
    assert [row["dense"] for row in read_rows(out)][1] == "HAND EDITED"
    assert [row["path"] for row in read_rows(out)] == [f"in/{i}.png" for i in range(3)]


def test_out_is_checked_and_a_finished_or_empty_input_loads_no_model(tmp_path, unloadable_model, capsys):
    """--out was checked only once the model had loaded (minutes, for a 7B model); a rerun with nothing left
    to caption loaded it too; an --out that another tool wrote was answered with a --field itself refused."""
    source = manifest(tmp_path)
    (tmp_path / "taken").write_text("a file where --out's folder goes")
    command = ["caption", str(source), "--model", str(unloadable_model)]
    for out, message in (
        (
            tmp_path / "taken" / "dense.jsonl",
            f"--out {tmp_path / 'taken' / 'dense.jsonl'}: {tmp_path / 'taken'} is a file",
        ),
        (tmp_path / "folder.jsonl", f"--out {tmp_path / 'folder.jsonl'} is a folder"),
    ):
        (tmp_path / "folder.jsonl").mkdir(exist_ok=True)
        assert main([*command, "--out", str(out)]) == 2, out
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error
    # Everything captioned already (by a fake here): the unloadable model is never loaded
    out = tmp_path / "dense.jsonl"
    caption_inputs(list_inputs(source), out, FakeCaptioner(), CaptionOptions(progress=False))
    assert main([*command, "--out", str(out)]) == 0
    assert "every one of the 2 images is captioned already; the model was not loaded" in capsys.readouterr().out
    # An img2dataset manifest as --out: its rows end in 'caption', which no caption run writes
    assert main([*command, "--out", str(source)]) == 2
    error = capsys.readouterr().err
    assert "it is not a pixart caption output: choose another --out" in error and "--field alt" not in error
    # A manifest none of whose rows can be listed: one line, no model
    (tmp_path / "bad.jsonl").write_text('{"path": " "}\n')
    assert main(["caption", str(tmp_path / "bad.jsonl"), "--model", str(unloadable_model)]) == 2
    assert "no input can be captioned (1 left out; the first, bad.jsonl:1: bad manifest row" in capsys.readouterr().err


def test_a_flag_of_the_other_mode_is_refused_not_ignored(tmp_path, unloadable_model, capsys):
    """--fields dense (for --field dense) captioned into 'dense' anyway; --stats ignored --model and --out."""
    source = str(manifest(tmp_path))
    assert main(["caption", source, "--model", str(unloadable_model), "--fields", "long"]) == 2
    assert capsys.readouterr().err.strip() == (
        "pixart caption: error: --fields: for --stats, not for captioning (did you mean --field, the one field "
        "the new captions go to?)"
    )
    assert main(["caption", source, "--stats", "--model", str(unloadable_model), "--out", "x.jsonl"]) == 2
    assert "--model, --out: for captioning, not for --stats" in capsys.readouterr().err
    assert main(["caption", source, "--stats", "--device", "cuda"]) == 2  # the statistics run on no device
    assert "--device: for captioning, not for --stats" in capsys.readouterr().err
    assert main(["caption", source, "--stats", "--fields", "alt"]) == 0  # each mode's own flags still work


def test_the_captioner_sees_the_whole_of_a_wide_image(llava_dir):
    """Padded to a square as LLaVA is (official captioning too): the CLIP processor's centre crop showed the
    model only the blue middle third of this red | blue | green image."""
    from pixart.data.caption import LlavaCaptioner

    pixels = np.zeros((32, 96, 3), np.uint8)
    pixels[:, :32, 0] = pixels[:, 32:64, 2] = pixels[:, 64:, 1] = 255  # red | blue | green
    captioner = LlavaCaptioner(llava_dir)
    seen = captioner.model_inputs([Image.fromarray(pixels)], ["describe"])["pixel_values"][0]  # (3, 32, 32)
    mean = torch.tensor(captioner.processor.image_processor.image_mean)[:, None]
    std = torch.tensor(captioner.processor.image_processor.image_std)[:, None]
    colours = (seen.flatten(1) * std + mean).T  # (pixels, 3) back in 0..1
    for colour in ([1, 0, 0], [0, 0, 1], [0, 1, 0]):  # each third is in view
        assert ((colours - torch.tensor(colour)).abs().amax(1) < 0.1).any(), colour
    fill = (colours - mean.T).abs().amax(1) < 0.02  # the padding, in the processor's mean colour
    assert 0.3 < fill.float().mean() < 0.8


def test_a_model_that_fails_to_load_leaves_no_output(tmp_path, unloadable_model):
    """Loaded lazily (at the first image that opens), a model that failed left an empty OUT.jsonl and its
    settings record behind, which the next run would take as a run to resume."""
    folder = image_folder(tmp_path / "in", n=1)
    out = tmp_path / "out" / "c.jsonl"
    out.parent.mkdir()
    args = ["caption", str(folder), "--model", str(unloadable_model), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--no-progress"]) == 2
    assert list(out.parent.iterdir()) == []


def test_two_runs_into_one_manifest_are_not_both_let_in(tmp_path, unloadable_model, monkeypatch, capsys):
    """Two runs into the same --out (a rerun while the first, thought dead, still ran) each captioned every
    pending image and appended it: every image twice, hours of a 7B model spent twice."""
    import fcntl

    import pixart.data.caption as caption_module

    monkeypatch.setattr(caption_module, "LlavaCaptioner", lambda *args, **kwargs: FakeCaptioner())
    folder = image_folder(tmp_path / "in", n=3)
    out = tmp_path / "dense.jsonl"
    args = ["caption", str(folder), "--model", str(unloadable_model), "--out", str(out), "--no-progress"]
    lock = out.resolve().parent / ".dense.jsonl.lock"
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "link.jsonl"  # the same manifest through a link: the same run's file
    link.symlink_to(out)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run captioning into it holds it
        assert main([*args, "--device", "cpu"]) == 2
        said = capsys.readouterr().err
        assert main([*args[:-3], "--out", str(link), "--no-progress", "--device", "cpu"]) == 2
    assert f"--out {out} is being written by another pixart caption run: wait for it, or give another --out" in said
    assert f"--out {link} is being written by another pixart caption run" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--device", "cpu"]) == 0  # once it has let go
    assert len(read_rows(out)) == 3 and not lock.exists()  # the lock goes with the run
