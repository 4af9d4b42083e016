"""Feature shards: pre-extracted VAE posteriors and text features, memory-mapped for training.

A feature dataset is a folder:
- `dataset.json`: what produced it (resolution, codec, text encoder, caption fields, widths);
- `shard-00000.safetensors` + `shard-00000.jsonl`, ...: one safetensors file and one JSON line per sample.

Inside a shard, samples are grouped by aspect-ratio bucket (every bucket has its own latent size):
- `latent_mean.<bucket>`, `latent_std.<bucket>`: (n_b, C, h, w) fp16, the raw VAE posterior;
- `text.<field>`: the valid tokens of every sample's caption, concatenated, (T, C_text) fp16;
- `text_offsets.<field>`: (n + 1,) int64, sample i's tokens are rows offsets[i]:offsets[i+1].
The JSON line of sample i holds its bucket, row in that bucket, original height and width, captions
and source. A shard becomes visible only when its safetensors file is renamed into place, after its
JSON lines: a killed writer leaves no half shard, and a rerun skips the shards that exist.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pixart.data.records import DamagedData, ShardRecords
from pixart.files import atomic_write, remove_leftovers, write_json, write_text

DATASET_FILE = "dataset.json"
REPORT_FILE = "report.json"  # what pixart prepare kept and skipped, merged over its shards


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass
class FeatureSample:
    """One sample to write: raw posterior (C, h, w) and per-field text features of valid tokens (L, C)."""

    mean: torch.Tensor
    std: torch.Tensor
    text: dict[str, torch.Tensor]
    bucket: str
    original_hw: tuple[int, int]
    captions: dict[str, str]
    source: str = ""
    extra: dict = field(default_factory=dict)  # e.g. the scene of a synthetic image, a class label


def write_shard(folder: str | Path, index: int, samples: list[FeatureSample], fields: list[str]) -> Path:
    """Write one shard atomically (JSON lines first, then the safetensors file renamed into place)."""
    folder = Path(folder)
    name = shard_name(index)
    by_bucket: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_bucket[s.bucket].append(i)
    tensors: dict[str, torch.Tensor] = {}
    row_of = {}
    for bucket, members in by_bucket.items():
        tensors[f"latent_mean.{bucket}"] = torch.stack([samples[i].mean for i in members]).half().contiguous()
        tensors[f"latent_std.{bucket}"] = torch.stack([samples[i].std for i in members]).half().contiguous()
        row_of.update({i: r for r, i in enumerate(members)})
    for name_field in fields:
        parts = [s.text[name_field].half() for s in samples]
        lengths = torch.tensor([0] + [p.shape[0] for p in parts])
        tensors[f"text.{name_field}"] = torch.cat(parts).contiguous()
        tensors[f"text_offsets.{name_field}"] = torch.cumsum(lengths, 0).to(torch.int64)
    lines = [
        json.dumps(
            {
                "bucket": s.bucket,
                "row": row_of[i],
                "original_hw": list(s.original_hw),
                "captions": s.captions,
                "source": s.source,
                **({"extra": s.extra} if s.extra else {}),
            }
        )
        for i, s in enumerate(samples)
    ]
    records, path = folder / f"{name}.jsonl", folder / f"{name}.safetensors"
    for done in (records, path):  # of a run killed while writing this shard (only its writer gets here)
        remove_leftovers(folder, done.name)
    # Synced to the disk before the tensors that mark the shard finished: after a power loss a finished
    # shard could otherwise hold an empty records file.
    write_text(records, "\n".join(lines) + "\n")
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return path


def report_path(out: Path, index: int) -> Path:
    """Where `pixart prepare` reports on shard `index` (written once the shard is finished)."""
    return out / f"{shard_name(index)}.report.json"


def shard_done(out: Path, index: int) -> bool:
    """Finished: its safetensors file exists, or its report says it has no samples (all inputs skipped)."""
    if (out / f"{shard_name(index)}.safetensors").is_file():
        return True
    try:
        report = json.loads(report_path(out, index).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return report.get("samples") == 0


def finished_shards(folder: str | Path) -> list[int]:
    """Indices of the shards whose safetensors file exists (i.e. completely written)."""
    return sorted(int(p.stem.split("-")[1]) for p in Path(folder).glob("shard-*.safetensors"))


def write_dataset_info(folder: str | Path, info: dict) -> None:
    write_json(Path(folder) / DATASET_FILE, info)


FEATURES_FORMAT = "pixart-features/1"  # what pixart prepare records in dataset.json (the shapes writers record none)


def read_dataset_info(folder: str | Path) -> dict:
    path = Path(folder) / DATASET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a feature dataset (no {DATASET_FILE}); make one with pixart prepare")
    try:
        info = json.loads(path.read_text())
    except (ValueError, OSError) as error:  # JSONDecodeError and bytes that are not UTF-8 are ValueErrors
        raise DamagedData(f"{path} cannot be read ({error}): rerun pixart prepare into a new --out") from None
    if not isinstance(info, dict) or not isinstance(info.get("caption_fields"), list):
        raise DamagedData(f"{path} is not a pixart feature dataset's (no caption_fields): make one with pixart prepare")
    if info.get("format", FEATURES_FORMAT) != FEATURES_FORMAT:  # another version's layout, read as this one's
        raise DamagedData(
            f"{path} records the format {info['format']!r}; this version reads {FEATURES_FORMAT!r}: prepare the "
            "data again with this version's pixart prepare"
        )
    return info


_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64, "BF16": None}


def memmap_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only numpy memmap (no copy, no parse per access)."""
    path = Path(path)
    damaged = f"{path} is damaged (cut short or edited): rerun pixart prepare into a new --out"
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if not 0 < header_len <= size - 8:
            raise DamagedData(damaged)
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise DamagedData(damaged) from None
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    base = 8 + header_len
    arrays = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {spec['dtype']}")
        start, end = spec["data_offsets"]
        if base + end > size or end - start != int(np.prod(spec["shape"])) * np.dtype(dtype).itemsize:
            raise DamagedData(damaged)
        arrays[name] = raw[base + start : base + end].view(dtype).reshape(spec["shape"])
    return arrays


