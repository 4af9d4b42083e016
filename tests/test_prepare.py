"""pixart prepare: bad inputs are reported not fatal, input kinds, determinism across processes and kills."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixart.cli import prepare as cli_prepare
from pixart.cli.main import main
from pixart.data.buckets import closest_bucket
from pixart.data.dataset import FeatureDataset, collate
from pixart.data.images import (
    BAD_ASPECT,
    CORRUPT,
    EMPTY,
    NOT_IMAGE,
    TOO_SMALL,
    UNREADABLE,
    ImageSkipped,
    load_rgb,
    resize_cover_crop,
)
from pixart.data.items import BAD_CAPTION, BAD_ROW, BAD_SIDECAR, BAD_TAR, DUPLICATE, MISSING_CAPTION, InputError
from pixart.data.prepare import prepare
from pixart.data.prepare_options import PrepareError, PrepareOptions, process_part
from pixart.data.prepare_report import format_summary
from pixart.data.sampler import BucketBatchSampler
from pixart.data.shards import finished_shards
from pixart.data.sources import list_inputs
from pixart.encoders import SDVAE, MiniLMEncoder, T5Encoder
from pixart.encoders.codecs import from_uint8
from pixart.encoders.text import check_max_length

RESOLUTION = 32  # the tiny VAE downsamples by 2: 32 px buckets give 16x16 latents


@pytest.fixture(scope="module")
def models(model_dirs):
    t5, vae = model_dirs
    return SDVAE(vae), T5Encoder(t5)


def noise(height: int, width: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def write_image(folder: Path, name: str, img: Image.Image, caption: str | bytes | None = "a red circle", **save):
    img.save(folder / name, **save)
    if caption is not None:
        data = caption if isinstance(caption, bytes) else caption.encode()
        (folder / name).with_suffix(".txt").write_bytes(data)


def make_corpus(folder: Path) -> dict[str, str | None]:
    """Images with sidecar captions: name -> the reason it must be skipped for, or None if it must land."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}

    def good(name, img, caption="a red circle", **save):
        write_image(folder, name, img, caption, **save)
        expected[name] = None

    good("rgb.jpg", noise(60, 80, 0), quality=95)
    rgba = noise(64, 64, 1, "RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))))
    good("alpha.png", rgba, caption=None)
    (folder / "alpha.json").write_text(json.dumps({"alt": "a blue square", "dense": "unused here"}))
    good("palette.png", noise(48, 80, 2).convert("P"), transparency=0)
    good("cmyk.jpg", noise(80, 60, 3, "CMYK"))
    good("gray16.png", Image.fromarray((np.arange(60 * 70).reshape(60, 70) * 15).astype(np.uint16)))
    rotated = noise(48, 80, 4)  # stored 80 wide, 48 high; EXIF orientation 6 displays it 48 wide, 80 high
    exif = rotated.getexif()
    exif[0x0112] = 6
    good("exif.jpg", rotated, exif=exif.tobytes())

    def bad(name, reason, img=None, caption="a red circle", data=None, **save):
        if data is not None:
            (folder / name).write_bytes(data)
            (folder / name).with_suffix(".txt").write_text(caption)
        else:
            write_image(folder, name, img, caption, **save)
        expected[name] = reason

    bad("small.png", TOO_SMALL, noise(12, 12, 5))
    bad("wide.png", BAD_ASPECT, noise(10, 100, 6))
    full = io.BytesIO()
    noise(64, 64, 7).save(full, format="JPEG")
    bad("truncated.jpg", CORRUPT, data=full.getvalue()[: len(full.getvalue()) // 2])
    bad("empty.jpg", EMPTY, data=b"")
    bad("text.jpg", NOT_IMAGE, data=b"this is not a JPEG at all\n" * 20)
    bad("nocaption.jpg", MISSING_CAPTION, noise(64, 64, 8), caption=None)
    bad("blank.jpg", MISSING_CAPTION, noise(64, 64, 9), caption="  \n")
    bad("latin1.jpg", BAD_CAPTION, noise(64, 64, 10), caption=b"caf\xe9 au lait")
    bad("brokenjson.jpg", BAD_SIDECAR, noise(64, 64, 11), caption=None)
    (folder / "brokenjson.json").write_text("{not json")
    return expected


def options(**kwargs) -> PrepareOptions:
    kwargs = {"resolution": RESOLUTION, "shard_size": 4, "batch_size": 2, "progress": False, **kwargs}
    return PrepareOptions(**kwargs)


def visible_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def direct_encoding(codec, source: Path) -> tuple[str, torch.Tensor]:
    img = load_rgb(source)
    bucket, (h, w) = closest_bucket(img.height, img.width, bucket_table_32())
    crop = resize_cover_crop(img, h, w)
    mean, _ = codec.encode(from_uint8(torch.from_numpy(np.asarray(crop))[None]))
    return bucket, mean[0]


def bucket_table_32():
    return options().table


# --- bad input, nothing lost ---


def test_bad_input_corpus_is_reported_and_good_files_land(tmp_path, models):
    codec, text = models
    expected = make_corpus(tmp_path / "in")
    result = prepare(list_inputs(tmp_path / "in"), tmp_path / "out", options(), codec, text)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report == result.report
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert skipped == {name: reason for name, reason in expected.items() if reason}
    assert all(s["message"] for s in report["skipped"])
    good = sorted(name for name, reason in expected.items() if reason is None)
    assert report["samples"] == len(good) == sum(report["buckets"].values())
    assert report["complete"] and report["shards"] == {"done": 4, "total": 4}  # 15 inputs, 4 per shard

    data = FeatureDataset(tmp_path / "out")
    assert sorted(data.record(i)["source"] for i in range(len(data))) == good
    for i in range(len(data)):
        item, record = data[i], data.record(i)
        bucket, mean = direct_encoding(codec, tmp_path / "in" / record["source"])
        assert item["bucket"] == bucket
        torch.testing.assert_close(item["mean"], mean.half().float(), atol=2e-3, rtol=2e-3)
        assert torch.all(item["std"] > 0)
        caption = record["captions"]["alt"]
        encoded = text.encode([caption])
        valid = encoded.features[0][encoded.mask[0].bool()]
        torch.testing.assert_close(item["text"], valid.half().float(), atol=2e-3, rtol=2e-3)
    exif = next(data.record(i) for i in range(len(data)) if data.record(i)["source"] == "exif.jpg")
    assert exif["original_hw"] == [80, 48]  # the rotation was applied: displayed height x width
    alpha = next(data.record(i) for i in range(len(data)) if data.record(i)["source"] == "alpha.png")
    assert alpha["captions"] == {"alt": "a blue square"}  # from the .json sidecar


def test_small_images_are_upscaled_on_request(tmp_path, models):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder, "small.png", noise(12, 12, 0))
    write_image(folder, "big.png", noise(64, 64, 1))
    skipped = prepare(list_inputs(folder), tmp_path / "a", options(), *models).report["skipped"]
    assert [(s["path"], s["reason"]) for s in skipped] == [("small.png", TOO_SMALL)]
    report = prepare(list_inputs(folder), tmp_path / "b", options(upscale_small=True), *models).report
    assert report["samples"] == 2 and not report["skipped"]


def test_a_dataset_with_every_input_skipped_says_so(tmp_path, models):
    """Every image too small: prepare reported a complete dataset of 0 samples, and FeatureDataset then said the
    folder "holds no finished shard", as if prepare had not finished."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_image(folder, f"{i}.png", noise(20, 20, i))
    report = prepare(list_inputs(folder), tmp_path / "out", options(), *models).report
    assert report["complete"] and report["samples"] == 0 and report["skip_reasons"] == {TOO_SMALL: 3}
    assert "--upscale-small" in report["skip_hints"][TOO_SMALL]
    assert f"    {TOO_SMALL}: 3 (rerun pixart prepare with --upscale-small" in format_summary(report, tmp_path / "out")
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError) as error:
        FeatureDataset(out)
    assert str(error.value).startswith(
        f"{out}: prepare finished but kept no sample: all 3 inputs were skipped "
        f"({TOO_SMALL}: 3; see {out / 'report.json'} for the reasons); rerun pixart prepare with --upscale-small"
    )


# --- determinism: processes, interruptions, reruns ---


def test_two_processes_write_the_same_bytes_as_one(tmp_path, models):
    make_corpus(tmp_path / "in")
    inputs = list_inputs(tmp_path / "in")
    prepare(inputs, tmp_path / "one", options(workers=2), *models)  # decoding threads change nothing either
    first = prepare(inputs, tmp_path / "two", options(part=0, parts=2), *models)
    assert first.written == [0, 2] and not first.report["complete"]
    second = prepare(inputs, tmp_path / "two", options(part=1, parts=2), *models)
    assert second.written == [1, 3] and second.report["complete"]
    one, two = visible_files(tmp_path / "one"), visible_files(tmp_path / "two")
    assert sorted(one) == sorted(two)
    # Shard 3 holds only bad inputs: it is finished by its report alone, with no safetensors file.
    assert [name for name in one if name.endswith(".safetensors")] == [f"shard-0000{i}.safetensors" for i in range(3)]
    assert "shard-00003.report.json" in one
    for name in one:
        assert one[name] == two[name], name


def test_stopped_run_resumes_to_the_same_dataset_without_rewriting(tmp_path, models):
    make_corpus(tmp_path / "in")
    inputs = list_inputs(tmp_path / "in")
    prepare(inputs, tmp_path / "whole", options(), *models)
    stopped = prepare(inputs, tmp_path / "resumed", options(stop_after=2), *models)
    assert stopped.written == [0, 1] and finished_shards(tmp_path / "resumed") == [0, 1]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "resumed").glob("shard-0000[01]*")}
    resumed = prepare(inputs, tmp_path / "resumed", options(), *models)
    assert resumed.written == [2, 3] and resumed.already_done == [0, 1]
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "resumed").glob("shard-0000[01]*")}
    assert before == after  # finished shards were neither rewritten nor replaced
    assert visible_files(tmp_path / "whole") == visible_files(tmp_path / "resumed")
    assert prepare(inputs, tmp_path / "resumed", options(), *models).written == []


KILLER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from pixart import files
from pixart.data.prepare import prepare
from pixart.data.prepare_options import PrepareOptions
from pixart.data.sources import list_inputs
from pixart.encoders import SDVAE, MiniLMEncoder, T5Encoder

real_replace = os.replace
def replace(src, dst):
    if str(dst).endswith("shard-00002.safetensors"):  # shard 2 is fully written to its temporary file
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
files.os.replace = replace
options = PrepareOptions(resolution={resolution}, shard_size=4, batch_size=2, progress=False)
prepare(list_inputs({inputs!r}), {out!r}, options, SDVAE({vae!r}), T5Encoder({t5!r}))
"""


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_dataset(tmp_path, models, model_dirs):
    make_corpus(tmp_path / "in")
    inputs = list_inputs(tmp_path / "in")
    prepare(inputs, tmp_path / "whole", options(), *models)
    t5, vae = model_dirs
    script = KILLER.format(
        tests=str(Path(__file__).parent),
        resolution=RESOLUTION,
        inputs=str(tmp_path / "in"),
        out=str(tmp_path / "killed"),
        vae=str(vae),
        t5=str(t5),
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert finished_shards(tmp_path / "killed") == [0, 1]
    assert len(list((tmp_path / "killed").glob(".shard-00002.safetensors.*.tmp"))) == 1  # the half shard: invisible
    with pytest.raises(FileNotFoundError, match=r"prepared in part: 2 of 4 shards are finished; rerun"):
        FeatureDataset(tmp_path / "killed")  # training on part would drop data and shift a resume's place in it
    prepare(inputs, tmp_path / "killed", options(), *models)
    assert visible_files(tmp_path / "whole") == visible_files(tmp_path / "killed")
    assert not list((tmp_path / "killed").glob(".*.tmp"))  # rewriting shard 2 deleted the killed one's temporary


def test_rerun_with_other_settings_is_refused(tmp_path, models):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder, "a.png", noise(64, 64, 0))
    prepare(list_inputs(folder), tmp_path / "out", options(), *models)
    with pytest.raises(PrepareError, match="shard_size"):
        prepare(list_inputs(folder), tmp_path / "out", options(shard_size=2), *models)
    write_image(folder, "b.png", noise(64, 64, 1))
    with pytest.raises(PrepareError, match="inputs"):
        prepare(list_inputs(folder), tmp_path / "out", options(), *models)


def test_process_part_under_torchrun():
    assert process_part(0, 1, {}) == (0, 1)
    assert process_part(0, 1, {"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    assert process_part(1, 2, {"RANK": "1", "WORLD_SIZE": "2"}) == (3, 4)  # --shard 1/2 split over 2 ranks
    with pytest.raises(PrepareError):
        process_part(0, 1, {"RANK": "2", "WORLD_SIZE": "2"})


# --- input kinds ---


def manifest_corpus(folder: Path) -> list[dict]:
    (folder / "img").mkdir(parents=True)
    for i in range(4):
        noise(64, 48 + 8 * i, i).save(folder / "img" / f"{i}.png")
    return [
        {"path": "img/0.png", "alt": "a cat", "dense": "a grey cat on a white background"},
        {"image": "img/1.png", "caption": "a dog", "dense": "a big dog"},  # 'image' and 'caption' aliases
        {"path": "img/2.png", "alt": "a red square"},  # no dense caption
        {"path": "./img/0.png", "alt": "again", "dense": "again"},  # the same image as row 1
        {"alt": "no path"},
        {"path": "img/3.png", "alt": "a circle", "dense": "a small circle in the centre"},
        {"path": "img/missing.png", "alt": "gone", "dense": "gone"},
    ]


def check_manifest_dataset(out: Path, report: dict, bad_rows: list[str]) -> None:
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "img/0.png": DUPLICATE,  # the second listing; the first (with its captions) is kept
        "img/2.png": MISSING_CAPTION,
        "img/missing.png": UNREADABLE,
        **{row: BAD_ROW for row in bad_rows},
    }
    data = FeatureDataset(out, {"alt": 0.5, "dense": 0.5})
    sources = {data.record(i)["source"]: data.record(i)["captions"] for i in range(len(data))}
    assert sources == {
        "img/0.png": {"alt": "a cat", "dense": "a grey cat on a white background"},
        "img/1.png": {"alt": "a dog", "dense": "a big dog"},
        "img/3.png": {"alt": "a circle", "dense": "a small circle in the centre"},
    }


def test_jsonl_manifest(tmp_path, models):
    rows = manifest_corpus(tmp_path)
    lines = [json.dumps(row) for row in rows]
    lines.insert(4, "{broken")  # line 5
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    opts = options(fields=["alt", "dense"])
    report = prepare(list_inputs(tmp_path / "data.jsonl"), tmp_path / "out", opts, *models).report
    check_manifest_dataset(tmp_path / "out", report, ["data.jsonl:5", "data.jsonl:6"])  # not JSON; no path


def test_csv_manifest(tmp_path, models):
    rows = manifest_corpus(tmp_path)
    with open(tmp_path / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "image", "alt", "caption", "dense"])
        writer.writeheader()
        writer.writerows(rows)
    opts = options(fields=["alt", "dense"])
    report = prepare(list_inputs(tmp_path / "data.csv"), tmp_path / "out", opts, *models).report
    check_manifest_dataset(tmp_path / "out", report, ["data.csv:6"])  # the header is line 1


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    """A symbolic link member (or, with kind=tarfile.LNKTYPE, a hard link: a second name of `target`)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def test_webdataset_tars(tmp_path, models):
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "00000.tar", "w") as tar:
        add_member(tar, "k1.png", png_bytes(noise(64, 64, 1)))
        add_member(tar, "k1.txt", b"a green circle")
        add_member(tar, "sub/k2.seg.png", png_bytes(noise(48, 64, 2)))
        add_member(tar, "sub/k2.json", json.dumps({"caption": "a cat", "url": "http://x"}).encode())
    with tarfile.open(shards / "00001.tar", "w") as tar:
        add_member(tar, "k3.png", png_bytes(noise(64, 48, 3)))
        add_member(tar, "k3.txt", b"a dog")
        add_member(tar, "k4.png", png_bytes(noise(64, 48, 4)))  # no caption
        add_member(tar, "k5.png", png_bytes(noise(64, 48, 5))[:200])  # truncated
        add_member(tar, "k5.txt", b"broken")
    inputs = list_inputs(shards)
    assert inputs.kind == "webdataset"
    names = [item.name for item in inputs.items]
    assert names == [f"00000.tar/{n}" for n in ("k1.png", "sub/k2.seg.png")] + [
        f"00001.tar/{n}" for n in ("k3.png", "k4.png", "k5.png")
    ]
    report = prepare(inputs, tmp_path / "out", options(), *models).report
    assert {s["path"]: s["reason"] for s in report["skipped"]} == {
        "00001.tar/k4.png": MISSING_CAPTION,
        "00001.tar/k5.png": CORRUPT,
    }
    data = FeatureDataset(tmp_path / "out")
    assert [data.record(i)["captions"]["alt"] for i in range(len(data))] == ["a green circle", "a cat", "a dog"]
    # A manifest may name tar members the same way (this is what pixart caption writes for tar inputs).
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "shards/00001.tar/k3.png", "alt": "a dog"}) + "\n")
    assert list_inputs(tmp_path / "m.jsonl").items[0].image.read() == png_bytes(noise(64, 48, 3))


# --- reading the result ---


def test_loader_batches_equal_item_by_item_collation(tmp_path, models):
    make_corpus(tmp_path / "in")
    prepare(list_inputs(tmp_path / "in"), tmp_path / "out", options(), *models)
    data = FeatureDataset(tmp_path / "out")
    sampler = BucketBatchSampler(data.buckets, 1, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate)
    held = []
    for indices, batch in zip(sampler.epoch_batches(0), loader):
        expected = collate([data[i] for i in indices])
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == batch[key].dtype and torch.equal(value, batch[key]), key
            else:
                assert value == batch[key]
        held.append((batch["text"], expected["text"].clone()))
    for kept, copy in held:  # batches still referenced were never overwritten by later ones
        assert torch.equal(kept, copy)


# --- the command line ---


def cli_args(folder: Path, out: Path, model_dirs, *extra: str) -> list[str]:
    t5, vae = model_dirs
    return [
        "prepare",
        str(folder),
        "--out",
        str(out),
        "--resolution",
        "256",
        "--vae",
        str(vae),
        "--text-encoder",
        str(t5),
        "--upscale-small",
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_cli_two_concurrent_processes_and_a_rerun(tmp_path, model_dirs, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        write_image(folder, f"{i}.png", noise(24, 24 + 8 * i, i), caption=f"a red circle {i}")
    write_image(folder, "bad.png", noise(24, 24, 9), caption=b"caf\xe9")
    assert main(cli_args(folder, tmp_path / "one", model_dirs)) == 0
    summary = capsys.readouterr().out
    assert "4 samples from 5 inputs (complete)" in summary and f"bad.png: {BAD_CAPTION}" in summary

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "pixart"]
    processes = [
        subprocess.Popen([*command, *cli_args(folder, tmp_path / "two", model_dirs, "--shard", f"{i}/2")], env=env)
        for i in range(2)
    ]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    monkeypatch.setattr(cli_prepare, "load_models", None)  # nothing left to compute: the models are not loaded
    merge = main(cli_args(folder, tmp_path / "two", model_dirs))
    assert merge == 0  # report.json is rewritten
    assert "every shard of this process is done already" in capsys.readouterr().out
    assert visible_files(tmp_path / "one") == visible_files(tmp_path / "two")


def test_the_bundled_minilm_is_named_as_generate_names_it(tmp_path, capsys):
    """`--text-encoder minilm` is the bundled MiniLM for generate, serve and eval; prepare looked for a folder
    named minilm (and took it for T5). The kind now follows the folder given."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_image(folder, "a.png", noise(256, 256, 0))
    base = ["prepare", str(folder), "--out", str(out), "--resolution", "256", "--codec", "pixels", "--workers", "0"]
    assert main(base) == 2  # no encoder named at all: T5's folder is needed, and the bundled one is offered
    assert "or give --text-encoder minilm for the bundled MiniLM" in capsys.readouterr().err
    assert not out.exists()
    assert main([*base, "--text-encoder", "minilm", "--no-progress"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["text_encoder"] == {"kind": "minilm", "path": None, "max_length": 48, "width": 384}  # found anywhere
    assert json.loads((out / "report.json").read_text())["samples"] == 1


def test_cli_user_errors(tmp_path, model_dirs, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder, "a.png", noise(64, 64, 0))
    assert main(cli_args(folder, tmp_path / "out", model_dirs, "--shard", "2/2")) == 2
    assert "--shard" in capsys.readouterr().err
    t5, _ = model_dirs
    args = ["prepare", str(folder), "--out", str(tmp_path / "o"), "--resolution", "256", "--text-encoder", str(t5)]
    assert main(args) == 2
    assert "--vae" in capsys.readouterr().err
    assert main(cli_args(tmp_path / "nothing", tmp_path / "o", model_dirs)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(cli_args(folder, tmp_path / "out", model_dirs, "--max-length", "0")) == 2
    assert "--max-length must be at least 1" in capsys.readouterr().err
    (tmp_path / "taken").write_text("")
    assert main(cli_args(folder, tmp_path / "taken", model_dirs)) == 2
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(cli_args(tmp_path / "empty", tmp_path / "out", model_dirs)) == 2
    assert "holds no inputs" in capsys.readouterr().err
    t5, vae = model_dirs  # another model's folder: refused before --out is made (a part's would stay)
    early = cli_args(folder, tmp_path / "early", model_dirs, "--shard", "0/2")
    assert main([*early, "--text-encoder", str(vae)]) == 2
    err = capsys.readouterr().err
    assert "no t5 text encoder" in err and "point --text-encoder at a t5 folder" in err, err
    assert not (tmp_path / "early").exists()
    assert main([*early, "--vae", str(t5)]) == 2
    err = capsys.readouterr().err  # prepare has --vae: its advice is kept
    assert "no VAE in" in err and "describes a t5 model; point --vae at an AutoencoderKL folder" in err, err
    assert not (tmp_path / "early").exists()
    weightless = tmp_path / "weightless"  # a T5 folder whose weights are missing: it fails to load, after --out
    shutil.copytree(t5, weightless, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert main([*cli_args(folder, tmp_path / "made", model_dirs), "--text-encoder", str(weightless)]) == 2
    assert not (tmp_path / "made").exists()  # made for the run, removed again
    parted = [*cli_args(folder, tmp_path / "parted", model_dirs, "--shard", "0/2"), "--text-encoder", str(weightless)]
    assert main(parted) == 2  # one of several parts: the folder may be another part's by now, so it stays
    assert (tmp_path / "parted").is_dir()


def test_a_folder_of_tars_with_images_beside_them_is_refused(tmp_path):
    png = io.BytesIO()
    noise(32, 32, 1).save(png, format="PNG")
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for name, data in (("0001.png", png.getvalue()), ("0001.txt", b"a red circle")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert list_inputs(tmp_path).kind == "webdataset"
    (tmp_path / "previews").mkdir()
    noise(32, 32, 0).save(tmp_path / "previews" / "preview.jpg")  # would have been read as the whole dataset
    with pytest.raises(InputError, match="both WebDataset .tar shards and image files"):
        list_inputs(tmp_path)


def test_shards_further_down_are_named_when_the_folder_holds_no_inputs(tmp_path):
    """nested/train/00000.tar with nested given: "holds no inputs ... or WebDataset .tar shards", though it did."""
    (tmp_path / "nested" / "train").mkdir(parents=True)
    with tarfile.open(tmp_path / "nested" / "train" / "00000.tar", "w") as tar:
        add_member(tar, "a.txt", b"a red circle")
    with pytest.raises(InputError) as raised:
        list_inputs(tmp_path / "nested")
    train = tmp_path / "nested" / "train"
    assert f"(the .tar shards in {train} are read when that folder is given: pass it)" in str(raised.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"holds no inputs: .* WebDataset .tar shards$"):
        list_inputs(tmp_path / "empty")


def test_sidecars_with_upper_case_suffixes_are_found(tmp_path):
    noise(32, 32, 0).save(tmp_path / "a.PNG")
    (tmp_path / "a.TXT").write_text("a red circle")
    noise(32, 32, 1).save(tmp_path / "b.png")
    (tmp_path / "b.JSON").write_text(json.dumps({"alt": "a blue square"}))
    items = {item.name: item for item in list_inputs(tmp_path).items}
    assert items["a.PNG"].captions(["alt"]) == {"alt": "a red circle"}
    assert items["b.png"].captions(["alt"]) == {"alt": "a blue square"}


def test_jfif_and_avif_files_are_listed_and_decoded(tmp_path):
    """Cameras and browsers save .jfif and .avif, which Pillow decodes: in a folder or a tar they were left
    out without a word, while a manifest row naming one was prepared."""
    from PIL import features

    (tmp_path / "folder").mkdir()
    images = {"a.jfif": ("JPEG", noise(32, 32, 0)), "c.jpe": ("JPEG", noise(32, 32, 2))}
    if features.check("avif"):
        images["b.avif"] = ("AVIF", noise(32, 32, 1))
    for name, (fmt, img) in images.items():
        img.save(tmp_path / "folder" / name, format=fmt)
        (tmp_path / "folder" / name).with_suffix(".txt").write_text("a red circle")
    listed = list_inputs(tmp_path / "folder")
    assert sorted(item.name for item in listed.items) == sorted(images)
    assert all(load_rgb(item.image.read()).size == (32, 32) for item in listed.items)
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "k1.jfif", (tmp_path / "folder" / "a.jfif").read_bytes())
        add_member(tar, "k1.txt", b"a green circle")
    assert [item.name for item in list_inputs(tmp_path / "00000.tar").items] == ["00000.tar/k1.jfif"]


def test_a_utf16_manifest_is_read_as_utf16(tmp_path):
    """Windows tools save "Unicode" text as UTF-16 with a byte-order mark: read as UTF-8, a CSV's column
    names were letters and NULs and a JSONL's every row was "not JSON". Excel's "Unicode Text" is tab-separated
    besides: named as such."""
    noise(32, 32, 0).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,caption\na.png,café au lait\n", encoding="utf-16")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.png", "caption": "café"}) + "\n", encoding="utf-16")
    for name, caption in (("m.csv", "café au lait"), ("m.jsonl", "café")):
        inputs = list_inputs(tmp_path / name)
        assert not inputs.problems and [item.fields()["alt"] for item in inputs.items] == [caption], name
    (tmp_path / "tabs.csv").write_text("path\tcaption\na.png\tcafé\n", encoding="utf-16")
    with pytest.raises(InputError, match="separated by tabs or semicolons .*save it as comma-separated CSV"):
        list_inputs(tmp_path / "tabs.csv")
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe" + "path".encode("utf-16-le") + b"\x00")  # an odd byte count
    with pytest.raises(InputError, match="starts as UTF-16 but is not .*save it as UTF-8"):
        list_inputs(tmp_path / "bad.csv")


def test_utf16_caption_files_are_read_as_utf16(tmp_path):
    """A .txt or .json caption saved as Windows "Unicode" (UTF-16 with a byte-order mark) was skipped as
    "caption not UTF-8", though a manifest saved so was read."""
    for name in ("a", "b", "c"):
        noise(32, 32, 0).save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("café au lait", encoding="utf-16")
    (tmp_path / "b.json").write_text(json.dumps({"alt": "crème"}, ensure_ascii=False), encoding="utf-16-be")
    (tmp_path / "b.json").write_bytes(b"\xfe\xff" + (tmp_path / "b.json").read_bytes())  # big-endian, marked
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe" + "odd".encode("utf-16-le") + b"\x00")  # an odd byte count
    noise(32, 32, 0).save(tmp_path / "d.png")  # UTF-32's little-endian mark starts with UTF-16's: NULs between
    (tmp_path / "d.txt").write_text("a cat", encoding="utf-32")
    items = {item.name: item for item in list_inputs(tmp_path).items}
    assert items["a.png"].captions(["alt"]) == {"alt": "café au lait"}
    assert items["b.png"].captions(["alt"]) == {"alt": "crème"}
    assert items["d.png"].captions(["alt"]) == {"alt": "a cat"}
    with pytest.raises(ImageSkipped, match="c.txt: truncated data"):
        items["c.png"].captions(["alt"])


def test_manifest_names_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    """Names (and so the digest a resumed prepare checks) were relative to the current directory for images
    outside the manifest's folder, and an absolute path inside it was not recognised as a duplicate."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "cap").mkdir()
    for name in ("x.png", "y.png"):
        noise(32, 32, 0).save(tmp_path / "imgs" / name)
    noise(32, 32, 1).save(tmp_path / "cap" / "z.png")
    rows = [
        {"path": "../imgs/x.png", "caption": "x"},
        {"path": str(tmp_path / "imgs" / "y.png"), "caption": "y"},
        {"path": "z.png", "caption": "z"},
        {"path": str(tmp_path / "cap" / "z.png"), "caption": "z again"},  # the same image as the row above
    ]
    (tmp_path / "cap" / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    listings = []
    for cwd, manifest in ((tmp_path, "cap/m.jsonl"), (tmp_path / "cap", "m.jsonl"), (tmp_path / "imgs", None)):
        monkeypatch.chdir(cwd)
        inputs = list_inputs(manifest or tmp_path / "cap" / "m.jsonl")
        listings.append(([item.name for item in inputs.items], [p.reason for p in inputs.problems]))
    assert listings[0] == listings[1] == listings[2]
    names, problems = listings[0]
    assert names == [str(tmp_path / "imgs" / "x.png"), str(tmp_path / "imgs" / "y.png"), "z.png"]
    assert problems == [DUPLICATE]


def test_a_folder_of_upper_case_tar_shards_is_read(tmp_path):
    with tarfile.open(tmp_path / "00000.TAR", "w") as tar:
        add_member(tar, "k1.png", png_bytes(noise(32, 32, 1)))
        add_member(tar, "k1.txt", b"a green circle")
    inputs = list_inputs(tmp_path)
    assert inputs.kind == "webdataset" and [item.name for item in inputs.items] == ["00000.TAR/k1.png"]


def test_tar_members_keep_the_spelling_of_their_suffix(tmp_path):
    """Items were named with the suffix lower-cased: cat.JPG and cat.jpg, two images, became one name (the
    second reported as a duplicate), and IMG_1.JPG was named IMG_1.jpg, which names no member."""
    from pixart.data.manifests import resolve_image

    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "cat.JPG", png_bytes(noise(32, 32, 1)))
        add_member(tar, "cat.jpg", png_bytes(noise(32, 32, 2)))
        add_member(tar, "cat.txt", b"a cat")
    inputs = list_inputs(tmp_path)
    assert sorted(item.name for item in inputs.items) == ["00000.tar/cat.JPG", "00000.tar/cat.jpg"]
    assert not inputs.problems and all(item.fields() == {"alt": "a cat"} for item in inputs.items)
    for item in inputs.items:  # each name is a path that finds its own member again
        assert resolve_image(item.name, tmp_path).read() == item.image.read()


def test_a_tar_updated_in_place_gives_its_last_copy_as_tar_x_does(tmp_path):
    """`tar -rf` (or -uf) appends a changed cat.png and cat.txt after the old ones: `tar -x` gives the last
    copies, while the listing kept the first image and caption (the stale pair) and called the new a
    duplicate. A manifest row naming the member finds the last copy too."""
    from pixart.data.manifests import resolve_image

    old, new = png_bytes(noise(32, 32, 1)), png_bytes(noise(32, 32, 2))
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "cat.png", old)
        add_member(tar, "cat.txt", b"old caption")
    with tarfile.open(tmp_path / "00000.tar", "a") as tar:
        add_member(tar, "cat.png", new)
        add_member(tar, "cat.txt", b"new caption")
    inputs = list_inputs(tmp_path)
    [item] = inputs.items
    assert item.image.read() == new and item.fields() == {"alt": "new caption"}
    assert [(p.path, p.reason) for p in inputs.problems] == [("00000.tar/cat.png", DUPLICATE)]
    assert "earlier copy" in inputs.problems[0].message
    assert resolve_image("00000.tar/cat.png", tmp_path).read() == new


def test_symbolic_links_in_a_tar_are_followed_or_counted(tmp_path):
    """A symbolic link member (link.png -> real.png) was neither listed nor counted: its sample vanished. Now
    a link to a file in the tar reads that file (as a folder of links does), and one to nothing there (out
    of the tar, absolute, a cycle) is counted as unreadable."""
    from pixart.data.images import UNREADABLE

    real = png_bytes(noise(32, 32, 1))
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "sub/real.png", real)
        add_member(tar, "sub/real.txt", b"a real cat")
        for name, target in [
            ("link.png", "sub/real.png"),  # relative to the link's folder, as the system reads it
            ("sub/hop.png", "../link.png"),  # a link to a link
            ("out.png", "../elsewhere.png"),
            ("abs.png", "/etc/real.png"),
            ("loop.png", "loop.png"),
            ("link.txt", "sub/real.txt"),
            ("hop.txt", "link.txt"),
        ]:
            add_link(tar, name, target)
    inputs = list_inputs(tmp_path)
    listed = sorted(item.name for item in inputs.items)
    assert listed == ["00000.tar/link.png", "00000.tar/sub/hop.png", "00000.tar/sub/real.png"]
    assert all(item.image.read() == real for item in inputs.items)
    assert {item.name: item.fields() for item in inputs.items}["00000.tar/link.png"] == {"alt": "a real cat"}
    lost = sorted((p.path, p.reason) for p in inputs.problems)
    assert lost == [(f"00000.tar/{name}", UNREADABLE) for name in ("abs.png", "loop.png", "out.png")]


def test_tar_links_follow_tar_order_and_the_dot_spelling(tmp_path):
    """Links in the layouts tar itself writes (review of the first link support): `tar -C dir .` names
    every member ./x and a link's target x, so each was counted lost; a regular file appended after a link
    of its name (tar -rf) lost to the link's target, though tar -x gives the file; a hard link to a
    symbolic link vanished uncounted."""
    a, b = png_bytes(noise(32, 32, 1)), png_bytes(noise(32, 32, 2))

    with tarfile.open(tmp_path / "dot.tar", "w") as tar:
        add_member(tar, "./a.png", a)
        add_member(tar, "./b.txt", b"a linked cat")
        add_link(tar, "./b.png", "a.png")
    with tarfile.open(tmp_path / "order.tar", "w") as tar:
        add_member(tar, "y.png", a)
        add_link(tar, "x.png", "y.png")
        add_member(tar, "x.png", b)  # tar -rf after the link: tar -x gives this file
        add_member(tar, "s.png", a)
        add_link(tar, "t.png", "s.png")
        add_link(tar, "u.png", "t.png", kind=tarfile.LNKTYPE)  # a hard link to the symbolic link
    inputs = list_inputs(tmp_path)
    read = {item.name: item.image.read() for item in inputs.items}
    assert read["dot.tar/./b.png"] == a
    assert {item.name: item.fields() for item in inputs.items}["dot.tar/./b.png"] == {"alt": "a linked cat"}
    assert read["order.tar/x.png"] == b and read["order.tar/u.png"] == a
    assert sorted(read) == [
        "dot.tar/./a.png",
        "dot.tar/./b.png",
        "order.tar/s.png",
        "order.tar/t.png",
        "order.tar/u.png",
        "order.tar/x.png",
        "order.tar/y.png",
    ]
    assert [(p.path, p.reason) for p in inputs.problems] == [("order.tar/x.png", DUPLICATE)]


def test_tar_members_are_what_tar_x_writes(tmp_path):
    """Each tar here against what `tar -x` writes (review of the link support): ./x.png and x.png are one
    file (both were listed, and a link or manifest row read the older copy); a file replaced by a dangling
    link is no file (its old data was still read); a chain of links stored before its target, longer than
    the first limit of 8, resolved only in one order; a hard link before its target fails in tar -x too."""
    from pixart.data.images import UNREADABLE
    from pixart.data.manifests import resolve_image

    a, b = png_bytes(noise(32, 32, 1)), png_bytes(noise(32, 32, 2))

    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        add_member(tar, "x.png", a)
        add_link(tar, "y.png", "x.png")
        add_member(tar, "./x.png", b)  # tar -rf -C dir . after: the same file, newer
        add_member(tar, "gone.png", a)
        add_link(tar, "gone.png", "/nowhere.png")  # replaced by a dangling link
        add_link(tar, "via.png", "gone.png")
        for i in range(12, 0, -1):  # c12 -> c11 -> ... -> c0, every link stored before its target
            add_link(tar, f"c{i}.png", f"c{i - 1}.png")
        add_member(tar, "c0.png", a)
        add_link(tar, "early.png", "late.png", kind=tarfile.LNKTYPE)  # tar -x: "Cannot hard link"
        add_member(tar, "late.png", b)
    inputs = list_inputs(tmp_path)
    read = {item.name: item.image.read() for item in inputs.items}
    assert read["t.tar/./x.png"] == b and read["t.tar/y.png"] == b and "t.tar/x.png" not in read
    assert all(read[f"t.tar/c{i}.png"] == a for i in range(13))
    assert sorted(read) == sorted(
        ["t.tar/./x.png", "t.tar/y.png", "t.tar/late.png"] + [f"t.tar/c{i}.png" for i in range(13)]
    )
    problems = sorted((p.path, p.reason) for p in inputs.problems)
    assert problems == [
        ("t.tar/early.png", UNREADABLE),
        ("t.tar/gone.png", UNREADABLE),  # a dangling link in place of its first copy, as tar -x leaves it
        ("t.tar/via.png", UNREADABLE),
        ("t.tar/x.png", DUPLICATE),
    ]
    assert resolve_image("t.tar/x.png", tmp_path).read() == b


def test_tar_names_tar_x_rewrites_or_refuses_and_links_it_cannot_make(tmp_path, capsys):
    """More against tar -x (review): a leading / is stripped (/k.png and k.png are one file, both were
    listed); a name with '..' is refused (it replaced k.png); a hard link to a symbolic link keeps the link as
    it was when stored; a failed hard link over an earlier file leaves that file (it was also reported
    lost), and its message says it came before its target; a caption link leading nowhere is the sample's
    unreadable caption (it vanished: "missing caption", or an error naming no field)."""
    from pixart.data.prepare_options import check_fields_present

    a, b, c = (png_bytes(noise(32, 32, seed)) for seed in (1, 2, 3))
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        add_member(tar, "k.png", a)
        add_member(tar, "/k.png", b)  # tar -x writes k.png
        add_member(tar, "d/../k.png", c)  # tar -x refuses it
        add_member(tar, "s1.png", a)
        add_member(tar, "s2.png", b)
        add_link(tar, "s.png", "s1.png")
        add_link(tar, "h.png", "s.png", kind=tarfile.LNKTYPE)  # s.png as it is now: a link to s1.png
        add_link(tar, "s.png", "s2.png")  # replaced after
        add_member(tar, "f.png", a)
        add_link(tar, "f.png", "zz.png", kind=tarfile.LNKTYPE)  # tar -x fails on it and keeps f.png
        add_link(tar, "early.png", "late.png", kind=tarfile.LNKTYPE)
        add_member(tar, "late.png", b)
        add_member(tar, "cap.png", a)
        add_link(tar, "cap.txt", "../captions/cap.txt")
    inputs = list_inputs(tmp_path)
    read = {item.name: item.image.read() for item in inputs.items}
    assert read["t.tar//k.png"] == b and "t.tar/k.png" not in read and "t.tar/d/../k.png" not in read
    assert read["t.tar/h.png"] == a and read["t.tar/s.png"] == b and read["t.tar/f.png"] == a
    problems = {(p.path, p.reason): p.message for p in inputs.problems}
    assert ("t.tar/f.png", UNREADABLE) not in problems
    assert problems[("t.tar/d/../k.png", UNREADABLE)] == "a member name with '..', which tar -x refuses to write"
    assert "a hard link to late.png, which is no earlier member" in problems[("t.tar/early.png", UNREADABLE)]
    [cap] = [item for item in inputs.items if item.name == "t.tar/cap.png"]
    with pytest.raises(ImageSkipped, match=r"t.tar/cap.txt: a link to ../captions/cap.txt, which leads to no file"):
        cap.fields()
    only_cap = dataclasses.replace(inputs, items=[cap])
    with pytest.raises(PrepareError, match=r"no caption could be read \(1 caption file\(s\) could not be read, e.g. "):
        check_fields_present(only_cap, ["alt"])  # "name fields they hold" would have sent the user astray


def test_a_manifest_finds_the_members_of_a_tar_made_from_a_folder_s_dot(tmp_path):
    """`tar -cf x.tar -C dir .` stores ./a.png: a manifest row written by hand as x.tar/a.png was skipped as
    unreadable (tar member a.png not found)."""
    from pixart.data.manifests import resolve_image

    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        add_member(tar, "./a.png", png_bytes(noise(32, 32, 1)))
    assert resolve_image("x.tar/a.png", tmp_path).read() == png_bytes(noise(32, 32, 1))
    assert resolve_image("x.tar/./a.png", tmp_path).read() == png_bytes(noise(32, 32, 1))


def test_a_tar_samples_mask_is_left_out_and_a_dotted_name_keeps_its_caption(tmp_path):
    """WebDataset keys end at the first dot: 2.seg.png beside 2.jpg (a mask) was trained on as a photo with
    the sample's caption, and photo.v2.jpg lost photo.v2.txt (skipped as missing its caption)."""
    from pixart.data.items import EXTRA_IMAGE

    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in [
            ("1.jpg", png_bytes(noise(32, 32, 1))),
            ("1.txt", b"a cat"),
            ("2.jpg", png_bytes(noise(32, 32, 2))),
            ("2.seg.png", png_bytes(noise(32, 32, 3))),
            ("2.txt", b"a dog"),
            ("photo.v2.jpg", png_bytes(noise(32, 32, 4))),
            ("photo.v2.txt", b"a dotted name"),
        ]:
            add_member(tar, name, data)
    inputs = list_inputs(tmp_path)
    captions = {item.name: item.fields() for item in inputs.items}
    assert captions == {
        "00000.tar/1.jpg": {"alt": "a cat"},
        "00000.tar/2.jpg": {"alt": "a dog"},
        "00000.tar/photo.v2.jpg": {"alt": "a dotted name"},
    }
    assert [(p.path, p.reason) for p in inputs.problems] == [("00000.tar/2.seg.png", EXTRA_IMAGE)]
    assert "the sample's image is 00000.tar/2.jpg" in inputs.problems[0].message


def test_a_manifest_into_upper_case_tar_shards_is_read_back(tmp_path, models):
    """A manifest path into '00000.TAR' was split on the literal '.tar/' only: pixart caption wrote such rows
    for a folder of .TAR shards, and prepare then skipped every one of them ("k1.png: Not a directory")."""
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "00000.TAR", "w") as tar:
        add_member(tar, "k1.png", png_bytes(noise(64, 64, 1)))
        add_member(tar, "k1.txt", b"a green circle")
    (item,) = list_inputs(shards).items
    location = item.image.location(tmp_path)  # what pixart caption writes into a manifest beside the shards
    assert location == "shards/00000.TAR/k1.png"
    rows = [{"path": location, "alt": "a green circle"}, {"path": "shards/00000.TAR/k2.png", "alt": "gone"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = prepare(list_inputs(tmp_path / "m.jsonl"), tmp_path / "out", options(), *models).report
    assert report["samples"] == 1
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [("shards/00000.TAR/k2.png", UNREADABLE)]
    assert report["skipped"][0]["message"] == f"tar member k2.png not found in {shards / '00000.TAR'}"
    assert FeatureDataset(tmp_path / "out").record(0)["source"] == "shards/00000.TAR/k1.png"


def test_a_rerun_on_more_images_or_other_settings_is_refused_before_the_models_load(
    tmp_path, model_dirs, capsys, monkeypatch
):
    """With every shard done, a rerun used to report the old dataset as complete: new images were dropped
    and a changed setting, text encoder or codec accepted without a word."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        write_image(folder, f"{i}.png", noise(24, 24, i), caption=f"a red circle {i}")
    assert main(cli_args(folder, tmp_path / "out", model_dirs)) == 0
    capsys.readouterr()

    def no_loading(*args):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(cli_prepare, "load_models", no_loading)
    write_image(folder, "2.png", noise(24, 24, 2), caption="a blue square")
    assert main(cli_args(folder, tmp_path / "out", model_dirs)) == 2
    assert "was prepared with other settings or inputs" in capsys.readouterr().err
    (folder / "2.png").unlink()
    assert main([*cli_args(folder, tmp_path / "out", model_dirs), "--resolution", "512"]) == 2
    err = capsys.readouterr().err
    assert "resolution: 256 there, 512 now" in err
    # the bucket tables of the two resolutions by their first difference and a count (both whole: 2 KB)
    assert re.search(r"buckets\['[\d.]+'\]: \[\d+, \d+\] there, \[\d+, \d+\] now and \d+ more entries", err), err
    assert len(err) < 600, err
    without_vae = [a for a in cli_args(folder, tmp_path / "out", model_dirs) if a not in ("--vae", str(model_dirs[1]))]
    for args in (
        [*cli_args(folder, tmp_path / "out", model_dirs), "--max-length", "5"],
        [*without_vae, "--codec", "pixels"],  # with --vae too it is refused as a contradiction first
    ):
        assert main(args) == 2, args
        assert "was prepared with other models" in capsys.readouterr().err
    assert main([*cli_args(folder, tmp_path / "out", model_dirs), "--text-encoder-kind", "minilm"]) == 2
    assert "no minilm text encoder in" in capsys.readouterr().err  # the T5 folder given: refused before that
    t5, _ = model_dirs
    (tmp_path / "t5link").symlink_to(t5, target_is_directory=True)  # another spelling of the same folder
    assert main([*cli_args(folder, tmp_path / "out", model_dirs), "--text-encoder", str(tmp_path / "t5link")]) == 0
    assert "every shard of this process is done already" in capsys.readouterr().out
    # an unfinished --out too (a run killed before its last shard): refused before loading T5-XXL, not after
    shards = sorted((tmp_path / "out").glob("shard-*"))
    assert shards
    for path in shards:
        path.unlink()
    assert main([*cli_args(folder, tmp_path / "out", model_dirs), "--max-length", "5"]) == 2
    assert "was prepared with other models" in capsys.readouterr().err


def test_a_file_name_that_is_not_utf8_is_printed_escaped(tmp_path, model_dirs):
    """The summary names skipped files; under a strict UTF-8 stdout a name with byte 0xff crashed it."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder, "good.png", noise(24, 24, 0), caption="a red circle")
    (folder / os.fsdecode(b"bad\xff.png")).write_bytes(b"not an image")
    (folder / os.fsdecode(b"bad\xff.txt")).write_text("a caption")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, "-m", "pixart", *cli_args(folder, tmp_path / "out", model_dirs)]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bad\\udcff.png" in result.stdout and "1 samples from 2 inputs" in result.stdout
    # Under a C locale Python writes the name back as its own bytes (surrogateescape): left as it is.
    c_locale = {k: v for k, v in env.items() if k not in ("PYTHONIOENCODING", "LANG", "LC_CTYPE")} | {"LC_ALL": "C"}
    args[args.index("--out") + 1] = str(tmp_path / "out-c")
    result = subprocess.run(args, capture_output=True, env=c_locale, timeout=300)
    assert result.returncode == 0 and b"bad\xff.png" in result.stdout


# --- refused before any work; damaged inputs skipped, not fatal ---


def test_bad_flags_are_refused_before_the_listing_and_the_out_folder(tmp_path, model_dirs, capsys):
    """--vae was asked for only after the inputs were listed and --out made; --device and a MiniLM
    --max-length beyond its 512 positions only when the models loaded or the first long caption came."""
    missing = tmp_path / "no such input"  # listing it would fail: each flag's error must come first
    out = tmp_path / "out"
    t5, _ = model_dirs
    assert main(["prepare", str(missing), "--out", str(out), "--resolution", "256", "--text-encoder", str(t5)]) == 2
    assert "--vae DIR is required with --codec sd-vae" in capsys.readouterr().err
    assert main(cli_args(missing, out, model_dirs, "--device", "tpu")) == 2
    assert "--device 'tpu' is not a device" in capsys.readouterr().err
    minilm = ["prepare", str(missing), "--out", str(out), "--resolution", "256", "--codec", "pixels"]
    assert main([*minilm, "--text-encoder-kind", "minilm", "--max-length", "100000"]) == 2
    assert "--max-length 100000: " in (error := capsys.readouterr().err) and "positions for (512)" in error
    assert main(cli_args(missing, out, model_dirs, "--shard-size", "0")) == 2
    assert "--shard-size must be at least 1, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_max_length_is_checked_against_the_encoders_positions(model_dirs):
    with pytest.raises(ValueError, match=r"more than the minilm encoder in .* has positions for \(512\)"):
        MiniLMEncoder(max_length=513)
    assert MiniLMEncoder(max_length=512).max_length == 512
    t5, _ = model_dirs
    check_max_length(t5, 100_000, "t5")  # T5's positions are relative: no limit to check


def test_every_input_bad_at_listing_writes_the_report_without_loading_models(tmp_path, model_dirs, capsys, monkeypatch):
    rows = ["{broken", json.dumps({"path": " ", "alt": "an empty path"})]
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")

    def no_loading(*args):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(cli_prepare, "load_models", no_loading)
    # not 0: no dataset was written, and a script going on to pixart train would fail there
    assert main(cli_args(tmp_path / "m.jsonl", tmp_path / "out", model_dirs)) == 1
    printed, error = capsys.readouterr()
    assert f"no dataset was written; {tmp_path / 'out' / 'report.json'} says why" in error
    assert "no input could be listed, so the models were not loaded" in printed
    assert "0 samples from 2 inputs" in printed and "m.jsonl:1: bad manifest row" in printed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skip_reasons"] == {BAD_ROW: 2} and report["samples"] == 0


def damaged_shards(folder: Path) -> Path:
    """Two shards; the second cut inside k4.png, so k3 (before the damage) is readable and k4 is not."""
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for key in ("k1", "k2"):
            add_member(tar, f"{key}.png", png_bytes(noise(64, 64, int(key[1]))))
            add_member(tar, f"{key}.txt", f"a circle {key}".encode())
    with tarfile.open(folder / "00001.tar", "w") as tar:
        for key in ("k3", "k4"):
            add_member(tar, f"{key}.png", png_bytes(noise(64, 64, int(key[1]))))
            add_member(tar, f"{key}.txt", f"a circle {key}".encode())
    with tarfile.open(folder / "00001.tar") as tar:
        cut = tar.getmember("k4.png").offset_data + 100
    (folder / "00001.tar").write_bytes((folder / "00001.tar").read_bytes()[:cut])
    return folder


def test_a_damaged_tar_is_skipped_and_counted_and_a_resume_is_deterministic(tmp_path, models):
    """One truncated .tar in a folder of shards aborted the whole run ("cannot read the tar ...")."""
    inputs = list_inputs(damaged_shards(tmp_path / "shards"))
    assert [item.name for item in inputs.items] == ["00000.tar/k1.png", "00000.tar/k2.png", "00001.tar/k3.png"]
    report = prepare(inputs, tmp_path / "whole", options(shard_size=2), *models).report
    assert report["samples"] == 3 and report["inputs"] == 4 and report["complete"]
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [("00001.tar", BAD_TAR)]
    assert "damaged after member k3.txt (k4.png is cut short)" in report["skipped"][0]["message"]
    again = list_inputs(tmp_path / "shards")  # listed anew, as a rerun does
    assert prepare(again, tmp_path / "resumed", options(shard_size=2, stop_after=1), *models).written == [0]
    resumed = prepare(list_inputs(tmp_path / "shards"), tmp_path / "resumed", options(shard_size=2), *models)
    assert resumed.written == [1] and resumed.report == report
    assert visible_files(tmp_path / "whole") == visible_files(tmp_path / "resumed")
    # A manifest naming a member lost to the damage: that row is skipped as unreadable, the rest lands.
    rows = [{"path": f"shards/00001.tar/{key}.png", "alt": key} for key in ("k3", "k4")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = prepare(list_inputs(tmp_path / "m.jsonl"), tmp_path / "m", options(), *models).report
    assert report["samples"] == 1 and [s["reason"] for s in report["skipped"]] == [UNREADABLE]
    assert report["skipped"][0]["message"].startswith("tar member k4.png not found in ")
    assert "; the tar is damaged after member k3.txt" in report["skipped"][0]["message"]
    # Cut at a member's header, tarfile just ends there: the missing end-of-archive block tells.
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
        cut = tar.getmember("k2.png").offset
    data = (tmp_path / "shards" / "00000.tar").read_bytes()
    (tmp_path / "shards" / "00000.tar").write_bytes(data[:cut])
    problems = list_inputs(tmp_path / "shards").problems
    assert [(p.path, p.message) for p in problems][0] == (
        "00000.tar",
        "damaged after member k1.txt (no end-of-archive block); the members up to it are kept",
    )
    # A tar with nothing readable, given alone, is still the input as a whole unreadable.
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InputError, match="cannot read the tar"):
        list_inputs(tmp_path / "bad.tar")
    # A compressed tar under a plain .tar name was "bad checksum": its compression and the way out are named.
    import gzip
    import lzma

    for name, pack in (("gz.tar", gzip.compress), ("xz.tar", lzma.compress)):
        (tmp_path / name).write_bytes(pack(data))
        kind, tool = ("gzip", "gzip -dc") if name == "gz.tar" else ("xz", "xz -dc")
        with pytest.raises(InputError, match=f"{kind}-compressed: shards are plain tars; {tool} {name} > plain.tar"):
            list_inputs(tmp_path / name)
    # ... told by a failed read, not by the first bytes alone: a plain tar's first member may be named "BZh1.png"
    plain = tmp_path / "plain"
    plain.mkdir()
    with tarfile.open(plain / "bz.tar", "w") as tar:
        add_member(tar, "BZh1.png", png_bytes(noise(64, 64, 1)))
        add_member(tar, "BZh1.txt", b"a circle")
    assert [item.name for item in list_inputs(plain / "bz.tar").items] == ["bz.tar/BZh1.png"]


def test_a_shapes_codec_without_its_file_is_a_clear_error():
    # load_codec("shapes-ae", None) (a model.json or dataset.json without the codec's path) used to reach
    # Path(None) and fail with a TypeError that named nothing.
    from pixart.encoders.codecs import load_codec

    with pytest.raises(ValueError, match="shapes codec needs its weights file"):
        load_codec("shapes-ae", None)


def test_a_merge_that_raced_another_parts_last_shard_is_redone(tmp_path, model_dirs, monkeypatch, capsys):
    """Two `--shard` processes: one read the reports before the other's last shard was done and wrote its
    incomplete merge over the complete one (a rerun fixed it). Here the other part's shard finishes while
    this part writes report.json: the merge is redone and says complete."""
    from pixart.data import prepare_report
    from pixart.data.shards import report_path

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        write_image(folder, f"{i}.png", noise(24, 24, i), caption=f"a red circle {i}")
    out = tmp_path / "out"
    real_write = prepare_report.write_json
    raced = []

    def write_while_part_two_ends(path, value, indent=2):
        if path.name == "report.json" and not raced:  # part 2/2 ends between this part's read and its write
            raced.append(True)
            real_write(report_path(out, 1), {"shard": 1, "samples": 0, "buckets": {}, "skipped": []}, indent=1)
        real_write(path, value, indent)

    monkeypatch.setattr(prepare_report, "write_json", write_while_part_two_ends)
    assert main(cli_args(folder, out, model_dirs, "--shard-size", "2", "--shard", "0/2")) == 0
    report = json.loads((out / "report.json").read_text())
    assert raced and report["complete"] and report["shards"] == {"done": 2, "total": 2}, report


def test_a_folder_listing_enters_linked_folders_once_and_leaves_hidden_ones_out(tmp_path):
    """Path.rglob on Python 3.11 does not enter a linked folder: its images were dropped without a word."""
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for folder, name in ((root, "a.png"), (elsewhere, "b.png"), (root / ".cache", "c.png"), (root, ".d.png")):
        folder.mkdir(exist_ok=True)
        write_image(folder, name, noise(8, 8, 0))
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(root, target_is_directory=True)  # a cycle: read once, not forever
    assert [item.name for item in list_inputs(root).items] == ["a.png", "linked/b.png"]
    (root / "0link").symlink_to(elsewhere, target_is_directory=True)  # made last, first in sorted order
    assert [item.name for item in list_inputs(root).items] == ["0link/b.png", "a.png"]  # not the disk's order


def test_a_folder_that_cannot_be_listed_stops_the_listing(tmp_path, monkeypatch):
    """os.walk passed over a subfolder it could not list (no permission; an NFS hiccup) without a word: its
    images were left out and the dataset prepared short. (Permissions do not bind root: the listing fails here.)"""
    import os

    root = tmp_path / "data"
    for folder in (root, root / "sub"):
        folder.mkdir(exist_ok=True)
        write_image(folder, "a.png", noise(8, 8, 0))
    listing = os.scandir

    def refused(path="."):
        if Path(path) == root / "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", refused)
    with pytest.raises(OSError, match=r"Permission denied \(a folder of the input cannot be listed") as error:
        list_inputs(root)
    assert error.value.filename == str(root / "sub")  # the command line prints it as one line, as any OSError


def test_class_labels_of_a_manifest_or_sidecar_are_kept_for_stage_1(tmp_path, models):
    """Stage 1 trains on class labels and prepare kept none: the class recipe could not train on a user's data.
    A whole-number `label` (a number or its digits) is kept; a word is a field of the user's, not a class."""
    (tmp_path / "img").mkdir()
    for i in range(4):
        noise(64, 64, i).save(tmp_path / "img" / f"{i}.png")
    rows = [{"path": f"img/{i}.png", "alt": "x", "label": label} for i, label in enumerate([3, " 7 ", "cat", -1])]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    prepare(list_inputs(tmp_path / "data.jsonl"), tmp_path / "out", options(), *models)
    data = FeatureDataset(tmp_path / "out")
    assert {data.record(i)["source"]: label for i, label in enumerate(data.labels())} == {
        "img/0.png": 3,
        "img/1.png": 7,
        "img/2.png": -1,  # none
        "img/3.png": -1,
    }
    folder = tmp_path / "folder"
    folder.mkdir()
    write_image(folder, "a.png", noise(64, 64, 0), caption=None)
    (folder / "a.json").write_text(json.dumps({"alt": "a red circle", "label": 2}))
    prepare(list_inputs(folder), tmp_path / "out2", options(), *models)
    assert FeatureDataset(tmp_path / "out2").labels() == [2]


def test_a_manifest_whose_rows_name_no_image_column_is_refused_naming_its_columns(tmp_path, model_dirs, capsys):
    """Another tool's columns ("img"): prepare ran, said "complete", exited 0 and wrote no dataset. Hugging
    Face imagefolder's metadata.jsonl (file_name, text) is read as it is."""
    write_image(tmp_path, "a.png", noise(64, 64, 0), caption=None)
    rows = [json.dumps({"img": "a.png", "text": "a red square"})]
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    assert main(cli_args(tmp_path / "m.jsonl", tmp_path / "out", model_dirs)) == 2
    error = capsys.readouterr().err
    assert "no row has an image column (path, image, file_name); its columns are img, text" in error, error
    assert not (tmp_path / "out").exists()
    (tmp_path / "hf.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a red square"}) + "\n")
    assert main(cli_args(tmp_path / "hf.jsonl", tmp_path / "out", model_dirs)) == 0
    assert len(FeatureDataset(tmp_path / "out")) == 1


