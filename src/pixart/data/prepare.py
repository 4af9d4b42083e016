"""Feature extraction: images + captions -> a feature dataset (pixart.data.shards), resumable and deterministic.

The sorted, de-duplicated input list (pixart.data.sources) is cut into shards of `shard_size` inputs:
input i belongs to shard i // shard_size, whether or not it is skipped, so a shard may hold fewer
samples than inputs and the assignment never depends on what happened to other inputs. A process
takes the shards with index % parts == part (`--shard part/parts`, times RANK/WORLD_SIZE under
torchrun), and skips shards already done, never rewriting them unless their inputs' captions or labels
were edited since (pixart.data.fingerprint). Every shard is computed alone, from its own inputs in order,
so the bytes of a shard do not depend on which process made it or when.

For each image: decode to RGB (images.load_rgb), pick the bucket of the closest aspect ratio, resize to
cover it and centre crop, encode with the codec (raw posterior mean and std, fp16), and encode each
caption field with the text encoder (features of the valid tokens only, fp16).

Reports: each shard's report, `shard-XXXXX.report.json` (its samples per bucket, its skipped inputs
with reasons), is written before the shard itself, so every finished shard has one; a shard whose
inputs were all skipped is finished by its report alone (it has no safetensors file). `report.json` is
the merge of all shard reports plus the inputs left out while listing (duplicates, bad manifest rows);
every process rewrites it when it finishes, so the last to finish leaves the complete one (see
`complete` in it), and a rerun with nothing left to do just rewrites it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from pixart.data.buckets import closest_bucket
from pixart.data.fingerprint import REPORT_KEY as FINGERPRINT_KEY
from pixart.data.fingerprint import captions_fingerprint
from pixart.data.images import ImageSkipped, check_aspect, check_size, load_rgb, resize_cover_crop
from pixart.data.items import UNEXPECTED, Inputs, Item, class_label_of
from pixart.data.prepare_options import PrepareError, PrepareOptions, my_shards, shard_count, shard_items
from pixart.data.prepare_report import merge_reports
from pixart.data.shards import (
    DATASET_FILE,
    FEATURES_FORMAT,
    FeatureSample,
    report_path,
    shard_done,
    shard_name,
    write_shard,
)
from pixart.encoders.codecs import ImageCodec, codec_info, from_uint8
from pixart.encoders.text import TextEncoder, encoder_info
from pixart.files import read_json, write_json

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Loaded:
    """An input ready to encode: its crop (H, W, 3) uint8, bucket, displayed size and captions."""

    crop: np.ndarray | None  # None once handed to the latent batcher, so a shard never holds all its crops
    bucket: str
    original_hw: tuple[int, int]
    captions: dict[str, str]
    label: int | None = None  # the class label stage 1 trains on, where the input gives one


@dataclass
class PrepareResult:
    written: list[int]  # shards this call wrote
    already_done: list[int]  # shards of this process that were finished before
    report: dict  # the merged report of the whole dataset (empty if stopped early)


def pending_shards(inputs: Inputs, out: str | Path, options: PrepareOptions) -> list[int]:
    """This process's shards that are not finished yet, or whose inputs' captions or labels were edited
    since they were (what `prepare` computes)."""
    out = Path(out)
    return [
        i
        for i in my_shards(inputs, options)
        if not (shard_done(out, i) and _captions_unchanged(out, inputs, options, i))
    ]


def _captions_unchanged(out: Path, inputs: Inputs, options: PrepareOptions, index: int) -> bool:
    recorded = (read_json(report_path(out, index)) or {}).get(FINGERPRINT_KEY)
    if recorded is None:  # a shard from before the fingerprint was kept is taken as it is: it cannot tell
        return True
    items = shard_items(inputs, options, index)
    # of the prepared fields alone (editing another column redid the shard), or of every field as shards
    # written before were hashed: unchanged either way
    return recorded in (captions_fingerprint(items, options.fields), captions_fingerprint(items))


def _set_aside_for_a_redo(out: Path, index: int) -> None:
    """A finished shard whose captions changed leaves the finished ones first (tensors, then records and
    report), so that a kill before its redo is written leaves it pending, never the old one as current."""
    for path in (out / f"{shard_name(index)}.safetensors", out / f"{shard_name(index)}.jsonl", report_path(out, index)):
        path.unlink(missing_ok=True)


# --- dataset.json ---


def inputs_digest(inputs: Inputs) -> str:
    """A hash of the sorted input names: a rerun on another input list would assign shards differently."""
    digest = hashlib.sha256()
    for item in inputs.items:
        digest.update(item.name.encode("utf-8", errors="surrogateescape") + b"\n")
    return digest.hexdigest()


def settings_info(inputs: Inputs, options: PrepareOptions) -> dict:
    """The part of dataset.json that needs no model: the settings and the inputs."""
    return {
        "format": FEATURES_FORMAT,
        "resolution": options.resolution,
        "buckets": {key: list(hw) for key, hw in options.table.items()},
        "upscale_small": options.upscale_small,
        "caption_fields": list(options.fields),
        "shard_size": options.shard_size,
        "shards": shard_count(inputs, options),
        "inputs": {"kind": inputs.kind, "count": len(inputs.items), "digest": inputs_digest(inputs)},
    }


def dataset_info(inputs: Inputs, options: PrepareOptions, codec: ImageCodec, text_encoder: TextEncoder) -> dict:
    """What produced the dataset: everything a reader or a resumed run must agree with."""
    return {**settings_info(inputs, options), "codec": codec_info(codec), "text_encoder": encoder_info(text_encoder)}


def check_or_write_info(out: Path, info: dict) -> None:
    """Write dataset.json, or check that the one there came from the same settings and inputs."""
    if read_json(out / DATASET_FILE) is None:  # none yet (or a torn one, which atomic writes never leave)
        write_json(out / DATASET_FILE, info, indent=1)
    else:
        check_info(out, info)


def check_info(out: Path, info: dict) -> None:
    """Refuse an `out` whose dataset.json differs from `info` in any of info's keys (none there: fine).

    With settings_info, before the models load: a rerun that adds images or changes a setting is refused
    at once, even when every shard is done (it used to report the old dataset as complete)."""
    existing = read_json(out / DATASET_FILE)
    if existing is None:
        return
    differences = [
        _difference(key, existing.get(key, ABSENT), json.loads(json.dumps(info[key])))
        for key in info
        if json.loads(json.dumps(info[key])) != existing.get(key, ABSENT)
    ]
    if differences:
        raise PrepareError(
            f"{out} was prepared with other settings or inputs; use another --out or the same settings ("
            + "; ".join(differences)
            + ")"
        )


def _difference(key: str, there: object, now: object) -> str:
    """One setting as it differs: a table (the buckets at another resolution) by its first differing entry
    and a count, not whole (both bucket tables made a 2 KB message)."""
    if isinstance(there, dict) and isinstance(now, dict):
        changed = [k for k in {**there, **now} if there.get(k, ABSENT) != now.get(k, ABSENT)]
        first = changed[0]
        more = f" and {len(changed) - 1} more entries" if len(changed) > 1 else ""
        return _difference(f"{key}[{first!r}]", there.get(first, ABSENT), now.get(first, ABSENT)) + more
    return f"{key}: {there!r} there, {now!r} now"


class _Absent:
    """A setting on one side only: it differs even from a None (null) on the other, and says so."""

    def __repr__(self) -> str:
        return "absent"


ABSENT = _Absent()


def check_models_info(out: Path, given: dict) -> None:
    """Refuse an `out` whose dataset.json records another codec or text encoder than the flags `given`
    ({"codec": {...}, "text_encoder": {...}}, the fields known without loading the models): checked when
    a run resumes or every shard is done, before the models load (dataset_info is compared after)."""
    existing = read_json(out / DATASET_FILE) or {}
    differences = [
        _difference(f"{part}.{key}", existing[part].get(key, ABSENT), value)
        for part, fields in given.items()
        if part in existing
        for key, value in fields.items()
        if existing[part].get(key, ABSENT) != value
    ]
    if differences:
        raise PrepareError(
            f"{out} was prepared with other models; use another --out or the same ones ({'; '.join(differences)})"
        )


# --- reading inputs ---


def load_item(item: Item, options: PrepareOptions) -> Loaded:
    """Captions, then pixels, then aspect and size checks, then the crop; ImageSkipped says why not."""
    row = item.fields()  # its caption files read once, for the captions and the class label
    captions = item.captions(options.fields, row)
    img = load_rgb(item.image.read(), name=item.name)
    table = options.table
    check_aspect(img, table)
    bucket, (height, width) = closest_bucket(img.height, img.width, table)
    check_size(img, height, width, options.upscale_small)
    crop = resize_cover_crop(img, height, width)
    return Loaded(np.asarray(crop), bucket, (img.height, img.width), captions, class_label_of(row))


def _load_or_skip(item: Item, options: PrepareOptions) -> Loaded | dict:
    try:
        return load_item(item, options)
    except ImageSkipped as e:
        return {"path": item.name, "reason": e.reason, "message": e.message}
    except Exception as e:  # see UNEXPECTED; the message keeps the type, for a bug report
        return {"path": item.name, "reason": UNEXPECTED, "message": f"{type(e).__name__}: {e}"}


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items in order, on `workers` threads with a bounded number in flight (crops are large)."""
    if workers == 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --- one shard ---


