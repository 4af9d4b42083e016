"""What a shard's captions and labels were made from, as one hash: a rerun of `pixart prepare` redoes the
shards whose inputs' captions or labels were edited since (their images are not re-read for it)."""

from __future__ import annotations

import hashlib
import json

from pixart.data.items import Item

REPORT_KEY = "captions_fingerprint"  # where a shard's report keeps it


def captions_fingerprint(items: list[Item], fields: list[str] | None = None) -> str:
    """A hash of each item's name, its caption `fields` and label as they are now (a manifest row's, its
    caption files'; every field it has where `fields` is None, as shards before the twentieth session were
    hashed), and of which caption files cannot be read. Caption files are small: reading them all on a rerun
    costs little next to encoding one shard."""
    kept = None if fields is None else {*fields, "label"}  # what prepare stores: an edit elsewhere changes nothing
    digest = hashlib.sha256()
    for item in items:
        row, problems = item.readable_fields()
        if kept is not None:
            row = {name: value for name, value in row.items() if name in kept}
        record = [item.name, row, sorted(problem.reason for problem in problems)]
        # ASCII escapes: names and captions that are not valid UTF-8 hold lone surrogates
        digest.update(json.dumps(record, sort_keys=True, default=repr).encode("ascii") + b"\n")
    return digest.hexdigest()
