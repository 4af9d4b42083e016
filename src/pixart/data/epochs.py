"""One DataLoader for a whole run: its workers start once and read ahead across epoch boundaries.

A DataLoader made per epoch starts its workers again at every epoch, and nothing is prefetched for the
new epoch's first batch: on a small dataset (a fine-tuning set, say) the step waits for that every
few steps. Here the batch sampler runs on through the epochs, and each index travels with its epoch, so
a worker's own copy of the dataset draws that epoch's caption choice (`set_epoch`) itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from torch.utils.data import Dataset, Sampler

from pixart.data.sampler import BucketBatchSampler

Key = tuple[int, int]  # (epoch, index)


class EpochDataset(Protocol):
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def __getitems__(self, indices: list[int]) -> list[dict]: ...


class EpochStream(Sampler[list[Key]]):
    """Every batch of `sampler` from batch `position` of `epoch` on, without end; each index as (epoch, index).

    The sampler iterated pass after pass (each pass ends its epoch and moves it on to the next). A
    position equal to the epoch's length (a state saved after its last batch) starts with the next epoch.
    """

    def __init__(self, sampler: BucketBatchSampler, epoch: int, position: int):
        if len(sampler) == 0:  # an epoch without a batch would make this loop for ever
            raise ValueError("the sampler has no complete batch in an epoch")
        sampler.load_state_dict({"epoch": epoch, "position": position})  # checks the place
        self.sampler, self.epoch, self.position = sampler, epoch, position

    def __iter__(self) -> Iterator[list[Key]]:
        self.sampler.load_state_dict({"epoch": self.epoch, "position": self.position})
        while True:
            epoch = self.sampler.epoch
            for batch in self.sampler:
                yield [(epoch, index) for index in batch]


class EpochTagged(Dataset):
    """`dataset` read by the (epoch, index) keys of an EpochStream: its epoch is set before each batch."""

    def __init__(self, dataset: EpochDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[Key]) -> list[dict]:
        epochs = {epoch for epoch, _ in keys}
        if len(epochs) > 1:
            raise ValueError(f"a batch spans epochs {sorted(epochs)}; an EpochStream never makes one")
        if epochs:
            self.dataset.set_epoch(epochs.pop())
        return self.dataset.__getitems__([index for _, index in keys])
