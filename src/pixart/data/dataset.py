"""The training dataset over feature shards, and its collate function.

Each item carries the raw VAE posterior (mean, std), the text features of one caption field drawn
with configurable probabilities (deterministic given seed, epoch and index), the bucket and the
micro-conditions PixArtMS trains with: the original image size and the bucket key as aspect ratio.
Latents are drawn from (mean, std) in the training step, with a seeded generator.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pixart.data.shards import Shard, finished_shards, read_dataset_info


class FeatureDataset(Dataset):
    """Samples of a feature dataset folder written by `pixart prepare` (or the demo's own writer)."""

    def __init__(self, folder: str | Path, caption_probs: Mapping[str, float] | None = None, *, seed: int = 0):
        self.folder = Path(folder)
        self.info = read_dataset_info(self.folder)
        fields = list(self.info["caption_fields"])
        caption_probs = dict(caption_probs or {fields[0]: 1.0})
        unknown = sorted(set(caption_probs) - set(fields))
        if unknown:
            raise ValueError(f"caption fields {unknown} are not in {self.folder} (it has {fields})")
        total = sum(caption_probs.values())
        if total <= 0 or any(p < 0 for p in caption_probs.values()):
            raise ValueError(f"caption probabilities must be non-negative and not all zero, got {caption_probs}")
        self.fields = list(caption_probs)
        self.probs = np.array([caption_probs[f] / total for f in self.fields])
        self.seed = seed
        self.epoch = 0
        indices = finished_shards(self.folder)
        if not indices:
            raise FileNotFoundError(f"{self.folder} holds no finished shard")
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

    @property
    def buckets(self) -> list[str]:
        """Bucket key of every sample, in index order (what the bucket batch sampler needs)."""
        return [r["bucket"] for s in self.shards for r in s.records]

    def caption_field(self, index: int) -> str:
        if len(self.fields) == 1:
            return self.fields[0]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.fields[rng.choice(len(self.fields), p=self.probs)]

    def __getitem__(self, index: int) -> dict:
        shard, i = self.locate(index)
        record = shard.records[i]
        mean, std = shard.latent(i)
        field = self.caption_field(index)
        return {
            "mean": torch.from_numpy(mean.astype(np.float32)),  # (C, h, w)
            "std": torch.from_numpy(std.astype(np.float32)),
            "text": torch.from_numpy(shard.text(i, field).astype(np.float32)),  # (L, C_text)
            "caption": record["captions"][field],
            "bucket": record["bucket"],
            "img_hw": torch.tensor(record["original_hw"], dtype=torch.float32),
            "aspect_ratio": float(record["bucket"]),
            "label": int(record.get("extra", {}).get("label", -1)),
            "index": index,
        }


def collate(items: list[dict]) -> dict:
    """Stack one bucket's samples; pad captions to the longest in the batch with mask 0."""
    buckets = {item["bucket"] for item in items}
    if len(buckets) != 1:
        raise ValueError(f"a batch mixes buckets {sorted(buckets)}; use BucketBatchSampler")
    length = max(1, max(item["text"].shape[0] for item in items))
    width = items[0]["text"].shape[1]
    text = torch.zeros(len(items), length, width)
    mask = torch.zeros(len(items), length, dtype=torch.long)
    for row, item in enumerate(items):
        n = item["text"].shape[0]
        text[row, :n] = item["text"]
        mask[row, :n] = 1
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
