"""What a run checks before it trains: that a resume continues the same run (config, process count,
data), that the run folder and the file system hold what the config needs, and which buckets never train.
Each refusal is a TrainingError whose message says what to do."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import torch

from pixart import config as config_io
from pixart.data.records import DamagedData
from pixart.diffusion.schedulers import check_steps, default_sampler
from pixart.files import read_json, write_json
from pixart.outputs import is_browser_metadata
from pixart.train import checkpoint as ckpt
from pixart.train.config import TrainConfig
from pixart.train.data import check_built_data_folder, check_given_data
from pixart.train.distributed import World, all_reduce_max
from pixart.train.errors import TrainingError
from pixart.train.exclusive import LOCK_FILE
from pixart.train.init import is_run_config, resolve_init_path
from pixart.weights.formats import FINAL, FINAL_EMA

# Settings that may change between a run and its resumption; anything else must match config.json.
# Neither what the weights become nor where the data stands depends on these.
RESUMABLE_CHANGES = {
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "data.num_workers",
    "data.loader_timeout",
    "data.caption_padding",  # masked padding: the same losses to float rounding (not bit for bit)
    "previews",
    "sample_every",
    "sample_prompts",
    "sample_steps",
    "sample_cfg",
    "max_nonfinite_steps",
    "collective_timeout",
    "gradient_checkpointing",  # recomputes the same activations: a run out of memory resumes with it on
    "init_from",  # read when a run starts, never on a resume
    "init_new_keys",
}
DATA_FILE = "data.json"  # {"samples": N, "root": ABS}: the dataset size the checkpoints index into, and where
WORLD_FILE = "world.json"  # {"world_size": N}: the process count the run's checkpoints were written by


def check_run_config(config: TrainConfig, run_dir: Path, world_size: int = 1) -> TrainConfig | None:
    """Refuse to resume a run under another config or process count; a run that never checkpointed has
    nothing to resume. The process count matters: data.batch_size is per rank, so the global batch (and
    with auto_lr the learning rate) and the checkpoint's place in the data depend on it. Returns the config
    the run was written under (None for a run to start)."""
    saved = run_dir / "config.json"
    checkpoints = ckpt.list_checkpoints(run_dir)
    if not checkpoints:
        return None
    trained_by = trained_world_size(run_dir, checkpoints[-1][1])
    if trained_by is not None and trained_by != world_size:
        raise TrainingError(
            f"{run_dir} was trained by {trained_by} process(es), and this is {world_size}: resume it with "
            f"{trained_by} (torchrun --nproc_per_node), or use a new --run-dir"
        )
    try:
        # Without config.json (a copy of checkpoints/ alone) the newest checkpoint's own copy: else a resume
        # under another config went unchecked, to a size-mismatch traceback or a silently different run.
        source = saved if saved.is_file() else checkpoints[-1][1]
        written = json.loads(saved.read_text()) if saved.is_file() else checkpoint_config(run_dir, source)
        previous = config_io.from_dict(TrainConfig, written)
    except ValueError as error:  # a hand edit, or a field of another version (ConfigError and JSON's errors)
        raise TrainingError(
            f"{source} holds no config this version can read ({error}): fix it, or use a new --run-dir"
        ) from None
    # A relative data.root was read from the folder the run started in, which data.json recorded: its absolute
    # path given now is the same data (and the same relative path from elsewhere is other data: refused with it).
    earlier = previous.data.root
    if earlier and not Path(earlier).is_absolute() and (recorded := recorded_data_root(run_dir)) is not None:
        earlier = recorded
    if earlier == config.data.root or same_folder(earlier, config.data.root):  # 'features/', its absolute path
        previous = dataclasses.replace(previous, data=dataclasses.replace(previous.data, root=config.data.root))
    changes = [c for c in config_io.diff(previous, config) if c.split(":")[0] not in RESUMABLE_CHANGES]
    if changes:
        raise TrainingError(
            f"{run_dir} holds a run with another config; use a new --run-dir or the same "
            f"settings. Differences: {'; '.join(changes)}"
        )
    return previous


def same_folder(a: str, b: str) -> bool:
    """Two spellings of one data.root (a trailing slash, relative or absolute, a link): a resume was refused
    for "data.root: '/data/x' -> '/data/x/'" (review)."""
    return bool(a and b) and a != b and Path(a).resolve() == Path(b).resolve()


def checkpoint_entries(run_dir: Path, path: Path) -> dict:
    """A checkpoint's training state, its tensors mapped, not read (a sharded one's small entries alone)."""
    from pixart.weights.pth import load_tensors_mapped
    from pixart.weights.sharded import read_sharded

    state: object
    try:
        if path.suffix == ".dcp":  # its small entries alone, gathered in this process (DCP's errors: WeightsError)
            state = read_sharded(path, skip=("model", "ema", "optimizer"))
        else:
            state = load_tensors_mapped(path)
    except Exception as error:  # torch's assorted errors on a cut file
        raise TrainingError(damaged_checkpoint(run_dir, path, error)) from None
    return state if isinstance(state, dict) else {}


def trained_world_size(run_dir: Path, newest: Path) -> int | None:
    """The process count the run's checkpoints were written by: world.json's, else (a copy of checkpoints/ alone)
    the newest checkpoint's own entry, else its log window's pairs, one a rank (checkpoints before the entry;
    a single pair says nothing). None for runs from before any of these: not checked. A run copied without
    world.json resumed under another count to a traceback (2 -> 1) or to a run of twice the batch (1 -> 2)."""
    world_file = run_dir / WORLD_FILE
    if world_file.is_file():
        return int(json.loads(world_file.read_text())["world_size"])
    state = checkpoint_entries(run_dir, newest)
    if isinstance(state.get("world_size"), int):
        return state["world_size"]
    window = state.get("log_window")
    return len(window) // 2 if isinstance(window, list | tuple) and len(window) > 2 else None


def recorded_data(run_dir: Path) -> dict:
    """data.json's {"samples": N, "root": ABS}; {} for a run without one (or with one that cannot be read)."""
    return read_json(run_dir / DATA_FILE) or {}


