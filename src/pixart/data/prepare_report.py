"""A prepared dataset's report: each shard's reports merged with the inputs left out while listing
(`report.json`), and the same for people (`format_summary`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pixart.data.images import TOO_SMALL
from pixart.data.items import Inputs, printable
from pixart.data.prepare_options import PrepareOptions, shard_count
from pixart.data.shards import REPORT_FILE, report_path, shard_done
from pixart.files import read_json, write_json

# What can be done about a skip reason, where something can: reported beside its count. upscale_small is
# in dataset.json, so a rerun with it into the same --out is refused.
SKIP_HINTS = {
    TOO_SMALL: "rerun pixart prepare with --upscale-small, into another --out, to enlarge them instead",
}


def merge_reports(out: str | Path, inputs: Inputs, options: PrepareOptions) -> dict:
    """Merge every finished shard's report and the listing problems into out/report.json, and return it.

    Several `--shard` processes merge as each ends: one that read the reports before another's last shard
    was done could write its older, incomplete merge over the other's complete one. So the merge is
    written, then redone while the set of finished shards has changed meanwhile: the last writer always
    read every shard finished before its write."""
    out = Path(out)
    total = shard_count(inputs, options)

    def finished() -> set[int]:
        return {index for index in range(total) if shard_done(out, index)}

    while True:
        done = finished()
        merged = _merged_reports(out, inputs, options, total, done)
        write_json(out / REPORT_FILE, merged, indent=1)
        if finished() == done:
            return merged


def _merged_reports(out: Path, inputs: Inputs, options: PrepareOptions, total: int, done: set[int]) -> dict:
    samples, shards_done = 0, 0
    buckets: Counter[str] = Counter()
    truncated: Counter[str] = Counter()
    skipped = inputs.problem_entries()
    for index in sorted(done):
        report = read_json(report_path(out, index))
        if report is None:
            continue
        shards_done += 1
        samples += report["samples"]
        buckets.update(report["buckets"])
        truncated.update(report.get("truncated", {}))
        skipped.extend(report["skipped"])
    reasons = dict(sorted(Counter(s["reason"] for s in skipped).items()))
    return {
        "samples": samples,
        "buckets": dict(sorted(buckets.items(), key=lambda kv: float(kv[0]))),
        "skipped": sorted(skipped, key=lambda s: (s["path"], s["reason"])),
        "skip_reasons": reasons,
        "skip_hints": {reason: SKIP_HINTS[reason] for reason in reasons if reason in SKIP_HINTS},
        "truncated_captions": {name: truncated.get(name, 0) for name in options.fields},
        "inputs": len(inputs.items) + len(inputs.problems),
        "shards": {"done": shards_done, "total": total},
        "complete": shards_done == total,
    }


def format_summary(report: dict, out: Path | str) -> str:
    """The report for people: samples, samples per bucket, every skipped input with its reason."""
    shards = report["shards"]
    state = "complete" if report["complete"] else f"{shards['done']} of {shards['total']} shards done so far"
    lines = [f"{out}: {report['samples']} samples from {report['inputs']} inputs ({state})"]
    if report["buckets"]:
        lines.append("  bucket   samples")
        lines += [f"  {key:<8} {count:>7}" for key, count in report["buckets"].items()]
    for name, count in report["truncated_captions"].items():
        if count:
            lines.append(f"  {count} {name!r} captions were longer than the text encoder's max length (cut)")
    lines.append(f"  skipped {len(report['skipped'])} inputs" + (":" if report["skipped"] else ""))
    hints = report.get("skip_hints", {})
    for reason, count in report["skip_reasons"].items():
        lines.append(f"    {reason}: {count}" + (f" ({hints[reason]})" if reason in hints else ""))
    lines += [f"  {printable(s['path'])}: {s['reason']} ({printable(s['message'])})" for s in report["skipped"]]
    return "\n".join(lines)