def test_whole_number_labels_written_as_floats_are_kept_and_others_are_not():
    """pandas writes an integer column holding a gap as 3.0: such labels were dropped as not whole."""
    from pixart.data.items import class_label_of

    kept = [(3, 3), (3.0, 3), ("3.0", 3), (" 12 ", 12), ("0", 0)]  # pairs: 3 and 3.0 are one dict key
    for value, label in kept:
        assert class_label_of({"label": value}) == label and isinstance(class_label_of({"label": value}), int), value
    for value in (2.5, "2.5", -1, -1.0, "-1", True, "cat", "", None, float("nan"), "3.00"):
        assert class_label_of({"label": value}) is None, value


def test_a_broken_link_named_as_an_image_is_reported_not_left_out(tmp_path, models):
    """The folder listing kept regular files only: a link whose target is gone vanished without a word."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder, "a.png", noise(64, 64, 0))
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "gone.txt").write_text("a caption of the lost image")
    report = prepare(list_inputs(folder), tmp_path / "out", options(), *models).report
    assert report["samples"] == 1 and report["skip_reasons"] == {UNREADABLE: 1}
    assert [entry["path"] for entry in report["skipped"]] == ["gone.png"]
    # Not an input but a listing problem: a dataset prepared before links were reported keeps its digest,
    # so a rerun into it is not refused as "prepared with other inputs"
    from pixart.data.prepare import inputs_digest

    with_link = inputs_digest(list_inputs(folder))
    (folder / "gone.png").unlink()
    assert inputs_digest(list_inputs(folder)) == with_link


def test_a_tar_member_stored_as_a_hard_link_is_read_as_its_target(tmp_path):
    """tar stores a second name of the same file as a link with no data: such images were left out silently."""
    image = png_bytes(noise(64, 64, 0))
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        add_member(tar, "a.png", image)
        add_member(tar, "a.txt", b"a first caption")
        link = tarfile.TarInfo("b.png")
        link.type, link.linkname = tarfile.LNKTYPE, "a.png"
        tar.addfile(link)
        add_member(tar, "b.txt", b"a second caption")
    inputs = list_inputs(tmp_path / "shard.tar")
    assert [item.name for item in inputs.items] == ["shard.tar/a.png", "shard.tar/b.png"] and not inputs.problems
    assert [item.image.read() for item in inputs.items] == [image, image]


def test_a_rerun_redoes_the_shards_whose_captions_were_edited_and_only_those(tmp_path, models, monkeypatch):
    """A rerun after editing captions said "every shard is done" and kept the old captions' features."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(8):  # two shards of four
        write_image(folder, f"{i}.png", noise(64, 64, i), caption=f"a red circle number {i}")
    out = tmp_path / "out"
    assert prepare(list_inputs(folder), out, options(), *models).written == [0, 1]
    untouched = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-00000*")}
    (folder / "6.txt").write_text("a blue square, edited")  # shard 1
    rerun = prepare(list_inputs(folder), out, options(), *models)
    assert (rerun.written, rerun.already_done) == ([1], [0])
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-00000*")} == untouched
    data = FeatureDataset(out)
    captions = {data.record(i)["source"]: data.record(i)["captions"]["alt"] for i in range(len(data))}
    assert captions["6.png"] == "a blue square, edited" and captions["5.png"] == "a red circle number 5"
    # the redone shard equals a fresh prepare of the edited inputs
    prepare(list_inputs(folder), tmp_path / "fresh", options(), *models)
    assert visible_files(out) == visible_files(tmp_path / "fresh")
    assert prepare(list_inputs(folder), out, options(), *models).written == []  # and nothing more to do

    # Killed while redoing a shard (after its old files left, before the new ones came): never the old one
    (folder / "1.txt").write_text("a green triangle, edited")
    import pixart.data.prepare as prepare_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "prepare_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(list_inputs(folder), out, options(), *models)
    monkeypatch.undo()
    assert not (out / "shard-00000.safetensors").exists()
    assert prepare(list_inputs(folder), out, options(), *models).written == [0]
    data = FeatureDataset(out)
    assert {data.record(i)["captions"]["alt"] for i in range(len(data))} >= {"a green triangle, edited"}


