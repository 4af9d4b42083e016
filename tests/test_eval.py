"""`pixart eval`: the shapes suite on a `pixart demo --quick` model, the real-data suite (FID, CLIP score) with
a stand-in TorchScript Inception and a tiny random CLIP written here, and the errors a user can meet.

Nothing is downloaded: the stand-ins follow the calling conventions of the real files (see
pixart.evaluate.inception and pixart.evaluate.clipscore), which is what these tests pin down.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_quick_demo
from PIL import Image
from torch import nn

from pixart.cli.main import main
from pixart.data.synthetic_dataset import make_dataset, two_object_prompts
from pixart.evaluate import realdata
from pixart.evaluate.clipscore import CLIP_HINT, ClipScorer, clip_score
from pixart.evaluate.frechet import frechet_distance
from pixart.evaluate.inception import INCEPTION_HINT, INCEPTION_URL, inception_features, load_inception
from pixart.evaluate.inception import resize_for_inception as resize
from pixart.evaluate.probe import PROBE_VERSION
from pixart.evaluate.realdata import RealDataError, list_images, read_prompts, small_sample_warning
from pixart.weights import WeightsError

# --- stand-ins for the real networks ------------------------------------------------------------------


class StandInInception(nn.Module):
    """inception-2015-12-05.pt's calling convention on a tiny network: pixels in [0, 255], (N, 32) features.

    It insists on 299 x 299 input, so it also checks that every image was resized before it.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 7, stride=5)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert img.shape[1] == 3 and img.shape[2] == 299 and img.shape[3] == 299
        x = (img.to(torch.float32) - 128) / 128
        features = F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 2).flatten(1)  # (N, 32)
        if return_features:
            return features
        return features.softmax(-1)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = StandInInception()
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format of the real file
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
    return path


def random_images(count: int, seed: int) -> list[np.ndarray]:
    """uint8 (H, W, 3) images of assorted sizes and aspects."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 60), (64, 64), (33, 47), (300, 200), (299, 299)]
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(count)]


# --- Inception resizing and FID -----------------------------------------------------------------------


def network_resize(image: np.ndarray) -> torch.Tensor:
    """What inception-2015-12-05.pt does to its input before the first convolution (its TorchScript source):
    an affine grid shifted to TF1's sampling (source position = output position * in / 299), bilinear, border.
    """
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    height, width = x.shape[-2:]
    theta = torch.tensor([[[1.0, 0.0, 1 / width - 1 / 299], [0.0, 1.0, 1 / height - 1 / 299]]])
    grid = F.affine_grid(theta, [1, 3, 299, 299], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def test_resize_matches_the_networks_own_resampling():
    for image in random_images(4, seed=1):
        got = resize(image)
        assert got.shape == (3, 299, 299) and got.dtype == torch.float32
        # Up to the float32 round-off of the network's sampling grid.
        torch.testing.assert_close(got, network_resize(image), atol=0.05, rtol=0)
    square = random_images(5, seed=2)[-1]  # already 299 x 299: untouched
    assert torch.equal(resize(square), torch.from_numpy(square).permute(2, 0, 1).float())


def test_fid_is_zero_for_a_set_against_itself_and_positive_for_a_shifted_set(inception_file):
    detector = load_inception(inception_file)
    images = random_images(24, seed=3)
    features = inception_features(detector, images, batch_size=5)
    assert features.shape == (24, 32) and features.dtype == torch.float64
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    shifted = [np.clip(image.astype(np.int16) + 60, 0, 255).astype(np.uint8) for image in images]
    assert frechet_distance(features, inception_features(detector, shifted)) > 0.01
    # Batching does not change features (each image is resized on its own).
    torch.testing.assert_close(inception_features(detector, images, batch_size=24), features)


def test_clip_score_lies_in_0_100(clip_folder):
    scorer = ClipScorer.load(clip_folder)
    images = [Image.fromarray(image) for image in random_images(4, seed=4)]
    captions = ["a large red circle in the centre, on a grey background", "blue square", "x", "a small green triangle."]
    pairs = scorer.pair_scores(images, captions)
    assert pairs.shape == (4,) and bool(((pairs >= -100) & (pairs <= 100)).all())
    assert 0.0 <= clip_score(pairs) <= 100.0
    # Each pair is scored on its own: order and company do not matter.
    torch.testing.assert_close(scorer.pair_scores(images[::-1], captions[::-1]), pairs.flip(0))
    # Each pair is clamped at 0 before the mean, as torchmetrics documents it.
    assert clip_score(torch.tensor([-10.0, 30.0], dtype=torch.float64)) == pytest.approx(15.0)


def test_a_folder_that_only_loads_as_a_clip_is_refused(clip_folder, tmp_path):
    """Another model's folder (a T5 text encoder beside a CLIP tokenizer, say) loaded as a CLIP with a warning
    and random weights: it failed at the first images, after generation had started, or scored noise."""
    from safetensors.torch import load_file, save_file
    from transformers import T5Config, T5EncoderModel

    t5 = tmp_path / "t5"
    shutil.copytree(clip_folder, t5)
    (t5 / "model.safetensors").unlink()
    T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(t5)
    with pytest.raises(WeightsError, match=r"is not a transformers CLIP folder: its config is a 't5' model's"):
        ClipScorer.load(t5)
    partial = tmp_path / "partial"
    shutil.copytree(clip_folder, partial)
    weights = load_file(partial / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("text_projection")}, partial / "model.safetensors")
    with pytest.raises(WeightsError, match=r"1 of CLIP's weights are missing from it \(e.g. text_projection.weight\)"):
        ClipScorer.load(partial)
    ClipScorer.load(clip_folder)  # the whole CLIP loads


# --- prompt files -------------------------------------------------------------------------------------


def test_read_prompts_from_a_csv_manifest_as_prepare_reads_it(tmp_path):
    """A CSV manifest was read as one prompt a line: its header and each row's image path became prompts."""
    manifest = tmp_path / "captions.csv"
    manifest.write_text('image,caption,dense\n0.png,a red circle,"a red circle, centred"\n1.png,a blue square,x\n')
    assert read_prompts(manifest) == ["a red circle", "a blue square"]
    assert read_prompts(manifest, field="dense") == ["a red circle, centred", "x"]


