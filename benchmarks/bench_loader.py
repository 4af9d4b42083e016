"""Loader throughput: samples/s through FeatureDataset + BucketBatchSampler + collate in one process.

Builds a synthetic 256 px feature dataset in a temporary folder (raw posterior 4x32x32 mean + std and
T5-width text features of ~60 valid tokens, all fp16, as `pixart prepare` writes them), then times
full passes of a DataLoader with num_workers=0 after a warm-up pass (so the files sit in the page
cache: this measures the reader, not the disk). Target: at least 2,000 samples/s per process.

    .venv/bin/python benchmarks/bench_loader.py                 # 5,000 samples, batch 64
    .venv/bin/python benchmarks/bench_loader.py --samples 2000 --passes 2 --keep /tmp/bench-data

It also prints the memory an opened dataset holds per sample (tracemalloc): what every trainer and
worker process keeps for the records of the paper's 10M+ samples.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pixart.data.dataset import FeatureDataset, collate
from pixart.data.sampler import BucketBatchSampler
from pixart.data.shards import FeatureSample, finished_shards, write_dataset_info, write_shard

# A few 256 px buckets with their latent sizes (H/8, W/8); most images are square-ish, as in practice.
BUCKETS = {"1.0": (32, 32), "0.57": (24, 42), "1.75": (42, 24), "0.78": (28, 36)}
WEIGHTS = torch.tensor([0.55, 0.2, 0.15, 0.1])
TARGET = 2000.0


WORDS = ("a", "small", "red", "cube", "left", "of", "a", "blue", "sphere", "on", "a", "table", "in", "warm", "light")


def build(folder: Path, samples: int, shard_size: int, width: int, tokens: int, words: int, seed: int) -> None:
    """Random fp16 features written with write_shard; token counts vary around `tokens` (+-50%); captions
    of `words` words, a dense caption's length."""
    g = torch.Generator().manual_seed(seed)
    keys = list(BUCKETS)
    write_dataset_info(folder, {"resolution": 256, "caption_fields": ["alt"], "synthetic": True})
    for index, start in enumerate(range(0, samples, shard_size)):
        batch = []
        for i in range(start, min(samples, start + shard_size)):
            bucket = keys[int(torch.multinomial(WEIGHTS, 1, generator=g))]
            h, w = BUCKETS[bucket]
            length = int(torch.randint(tokens // 2, tokens + tokens // 2 + 1, (1,), generator=g))
            batch.append(
                FeatureSample(
                    mean=torch.randn(4, h, w, generator=g).half(),
                    std=torch.rand(4, h, w, generator=g).half(),
                    text={"alt": torch.randn(length, width, generator=g).half()},
                    bucket=bucket,
                    original_hw=(h * 8, w * 8),
                    captions={"alt": f"image {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))},
                    source=f"img{i:06d}.jpg",
                )
            )
        write_shard(folder, index, batch, ["alt"])


def one_pass(loader: DataLoader) -> tuple[int, float]:
    count = 0
    start = time.perf_counter()
    for batch in loader:
        count += batch["mean"].shape[0]
    return count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=4096, help="text feature width (T5-XXL: 4096)")
    parser.add_argument("--tokens", type=int, default=60, help="mean valid tokens per caption")
    parser.add_argument("--words", type=int, default=100, help="words per caption (LLaVA's run to about 100)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes after one warm-up pass")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the dataset here instead of a temp folder")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one loader process: what a data worker or the main process gets

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if not finished_shards(folder):
            start = time.perf_counter()
            build(folder, args.samples, args.shard_size, args.width, args.tokens, args.words, seed=0)
            print(f"built {args.samples} samples in {time.perf_counter() - start:.1f} s at {folder}")
        size = sum(p.stat().st_size for p in folder.glob("shard-*.safetensors"))

        start = time.perf_counter()
        data = FeatureDataset(folder)
        sampler = BucketBatchSampler(data.buckets, args.batch_size, seed=0, drop_last=True)
        open_s = time.perf_counter() - start
        gc.collect()
        tracemalloc.start()  # what opening the dataset leaves in this process's heap, per sample
        held = FeatureDataset(folder)
        gc.collect()
        per_sample = tracemalloc.get_traced_memory()[0] / len(held)
        tracemalloc.stop()
        del held
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=0)
        one_pass(loader)  # warm-up: page cache, allocator
        rates = []
        for _ in range(args.passes):
            count, seconds = one_pass(loader)
            rates.append(count / seconds)

    print(f"\n{'dataset':<22}{len(data)} samples, {size / 2**20:.0f} MiB, opened in {open_s * 1000:.0f} ms")
    print(f"{'held in memory':<22}{per_sample:,.0f} bytes a sample (Python heap; the files are mapped, not read)")
    print(f"{'batch':<22}{args.batch_size}, {len(sampler)} batches per pass, num_workers 0")
    print(f"{'text':<22}~{args.tokens} tokens x {args.width}, fp16 on disk, fp32 in batches")
    for i, rate in enumerate(rates):
        print(f"{f'pass {i + 1}':<22}{rate:,.0f} samples/s")
    typical = statistics.median(rates)  # not the best pass: one lucky pass would meet the target alone
    verdict = "meets" if typical >= TARGET else "BELOW"
    print(
        f"\nloader throughput: {typical:,.0f} samples/s per process (median pass; {verdict} the {TARGET:,.0f} target)"
    )


if __name__ == "__main__":
    main()
