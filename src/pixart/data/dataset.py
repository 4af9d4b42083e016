"""The training dataset over feature shards, and its collate function.

Each item carries the raw VAE posterior (mean, std), the text features of one caption field drawn
with configurable probabilities (deterministic given seed, epoch and index), the bucket and the
micro-conditions PixArtMS trains with: the original image size and the bucket key as aspect ratio.
Latents are drawn from (mean, std) in the training step, with a seeded generator.

Speed (benchmarks/bench_loader.py): items are cast from the memory-mapped fp16 with torch (numpy's fp16
casts are ~10x slower), and collate writes the padded text batch, the bulk of the bytes at T5's width of
4096, into buffers it reuses once nothing refers to them any more: a fresh ~100 MB tensor per batch
costs more in page faults than filling it.
"""

from __future__ import annotations

import bisect
import errno
import math
import resource
import sys
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pixart.data.shards import REPORT_FILE, Shard, finished_shards, read_dataset_info, shard_done
from pixart.files import read_json


def no_sample_message(folder: Path) -> str:
    """Why a dataset that pixart prepare finished holds no sample, from its report.json: what was skipped, why."""
    report = read_json(folder / REPORT_FILE) or {}  # none, or unreadable: the message does without it
    count = report.get("inputs", "its")
    reasons = "".join(f"{reason}: {n}; " for reason, n in report.get("skip_reasons", {}).items())
    hints = "".join(f"; {hint}" for hint in report.get("skip_hints", {}).values())  # e.g. --upscale-small
    return (
        f"{folder}: prepare finished but kept no sample: all {count} inputs were skipped "
        f"({reasons}see {folder / REPORT_FILE} for the reasons){hints}"
    )


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers in which each output bit depends on every input bit."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniform(*keys: int) -> float:
    """A number in [0, 1) that is a fixed function of the integers `keys`, spread like a uniform draw."""
    state = 0
    for key in keys:
        # int(): a numpy integer would overflow in the sum instead of growing
        state = _mix64((state + 0x9E3779B97F4A7C15 + int(key)) & _MASK64)  # the golden-ratio step of SplitMix64
    return (state >> 11) / 2.0**53  # the top 53 bits: every double in [0, 1) this can give is exact


FILES_PER_SHARD = 2  # each mapped file (tensors, records) keeps a file descriptor (Python's mmap duplicates it)
SPARE_FILES = 512  # for everything else a trainer opens: libraries, sockets, checkpoints, the data workers' pipes


