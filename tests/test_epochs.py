"""EpochStream and EpochTagged: one DataLoader across epochs gives the batches of one loader per epoch."""

from __future__ import annotations

import os
from itertools import islice

import pytest
import torch
from torch.utils.data import DataLoader

from pixart.data.dataset import FeatureDataset, collate
from pixart.data.epochs import EpochStream, EpochTagged
from pixart.data.sampler import BucketBatchSampler
from pixart.data.shapes_features import build_shapes_features
from pixart.encoders.codecs import PixelCodec
from pixart.encoders.text import MiniLMEncoder

BUCKETS = ["a"] * 10 + ["b"] * 7 + ["a"] * 3  # 13 "a" and 7 "b": 4 + 2 batches of 3 an epoch


def per_epoch(sampler: BucketBatchSampler, epoch: int, position: int, count: int) -> list[list[tuple[int, int]]]:
    """The reference: the sampler itself, iterated epoch after epoch from a loaded state."""
    sampler.load_state_dict({"epoch": epoch, "position": position})
    out: list[list[tuple[int, int]]] = []
    while len(out) < count:
        current = sampler.epoch
        out += [[(current, i) for i in batch] for batch in sampler]
    return out[:count]


@pytest.mark.parametrize(("epoch", "position"), [(0, 0), (2, 4), (1, 6)])  # 6: after an epoch's last batch
def test_the_stream_is_the_sampler_epoch_after_epoch(epoch, position):
    sampler = BucketBatchSampler(BUCKETS, 3, seed=5)
    assert len(sampler) == 6
    stream = list(islice(EpochStream(sampler, epoch, position), 20))
    assert stream == per_epoch(BucketBatchSampler(BUCKETS, 3, seed=5), epoch, position, 20)
    assert {e for batch in stream for e, _ in batch} >= {epoch + 1, epoch + 2}


def test_an_empty_epoch_or_a_bad_place_is_refused():
    with pytest.raises(ValueError, match="no complete batch"):
        EpochStream(BucketBatchSampler(["a"] * 2, 3), 0, 0)
    with pytest.raises(ValueError, match="position"):
        EpochStream(BucketBatchSampler(BUCKETS, 3), 0, 7)


class Recorder:
    """A dataset whose items say which epoch their reader had been given, and which process read them."""

    def __init__(self):
        self.epoch = -1

    def __len__(self) -> int:
        return len(BUCKETS)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return [{"epoch": self.epoch, "index": i, "pid": os.getpid()} for i in indices]


def test_workers_read_each_batch_at_its_own_epoch_and_start_once():
    sampler = BucketBatchSampler(BUCKETS, 3, seed=1)
    loader = DataLoader(
        EpochTagged(Recorder()), batch_sampler=EpochStream(sampler, 0, 2), num_workers=2, collate_fn=list
    )
    batches = list(islice(loader, 16))  # the rest of epoch 0, then epochs 1 and 2, into 3
    expected = per_epoch(BucketBatchSampler(BUCKETS, 3, seed=1), 0, 2, 16)
    assert [[(item["epoch"], item["index"]) for item in batch] for batch in batches] == expected
    pids = {item["pid"] for batch in batches for item in batch}
    assert len(pids) == 2 and os.getpid() not in pids  # the same two workers for every epoch


def test_a_batch_that_spans_epochs_is_refused():
    with pytest.raises(ValueError, match="spans epochs"):
        EpochTagged(Recorder()).__getitems__([(0, 1), (1, 2)])


def test_real_features_equal_one_loader_per_epoch(tmp_path):
    """Caption fields drawn per (epoch, sample): workers holding their own dataset copies draw the same."""
    folder = tmp_path / "data"
    build_shapes_features(
        folder,
        sizes=[(16, 16)],
        count=12,
        seed=0,
        encoder=MiniLMEncoder(max_length=16),
        codec=PixelCodec(),
        progress=False,
    )
    dataset = FeatureDataset(folder, {"alt": 0.5, "dense": 0.5}, seed=3)
    assert len(dataset.fields) == 2
    sampler = BucketBatchSampler(dataset.buckets, 4, seed=2)
    stream = DataLoader(
        EpochTagged(dataset), batch_sampler=EpochStream(sampler, 0, 0), collate_fn=collate, num_workers=2
    )
    ours = list(islice(stream, 4 * len(sampler)))
    reference = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        reference += [collate(dataset.__getitems__(batch)) for batch in sampler.epoch_batches(epoch)]
    assert len(ours) == len(reference) == 12
    for a, b in zip(ours, reference):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key], key
    assert any(not torch.equal(a["text"], b["text"]) for a, b in zip(ours[:3], ours[3:6]))  # epochs differ