def test_editing_a_field_that_is_not_prepared_redoes_no_shard(tmp_path, models):
    """Every field of a row was hashed: with --fields alt, editing another column (or adding one to a large
    manifest) re-encoded the shard with the VAE and T5. Shards hashed the old way still count as unchanged."""
    from pixart.data.fingerprint import captions_fingerprint
    from pixart.data.prepare_options import shard_items
    from pixart.data.shards import report_path

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        noise(64, 64, i).save(folder / f"{i}.png")
        (folder / f"{i}.json").write_text(json.dumps({"alt": f"a red circle {i}", "tags": "red"}))
    out = tmp_path / "out"
    assert prepare(list_inputs(folder), out, options(), *models).written == [0]
    (folder / "2.json").write_text(json.dumps({"alt": "a red circle 2", "tags": "red, round", "extra": 1}))
    assert prepare(list_inputs(folder), out, options(), *models).written == []
    (folder / "2.json").write_text(json.dumps({"alt": "a blue circle 2"}))  # a prepared field: redone
    assert prepare(list_inputs(folder), out, options(), *models).written == [0]
    # a shard whose report holds the every-field hash (written before this change) is still unchanged
    report = report_path(out, 0)
    written = json.loads(report.read_text())
    items = shard_items(list_inputs(folder), options(), 0)
    report.write_text(json.dumps({**written, "captions_fingerprint": captions_fingerprint(items)}))
    assert prepare(list_inputs(folder), out, options(), *models).written == []