def allow_open_files(count: int, what: str) -> None:
    """Raise this process's open-file limit to `count` where the hard limit allows: at the common soft limit of
    1024, a dataset of 10M samples in shards of 1000 failed with "Too many open files" as it opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        raise OSError(
            errno.EMFILE,
            f"{what} need about {count} open files and this process may open {hard}: raise the limit (ulimit -n "
            f"{count}) or prepare the data again with a larger --shard-size",
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def check_caption_fields(folder: Path, info: dict, caption_probs: Mapping[str, float]) -> None:
    """ValueError naming the fields of `caption_probs` the dataset at `folder` (its dataset.json `info`) lacks."""
    fields = list(info["caption_fields"])
    unknown = sorted(set(caption_probs) - set(fields))
    if unknown:
        raise ValueError(f"caption fields {unknown} are not in {folder} (it has {fields})")


class FeatureDataset(Dataset):
    """Samples of a feature dataset folder written by `pixart prepare` (or the demo's own writer)."""

    def __init__(self, folder: str | Path, caption_probs: Mapping[str, float] | None = None, *, seed: int = 0):
        self.folder = Path(folder)
        self.info = read_dataset_info(self.folder)
        fields = list(self.info["caption_fields"])
        caption_probs = dict(caption_probs or {fields[0]: 1.0})
        check_caption_fields(self.folder, self.info, caption_probs)
        total = sum(caption_probs.values())
        if not math.isfinite(total) or total <= 0 or any(p < 0 for p in caption_probs.values()):
            raise ValueError(f"caption probabilities must be finite, non-negative, not all zero; got {caption_probs}")
        # In the dataset's order, not the mapping's: {"alt": .5, "dense": .5} and {"dense": .5, "alt": .5}
        # are one config (a resume may reorder them) and must draw the same field for each sample.
        self.fields = [f for f in fields if f in caption_probs]
        # Fields that can be drawn and their cumulative probabilities, the last exactly 1 (rounding aside)
        self._drawn = [f for f in self.fields if caption_probs[f] > 0]
        self._bounds = np.cumsum([caption_probs[f] / total for f in self._drawn]).tolist()
        self._bounds[-1] = 1.0
        self.seed = seed
        self.epoch = 0
        expected = self.info.get("shards", 0)  # pixart prepare records it before its first shard
        done = sum(shard_done(self.folder, i) for i in range(expected))
        if done < expected:  # training on part would also shift a resume's place once the rest is written
            raise FileNotFoundError(
                f"{self.folder} is prepared in part: {done} of {expected} shards are finished; rerun the same "
                "pixart prepare command (every --shard part of it) to finish it"
            )
        indices = finished_shards(self.folder)
        if "shards" in self.info:  # a killed earlier attempt's shards past the count are not this dataset's
            indices = [i for i in indices if i < expected]
        if not indices:
            # Finished by prepare (its shard count recorded, every shard done) yet empty: every input was skipped.
            finished = "shards" in self.info
            raise FileNotFoundError(
                no_sample_message(self.folder) if finished else f"{self.folder} holds no finished shard"
            )
        allow_open_files(FILES_PER_SHARD * len(indices) + SPARE_FILES, f"{self.folder}'s {len(indices)} shards")
        self.shards = [Shard.open(self.folder, i) for i in indices]
        self.starts = np.cumsum([0] + [len(s.records) for s in self.shards]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def locate(self, index: int) -> tuple[Shard, int]:
        shard = bisect.bisect_right(self.starts, index) - 1
        return self.shards[shard], index - self.starts[shard]

    def record(self, index: int) -> dict:
        shard, i = self.locate(index)
        return shard.records[i]

    def labels(self) -> list[int]:
        """Every sample's class label, in index order; -1 where its record has none."""
        return [label for s in self.shards for label in s.records.labels.tolist()]

    @property
    def buckets(self) -> list[str]:
        """Bucket key of every sample, in index order (what the bucket batch sampler needs)."""
        return [s.records.bucket_keys[code] for s in self.shards for code in s.records.bucket_codes.tolist()]

    def caption_field(self, index: int) -> str:
        """The caption field sample `index` trains on this epoch: drawn with the configured probabilities,
        from (seed, epoch, index) alone, so every rank, worker and resume draws the same."""
        if len(self._drawn) == 1:
            return self._drawn[0]
        # a hash, not a generator seeded per sample: numpy's took 64 us of the loader's ~150 us a sample
        return self._drawn[bisect.bisect_right(self._bounds, uniform(self.seed, self.epoch, index))]

    def _item(self, index: int) -> tuple[dict, torch.Tensor]:
        """An item without its "text", and the fp16 view of that text in the file."""
        shard, i = self.locate(index)
        records = shard.records
        mean, std = shard.latent_tensors(i)
        field = self.caption_field(index)
        bucket = records.bucket(i)
        item = {
            "mean": mean.float(),  # (C, h, w); .float() copies out of the read-only file mapping
            "std": std.float(),
            "text": None,  # (L, C_text)
            "caption": records[i]["captions"][field],
            "bucket": bucket,
            "img_hw": torch.from_numpy(records.original_hw[i].astype(np.float32)),  # (2,) a copy, 3x torch.tensor
            "aspect_ratio": float(bucket),
            "label": int(records.labels[i]),
            "index": index,
        }
        return item, shard.text_tensor(i, field)

    def __getitem__(self, index: int) -> dict:
        item, text = self._item(index)
        item["text"] = text.float()
        return item

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch of items, as DataLoader asks for them: the same dicts as __getitem__ gives.

        Their captions are cast straight into rows of one zero-padded (B, L, C) float32 tensor, so
        `collate` can hand that tensor on instead of copying every caption a second time.
        """
        pairs = [self._item(index) for index in indices]
        if not pairs:
            return []
        texts = [text for _, text in pairs]
        root, padded = _padded_text(texts)
        for row, ((item, _), text) in enumerate(zip(pairs, texts)):
            item["text"] = padded[row, : text.shape[0]]
        _PADDED_ROOTS[id(root)] = root
        return [item for item, _ in pairs]


class _BufferPool:
    """float32 buffers handed out again once no tensor refers to them.

    Each buffer is a bytearray wrapped with torch.frombuffer; every tensor storage made that way holds a
    reference to the bytearray until the last view of it is gone, so the bytearray's reference count
    says whether a batch (or any slice of it) is still alive. A buffer in use is never reused: when all
    are busy, or inside a DataLoader worker (whose batches are moved to shared memory anyway), this
    allocates normally.
    """

    def __init__(self, size: int = 3):
        self.size = size
        self.buffers: list[bytearray] = []
        self.idle = self._refs([bytearray(1)], 0)  # the count of a buffer nothing else refers to

    @staticmethod
    def _refs(buffers: list[bytearray], i: int) -> int:
        # Always called the same way, so the interpreter's own temporary references cancel out.
        return sys.getrefcount(buffers[i])

    def take(self, count: int) -> torch.Tensor:
        """An uninitialised 1-D float32 tensor of `count` elements, in reused memory where possible."""
        if torch.utils.data.get_worker_info() is not None or count == 0:
            return torch.empty(count)
        nbytes = count * 4
        for i in range(len(self.buffers)):
            if self._refs(self.buffers, i) == self.idle:
                if len(self.buffers[i]) < nbytes:  # grow with headroom: caption lengths vary by batch
                    self.buffers[i] = bytearray(nbytes + nbytes // 4)
                return torch.frombuffer(self.buffers[i], dtype=torch.float32, count=count)
        if len(self.buffers) < self.size:
            self.buffers.append(bytearray(nbytes + nbytes // 4))
            return torch.frombuffer(self.buffers[-1], dtype=torch.float32, count=count)
        return torch.empty(count)


_TEXT_BUFFERS = _BufferPool()
# id -> 1-D tensor whose (B, L, C) view __getitems__ filled with zero-padded captions. Weak, so it changes
# no lifetime; keyed by id because tensors compare elementwise, which sets of tensors would trip over.
_PADDED_ROOTS: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


def _padded_text(texts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions (L_i, C) of any float dtype -> (1-D root tensor, its (B, L, C) float32 view), zero-padded."""
    lengths = [t.shape[0] for t in texts]
    length = max(1, max(lengths))
    width = texts[0].shape[1]
    root = _TEXT_BUFFERS.take(len(texts) * length * width)
    padded = root.view(len(texts), length, width)
    for row, (text, n) in enumerate(zip(texts, lengths)):
        padded[row, :n] = text  # casts fp16 to fp32 on the way
        padded[row, n:] = 0  # only the padding is zeroed: the rest is written once, not twice
    return root, padded


def _prepadded(texts: list[torch.Tensor]) -> torch.Tensor | None:
    """The (B, L, C) tensor that `texts` are consecutive leading rows of, if __getitems__ made it so."""
    root = texts[0]._base
    if root is None or _PADDED_ROOTS.get(id(root)) is not root:
        return None
    width = texts[0].shape[1]
    length = root.numel() // (len(texts) * width)
    # __getitems__ pads to the longest caption of the batch: any other length means `texts` are not that
    # whole batch (the first of its items alone, say, whose "length" would span every row)
    if length * len(texts) * width != root.numel() or length != max(1, max(t.shape[0] for t in texts)):
        return None
    stride = length * width * root.element_size()
    for row, text in enumerate(texts):
        if text._base is not root or text.data_ptr() != root.data_ptr() + row * stride or text.stride() != (width, 1):
            return None
    return root.view(len(texts), length, width)


def collate(items: list[dict]) -> dict:
    """Stack one bucket's samples; pad captions to the longest in the batch with mask 0."""
    buckets = {item["bucket"] for item in items}
    if len(buckets) != 1:
        raise ValueError(f"a batch mixes buckets {sorted(buckets)}; use BucketBatchSampler")
    texts = [item["text"] for item in items]
    text = _prepadded(texts)
    if text is None:
        text = _padded_text(texts)[1]
    lengths = torch.tensor([t.shape[0] for t in texts])
    mask = (torch.arange(text.shape[1]) < lengths[:, None]).long()
    return {
        "mean": torch.stack([item["mean"] for item in items]),  # (B, C, h, w)
        "std": torch.stack([item["std"] for item in items]),
        "text": text,  # (B, L, C_text)
        "mask": mask,  # (B, L)
        "img_hw": torch.stack([item["img_hw"] for item in items]),  # (B, 2)
        "aspect_ratio": torch.tensor([item["aspect_ratio"] for item in items]),  # (B,)
        "label": torch.tensor([item["label"] for item in items]),
        "caption": [item["caption"] for item in items],
        "bucket": items[0]["bucket"],
        "index": torch.tensor([item["index"] for item in items]),
    }
