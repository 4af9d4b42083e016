"""Feature shards and the training dataset: round trip, atomic shards, caption-field draws, collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixart.data.dataset import FeatureDataset, collate
from pixart.data.sampler import BucketBatchSampler
from pixart.data.shards import FeatureSample, finished_shards, report_path, write_dataset_info, write_shard
from pixart.files import write_json


def fake_samples(n: int, seed: int = 0) -> list[FeatureSample]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        bucket, (h, w) = ("1.0", (4, 4)) if i % 3 else ("0.5", (2, 4))
        samples.append(
            FeatureSample(
                mean=torch.randn(4, h, w, generator=g),
                std=torch.rand(4, h, w, generator=g),
                text={"alt": torch.randn(1 + i % 3, 8, generator=g), "dense": torch.randn(5 + i % 4, 8, generator=g)},
                bucket=bucket,
                original_hw=(100 + i, 200),
                captions={"alt": f"alt {i}", "dense": f"dense {i}"},
                source=f"img{i}.png",
                extra={"label": i % 5},
            )
        )
    return samples


def make_dataset(folder, n=10, per_shard=4):
    samples = fake_samples(n)
    write_dataset_info(folder, {"caption_fields": ["alt", "dense"], "resolution": 32})
    for s in range(0, n, per_shard):
        write_shard(folder, s // per_shard, samples[s : s + per_shard], ["alt", "dense"])
    return samples


def test_round_trip_in_fp16(tmp_path):
    samples = make_dataset(tmp_path)
    data = FeatureDataset(tmp_path, {"dense": 1.0})
    assert len(data) == 10
    assert finished_shards(tmp_path) == [0, 1, 2]
    for i, s in enumerate(samples):
        item = data[i]
        torch.testing.assert_close(item["mean"], s.mean.half().float())
        torch.testing.assert_close(item["std"], s.std.half().float())
        torch.testing.assert_close(item["text"], s.text["dense"].half().float())
        assert item["caption"] == f"dense {i}"
        assert item["bucket"] == s.bucket and item["label"] == i % 5
        assert item["img_hw"].tolist() == [100 + i, 200]
        assert item["aspect_ratio"] == float(s.bucket)


def test_caption_field_draws_are_seeded_and_follow_probabilities(tmp_path):
    make_dataset(tmp_path, n=12)
    data = FeatureDataset(tmp_path, {"alt": 0.5, "dense": 0.5}, seed=3)
    first = [data[i]["caption"].split()[0] for i in range(12)]
    assert first == [data[i]["caption"].split()[0] for i in range(12)]  # deterministic
    data.set_epoch(1)
    assert first != [data[i]["caption"].split()[0] for i in range(12)]  # changes across epochs
    only_alt = FeatureDataset(tmp_path, {"alt": 1.0, "dense": 0.0})
    assert all(only_alt[i]["caption"].startswith("alt") for i in range(12))
    with pytest.raises(ValueError, match="not in"):
        FeatureDataset(tmp_path, {"short": 1.0})
    for weight in (float("nan"), float("inf")):  # the hash would draw "dense" for every sample
        with pytest.raises(ValueError, match="caption probabilities must be finite"):
            FeatureDataset(tmp_path, {"alt": weight, "dense": 1.0})
    # the same config written in another order (config diffs compare mappings, so a resume allows it) drew
    # the other field for every sample
    reordered = FeatureDataset(tmp_path, {"dense": 0.5, "alt": 0.5}, seed=3)
    assert [reordered[i]["caption"].split()[0] for i in range(12)] == first
    # frequencies, and each epoch's draw independent of the last (a field kept across epochs 0.9^2 + 0.1^2)
    skewed, n = FeatureDataset(tmp_path, {"alt": 0.9, "dense": 0.1}, seed=1), 20000
    epoch0 = [skewed.caption_field(i) for i in range(n)]
    # weights that do not sum to 1 are shares of their sum (all drew "alt" when left unnormalised)
    unnormalised = FeatureDataset(tmp_path, {"alt": 9.0, "dense": 1.0}, seed=1)
    assert [unnormalised.caption_field(i) for i in range(n)] == epoch0
    even = [FeatureDataset(tmp_path, {"alt": 1.0, "dense": 1.0}, seed=1).caption_field(i) for i in range(n)]
    assert abs(even.count("dense") / n - 0.5) < 0.015
    skewed.set_epoch(1)
    epoch1 = [skewed.caption_field(i) for i in range(n)]
    assert abs(epoch0.count("dense") / n - 0.1) < 0.01 and abs(epoch1.count("dense") / n - 0.1) < 0.01
    assert abs(sum(a != b for a, b in zip(epoch0, epoch1)) / n - 0.18) < 0.015
    other_seed = FeatureDataset(tmp_path, {"alt": 0.9, "dense": 0.1}, seed=2)
    assert [other_seed.caption_field(i) for i in range(n)] != epoch0
    from pixart.data.dataset import uniform

    assert uniform(3, np.int64(1), np.int32(7)) == uniform(3, 1, 7)  # numpy integers overflowed in the sum
    assert skewed.caption_field(np.int64(5)) == epoch1[5]  # as a Subset over np.arange indexes


def test_records_are_held_in_arrays_not_a_dict_per_sample(tmp_path):
    """A dict per record cost ~2 KB a sample with a dense caption, in every process that opened the data: 20 GB
    per trainer at the paper's 10M+ samples. The records' lines are parsed from the file when asked for."""
    import gc
    import tracemalloc

    samples = fake_samples(1200)
    for i, sample in enumerate(samples):  # a LLaVA-length caption, ~100 words
        sample.captions["dense"] = f"image {i}: " + " ".join(["a red cube left of a blue sphere"] * 14)
    write_dataset_info(tmp_path, {"caption_fields": ["alt", "dense"], "resolution": 32})
    for s in range(0, 1200, 400):
        write_shard(tmp_path, s // 400, samples[s : s + 400], ["alt", "dense"])
    gc.collect()
    tracemalloc.start()
    try:
        data = FeatureDataset(tmp_path, {"dense": 1.0})
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert retained / len(data) < 200, f"{retained / len(data):.0f} bytes a sample"
    assert data.record(777)["captions"]["dense"] == samples[777].captions["dense"]
    assert data.record(777)["source"] == "img777.png" and data[777]["caption"].startswith("image 777: ")
    assert data.labels()[:7] == [0, 1, 2, 3, 4, 0, 1] and data.buckets[:3] == ["0.5", "1.0", "1.0"]


def test_a_pickled_dataset_maps_its_files_again(tmp_path):
    """A DataLoader worker started by spawn (macOS) gets the dataset pickled: the memory maps went with it as
    copies of every shard's data, in every worker."""
    import pickle

    samples = fake_samples(6)
    for sample in samples:
        sample.text["alt"] = torch.randn(64, 512)  # 64 KB a sample in fp16: the data dwarfs what describes it
    write_dataset_info(tmp_path, {"caption_fields": ["alt", "dense"], "resolution": 32})
    write_shard(tmp_path, 0, samples[:3], ["alt", "dense"])
    write_shard(tmp_path, 1, samples[3:], ["alt", "dense"])
    data = FeatureDataset(tmp_path, {"alt": 1.0})
    blob = pickle.dumps(data)
    assert len(blob) < 64 * 1024, f"{len(blob)} bytes pickled"
    copy = pickle.loads(blob)
    for i in range(6):
        ours, theirs = data[i], copy[i]
        assert torch.equal(ours["text"], theirs["text"]) and torch.equal(ours["mean"], theirs["mean"])
        assert ours["caption"] == theirs["caption"] and copy.record(i) == data.record(i)