def recorded_data_root(run_dir: Path) -> str | None:
    """The absolute data root data.json recorded, while a dataset is still there (a project moved with its
    data leaves none: its relative data.root then names the data in the new place)."""
    from pixart.data.shards import DATASET_FILE

    root = recorded_data(run_dir).get("root")
    return root if isinstance(root, str) and (Path(root) / DATASET_FILE).is_file() else None


def checkpoint_config(run_dir: Path, path: Path) -> dict:
    """The training config a checkpoint was written under (its "config" entry), read without its tensors."""
    state = checkpoint_entries(run_dir, path)
    config = state.get("config")
    if not isinstance(config, dict):
        raise TrainingError(
            f"{run_dir / 'config.json'} is missing and {path} holds no training config to check this resume "
            "against: copy config.json back from where the run folder came from, or use a new --run-dir"
        )
    return config


def damaged_checkpoint(run_dir: Path, path: Path, error: BaseException) -> str:
    """What to say of a checkpoint that cannot be read: which, why, and the one to resume from instead."""
    from pixart.weights.sharded import failure_cause

    cause = failure_cause(error)
    older = [p for _, p in ckpt.list_checkpoints(run_dir) if p != path]
    instead = f"to resume from {older[-1].name}" if older else "to start the run over"
    said = str(cause)
    if said.startswith("Weights only load failed"):  # torch's advice to load it unsafely fits no damaged file
        detail = said.partition("WeightsUnpickler error:")[2].strip().splitlines()
        said = "not a checkpoint torch can read safely" + (f" ({detail[0].strip()})" if detail else "")
    why = f"{type(cause).__name__}: {said.splitlines()[0]}" if said.strip() else type(cause).__name__
    return (
        f"{path} cannot be read ({why}): it is damaged, a copy cut short perhaps; "
        f"move it out of {path.parent} {instead}, or use a new --run-dir"
    )


def check_one_checkpoint_view(run_dir: Path, world: World) -> None:
    """Refuse to go on when the ranks see different checkpoints in the run folder: a folder local to each node
    (not shared) resumed rank 0 from its checkpoint and the others from scratch, which trained on, reported
    success and ended in a gloo traceback. Every rank takes part and raises alike."""
    saved = ckpt.list_checkpoints(run_dir)
    step = float(saved[-1][0]) if saved else -1.0
    seen = all_reduce_max(torch.tensor([step, -step], dtype=torch.float64, device=world.device), world).tolist()
    newest, oldest = int(seen[0]), -int(seen[1])
    if newest != oldest:
        oldest_text = f"step {oldest}" if oldest >= 0 else "none"
        raise TrainingError(
            f"the processes see different checkpoints in {run_dir} (newest: step {newest} on one, {oldest_text} on "
            "another): under torchrun the run folder must be one folder that every node shares (a network file "
            "system); give such a --run-dir"
        )


