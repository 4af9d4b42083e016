"""What `pixart prepare` is asked to do (PrepareOptions) and which shards are whose.

Input i belongs to shard i // shard_size, whether or not it is skipped; a process takes the shards with
index % parts == part (`--shard part/parts`, times RANK/WORLD_SIZE under torchrun).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from pixart.data.buckets import bucket_table
from pixart.data.items import Inputs, Item, has_text
from pixart.data.manifests import IMAGE_COLUMNS


class PrepareError(ValueError):
    """The output folder does not match this run (other settings, other inputs) or the settings are invalid."""


@dataclass
class PrepareOptions:
    resolution: int
    fields: list[str] = field(default_factory=lambda: ["alt"])
    shard_size: int = 1000
    upscale_small: bool = False
    batch_size: int = 16
    part: int = 0  # this process takes the shards with index % parts == part
    parts: int = 1
    workers: int = 0  # threads that decode and crop images (0: in the calling thread)
    progress: bool = True
    stop_after: int | None = None  # write at most this many shards, then return as if killed (tests)

    def __post_init__(self) -> None:
        for flag, value, least in (
            ("--shard-size", self.shard_size, 1),
            ("--batch-size", self.batch_size, 1),
            ("--workers", self.workers, 0),
        ):
            if value < least:
                raise PrepareError(f"{flag} must be at least {least}, got {value}")
        if not 0 <= self.part < self.parts:
            raise PrepareError(f"shard part must be in [0, {self.parts}), got {self.part}")
        if not self.fields or len(set(self.fields)) != len(self.fields):
            raise PrepareError(f"caption fields must be distinct and at least one, got {self.fields}")

    @cached_property
    def table(self) -> dict[str, tuple[int, int]]:
        return bucket_table(self.resolution)


def process_part(part: int = 0, parts: int = 1, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(part, parts) of this process: `--shard part/parts`, subdivided by RANK/WORLD_SIZE under torchrun."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise PrepareError(f"bad RANK/WORLD_SIZE: {rank}/{world}")
    return part * world + rank, parts * world


def shard_count(inputs: Inputs, options: PrepareOptions) -> int:
    return -(-len(inputs.items) // options.shard_size)


def shard_items(inputs: Inputs, options: PrepareOptions, index: int) -> list[Item]:
    return inputs.items[index * options.shard_size : (index + 1) * options.shard_size]


def my_shards(inputs: Inputs, options: PrepareOptions) -> list[int]:
    return [i for i in range(shard_count(inputs, options)) if i % options.parts == options.part]


def check_fields_present(inputs: Inputs, fields: list[str]) -> None:
    """PrepareError when no input holds a field --fields names (`--fields dnese`): found before, only once
    the models had loaded and every input had been skipped for it, one line each. The inputs are read
    until each field has been seen, so a field every input holds costs one read; a misspelt one, all."""
    missing = set(fields)
    found: set[str] = set()
    unread: list[str] = []  # caption files that cannot be read: prepare reports each; named here if no field is
    for item in inputs.items:
        row, problems = item.readable_fields()
        unread += [problem.message for problem in problems]
        held = {key for key, value in row.items() if has_text(value) and key not in IMAGE_COLUMNS}
        found |= held
        missing -= held
        if not missing:
            return
    if inputs.items and unread and not found:  # other field names would not help: the files are unreadable
        raise PrepareError(
            f"--fields {','.join(fields)}: no caption could be read ({len(unread)} caption file(s) could not be "
            f"read, e.g. {unread[0]}): save them as UTF-8 text, or JSON objects of caption fields"
        )
    if inputs.items:
        absent = [name for name in fields if name in missing]
        also = f"; {len(unread)} caption file(s) could not be read, e.g. {unread[0]}" if unread else ""
        raise PrepareError(
            f"--fields {','.join(fields)}: no input has a caption field {', '.join(map(repr, absent))} (their "
            f"fields: {', '.join(sorted(found)) or 'none'}{also}); name fields they hold"
        )