class _LatentBatcher:
    """Crops queue per bucket and are encoded batch_size at a time, in input order.

    The same --batch-size gives the same bytes every run. Another one (a resume may change it) batches
    the products differently, so values may differ in rounding (see encode_captions); dataset.json does
    not record the batch size, and a resume is not refused for it.
    """

    def __init__(self, codec: ImageCodec, batch_size: int):
        self.codec = codec
        self.batch_size = batch_size
        self.queues: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, position: int, bucket: str, crop: np.ndarray) -> None:
        queue = self.queues.setdefault(bucket, [])
        queue.append((position, crop))
        if len(queue) == self.batch_size:
            self._encode(bucket)

    def finish(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        for bucket in list(self.queues):
            if self.queues[bucket]:
                self._encode(bucket)
        return self.results

    def _encode(self, bucket: str) -> None:
        queue = self.queues[bucket]
        images = from_uint8(torch.from_numpy(np.stack([crop for _, crop in queue])))
        mean, std = self.codec.encode(images)
        for row, (position, _) in enumerate(queue):
            self.results[position] = (mean[row].half().cpu(), std[row].half().cpu())
        self.queues[bucket] = []


def encode_captions(
    text_encoder: TextEncoder, captions: list[str], batch_size: int
) -> tuple[list[torch.Tensor], list[int]]:
    """Features of the valid tokens of each caption, (L_i, C) fp16, and the tokens cut by max_length.

    Padding is to each batch's longest caption, so `batch_size` changes only rounding: MiniLM features
    of 5 captions encoded 1 and 4 at a time differed by at most 4.9e-4 on values up to 5.6 (one fp16 step).
    """
    features, dropped = [], []
    for start in range(0, len(captions), batch_size):
        encoded = text_encoder.encode(captions[start : start + batch_size], padding="longest")  # valid tokens kept
        for row in range(encoded.features.shape[0]):
            valid = encoded.mask[row].bool()
            features.append(encoded.features[row][valid].half().cpu())
        dropped.extend(encoded.dropped)
    return features, dropped


def prepare_shard(
    items: list[Item],
    options: PrepareOptions,
    codec: ImageCodec,
    text_encoder: TextEncoder,
    on_item: Callable[[], None] | None = None,
) -> tuple[list[FeatureSample], dict]:
    """The samples of one shard's inputs (in input order) and the shard's report."""
    batcher = _LatentBatcher(codec, options.batch_size)
    loaded: list[tuple[Item, Loaded]] = []
    skipped = []
    for item, result in zip(items, ordered_map(lambda it: _load_or_skip(it, options), items, options.workers)):
        if isinstance(result, dict):
            skipped.append(result)
        else:
            if result.crop is None:  # a fresh load always has its crop; only the line below takes it
                raise RuntimeError(f"{item.name}: its crop was handed to the latent batcher already")
            batcher.add(len(loaded), result.bucket, result.crop)
            result.crop = None
            loaded.append((item, result))
        if on_item is not None:
            on_item()
    latents = batcher.finish()
    texts, truncated = {}, {}
    for name in options.fields:
        captions = [result.captions[name] for _, result in loaded]
        texts[name], dropped = encode_captions(text_encoder, captions, options.batch_size)
        truncated[name] = sum(1 for n in dropped if n)
    samples = [
        FeatureSample(
            mean=latents[position][0],
            std=latents[position][1],
            text={name: texts[name][position] for name in options.fields},
            bucket=result.bucket,
            original_hw=result.original_hw,
            captions=result.captions,
            source=item.name,
            extra={} if result.label is None else {"label": result.label},
        )
        for position, (item, result) in enumerate(loaded)
    ]
    report = {
        "inputs": len(items),
        "samples": len(samples),
        "buckets": dict(sorted(Counter(s.bucket for s in samples).items(), key=lambda kv: float(kv[0]))),
        "truncated": truncated,
        "skipped": skipped,
    }
    return samples, report


# --- the whole run ---


def prepare(
    inputs: Inputs,
    out: str | Path,
    options: PrepareOptions,
    codec: ImageCodec,
    text_encoder: TextEncoder,
) -> PrepareResult:
    """Compute this process's unfinished shards into `out`, then rewrite `out/report.json`."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = options.table
    if any(h % codec.downsample or w % codec.downsample for h, w in table.values()):
        raise PrepareError(f"the {options.resolution} px buckets are not multiples of the codec's {codec.downsample}")
    check_or_write_info(out, dataset_info(inputs, options, codec, text_encoder))
    mine = my_shards(inputs, options)
    pending = pending_shards(inputs, out, options)
    total = sum(len(shard_items(inputs, options, i)) for i in pending)
    written: list[int] = []
    with tqdm(total=total, unit="img", desc=f"prepare {out.name}", disable=not options.progress) as bar:
        for index in pending:
            if options.stop_after is not None and len(written) >= options.stop_after:
                return PrepareResult(written, [i for i in mine if i not in pending], {})
            bar.set_postfix_str(shard_name(index))
            items = shard_items(inputs, options, index)
            fingerprint = captions_fingerprint(items, options.fields)
            _set_aside_for_a_redo(out, index)  # nothing there, unless its captions were edited
            samples, report = prepare_shard(items, options, codec, text_encoder, on_item=lambda: bar.update())
            # The report first: a shard that exists always has one, and an empty shard is finished by it.
            write_json(report_path(out, index), {"shard": index, FINGERPRINT_KEY: fingerprint, **report}, indent=1)
            if samples:
                write_shard(out, index, samples, options.fields)
            written.append(index)
    return PrepareResult(written, [i for i in mine if i not in pending], merge_reports(out, inputs, options))
