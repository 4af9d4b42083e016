"""BucketBatchSampler: one bucket per batch, disjoint equal-length ranks, determinism, exact resume."""

from __future__ import annotations

import random
from collections import Counter
from itertools import islice

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pixart.data.sampler import BucketBatchSampler


def make_buckets(n: int = 203, seed: int = 0) -> list[str]:
    """Uneven bucket sizes, including one too small for a single global chunk."""
    rng = random.Random(seed)
    keys = ["0.57"] * 5 + ["1.0"] * 9 + ["1.75"] * 3 + ["0.25"]
    buckets = [rng.choice(keys) for _ in range(n - 2)] + ["4.0", "4.0"]
    rng.shuffle(buckets)
    return buckets


def rank_runs(buckets, batch_size, world, **kwargs) -> list[list[list[int]]]:
    return [list(BucketBatchSampler(buckets, batch_size, num_replicas=world, rank=r, **kwargs)) for r in range(world)]


@pytest.mark.parametrize(("batch_size", "world"), [(4, 1), (3, 2), (2, 4)])
def test_batches_never_mix_buckets(batch_size, world):
    buckets = make_buckets()
    for run in rank_runs(buckets, batch_size, world):
        for batch in run:
            assert len(batch) == batch_size
            assert len({buckets[i] for i in batch}) == 1


@pytest.mark.parametrize(("batch_size", "world"), [(3, 2), (2, 4), (5, 3)])
def test_ranks_are_disjoint_equal_and_in_step(batch_size, world):
    buckets = make_buckets()
    runs = rank_runs(buckets, batch_size, world, seed=7)
    lengths = {len(run) for run in runs}
    assert lengths == {len(BucketBatchSampler(buckets, batch_size, num_replicas=world, rank=0))}
    seen = [i for run in runs for batch in run for i in batch]
    assert len(seen) == len(set(seen))
    # Step by step, every rank is in the same bucket (same tensor shapes under DDP).
    for step in zip(*runs):
        assert len({buckets[batch[0]] for batch in step}) == 1


@pytest.mark.parametrize(("batch_size", "world"), [(4, 1), (3, 2), (2, 4)])
def test_covers_every_sample_of_complete_chunks(batch_size, world):
    buckets = make_buckets()
    chunk = batch_size * world
    runs = rank_runs(buckets, batch_size, world)
    seen = Counter(buckets[i] for run in runs for batch in run for i in batch)
    expected = {key: count // chunk * chunk for key, count in Counter(buckets).items() if count >= chunk}
    assert dict(seen) == expected
    assert len(runs[0]) == sum(count // chunk for count in Counter(buckets).values())
    assert "4.0" not in seen  # 2 samples never fill a chunk


def test_deterministic_per_seed_and_epoch_and_different_across_epochs():
    buckets = make_buckets()

    def run(seed, epoch, rank=0):
        sampler = BucketBatchSampler(buckets, 3, num_replicas=2, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert run(0, 0) == run(0, 0)
    assert run(0, 3) == run(0, 3)
    assert run(0, 0) != run(0, 1)
    assert run(0, 0) != run(1, 0)
    assert run(1, 0) != run(0, 1)  # seed and epoch are not simply added
    # Both the sample order within buckets and the bucket order change between epochs.
    first, second = run(0, 0), run(0, 1)
    assert sorted(map(sorted, first)) != sorted(map(sorted, second))
    assert [buckets[b[0]] for b in first] != [buckets[b[0]] for b in second]


def test_a_full_pass_moves_on_to_the_next_epoch():
    buckets = make_buckets()
    sampler = BucketBatchSampler(buckets, 4, seed=3)
    first = list(sampler)
    assert sampler.state_dict() == {"epoch": 1, "position": 0}
    second = list(sampler)
    assert second == sampler.epoch_batches(1) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


@pytest.mark.parametrize("stop", [0, 1, 7, 20])
@pytest.mark.parametrize(("batch_size", "world"), [(4, 1), (3, 2)])
def test_resume_yields_exactly_the_remaining_batches(stop, batch_size, world):
    buckets = make_buckets()
    for rank in range(world):
        make = lambda rank=rank: BucketBatchSampler(buckets, batch_size, num_replicas=world, rank=rank, seed=11)
        full = make()
        full.set_epoch(2)
        uninterrupted = list(full)

        sampler = make()
        sampler.set_epoch(2)
        taken = list(islice(iter(sampler), stop))  # a training loop stopping after `stop` steps
        state = sampler.state_dict()
        assert state == {"epoch": 2, "position": stop}

        resumed = make()
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # a resumed loop calls this again with the loaded epoch: must not rewind
        rest = list(resumed)
        assert taken + rest == uninterrupted
        assert resumed.state_dict() == {"epoch": 3, "position": 0}


def test_position_advances_as_batches_are_handed_out():
    sampler = BucketBatchSampler(make_buckets(), 4)
    iterator = iter(sampler)
    for step in range(1, 6):
        next(iterator)
        assert sampler.state_dict() == {"epoch": 0, "position": step}


def test_resume_at_the_end_of_an_epoch_goes_to_the_next():
    sampler = BucketBatchSampler(make_buckets(), 4)
    sampler.load_state_dict({"epoch": 5, "position": len(sampler)})
    assert list(sampler) == []
    assert sampler.state_dict() == {"epoch": 6, "position": 0}


def test_bad_state_and_arguments_are_rejected():
    sampler = BucketBatchSampler(make_buckets(), 4)
    with pytest.raises(ValueError, match="bad sampler state"):
        sampler.load_state_dict({"epoch": 0, "position": len(sampler) + 1})
    with pytest.raises(ValueError, match="bad sampler state"):
        sampler.load_state_dict({"epoch": -1, "position": 0})
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler(["a"], 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler(["a"], 0)


def test_without_drop_last_every_sample_appears_and_batches_are_full():
    buckets = make_buckets()
    runs = rank_runs(buckets, 3, 2, drop_last=False)
    assert len({len(run) for run in runs}) == 1
    assert len(runs[0]) == sum(-(-count // 6) for count in Counter(buckets).values())
    seen = Counter(i for run in runs for batch in run for i in batch)
    assert set(seen) == set(range(len(buckets)))
    assert max(seen.values()) <= 3  # the 2-sample bucket is cycled to fill a chunk of 6
    for run in runs:
        for batch in run:
            assert len(batch) == 3
            assert len({buckets[i] for i in batch}) == 1
    for step in zip(*runs):
        assert len({buckets[batch[0]] for batch in step}) == 1


class _Shapes(Dataset):
    """A dataset whose samples have their bucket's shape, to check the sampler against default_collate."""

    def __init__(self, buckets):
        self.sizes = {"0.25": (2, 8), "0.57": (4, 7), "1.0": (6, 6), "1.75": (7, 4), "4.0": (8, 2)}
        self.buckets = buckets

    def __len__(self):
        return len(self.buckets)

    def __getitem__(self, i):
        return torch.zeros(3, *self.sizes[self.buckets[i]])


def test_works_as_a_dataloader_batch_sampler():
    buckets = make_buckets()
    sampler = BucketBatchSampler(buckets, 4, seed=1)
    loader = DataLoader(_Shapes(buckets), batch_sampler=sampler)
    assert len(loader) == len(sampler)
    batches = list(loader)
    assert len(batches) == len(sampler)
    assert all(batch.shape[0] == 4 for batch in batches)
