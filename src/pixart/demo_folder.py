"""The demo's output folder: which kind of run it holds, the wall-clock of every call, and whether its last
report still stands."""

from __future__ import annotations

import json
from pathlib import Path

from pixart.files import read_json, write_json

DEMO_KIND_FILE = "demo-kind.json"  # {"kind": "quick" | "full", "seconds": every call's}: check_or_record_kind

# What a demo run writes in its folder: another folder holding anything else is not one.
# What the evaluation writes, for the weights it evaluated: a call that replaces them removes these first (an
# evaluation killed halfway left the last call's report.md and samples.png beside the new weights)
REPORT_FILES = ("report.json", "report.md", "samples.png", "loss.png")
DEMO_ENTRIES = frozenset({".cache", "data", "model", "stage1", "stage2", "stage3", *REPORT_FILES})


class DemoError(ValueError):
    """The output folder cannot take this demo run; the message says which --out to choose instead."""


class DemoInterrupted(DemoError):
    """A stage stopped on a signal (`signal`: its name, SIGINT or SIGTERM), after saving its checkpoint: the
    same command continues it."""

    def __init__(self, message: str, signal: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal = signal


def check_or_record_kind(out: Path, quick: bool) -> None:
    """A folder holds one kind of demo run, --quick or full: they differ in data, batch size and codec.

    Rerunning the same kind continues it (finished stages are kept, unfinished ones resume; --minutes may
    change, as it changes only step counts). The other kind is refused before any work, rather than
    failing at stage 1 on a checkpoint of another batch size, or training on the other kind's data.
    """
    path = out / DEMO_KIND_FILE
    kind = "quick" if quick else "full"
    if path.is_file():
        recorded = json.loads(path.read_text()).get("kind")
        if recorded != kind:
            flag = "--quick " if recorded == "quick" else ""
            raise DemoError(
                f"{out} holds a `pixart demo {flag}--out {out}` run ({recorded}); this one is {kind}: choose "
                f"another --out, or delete {out}"
            )
        return
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    others = [name for name in entries if name not in DEMO_ENTRIES]
    if others:  # the user's own folder: the demo would write its data, models and reports among them
        raise DemoError(f"{out} holds files that are not a demo run's (e.g. {others[0]}); choose an empty or new --out")
    if entries and not is_demo_stage(out / "stage1"):  # named like a demo's entries, yet not its run
        raise DemoError(f"{out} holds {entries[0]} but no demo run (no stage 1 of one); choose an empty or new --out")
    # A folder from before the kind was recorded is taken as this kind; were it the other, stage 1 refuses
    # its checkpoint (another batch size), and the command says which --out to choose.
    write_json(path, {"kind": kind}, indent=None)


def check_not_moved(out: Path) -> None:
    """Refuse a demo folder moved or copied from elsewhere before any work: its stages record their data and
    the stage they start from by absolute path, and a resume there was refused by the trainer with advice
    about --run-dir, an option the demo does not have."""
    for stage in ("stage1", "stage2", "stage3"):
        recorded = read_json(out / stage / "config.json") or {}
        data = recorded.get("data")
        root = data.get("root") if isinstance(data, dict) else None
        if not isinstance(root, str) or not root:
            continue
        was = Path(root).parent.parent  # OUT/data/base or OUT/data/buckets
        if was != out:
            raise DemoError(
                f"{out} was moved or copied from {was}: its stages name their data and each other there, so it "
                f"continues only in that place (move it back), or choose a new --out"
            )


def add_call_seconds(out: Path, seconds: float) -> tuple[float, int]:
    """Count a call's wall-clock in the kind file: (seconds over every call so far, number of calls). A
    rerun or a resume after Ctrl-C reported only its own minutes as the demo's."""
    path = out / DEMO_KIND_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    total = round(float(recorded.get("seconds", 0.0)) + seconds, 1)
    calls = int(recorded.get("calls", 0)) + 1
    write_json(path, {**recorded, "seconds": total, "calls": calls}, indent=None)
    return total, calls


def is_demo_stage(run_dir: Path) -> bool:
    """Whether `run_dir` holds a demo stage's run (its config names a demo recipe)."""
    try:
        return str(json.loads((run_dir / "config.json").read_text()).get("recipe", "")).startswith("demo-")
    except (OSError, ValueError, AttributeError):
        return False


REPORTED = ("samples.png", "loss.png", "report.md", "model/model.json", "model/transformer.safetensors")


def standing_report(out: Path, evaluation: dict[str, int], summaries: dict[str, dict]) -> dict | None:
    """The last report, where this call trained nothing and it still describes the folder: a rerun of a finished
    demo sampled and scored the same weights again (27-46 s). None when it must be made anew: a stage trained,
    the evaluation's size changed, a file it wrote is gone, or it cannot be read."""
    if any(summary.get("trained_steps", 1) for summary in summaries.values()):
        return None
    if not all((out / name).is_file() for name in REPORTED):
        return None
    try:
        report = json.loads((out / "report.json").read_text())
        evaluated = {key: report["plan"][key] for key in evaluation}
        steps = {name: report["stages"][name]["steps"] for name in summaries}
    except (OSError, ValueError, KeyError, TypeError):  # none, unreadable, or an older version's
        return None
    if evaluated != evaluation:
        return None
    if steps != {name: summary["steps"] for name, summary in summaries.items()}:  # a stage of another run
        return None
    return report