def _torch_views(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Zero-copy torch views of read-only memmaps, so readers convert fp16 with torch's vectorised casts.

    torch warns that it cannot mark such memory read-only; the views are never written (readers copy
    out of them), so the warning is silenced here, once per shard rather than once per sample.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {name: torch.from_numpy(array) for name, array in arrays.items()}


@dataclass
class Shard:
    """An opened shard: memmapped arrays and its per-sample records (parsed from its JSON lines when asked for).

    `tensors` holds the same memory as `arrays` as torch tensors (read-only in practice: the file is
    mapped read-only, so writing to them would crash); `offsets` are the text offsets, views of the file.
    """

    arrays: dict[str, np.ndarray]
    records: ShardRecords
    path: Path | None = None  # the safetensors file `arrays` map, where the shard was opened from one
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    offsets: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.tensors:
            self.tensors = _torch_views(self.arrays)
        if not self.offsets:
            prefix = "text_offsets."
            # views of the file, not lists: a Python int a sample and field would cost 36 bytes in every process
            offsets = {k[len(prefix) :]: v for k, v in self.arrays.items() if k.startswith(prefix)}
            self.offsets = {k: v.view(np.ndarray) for k, v in offsets.items()}  # a memmap's [i] is slow Python

    @classmethod
    def open(cls, folder: Path, index: int) -> Shard:
        """A shard whose records and tensors agree; DamagedData, naming the file, where they cannot (a file
        cut short read as fewer samples, or failed on a reshape with advice about caption_probs)."""
        name = shard_name(index)
        path = folder / f"{name}.jsonl"
        records = ShardRecords(path)
        tensors = folder / f"{name}.safetensors"
        shard = cls(memmap_safetensors(tensors), records, tensors)
        damaged = "one is damaged; rerun pixart prepare into a new --out"
        for field_name, offsets in shard.offsets.items():
            if len(offsets) != len(records) + 1:
                raise DamagedData(
                    f"{path} holds {len(records)} samples and {tensors} {len(offsets) - 1} {field_name!r} "
                    f"captions: {damaged}"
                )
            # each caption a run of the field's rows, in order and whole: offsets edited in place (the file's
            # size unchanged) gave captions cut short, empty or another sample's, without a word
            features = shard.arrays.get(f"text.{field_name}")
            if features is None or offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != len(features):
                raise DamagedData(f"{tensors}: the {field_name!r} caption offsets do not match its features: {damaged}")
        for code, key in enumerate(records.bucket_keys):
            # each bucket's samples its latent rows, once each: a duplicated row paired a sample with another's
            # latents silently, and one out of range failed thousands of steps in
            rows = np.sort(records.rows[records.bucket_codes == code])
            mean = shard.arrays.get(f"latent_mean.{key}")
            if mean is None or not np.array_equal(rows, np.arange(len(mean))):
                raise DamagedData(f"{path}: the samples of bucket {key} do not index its latents one to one: {damaged}")
        return shard

    def __getstate__(self) -> dict:
        """Pickled (for a DataLoader worker started by spawn, as on macOS) as its file's path, mapped again
        when unpickled: pickling a memory map copies all of its data into every worker."""
        if self.path is None:
            return dict(self.__dict__)
        return {"path": self.path, "records": self.records}

    def __setstate__(self, state: dict) -> None:
        if "arrays" not in state:
            state = Shard(memmap_safetensors(state["path"]), state["records"], state["path"]).__dict__
        self.__dict__.update(state)

    def latent_tensors(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample i's latent mean and std, torch views of the file (fp16; copy before changing them)."""
        bucket, row = self.records.bucket(i), int(self.records.rows[i])
        return self.tensors[f"latent_mean.{bucket}"][row], self.tensors[f"latent_std.{bucket}"][row]

    def text_tensor(self, i: int, field_name: str) -> torch.Tensor:
        """Sample i's text features of `field_name`, a torch view of the file (fp16; copy before changing it)."""
        offsets = self.offsets[field_name]
        return self.tensors[f"text.{field_name}"][int(offsets[i]) : int(offsets[i + 1])]
