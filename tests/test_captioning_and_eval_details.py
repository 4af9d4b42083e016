"""Details of captioning, the real-data evaluation and a few helpers that the broader tests did not pin down:
each test here fails if the behaviour it names regressed (found by mutating the code)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_caption import FakeCaptioner, noise, read_rows
from test_eval import StandInInception
from test_files import record_syncs

from pixart.cli.caption import prepare_fields
from pixart.cli.main import main
from pixart.data.caption import PROMPT, CaptionOptions, caption_inputs, pad_to_square
from pixart.data.sources import list_inputs
from pixart.evaluate.realdata import RealDataError, read_prompts, real_suite

# --- the real-data suite, with a fake pipeline and scorer ---


class FakePipe:
    """TextToImage.generate's calling convention; records the prompts and seed of each call."""

    def __init__(self):
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts, settings=None, *, seed=0, batch_size=4, progress=True):
        self.calls.append((list(prompts), seed))
        images = [Image.new("RGB", (8, 8), (10 * (seed + k) % 256, 0, 0)) for k in range(len(prompts))]
        return [SimpleNamespace(image=image, settings={"steps": 1}) for image in images]


class FakeScorer:
    """ClipScorer.pair_scores' calling convention; records the captions each image was paired with."""

    def __init__(self):
        self.captions: list[str] = []

    def pair_scores(self, images, captions):
        assert len(images) == len(captions)
        self.captions += captions
        return torch.full((len(images),), 30.0, dtype=torch.float64)


PROMPTS = ["a red cat", "a blue dog", "a green bird", "a grey mouse", "a pink pig"]


def test_clip_score_pairs_each_image_with_its_own_prompt():
    """Each chunk's images would be scored against the first prompts of the file, not their own."""
    scorer = FakeScorer()
    real_suite(FakePipe(), PROMPTS, scorer=scorer, batch_size=2)
    assert scorer.captions == PROMPTS


def test_image_k_of_the_real_suite_takes_seed_plus_k():
    """Every chunk would reuse the same seeds, so the images of later chunks repeat the noise of the first."""
    pipe = FakePipe()
    real_suite(pipe, PROMPTS, scorer=FakeScorer(), batch_size=2, seed=7)
    assert [seed for _, seed in pipe.calls] == [7, 9, 11]
    assert [prompts for prompts, _ in pipe.calls] == [PROMPTS[:2], PROMPTS[2:4], PROMPTS[4:]]


def test_one_readable_reference_image_is_refused_for_fid(tmp_path):
    """A single reference image would go on to a meaningless (or failing) FID after the long generation."""
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    pipe = FakePipe()
    with pytest.raises(RealDataError, match="at least 2 images on each side; got 1 readable reference images"):
        real_suite(pipe, PROMPTS, real_images=sorted(tmp_path.iterdir()), detector=StandInInception(), batch_size=2)
    assert not pipe.calls  # refused before anything was generated


def test_read_prompts_prefers_caption_over_alt(tmp_path):
    """A manifest with both a caption and an alt-text would be scored against the alt-text."""
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"caption": "c", "alt": "a"}) + "\n" + json.dumps({"alt": "only alt"}) + "\n")
    assert read_prompts(path) == ["c", "only alt"]


def test_a_prompts_file_with_a_byte_order_mark_reads_its_first_prompt_plainly(tmp_path):
    """A prompts.txt saved by a Windows editor would give a first prompt starting with U+FEFF."""
    path = tmp_path / "prompts.txt"
    path.write_bytes("a red cat\na blue dog\n".encode("utf-8-sig"))
    assert read_prompts(path) == ["a red cat", "a blue dog"]


# --- CLIP score ---