def test_a_misspelt_caption_field_is_refused_before_the_models_load(tmp_path, model_dirs, capsys, monkeypatch):
    """--fields dnese: every input was walked and skipped for it, one line each, after both models loaded."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_image(folder, f"{i}.png", noise(24, 24, i), caption=f"a red circle {i}")

    def no_loading(*args):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(cli_prepare, "load_models", no_loading)
    assert main([*cli_args(folder, tmp_path / "out", model_dirs), "--fields", "alt,dnese"]) == 2
    error = capsys.readouterr().err
    assert "--fields alt,dnese: no input has a caption field 'dnese' (their fields: alt)" in error
    assert not (tmp_path / "out").exists()


def test_a_caption_field_only_later_inputs_hold_is_not_refused(tmp_path):
    """Dense captions for part of the data (here only the last of 150 inputs, sorted by name): the field
    check looked at the first 100 and refused a dataset that prepares fine (the others skipped, counted)."""
    from pixart.data.prepare_options import check_fields_present

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(150):
        (folder / f"{i:03d}.png").write_bytes(b"")  # listing reads names and sidecars only
        fields = {"alt": f"a circle {i}", **({"dense": "a dense caption"} if i == 149 else {})}
        (folder / f"{i:03d}.json").write_text(json.dumps(fields))
    check_fields_present(list_inputs(folder), ["alt", "dense"])
    with pytest.raises(PrepareError, match="no input has a caption field 'dnese'"):
        check_fields_present(list_inputs(folder), ["dnese"])


def test_a_settings_table_that_differs_by_an_entry_on_one_side_is_named():
    """An entry present as null on one side and absent on the other (an older dataset.json) made the
    difference message fail with an IndexError instead of naming it."""
    from pixart.data.prepare import ABSENT, _difference

    older = _difference("codec", {"kind": "sd", "shift": None}, {"kind": "sd"})
    assert older == "codec['shift']: None there, absent now"
    assert _difference("codec", ABSENT, {"kind": "sd"}) == "codec: absent there, {'kind': 'sd'} now"
    assert _difference("buckets", {"1.0": [256, 256]}, {"1.0": [512, 512], "2.0": [362, 724]}) == (
        "buckets['1.0']: [256, 256] there, [512, 512] now and 1 more entries"
    )