def test_a_dataset_of_many_shards_raises_the_open_file_limit(tmp_path):
    """Each shard keeps its mapped files open: at the common soft limit of 1024 a dataset of 10M samples in
    shards of 1000 failed with "Too many open files" as it opened. The soft limit is raised to what it needs."""
    import resource
    import subprocess
    import sys

    samples = fake_samples(60)
    write_dataset_info(tmp_path, {"caption_fields": ["alt", "dense"], "resolution": 32})
    for i, sample in enumerate(samples):
        write_shard(tmp_path, i, [sample], ["alt", "dense"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))
    try:
        data = FeatureDataset(tmp_path, {"alt": 1.0})
        assert len(data) == 60 and data[59]["caption"] == "alt 59"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # where the hard limit is lower than the shards need: said, with what to do
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100)); "
        "from pixart.data.dataset import FeatureDataset; FeatureDataset(sys.argv[1])"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert "60 shards need about 632 open files and this process may open 100: raise the limit" in result.stderr


def test_half_written_shard_is_invisible(tmp_path):
    make_dataset(tmp_path, n=8)
    (tmp_path / ".shard-00002.safetensors.tmp").write_bytes(b"partial")
    (tmp_path / "shard-00002.jsonl").write_text('{"bucket": "1.0"}\n')
    assert finished_shards(tmp_path) == [0, 1]
    assert len(FeatureDataset(tmp_path)) == 8


def test_shards_past_the_recorded_count_are_not_read(tmp_path):
    """A run's own shapes data killed after 4 shards and rebuilt smaller (1 shard, then dataset.json) trained
    on the killed attempt's shards 1-3 too: every shard-* file was read, whatever the count recorded."""
    make_dataset(tmp_path, n=12)  # shards 0, 1, 2: the killed attempt's
    write_dataset_info(tmp_path, {"caption_fields": ["alt", "dense"], "resolution": 32, "shards": 1})
    assert len(FeatureDataset(tmp_path)) == 4
    write_dataset_info(tmp_path, {"caption_fields": ["alt", "dense"], "resolution": 32})  # no count: all
    assert len(FeatureDataset(tmp_path)) == 12