def test_clip_reads_captions_up_to_its_own_position_limit(clip_folder):
    """Captions would be cut at 16 tokens: two captions differing only after that would score alike."""
    from pixart.evaluate.clipscore import ClipScorer

    scorer = ClipScorer.load(clip_folder)
    prefix = "abcdefghijklmnopqrstuvwxy"  # 25 character tokens, the same in both captions
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    scores = scorer.pair_scores([image, image], [f"{prefix} cat", f"{prefix} dog"])
    assert abs(float(scores[0] - scores[1])) > 1e-6
    long = " ".join(["cat"] * 200)  # past the 64 positions: truncated, not an error
    assert scorer.pair_scores([image], [long]).shape == (1,)
    # and counted, for the report's warning: 62 characters (a token each) and the start and end tokens fill the
    # 64 positions
    assert scorer.position_limit() == 64
    fits, over = "a" * 62, "a" * 63
    assert scorer.count_truncated([f"{prefix} cat", long, fits, over]) == 2


def test_counting_long_prompts_says_nothing_of_indexing_errors(clip_folder, caplog):
    """With a real CLIP tokenizer (model_max_length 77) the count printed transformers' "longer than the
    specified maximum ... will result in indexing errors", for captions that scoring truncates."""
    from pixart.evaluate.clipscore import ClipScorer

    scorer = ClipScorer.load(clip_folder)
    scorer.processor.tokenizer.model_max_length = 64  # as a real CLIP's 77
    caplog.clear()  # transformers' own handler writes to the stream it found at import: its records are read
    assert scorer.count_truncated(["a" * 100]) == 1
    assert not [r for r in caplog.records if "indexing errors" in r.getMessage()]


# --- captioning ---


def test_captions_hold_only_the_new_text_not_the_prompt(llava_dir):
    """The decoded caption would start with the whole chat turn ("USER: <image> ... ASSISTANT:")."""
    from pixart.data.caption import LlavaCaptioner

    captioner = LlavaCaptioner(llava_dir, max_new_tokens=4)
    vocab = captioner.processor.tokenizer.get_vocab()
    # the random model may not write the turn markers itself: then only the prompt can bring them in
    captioner.model.generation_config.suppress_tokens = [
        *captioner.model.generation_config.suppress_tokens,
        vocab["USER:"],
        vocab["ASSISTANT:"],
    ]
    captions = captioner([noise(32, 40, 0), noise(40, 32, 1)], ["a red cat", "the photo of a dog"])
    assert len(captions) == 2
    for caption in captions:
        assert "USER:" not in caption and "ASSISTANT:" not in caption
        assert len(caption.split()) <= 4  # the new tokens only