def check_or_record_data(
    run_dir: Path, samples: int, *, resume_from: Path | None, record: bool, root: Path, relative: bool
) -> None:
    """Record how many samples the run trains on, and where (`root`, made absolute: a relative data.root is
    found again from another folder, see modelfolder.run_spec), or refuse to resume on another count: a
    checkpoint's place in the data (epoch, position) would then point at other samples. Without data.json (a
    copy of checkpoints/ alone) the checkpoint's own count is checked, and the record written again.

    `relative`: the root is a relative data.root, read from the current folder: resumed from another folder,
    it named other data of the same size, on which the run went on without a word; refused while the data it
    started on is still where data.json says (a project moved with its data resumes, and is recorded anew).
    An absolute data.root is compared as written, with the config (a link to other data is the user's call),
    and data built in the run folder moves with it. (Changing data.root is refused with the config.)"""
    recorded = recorded_data(run_dir)
    written = {"samples": samples, "root": str(root.resolve())}
    if resume_from is None:
        if record:
            write_json(run_dir / DATA_FILE, written, indent=None)
        return
    if not recorded:  # runs from before data.json, and copies without it: the checkpoint's count, if it has one
        recorded = {"samples": checkpoint_entries(run_dir, resume_from).get("data_samples")}
    trained_on = recorded.get("samples")
    if trained_on is not None and trained_on != samples:
        raise TrainingError(
            f"{run_dir} was trained on {trained_on} samples and its data now holds {samples}: resume it on "
            "the same data, or train the changed data in a new --run-dir"
        )
    was = recorded_data_root(run_dir)
    if relative and was is not None and Path(was) != root.resolve():
        raise TrainingError(
            f"{run_dir} was trained on the data at {was}, and data.root={root} is {root.resolve()} from this folder "
            f"(a relative data.root is read from the current folder): run the command from the folder the run "
            f"started in, or give --set data.root={was}"
        )
    if record and recorded_data(run_dir).get("root") != written["root"]:  # none, or the data moved with it
        write_json(run_dir / DATA_FILE, written, indent=None)


def check_preview_steps(config: TrainConfig) -> None:
    """Refuse a preview step count the preview sampler cannot take before any work: it would stop the run
    at its first preview (dpm-solver++ at 1000 steps). Here, not in TrainConfig: it needs diffusers, and
    the config's answer must not depend on the order of --set options."""
    if not config.previews:
        return
    try:
        check_steps(default_sampler(config.diffusion.objective), config.sample_steps)
    except ValueError as error:
        raise TrainingError(f"sample_steps={config.sample_steps}: {error}") from None


def check_start(config: TrainConfig, run_dir: Path) -> list[str]:
    """What the run folder, the data and the file system must hold for this config, checked before any work;
    the warnings to print (check_given_data's)."""
    if run_dir.exists() and not run_dir.is_dir():  # mkdir said only "File exists"
        raise TrainingError(f"--run-dir {run_dir} is a file, not a folder: name a folder (new or a run's)")
    check_folder_is_a_run(run_dir)
    saved = ckpt.list_checkpoints(run_dir)
    if saved and saved[-1][0] > config.steps:  # training cannot be undone: the run is past the goal
        raise TrainingError(
            f"{run_dir} already trained to step {saved[-1][0]}, past steps={config.steps}; give --steps "
            f"{saved[-1][0]} or more to continue it, or use a new --run-dir"
        )
    if config.init_from and not saved:  # a resume does not read it
        try:
            resolve_init_path(config.init_from)
        except FileNotFoundError as error:
            raise TrainingError(str(error)) from None
    try:
        check_built_data_folder(config, run_dir)
    except (FileExistsError, DamagedData) as error:
        raise TrainingError(str(error)) from None
    return check_given_data(config)


# What a training run writes in its folder (and the hidden temporaries of its atomic writes)
RUN_ENTRIES = frozenset(
    {LOCK_FILE, "config.json", WORLD_FILE, DATA_FILE, "data", "checkpoints", FINAL, FINAL_EMA}
    | {"metrics.jsonl", "loss.png", "samples", "tensorboard"}
)


def check_folder_is_a_run(run_dir: Path) -> None:
    """A --run-dir is new, empty, or a run's: training wrote its config.json over a model folder's (a diffusers
    transformer's, which then no longer loaded) and its checkpoints among someone's files."""
    if not run_dir.is_dir():
        return
    config = run_dir / "config.json"
    if config.is_file():
        if read_json(config) is not None and not is_run_config(config):
            raise TrainingError(
                f"--run-dir {run_dir} holds a config.json that is not a training run's (a model's?), which a run "
                "would replace: name a new or empty folder, or a run's folder to continue it"
            )
        return  # a run's (a damaged one is told apart when the run is resumed)
    strangers = sorted(
        entry.name
        for entry in run_dir.iterdir()
        if entry.name not in RUN_ENTRIES and not is_browser_metadata(entry) and not is_run_temporary(entry.name)
    )
    if strangers:
        shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
        raise TrainingError(
            f"--run-dir {run_dir} holds files no training run writes ({shown}), among which a run would write "
            "its own: name a new or empty folder, or a run's folder to continue it"
        )