def test_read_prompts_refuses_structured_files_it_would_read_a_line_a_prompt(tmp_path):
    """PartiPrompts.tsv read one line a prompt scored its header and each prompt with its category columns,
    and a pretty-printed JSON list scored "[" and "]": refused, naming what to give instead."""
    parti = tmp_path / "PartiPrompts.tsv"
    parti.write_text("Prompt\tCategory\tChallenge\tNote\nA red bicycle\tVehicles\tColors\t\n", encoding="utf-8")
    with pytest.raises(RealDataError, match=r"a \.tsv file is not read .* cut -f1 PartiPrompts.tsv \| tail -n \+2"):
        read_prompts(parti)
    listed = tmp_path / "prompts.json"
    listed.write_text('[\n"a red circle",\n"a blue square"\n]\n', encoding="utf-8")
    with pytest.raises(RealDataError, match=r"a \.json file is not read .* CSV manifest$"):  # no cut -f1 advice
        read_prompts(listed)


def test_read_prompts_from_text_and_jsonl(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("a red circle\n\n  a blue square  \n")
    assert read_prompts(text) == ["a red circle", "a blue square"]
    with pytest.raises(RealDataError, match="--field picks a field of a JSONL or CSV manifest"):
        read_prompts(text, field="dense")  # a text file has no fields: refused, not ignored
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text('{"image": "a.png", "caption": "one"}\n\n{"image": "b.png", "text": "two"}\n')
    assert read_prompts(manifest) == ["one", "two"]  # caption, else prompt, text or alt
    manifest.write_text('{"image": "a.png", "dense": "long"}\n')
    assert read_prompts(manifest, field="dense") == ["long"]
    with pytest.raises(RealDataError, match="--field"):
        read_prompts(manifest)
    manifest.write_text("not json\n")
    with pytest.raises(RealDataError, match=r"captions.jsonl:1: not JSON"):
        read_prompts(manifest)
    manifest.write_text('{"caption": "fine"}\n["a", "list"]\n')
    with pytest.raises(RealDataError, match=r"captions.jsonl:2: not a JSON object"):
        read_prompts(manifest)
    manifest.write_bytes(b'{"caption": "fine"}\n{"caption": "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(RealDataError, match=r"captions.jsonl:2: the 'caption' field is not valid UTF-8"):
        read_prompts(manifest)
    manifest.write_bytes(b'\xef\xbb\xbf{"caption": "bom"}\r\n{"caption": "line\xe2\x80\xa8separator"}\r\n')
    assert read_prompts(manifest) == ["bom", "line\u2028separator"]  # a BOM, CRLF and U+2028 in a string
    text.write_bytes("a red car\u2028by the sea\r\nsecond\x0cprompt\n".encode())
    assert read_prompts(text) == ["a red car\u2028by the sea", "second\x0cprompt"]  # lines end at \n only
    text.write_bytes(b"caf\xe9\n")
    with pytest.raises(RealDataError, match=r"prompts.txt is not UTF-8 text \(byte 3; .*save it as UTF-8"):
        read_prompts(text)
    text.write_bytes("a cat\r\n\r\ncafé\r\n".encode("utf-16"))  # Windows' "Unicode": a byte-order mark first
    assert read_prompts(text) == ["a cat", "café"]
    with pytest.raises(FileNotFoundError, match="--prompts: no file at"):
        read_prompts(tmp_path / "missing.txt")


# --- the command --------------------------------------------------------------------------------------


def eval_args(*args) -> list[str]:
    return ["eval", *map(str, args)]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Each test runs in its own folder: a run without --out makes runs/eval there, not in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A `pixart demo --quick` run: its model folder, and its cached 40-step probe in .cache."""
    out = tmp_path_factory.mktemp("demo")
    result = run_quick_demo(out)
    assert result.returncode == 0, result.stderr
    return out


def test_the_shapes_suites_frechet_baseline_is_what_exact_drawings_score(monkeypatch):
    """A generator that draws every prompt's scene exactly scores the baseline, no less: measured against the
    prompts' own renders, generated images scored 0 here and a full demo's 105 against a baseline of 595,
    which read as better than real. Blank images score far above it."""
    from pixart.data import synthetic_dataset, synthetic_render
    from pixart.evaluate import suite
    from pixart.evaluate.probe import Probe, ProbeNet

    torch.manual_seed(0)
    probe = Probe(ProbeNet())
    scenes = {caption: scene for scene, caption in synthetic_dataset.single_object_prompts(24, seed=3)}
    scenes.update({caption: scene for scene, caption in synthetic_dataset.two_object_prompts(24, seed=3)})

    def exact(pipe, prompts, settings, **kw):
        return synthetic_render.render_batch([scenes[p] for p in prompts], 36, 36)

    monkeypatch.setattr(suite, "generate_arrays", exact)
    scores = suite.shapes_suite(None, probe, single=24, pairs=24, seed=3)  # type: ignore[arg-type]
    assert scores["frechet"] == pytest.approx(scores["frechet_real_baseline"], rel=1e-9)
    monkeypatch.setattr(
        suite,
        "generate_arrays",
        lambda pipe, prompts, settings, **kw: np.full((len(prompts), 36, 36, 3), 128, np.uint8),
    )
    blank = suite.shapes_suite(None, probe, single=24, pairs=24, seed=3)  # type: ignore[arg-type]
    assert blank["frechet"] > 2 * blank["frechet_real_baseline"]  # grey squares: far from any real set


@pytest.mark.slow
def test_shapes_suite_through_the_cli(demo, tmp_path, capsys):
    out = tmp_path / "shapes.json"
    code = main(
        eval_args(
            *("--model", demo / "model", "--suite", "shapes", "--single", 4, "--pairs", 4, "--steps", 2, "--seed", 5),
            *("--out", out, "--no-progress"),
            *("--probe-cache", demo / ".cache", "--probe-steps", 40),  # the demo's own probe: no training here
        )
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["suite"] == "shapes" and report["seed"] == 5
    assert set(report["scores"]) == {"color", "shape", "size", "position", "binding", "relation"}
    assert report["scores"]["relation"] <= report["scores"]["binding"]  # relation is binding plus placement
    assert all(0.0 <= value <= 1.0 for value in report["scores"].values())
    assert report["frechet"]["generated_vs_real"] >= 0 and report["frechet"]["real_vs_real_baseline"] >= 0
    assert report["images"] == {"single": 4, "pairs": 4, "size": [36, 36]}
    assert report["seeds"] == {"single": 5, "pairs": 100_005}  # what generate --seed needs to make one again
    assert report["settings"]["steps"] == 2
    # the probe every score went through: --probe-steps 40 and the default 600 wrote the same report
    assert report["probe"] == {"version": PROBE_VERSION, "seed": 0, "training_steps": 40}
    printed = capsys.readouterr()
    assert (
        "not the shapes world's" not in printed.err
    )  # the demo's folder records the shapes world's codec and text encoder
    lines = printed.out.strip().splitlines()
    for row in ("colour (single object)", "shape (single object)", "size (single object)", "position (single object)"):
        assert any(line.strip().startswith(row) for line in lines), row
    assert any(line.strip().startswith("binding (two objects)") for line in lines)
    assert any(line.strip().startswith("relation (two objects)") for line in lines)
    assert any("Frechet distance (probe)" in line and "real vs real" in line for line in lines)
    assert lines[-1].startswith("pixart eval: shapes suite on") and "binding" in lines[-1] and str(out) in lines[-1]


def reference_folder(root) -> tuple:
    """Shapes-world renders of assorted sizes, plus one file that is not an image."""
    root.mkdir()
    for k, (h, w) in enumerate([(36, 36), (48, 64), (64, 48), (36, 36), (72, 36)]):
        Image.fromarray(make_dataset(1, seed=50 + k, height=h, width=w).images[0]).save(root / f"{k}.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root


def test_fid_from_no_more_images_than_feature_dimensions_is_warned_about():
    """N images give a covariance of rank N - 1 at most: 2048 of them were not warned about, yet rank-deficient."""
    features = np.random.default_rng(0).standard_normal((64, 64))  # 64 images, 64 dimensions
    assert np.linalg.matrix_rank(np.cov(features, rowvar=False)) == 63
    assert small_sample_warning(2049, 5000, 2048) is None
    assert "2048 generated" in small_sample_warning(2048, 5000, 2048)
    assert "100 reference" in small_sample_warning(5000, 100, 2048)


@pytest.mark.slow
def test_the_real_vs_real_baseline_draws_scenes_as_the_prompts_do(demo, tmp_path, monkeypatch):
    """The baseline's two-object scenes were uniform (their objects shared a colour or a shape about a fifth
    of the time) while every prompt's differ in both: a gap between the sets read as sample-size bias."""
    from pixart.data import synthetic_render

    rendered = []
    real_render = synthetic_render.render_batch

    def recording(scenes, height, width):
        rendered.append(list(scenes))
        return real_render(scenes, height, width)

    monkeypatch.setattr(synthetic_render, "render_batch", recording)
    args = ("--model", demo / "model", "--suite", "shapes", "--single", 2, "--pairs", 24, "--steps", 1)
    cache = ("--probe-cache", demo / ".cache", "--probe-steps", 40, "--no-progress")
    assert main(eval_args(*args, *cache, "--out", tmp_path / "s.json")) == 0
    prompts, baseline = rendered[-2:]  # the prompts' scenes, then the baseline's
    assert [len(s.objects) for s in baseline] == [len(s.objects) for s in prompts] == [1] * 2 + [2] * 24
    assert baseline != prompts
    for scene in baseline[2:]:
        a, b = scene.objects
        assert a.color != b.color and a.shape != b.shape, scene


def test_real_suite_through_the_cli(demo, inception_file, clip_folder, tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "prompts.jsonl"
    captions = [caption for _, caption in two_object_prompts(3, seed=9)]
    manifest.write_text("".join(json.dumps({"image": f"{i}.png", "caption": c}) + "\n" for i, c in enumerate(captions)))
    real = reference_folder(tmp_path / "real")
    out = tmp_path / "real.json"
    crops = []  # the aspect each reference image was cut to

    def recording(image, height, width):
        crops.append((image.shape[:2], (height, width)))
        return real_crop(image, height, width)

    real_crop = realdata.centre_crop_to_aspect
    monkeypatch.setattr(realdata, "centre_crop_to_aspect", recording)
    code = main(
        eval_args(
            *("--model", demo / "model", "--suite", "real", "--prompts", manifest, "--real", real),
            *("--inception", inception_file, "--clip", clip_folder, "--steps", 2, "--batch", 2),
            *("--out", out, "--no-progress"),
        )
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["fid"] > 0  # generated against real renders
    assert "FID from 3 generated and 5 reference images, no more than the" in report["fid_warning"]
    assert 0.0 <= report["clip_score"] <= 100.0
    assert report["missing"] == {}
    assert report["images"]["generated"] == 3 and report["images"]["real"] == 5
    assert [s["reason"] for s in report["images"]["real_skipped"]] == ["not an image"]
    # what FID compared with and which prompts, as absolute paths (the report is read elsewhere)
    assert report["real"] == os.path.abspath(real) and report["prompts"] == os.path.abspath(manifest)
    assert report["field"] is None and report["model"] == os.path.abspath(demo / "model")
    # each reference image cut to the generated images' aspect before Inception squares it
    assert report["images"]["real_crop"] == "centre"
    assert sorted(shape for shape, _ in crops) == [(36, 36), (36, 36), (48, 64), (64, 48), (72, 36)]
    assert {aspect for _, aspect in crops} == {tuple(report["settings"]["size"])}
    # the tiny CLIP reads a token a character, 64 positions with its start and end: each caption is longer
    assert min(len(c.replace(" ", "")) for c in captions) > 62 and report["clip_truncated_prompts"] == 3
    captured = capsys.readouterr()
    assert "warning: 3 of 3 prompts are longer than the CLIP text model's 64 tokens" in captured.err
    assert "warning: FID from 3 generated and 5 reference images" in captured.err
    printed = captured.out
    assert "FID" in printed and "CLIP score" in printed and "3 generated vs 5 reference images" in printed
    assert "1 unreadable reference image(s) left out" in printed
    assert printed.strip().splitlines()[-1].startswith("pixart eval: real suite on")


@pytest.mark.slow
def test_real_suite_reports_a_missing_inception_and_still_scores_clip(demo, clip_folder, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle in the centre, on a grey background\na small blue square\nunused\n")
    out = tmp_path / "real.json"
    code = main(
        eval_args(
            *("--model", demo / "model", "--suite", "real", "--prompts", prompts, "--num", 2),
            *("--clip", clip_folder, "--steps", 2, "--out", out, "--no-progress"),
        )
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["fid"] is None and report["missing"] == {"fid": INCEPTION_HINT}
    assert 0.0 <= report["clip_score"] <= 100.0 and report["images"]["generated"] == 2
    printed = capsys.readouterr().out
    assert f"skipped: {INCEPTION_HINT}" in printed
    assert "FID skipped (no --inception)" in printed.strip().splitlines()[-1]


def run_eval(capsys, *args) -> tuple[int, str]:
    """Exit status and stderr of `pixart eval ARGS`."""
    code = main(eval_args(*args))
    return code, capsys.readouterr().err


def test_missing_weight_files_are_reported_clearly(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    real = tmp_path / "real"
    real.mkdir()
    Image.new("RGB", (8, 8)).save(real / "0.png")
    base = ("--model", tmp_path, "--suite", "real", "--prompts", prompts)  # checked before any model loads
    code, err = run_eval(capsys, *base)
    assert code == 2
    assert "--inception FILE is required for FID; download inception-2015-12-05.pt on a connected machine" in err
    assert INCEPTION_URL in err and CLIP_HINT in err
    code, err = run_eval(capsys, *base, "--real", real, "--inception", tmp_path / "inception.pt")
    assert code == 2 and "--inception: no file at" in err and INCEPTION_URL in err
    code, err = run_eval(capsys, *base, "--clip", tmp_path / "clip")
    assert code == 2 and "--clip: no folder at" in err and "openai/clip-vit-large-patch14" in err
    not_clip = tmp_path / "not-clip"
    not_clip.mkdir()
    code, err = run_eval(capsys, *base, "--clip", not_clip)
    assert code == 2 and "is not a transformers CLIP folder" in err
    state_dict = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, state_dict)
    code, err = run_eval(capsys, *base, "--real", real, "--inception", state_dict)
    assert code == 2 and "is not a TorchScript module" in err and INCEPTION_URL in err
    code, err = run_eval(capsys, *base, "--inception", state_dict)
    assert code == 2 and "FID needs --real DIR" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_eval(capsys, *base, "--real", empty, "--inception", state_dict)
    assert code == 2 and "holds no images" in err
    assert not (tmp_path / "runs").exists()  # the default --out's folder, made for the check, is gone again


def test_real_suite_options_that_cannot_work_are_refused_before_loading(tmp_path, capsys):
    """Each of these used to be found after the long part, or to be ignored without a word."""
    prompts, one = tmp_path / "prompts.txt", tmp_path / "one.txt"
    prompts.write_text("a red circle\na blue square\n")
    one.write_text("a red circle\n")
    real = tmp_path / "real"
    real.mkdir()
    Image.new("RGB", (8, 8)).save(real / "0.png")
    inception = tmp_path / "inception.pt"
    inception.write_bytes(b"not read: the options are refused first")
    base = ("--model", tmp_path, "--suite", "real")
    code, err = run_eval(capsys, *base, "--prompts", prompts, "--clip", tmp_path, "--out", tmp_path)
    assert code == 2 and f"--out {tmp_path} is a folder: give the JSON file to write" in err
    code, err = run_eval(capsys, *base, "--prompts", prompts, "--clip", tmp_path, "--real", real)
    assert code == 2 and "--real DIR is for FID, which also needs --inception FILE" in err
    code, err = run_eval(capsys, *base, "--prompts", prompts, "--clip", tmp_path, "--field", "dense")
    assert code == 2 and "--field picks a field of a JSONL or CSV manifest" in err
    code, err = run_eval(capsys, *base, "--prompts", one, "--real", real, "--inception", inception)
    assert code == 2 and "FID needs at least 2 generated images (one per prompt); the prompts give 1" in err
    code, err = run_eval(capsys, *base, "--prompts", prompts, "--real", real, "--inception", inception, "--num", "1")
    assert code == 2 and "the prompts give 1" in err


def test_missing_model_and_unknown_suite(tmp_path, capsys):
    code, err = run_eval(capsys, "--model", tmp_path / "no-such-model")
    assert code == 2 and "model not found" in err and "no-such-model" in err
    code, err = run_eval(capsys, "--model", tmp_path, "--suite", "imagenet")
    assert code == 2 and "unknown suite 'imagenet'; choose one of: shapes, real" in err
    code, err = run_eval(capsys, "--model", tmp_path, "--num", "3")
    assert code == 2 and "--num: only for --suite real, not shapes" in err
    code, err = run_eval(capsys, "--model", tmp_path, "--single", "0")
    assert code == 2 and "--single must be at least 1" in err


def test_list_images_finds_images_recursively(tmp_path):
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    for name in ("a/1.PNG", "2.jpg", "a/.hidden/3.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["2.jpg", "a/1.PNG"]


def test_a_broken_link_among_the_reference_images_is_counted_as_skipped(tmp_path, monkeypatch):
    """A link to an image on a drive no longer mounted vanished from the reference set without a count."""
    from pixart.evaluate.realdata import read_images

    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    (tmp_path / "1.png").symlink_to(tmp_path / "gone" / "1.png")
    skipped: list[dict] = []
    monkeypatch.chdir(tmp_path)  # a relative --real: the report still names the file absolutely
    arrays = list(read_images(list_images("."), skipped))
    assert len(arrays) == 1
    assert [(s["path"], s["reason"]) for s in skipped] == [(str(tmp_path / "1.png"), "unreadable")], skipped


def test_reference_images_are_cut_to_the_generated_aspect_centred(tmp_path):
    """A 4:3 reference photo against square generated images was squashed into Inception's square whole."""
    from pixart.evaluate.realdata import centre_crop_to_aspect, read_images

    photo = np.zeros((480, 640, 3), np.uint8)  # (H, W, 3): 80-column bands at each side, the square between
    photo[:, 80:560] = 200
    square = centre_crop_to_aspect(photo, 512, 512)
    assert square.shape == (480, 480, 3) and (square == 200).all()
    portrait = centre_crop_to_aspect(photo, 1024, 512)  # 2:1 tall: 240 columns of the middle, every row
    assert portrait.shape == (480, 240, 3) and (portrait == 200).all()
    wide = centre_crop_to_aspect(photo.transpose(1, 0, 2), 36, 72)  # (640, 480) -> (240, 480), rows 200..439
    assert wide.shape == (240, 480, 3) and (wide == 200).all()
    assert centre_crop_to_aspect(photo, 3, 4).shape == photo.shape  # its own aspect: whole
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert next(read_images([tmp_path / "photo.png"], [], (64, 64))).shape == (480, 480, 3)
    assert next(read_images([tmp_path / "photo.png"], [])).shape == (480, 640, 3)


def test_bad_seed_guidance_and_device_are_refused_before_loading(tmp_path, capsys):
    """Each was found only after the model had loaded (nan or inf guidance scored black images)."""
    base = ("--model", tmp_path, "--out", tmp_path / "e.json")  # an empty folder: loading it would fail
    code, err = run_eval(capsys, *base, "--seed", "-5")
    assert code == 2 and f"--seed must lie in 0..{2**62}, got -5" in err
    code, err = run_eval(capsys, *base, "--seed", str(2**63))  # torch's generator would overflow
    assert code == 2 and f"--seed must lie in 0..{2**62}, got {2**63}" in err
    for cfg in ("nan", "inf", "-1"):
        code, err = run_eval(capsys, *base, "--cfg", cfg)
        assert code == 2 and "the guidance scale must be a finite number >= 0" in err, cfg
    code, err = run_eval(capsys, *base, "--sampler", "bogus")  # found only at loading before
    assert code == 2 and "unknown sampler 'bogus'" in err
    code, err = run_eval(capsys, *base, "--steps", "5000")
    assert code == 2 and "steps must lie in 1..1000, got 5000" in err
    code, err = run_eval(capsys, *base, "--device", "nonsense")
    assert code == 2 and "--device 'nonsense' is not a device" in err
    assert not (tmp_path / "e.json").exists()


def test_unwritable_out_and_probe_cache_are_refused_before_loading(tmp_path, capsys, monkeypatch):
    """Found after the whole evaluation, when the results were written (or the probe cached)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cache = ("--probe-cache", tmp_path / "cache")
    base = ("--model", tmp_path)  # an empty folder: what gets past the checks fails at loading
    code, err = run_eval(capsys, *base, *cache, "--out", a_file / "e.json")
    assert code == 2 and f"--out {a_file / 'e.json'}: {a_file} is a file, not a folder" in err
    code, err = run_eval(capsys, *base, *cache, "--out", "/proc/nope/e.json")
    assert code == 2 and "--out /proc/nope/e.json: cannot create /proc/nope" in err
    code, err = run_eval(capsys, *base, *cache, "--out", "/proc/e.json")  # /proc exists; nobody writes there
    assert code == 2 and "--out /proc/e.json: cannot write in /proc" in err
    out = ("--out", tmp_path / "e.json")
    code, err = run_eval(capsys, *base, *out, "--probe-cache", a_file)
    assert code == 2 and f"--probe-cache {a_file} is a file, not a folder" in err
    monkeypatch.setenv("PIXART_CACHE", str(a_file))
    code, err = run_eval(capsys, *base, *out)
    assert code == 2 and f"the probe cache ($PIXART_CACHE, else ~/.cache/pixart) {a_file} is a file" in err
    assert "is a folder but holds neither" not in err  # none of these got as far as loading


def test_out_folder_is_made_and_earlier_results_are_announced_before_loading(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "e.json"
    code, err = run_eval(capsys, "--model", tmp_path, "--probe-cache", tmp_path / "cache", "--out", out)
    assert code == 2 and "is a folder but holds neither" in err  # the empty model folder fails at loading...
    assert not (tmp_path / "new").exists()  # ...and the folders made for --out went again (an empty one was left)
    out.parent.mkdir(parents=True)
    earlier = '{"suite": "shapes", "model": "runs/demo/model", "seed": 0}\n'
    out.write_text(earlier)
    code, err = run_eval(capsys, "--model", tmp_path, "--probe-cache", tmp_path / "cache", "--out", out)
    assert f"note: {out} holds earlier results; this run replaces them when it ends" in err
    assert err.index("note:") < err.index("is a folder but holds neither")  # said before anything loads
    assert out.read_text() == earlier  # a run that fails replaces nothing


def test_an_out_file_that_is_not_an_eval_result_is_refused(tmp_path, capsys):
    """--out named one of the run's own inputs (the prompts, the Inception file, the weights) and the
    results replaced it, with a note calling it earlier results."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    for text in ("a red circle\n", '{"fid": 1.0}\n', "[1, 2]\n"):  # not JSON; JSON of another tool; not an object
        prompts.write_text(text)
        code, err = run_eval(capsys, "--model", tmp_path, "--probe-cache", tmp_path / "cache", "--out", prompts)
        assert code == 2 and f"--out {prompts} exists and is not a pixart eval result" in err, err
        assert "is a folder but holds neither" not in err  # refused before loading
        assert prompts.read_text() == text


class LoadAttempted(Exception):
    pass


def test_shapes_suite_warns_about_a_model_not_from_the_shapes_world(tmp_path, capsys, monkeypatch):
    from pixart.data.synthetic import WORLD_VERSION
    from pixart.demo import shapes_model_spec
    from pixart.generate import TextToImage

    def no_loading(*args, **kwargs):
        raise LoadAttempted

    monkeypatch.setattr(TextToImage, "from_path", no_loading)

    def warning_for_args(*args) -> str:
        with pytest.raises(LoadAttempted):  # the warning comes before the model loads
            main(eval_args(*args, "--probe-cache", tmp_path / "cache", "--out", tmp_path / "e.json"))
        return capsys.readouterr().err

    def warning_for(model) -> str:
        return warning_for_args("--model", model)

    pipeline = tmp_path / "diffusers"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text("{}")  # what marks a diffusers pipeline folder
    err = warning_for(pipeline)
    assert f"warning: {pipeline} runs with the sd-vae codec and the t5 text encoder, not the shapes world's" in err
    assert "--suite real scores any model" in err
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    (shapes / "model.json").write_text(
        shapes_model_spec("flow", {}, codec_path="codec.safetensors", extra={"world": WORLD_VERSION}).to_json()
    )
    assert "warning" not in warning_for(shapes)
    (shapes / "model.json").write_text(
        shapes_model_spec("flow", {}, codec_path="codec.safetensors", extra={"world": "shapes-0"}).to_json()
    )
    assert f"was trained on the shapes world shapes-0, and the probe reads {WORLD_VERSION}" in warning_for(shapes)
    # bare weights run with the folders beside them: a T5 and an SD VAE (folders) are not the shapes world's
    weights, t5, vae = tmp_path / "w.safetensors", tmp_path / "t5", tmp_path / "vae"
    for path in (weights, t5, vae):
        path.touch() if path.suffix else path.mkdir()
    (t5 / "config.json").write_text('{"model_type": "t5"}')
    err = warning_for_args("--model", weights, "--vae", vae, "--text-encoder", t5)
    assert f"warning: {weights} runs with the sd-vae codec and the t5 text encoder" in err
    run, data = tmp_path / "run", tmp_path / "run" / "data"  # a run on shapes data (on pixels): no warning
    data.mkdir(parents=True)
    (run / "final_ema.safetensors").touch()
    (run / "config.json").write_text(json.dumps({"steps": 2, "data": {"root": ""}}))
    info = {
        "source": f"shapes world {WORLD_VERSION}, seed 0, 8 images per size",
        "codec": {"kind": "pixels"},
        "text_encoder": {"kind": "minilm", "max_length": 16},
    }
    (data / "dataset.json").write_text(json.dumps(info))
    assert "warning" not in warning_for(run)


def test_bare_weights_take_vae_and_text_encoder_as_in_generate(tmp_path, capsys, monkeypatch):
    from pixart.generate import TextToImage
    from pixart.model import TINY, PixArt
    from pixart.weights import save_transformer

    weights = tmp_path / "w.safetensors"
    save_transformer(PixArt(TINY), weights)
    common = ("--probe-cache", tmp_path / "cache", "--out", tmp_path / "e.json")
    code, err = run_eval(capsys, "--model", weights, *common)
    assert code == 2 and "also pass --vae DIR" in err and "--text-encoder DIR" in err  # flags eval has
    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise LoadAttempted

    monkeypatch.setattr(TextToImage, "from_path", record)
    with pytest.raises(LoadAttempted):
        main(eval_args("--model", weights, "--vae", tmp_path / "vae", "--text-encoder", tmp_path / "t5", *common))
    assert seen["vae"] == tmp_path / "vae" and seen["text_encoder"] == tmp_path / "t5"