def dense_manifest(tmp_path: Path) -> Path:
    """Two images whose manifest rows already have a `dense` column (an older caption run's, say)."""
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(2):
        noise(32, 32, i).save(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "dense": f"old caption {i}", "alt": f"alt {i}"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "m.jsonl"


def test_an_input_column_named_as_the_field_is_replaced_and_the_output_resumes(tmp_path):
    """The old `dense` would keep its place in each row, so the row no longer ends with the field it was
    written for: the rerun would refuse its own output as another field's."""
    source, out = dense_manifest(tmp_path), tmp_path / "out.jsonl"
    options = CaptionOptions(progress=False)
    assert caption_inputs(list_inputs(source), out, FakeCaptioner(), options).written == 2
    rows = read_rows(out)
    assert [list(row)[-1] for row in rows] == ["dense", "dense"]
    assert [row["dense"] for row in rows] == ["an image of 32 by 32"] * 2
    again = caption_inputs(list_inputs(source), out, FakeCaptioner(), options)
    assert (again.written, again.already_done) == (0, 2)


def test_with_alt_an_alt_text_that_is_not_utf8_is_not_quoted(tmp_path):
    """A Latin-1 alt-text (lone surrogates once read) would be quoted into the prompt, which then fails to
    encode or quotes garbage; the plain prompt is used and the image still captioned."""
    (tmp_path / "img").mkdir()
    noise(32, 32, 0).save(tmp_path / "img" / "0.png")
    (tmp_path / "m.jsonl").write_bytes(b'{"path": "img/0.png", "alt": "caf\xe9"}\n')
    fake = FakeCaptioner()
    result = caption_inputs(
        list_inputs(tmp_path / "m.jsonl"), tmp_path / "out.jsonl", fake, CaptionOptions(with_alt=True, progress=False)
    )
    assert fake.prompts == [PROMPT]
    assert result.written == 1 and not result.skipped


def test_the_prepare_hint_leaves_alt_out_when_some_rows_lack_it(tmp_path):
    """Suggested with alt for a manifest where only some rows have one, prepare would skip the others."""
    out = tmp_path / "out.jsonl"
    rows = [{"path": "a.png", "alt": "a cat", "dense": "x"}, {"path": "b.png", "dense": "y"}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert prepare_fields(out, "dense") == "dense"


class RandomCaptioner:
    """Captions drawn from torch's global generator, as a sampling LLaVA's are."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, images, prompts):
        return [f"sample {torch.randint(0, 10**9, ()).item()}" for _ in images]


def test_sampled_captions_are_seeded_and_a_resume_with_another_seed_is_refused(
    tmp_path,
    unloadable_model,
    monkeypatch,
    capsys,
):
    """With --temperature > 0, the same --seed would give other captions on every run, and a resume with
    another seed would mix two samplings in one manifest."""
    import pixart.data.caption as caption_module

    monkeypatch.setattr(caption_module, "LlavaCaptioner", RandomCaptioner)
    source = dense_manifest(tmp_path)
    args = ["caption", str(source), "--model", str(unloadable_model), "--temperature", "0.7", "--no-progress"]
    assert main([*args, "--seed", "3", "--out", str(tmp_path / "a.jsonl")]) == 0
    torch.manual_seed(12345)  # whatever state the process is in
    assert main([*args, "--seed", "3", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert read_rows(tmp_path / "a.jsonl") == read_rows(tmp_path / "b.jsonl")
    capsys.readouterr()
    assert main([*args, "--seed", "4", "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "holds captions made with other settings (seed 3 there, 4 now" in capsys.readouterr().err


def test_each_batch_is_on_disk_before_the_next_is_captioned(tmp_path):
    """Rows would sit in the file buffer while the next batch is captioned (minutes with a 7B model): a kill
    would lose every batch since the last buffer flush."""
    source, out = dense_manifest(tmp_path), tmp_path / "out.jsonl"
    seen: list[str] = []

    def captioner(images, prompts):
        seen.append(out.read_text() if out.exists() else "")
        return ["a caption"] * len(images)

    caption_inputs(list_inputs(source), out, captioner, CaptionOptions(batch_size=1, progress=False))
    assert seen[0] == ""
    assert [row["path"] for row in map(json.loads, seen[1].splitlines())] == ["img/0.png"]


def test_pad_to_square_centres_the_image():
    """As LLaVA's expand2square: the image would sit at the top, all the fill below it."""
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    square = np.asarray(pad_to_square(wide, (0, 0, 255)))
    assert square.shape == (40, 40, 3)
    red = (square == [255, 0, 0]).all(-1).all(-1)  # rows wholly red
    assert red.tolist() == [False] * 10 + [True] * 20 + [False] * 10
    tall = np.asarray(pad_to_square(Image.new("RGB", (10, 30), (255, 0, 0)), (0, 0, 255)))
    assert (tall[:, :10] == [0, 0, 255]).all() and (tall[:, 10:20] == [255, 0, 0]).all()


# --- caption text cleaning and statistics ---


@pytest.mark.parametrize(
    "text",
    [
        "a < \uff06amp;amp;lt; cat",  # an entity escaped twice, its ampersand fullwidth (ftfy narrows it)
        "id 123456 cat",  # a six-digit id
    ],
)
def test_clean_caption_matches_diffusers_on_more_debris(text):
    """T5 would see other text than diffusers' PixArtAlphaPipeline gives it for the same caption."""
    pytest.importorskip("bs4")
    pytest.importorskip("ftfy")
    pipeline = pytest.importorskip("diffusers").PixArtAlphaPipeline
    from pixart.encoders.captions import clean_caption

    class Cleaner:  # the one attribute its cleaning method reads
        bad_punct_regex = pipeline.bad_punct_regex

    expected = pipeline._clean_caption(Cleaner(), pipeline._clean_caption(Cleaner(), text))
    assert clean_caption(text) == expected


def test_proper_nouns_are_not_counted_as_nouns():
    """Names (PROPN) would count as concepts, inflating the nouns per caption of captions full of names."""
    from pixart.data.caption_stats import field_stats

    class Nlp:
        def pipe(self, texts):
            for _ in texts:
                yield [SimpleNamespace(text="Paris", pos_="PROPN"), SimpleNamespace(text="cat", pos_="NOUN")]

    stats = field_stats("dense", ["a cat in Paris"], nlp=Nlp())
    assert (stats.nouns_per_caption, stats.distinct_nouns) == (1.0, 1)


def test_words_per_caption_counts_whitespace_tokens():
    """As FieldStats documents (whitespace tokens): "red-white" would count as two words."""
    from pixart.data.caption_stats import field_stats

    assert field_stats("dense", ["red-white cat."]).words_per_caption == 2


# --- files, weights, grids, generate, buckets ---


def test_atomic_folder_syncs_every_file_before_the_rename(tmp_path, monkeypatch):
    """A power loss after the rename could leave the folder's files empty while its name says complete."""
    from pixart.files import atomic_folder, temporary_path

    events = record_syncs(monkeypatch)
    target = tmp_path / "out"
    tmp = temporary_path(Path(os.path.realpath(target)))

    def write(folder: Path) -> None:
        (folder / "a.txt").write_text("a")
        (folder / "sub").mkdir()
        (folder / "sub" / "b.bin").write_bytes(b"b")

    atomic_folder(target, write)
    renamed = events.index(("replace", str(os.path.realpath(target))))
    synced = {path for kind, path in events[:renamed] if kind == "fsync"}
    assert {str(tmp / "a.txt"), str(tmp / "sub" / "b.bin")} <= synced


def test_a_sharded_default_beside_a_sharded_variant_is_the_default(tmp_path):
    """The fp16 shards' index would be taken for the weights to load although default shards are there."""
    from pixart.encoders.folder_files import weights_variant

    (tmp_path / "model.safetensors.index.json").write_text("{}")
    (tmp_path / "model.safetensors.index.fp16.json").write_text("{}")
    assert weights_variant(tmp_path, "transformers") is None


def test_a_grid_has_a_row_for_a_partial_last_row():
    """5 images at 3 columns would get one row, the 4th and 5th drawn off the sheet."""
    from pixart.grids import image_grid

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    sheet = image_grid([Image.new("RGB", (10, 10), c) for c in colours], columns=3)
    pad, cell = 4, 10
    assert sheet.size == (3 * (cell + pad) + pad, 2 * (cell + pad) + pad)
    x, y = pad + 1 * (cell + pad) + cell // 2, pad + 1 * (cell + pad) + cell // 2  # row 1, column 1
    assert sheet.getpixel((x, y)) == colours[4]


def test_a_bad_text_device_is_a_one_line_error_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """--text-device gpu would pass the checks and fail inside torch after the model had loaded."""
    from pixart.generate import TextToImage

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(TextToImage, "from_path", load)
    args = ["generate", "x", "--model", str(tmp_path), "--out", str(tmp_path / "out"), "--text-device", "gpu"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "--text-device 'gpu' is not a device" in error and len(error.strip().splitlines()) == 1


def official_table() -> dict[str, tuple[int, int]]:
    """The official 1024 px table, as diffusers ships it (an independent copy of PixArt's own)."""
    pipeline = pytest.importorskip("diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha")
    return {key: (int(h), int(w)) for key, (h, w) in pipeline.ASPECT_RATIO_1024_BIN.items()}


def test_bucket_keys_name_buckets_as_the_official_table_does():
    """Keys would keep trailing zeros ("0.50", "2.40"), naming buckets unlike the official table; and a 2:1
    canvas was named "2" (3:1 and 4:1 alike), where the official table says "2.0" (found by this test)."""
    from pixart.data.buckets import bucket_key

    table = official_table()
    assert bucket_key(704, 1408) == "0.5" and bucket_key(1024, 1024) == "1.0" and bucket_key(72, 36) == "2.0"
    assert {key: bucket_key(h, w) for key, (h, w) in table.items()} == {key: key for key in table}