def is_run_temporary(name: str) -> bool:
    """An atomic write's hidden temporary of a run file, left by a kill (pixart.files.temporary_path)."""
    return name.endswith(".tmp") and any(name.startswith(f".{entry}.") for entry in RUN_ENTRIES)


SLOW_SAVE_S = 20.0  # a save this long leaves a stop little of the 30 s torchrun and SLURM give it


def warn_of_slow_save(seconds: float, world: World) -> None:
    """Say that a checkpoint took long enough that a stop's own checkpoint may be killed before it is
    written: torchrun sends SIGKILL 30 s after forwarding SIGTERM, SLURM after KillWait (30 s by default)."""
    if world.is_main:
        print(
            f"[pixart train] warning: a checkpoint took {seconds:.0f} s to save; a launcher that stops the job kills "
            "it soon after the signal (torchrun: 30 s; SLURM: KillWait), which may end a stop before its checkpoint: "
            "under torchrun launch with --shutdown-timeout 600, under SLURM set --signal and KillWait to match",
            flush=True,
        )


def warn_of_untrained_buckets(buckets: list[str], step_batch: int) -> None:
    """Every rank draws a step's batch from one bucket and a partial batch is dropped (as officially), so a
    bucket with fewer samples than a step's batch across ranks never trains: said, not done silently."""
    small = {key: n for key, n in sorted(Counter(buckets).items()) if n < step_batch}
    if small:
        listed = ", ".join(f"{key} ({n})" for key, n in small.items())
        print(
            f"[pixart train] warning: {sum(small.values())} of {len(buckets)} samples are never trained: the "
            f"bucket(s) {listed} hold fewer than a step's batch ({step_batch} across ranks); lower "
            "data.batch_size, or add images of those shapes",
            flush=True,
        )


FLOW_ONLY = ("diffusion.logit_mean", "diffusion.logit_std", "diffusion.flow_shift", "diffusion.shift_base_tokens")


PREVIEW_KEYS = ("sample_every", "sample_prompts", "sample_steps", "sample_cfg")  # what previews=false leaves unread


def unread_overrides(config: TrainConfig, overrides: list[str]) -> list[str]:
    """Warnings for the `--set key=value` this run accepts yet never reads: caption_dropout or model.* in a
    class stage (its labels drop at class_dropout; it trains dit.*), class_dropout or dit.* in a text-to-image
    one, the flow objective's noise-level settings under iddpm, the previews' settings with previews=false. They
    were shown back by --dry-run and then changed nothing."""
    keys = {override.partition("=")[0].strip() for override in overrides}
    unread = {}
    if config.stage == "class":
        unread["data.caption_dropout"] = "a class stage drops labels at data.class_dropout"
    else:
        unread["data.class_dropout"] = "a text-to-image stage drops captions at data.caption_dropout"
    if config.diffusion.objective != "flow":
        unread.update(dict.fromkeys(FLOW_ONLY, "it shapes the flow objective's noise levels; this run's is iddpm"))
    if not config.previews:
        unread.update(dict.fromkeys(PREVIEW_KEYS, "previews=false: this run draws no preview grids"))
    warnings = [f"--set {key} is not read by this run: {why}" for key, why in unread.items() if key in keys]
    if config.stage != "class":
        warnings += [
            f"--set {key} is not read by this run: dit.* is the class stage's model"
            for key in sorted(keys)
            if key.startswith("dit.")
        ]
    else:  # model.max_length is read: the caption length of the shapes data a class stage may build
        warnings += [
            f"--set {key} is not read by this run: model.* is the text-to-image stages' model; a class stage "
            "trains dit.*"
            for key in sorted(keys)
            if key.startswith("model.") and key != "model.max_length"
        ]
    return warnings


def warn_of_long_warmup(config: TrainConfig) -> None:
    """A warm-up longer than the run (the paper's 1000 steps on a short one) keeps the learning rate below
    optim.lr to the end: said, since such a run learns less than its config reads."""
    warmup, steps = config.optim.warmup_steps, config.steps
    if steps > 0 and warmup > steps:  # the rate at step s (from 0) is lr * (s + 1) / warmup
        print(
            f"[pixart train] warning: optim.warmup_steps={warmup} is more than the run's {steps} steps, so the "
            f"learning rate never goes past {steps / warmup:.0%} of optim.lr; lower optim.warmup_steps "
            f"(to {max(1, steps // 10)}, say)",
            flush=True,
        )
