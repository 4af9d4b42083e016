"""A batch sampler for multi-aspect training: one bucket per batch, equal steps on every rank, resumable.

Per epoch, with a generator seeded by (seed, epoch):
1. permute all indices and group them by bucket, keeping the permuted order inside each bucket;
2. cut each bucket into global chunks of batch_size * num_replicas samples;
3. shuffle the order of the chunks;
4. step s of rank r is the r-th batch_size slice of chunk s.

So at every step all ranks work on the same bucket (same tensor shapes, as DDP's collective ops want),
never share a sample, and take the same number of steps. An incomplete chunk at the end of a bucket is
dropped with `drop_last=True`; with `drop_last=False` it is filled up by cycling through that bucket's
samples again (from its start in this epoch's order), so every sample is seen at least once per epoch
and a few are seen twice - the way DistributedSampler pads.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; `buckets[i]` is the bucket id (e.g. '0.57') of sample i.

    Resuming: `state_dict()` is {"epoch": e, "position": p}, p the batches this rank has yielded in
    epoch e; after `load_state_dict` the next iteration starts at batch p of epoch e. The position
    advances as each batch is handed out. A DataLoader with workers reads the sampler ahead of the
    training loop (prefetching), so there save {"epoch": e, "position": steps the loop finished this
    epoch} from the loop's own counter instead of `state_dict()`.

    `set_epoch(e)` changes the order; it resets the position only when e differs from the current epoch,
    so a resumed loop may call it again with the loaded epoch. A pass that runs to the end moves the
    sampler on to (epoch + 1, position 0), so a state saved after an epoch resumes with the next one
    (drive the loop's epoch counter from `sampler.epoch` after loading), and iterating again without
    `set_epoch` gives a new order rather than the same one.
    """

    def __init__(
        self,
        buckets: Sequence[Hashable],
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        # Integer codes per sample, so an epoch's grouping is a numpy sort rather than a Python loop.
        code_of: dict[Hashable, int] = {}
        self._codes = np.fromiter((code_of.setdefault(b, len(code_of)) for b in buckets), np.int64, len(buckets))
        self._counts = np.bincount(self._codes, minlength=len(code_of))
        self.bucket_ids: list[Hashable] = list(code_of)

    @property
    def chunk_size(self) -> int:
        """Samples per global step: batch_size on each of num_replicas ranks."""
        return self.batch_size * self.num_replicas

    def _chunks_per_bucket(self) -> np.ndarray:
        if self.drop_last:
            return self._counts // self.chunk_size
        return -(-self._counts // self.chunk_size)

    def __len__(self) -> int:
        """Batches per epoch for this rank (the same on every rank, and in every epoch)."""
        return int(self._chunks_per_bucket().sum())

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(f"bad sampler state {state!r}: epoch must be >= 0 and position in [0, {len(self)}]")
        self.epoch = epoch
        self.position = position

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All of this rank's batches of an epoch, in order (a pure function of the settings and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self._codes))
        # A stable sort by bucket keeps each bucket's samples in permuted order.
        grouped = order[np.argsort(self._codes[order], kind="stable")]
        starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        size = self.chunk_size
        chunks: list[np.ndarray] = []
        for start, count, n_chunks in zip(starts, self._counts, self._chunks_per_bucket()):
            members = grouped[start : start + count]
            if n_chunks * size > count:  # drop_last=False: top the last chunk up by cycling
                members = np.resize(members, n_chunks * size)
            chunks.extend(members[i * size : (i + 1) * size] for i in range(n_chunks))
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [chunks[i][lo:hi].tolist() for i in rng.permutation(len(chunks))]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            # Advance before handing the batch out: once the caller holds batch p, p + 1 are yielded.
            self.position += 1
            yield batch
        self.epoch += 1
        self.position = 0
