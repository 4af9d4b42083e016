"""A shard's per-sample records (its JSON lines), held as a few arrays instead of a dict per sample.

A dict per record costs about 2 KB a sample with a dense caption, in every process that opens the
dataset: 20 GB per trainer at the paper's 10M+ samples, and a DataLoader worker's copy grows as it
touches the dicts' reference counts. Here what the loader needs for every sample (bucket, row, original
size, class label) sits in numpy arrays (40 bytes a sample; about 50 held in all, measured), and a
record's line is parsed from the memory-mapped file when asked for: the page cache holds the file once
for every process. (A file cut short in place while mapped ends the process with SIGBUS, as the shard's
tensors always could: pixart prepare replaces files, never rewrites them.)
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np


class DamagedData(ValueError):
    """A prepared dataset's file that cannot be what its writer left: cut short, edited, or of another format."""


class ShardRecords:
    """The records of one `shard-NNNNN.jsonl`: `records[i]` is sample i's dict, parsed on each access."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        data = self.path.read_bytes()  # once, to index the lines; later reads go through the memory map
        keys: dict[str, int] = {}
        starts, ends, codes, rows, sizes, labels = [], [], [], [], [], []
        start = 0
        for number, line in enumerate(data.split(b"\n")):
            end, begin = start + len(line), start
            start = end + 1
            if not line.strip():  # a blank line is no sample (the writer never writes one; the last is b"")
                continue
            try:
                record = json.loads(line)
                codes.append(keys.setdefault(str(record["bucket"]), len(keys)))
                rows.append(int(record["row"]))
                sizes.append([int(n) for n in record["original_hw"]])
                labels.append(int(record.get("extra", {}).get("label", -1)))
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise DamagedData(
                    f"{self.path} is damaged at line {number + 1} ({type(error).__name__}: {error}): rerun "
                    "pixart prepare into a new --out"
                ) from None
            starts.append(begin)
            ends.append(end)
        self.starts = np.array(starts, dtype=np.int64)  # (n,) byte span of each record in the file
        self.ends = np.array(ends, dtype=np.int64)
        self.bucket_keys = list(keys)  # code -> bucket key
        self.bucket_codes = np.array(codes, dtype=np.int32)  # (n,)
        self.rows = np.array(rows, dtype=np.int32)  # (n,) the sample's row in its bucket's latent tensors
        self.original_hw = np.array(sizes, dtype=np.int32).reshape(-1, 2)  # (n, 2)
        self.labels = np.array(labels, dtype=np.int64)  # (n,) class label, -1 where a record has none
        self._map = self._open_map()

    def _open_map(self) -> mmap.mmap | bytes:
        if not len(self.starts):
            return b""  # mmap refuses an empty file, and no record is read from one without samples
        with open(self.path, "rb") as file:  # the map outlives the file object
            return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    def __getstate__(self) -> dict:
        """Pickled (a DataLoader worker started by spawn, as on macOS) without the map, which is reopened."""
        return {key: value for key, value in self.__dict__.items() if key != "_map"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._map = self._open_map()

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} of {len(self)} in {self.path}")
        return json.loads(self._map[int(self.starts[i]) : int(self.ends[i])])

    def bucket(self, i: int) -> str:
        return self.bucket_keys[self.bucket_codes[i]]
