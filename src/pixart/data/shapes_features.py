"""A feature dataset of the shapes world, made with the real code path (encoders + shard writer).

Used by the `tiny` recipe, the demo and the ablations: no data and no download of the user's. Each
canvas size becomes one aspect-ratio bucket keyed by its height/width ratio ("1.0", "0.75", ...).
Captions are encoded once per unique text (the shapes world repeats many) with padding to the
longest caption of a batch, and only valid tokens are stored, as `pixart prepare` does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from pixart.data import synthetic, synthetic_dataset
from pixart.data.buckets import bucket_key, bucket_table_of
from pixart.data.shards import FeatureSample, write_dataset_info, write_shard
from pixart.encoders.codecs import ImageCodec, codec_info, from_uint8
from pixart.encoders.text import TextEncoder, encoder_info

FIELDS = ("alt", "dense")  # alt: one object, alt-text style; dense: every object, position and background


def encode_unique(
    encoder: TextEncoder, captions: list[str], batch_size: int = 256, progress: bool = True
) -> dict[str, torch.Tensor]:
    """{caption: (L_valid, C) features} for every distinct caption, longest-padded batches sorted by length."""
    unique = sorted(set(captions), key=len)
    table: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(unique), batch_size), desc="encoding captions", disable=not progress, leave=False):
        chunk = unique[start : start + batch_size]
        out = encoder.encode(chunk, padding="longest")
        for text, features, mask in zip(chunk, out.features, out.mask):
            table[text] = features[mask.bool()].cpu()
    return table


SHAPES_SOURCE_PREFIX = "shapes world "  # how every shapes dataset's "source" begins


def shapes_source(seed: int, count: int) -> str:
    """dataset.json's "source" of shapes data: what, besides the sizes, decides its images and captions."""
    return f"{SHAPES_SOURCE_PREFIX}{synthetic.WORLD_VERSION}, seed {seed}, {count} images per size"


def shapes_world_of(source: str) -> str | None:
    """The world version a shapes_source() names ("shapes-1"), or None for data of another source."""
    if not source.startswith(SHAPES_SOURCE_PREFIX):
        return None
    return source.removeprefix(SHAPES_SOURCE_PREFIX).split(",")[0]


def build_shapes_features(
    folder: str | Path,
    *,
    sizes: list[tuple[int, int]],
    count: int,
    seed: int,
    encoder: TextEncoder,
    codec: ImageCodec,
    shard_size: int = 4096,
    min_objects: int = 1,
    max_objects: int = 3,
    progress: bool = True,
) -> dict:
    """Write `count` images per canvas size; returns the dataset info (dataset.json, written last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    worlds = [
        synthetic_dataset.make_dataset(count, seed + 7919 * i, h, w, min_objects, max_objects)
        for i, (h, w) in enumerate(sizes)
    ]
    captions = [c for world in worlds for c in (*world.short_captions, *world.dense_captions)]
    features = encode_unique(encoder, captions, progress=progress)
    samples = []
    for (h, w), world in zip(sizes, worlds):
        key = bucket_key(h, w)
        images = from_uint8(torch.from_numpy(world.images))  # (N, 3, H, W) in [-1, 1]
        for start in range(0, len(world), 512):
            mean, std = codec.encode(images[start : start + 512])
            for j in range(mean.shape[0]):
                i = start + j
                scene = world.scenes[i]
                samples.append(
                    FeatureSample(
                        mean=mean[j],
                        std=std[j],
                        bucket=key,
                        original_hw=(h, w),
                        text={"alt": features[world.short_captions[i]], "dense": features[world.dense_captions[i]]},
                        captions={"alt": world.short_captions[i], "dense": world.dense_captions[i]},
                        source=f"shapes:{seed}:{h}x{w}:{i}",
                        extra={"label": int(world.labels[i]), "scene": synthetic.scene_to_dict(scene)},
                    )
                )
    for index, start in enumerate(range(0, len(samples), shard_size)):
        write_shard(folder, index, samples[start : start + shard_size], list(FIELDS))
    info = {
        "caption_fields": list(FIELDS),
        "source": shapes_source(seed, count),
        "resolution": max(max(s) for s in sizes),
        "buckets": bucket_table_of(sizes),
        "codec": codec_info(codec),
        "text_encoder": encoder_info(encoder),
        "samples": len(samples),
        "shards": -(-len(samples) // shard_size),  # a shard deleted later is then named, not skipped silently
    }
    write_dataset_info(folder, info)
    return info