def test_collate_pads_captions_and_refuses_mixed_buckets(tmp_path):
    make_dataset(tmp_path)
    data = FeatureDataset(tmp_path, {"dense": 1.0})
    sampler = BucketBatchSampler(data.buckets, 2, seed=0)
    batch = collate([data[i] for i in next(iter(sampler))])
    assert batch["text"].shape[1] == int(batch["mask"].sum(1).max())
    for row, index in enumerate(batch["index"].tolist()):
        n = data[index]["text"].shape[0]
        assert batch["mask"][row].sum() == n
        assert np.count_nonzero(batch["text"][row, n:].numpy()) == 0
    with pytest.raises(ValueError, match="mixes buckets"):
        collate([data[0], data[1]])
    # the first item of a batch __getitems__ padded, collated alone: its "caption" spanned every row
    items = data.__getitems__(next(iter(sampler)))
    alone = collate(items[:1])
    n = data[int(alone["index"][0])]["text"].shape[0]
    assert alone["text"].shape == (1, n, 8) and torch.equal(alone["text"][0], items[0]["text"])


def test_an_empty_dataset_says_whether_prepare_finished(tmp_path):
    """A dataset of shards that all kept no sample was reported as holding "no finished shard"."""
    write_dataset_info(tmp_path, {"caption_fields": ["alt"], "resolution": 32, "shards": 2})
    with pytest.raises(FileNotFoundError, match="prepared in part: 0 of 2 shards are finished"):
        FeatureDataset(tmp_path)  # killed before its first shard
    for index in range(2):
        write_json(report_path(tmp_path, index), {"shard": index, "inputs": 1, "samples": 0, "skipped": []})
    with pytest.raises(FileNotFoundError, match="prepare finished but kept no sample: all its inputs were skipped"):
        FeatureDataset(tmp_path)  # no report.json to count them from
    write_json(tmp_path / "report.json", {"inputs": 2, "skip_reasons": {"empty file": 2}})
    with pytest.raises(FileNotFoundError, match=r"all 2 inputs were skipped \(empty file: 2; see .*report.json for"):
        FeatureDataset(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        # a shard cut short failed on a reshape (or read as fewer samples), with advice about caption_probs
        (lambda d: _cut(d / "shard-00001.safetensors", 40), r"00001.safetensors is damaged \(cut short or edited\)"),
        (lambda d: _cut(d / "shard-00001.safetensors", 2000), "shard-00001.safetensors is damaged"),
        (
            lambda d: _keep_lines(d / "shard-00001.jsonl", 2),
            "shard-00001.jsonl holds 2 samples and .* 4 'alt' captions",
        ),
        (
            lambda d: _cut(d / "shard-00001.jsonl", 30),
            r"shard-00001.jsonl is damaged at line 4 \(.*\): rerun pixart prepare",
        ),
        # edited in place, the sizes kept (a bad copy, a hand edit): read silently, as captions cut short,
        # empty or another's, and as another sample's latents
        (
            lambda d: _shuffle_offsets(d / "shard-00001.safetensors", "dense"),
            "the 'dense' caption offsets do not match its features",
        ),
        (
            lambda d: _edit(d / "shard-00001.jsonl", '"row": 1,', '"row": 0,'),
            "shard-00001.jsonl: the samples of bucket 1.0 do not index its latents one to one",
        ),
        (
            lambda d: _edit(d / "shard-00001.jsonl", '"row": 2,', '"row": 9,'),
            "shard-00001.jsonl: the samples of bucket 1.0 do not index its latents one to one",
        ),
        # another version's layout was read as this one's, or failed with a KeyError
        (
            lambda d: _set_info(d, format="pixart-features/2"),
            "records the format 'pixart-features/2'; this version reads",
        ),
        (lambda d: (d / "dataset.json").write_text('{"fields": ["alt"]}'), "is not a pixart feature dataset's"),
        (lambda d: (d / "dataset.json").write_text("{"), r"dataset.json cannot be read \(Expecting"),
    ],
)
def test_a_damaged_dataset_names_the_file_and_what_to_do(tmp_path, damage, message):
    from pixart.data.records import DamagedData

    make_dataset(tmp_path)
    damage(tmp_path)
    with pytest.raises(DamagedData, match=message):
        FeatureDataset(tmp_path)


def _shuffle_offsets(path, field):
    """Swap two of a field's caption offsets in the safetensors file, its size unchanged."""
    import json

    data = bytearray(path.read_bytes())
    header_size = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8 : 8 + header_size])[f"text_offsets.{field}"]["data_offsets"]
    at = 8 + header_size + start
    offsets = np.frombuffer(bytes(data[at : 8 + header_size + end]), dtype=np.int64).copy()
    offsets[[1, 2]] = offsets[[2, 1]]  # a caption runs backwards: empty, its neighbour's rows too long
    data[at : at + offsets.nbytes] = offsets.tobytes()
    path.write_bytes(bytes(data))


def _edit(path, old, new):
    """Replace the first `old` in a text file by `new` (as long: the file's size unchanged)."""
    text = path.read_text()
    assert old in text and len(old) == len(new)
    path.write_text(text.replace(old, new, 1))


def _cut(path, count):
    data = path.read_bytes()
    path.write_bytes(data[:-count])


def _keep_lines(path, count):
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:count]))


def _set_info(folder, **fields):
    import json

    info = json.loads((folder / "dataset.json").read_text())
    write_dataset_info(folder, {**info, **fields})
