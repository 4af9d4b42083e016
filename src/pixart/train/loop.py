"""The training loop: one readable function from config to a finished run folder.

Resuming is boring: rerun the same command and it continues from the newest checkpoint, bit for bit
on CPU. Every random draw of step s (timesteps, noise, latent samples, caption dropout) comes from a
generator seeded by (seed, s) and is drawn for the whole global batch, each rank taking its slice, so
a run does not depend on how it was interrupted nor on how many processes share it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Generator
from contextlib import closing, nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pixart import config as config_io
from pixart.data.dataset import FeatureDataset, collate
from pixart.data.epochs import EpochStream, EpochTagged
from pixart.data.records import DamagedData
from pixart.data.sampler import BucketBatchSampler
from pixart.devices import device_problem
from pixart.files import write_json
from pixart.model.dit import DiT
from pixart.model.regional import compile_blocks
from pixart.quiet import silenced_library_progress_bars
from pixart.train import checkpoint as ckpt
from pixart.train.checks import (
    SLOW_SAVE_S,
    WORLD_FILE,
    check_one_checkpoint_view,
    check_or_record_data,
    check_preview_steps,
    check_run_config,
    check_start,
    damaged_checkpoint,
    warn_of_long_warmup,
    warn_of_slow_save,
    warn_of_untrained_buckets,
)
from pixart.train.config import TrainConfig, effective_lr
from pixart.train.data import LatentScaling, check_class_labels, prepare_data
from pixart.train.distributed import (
    World,
    all_gather_flat,
    all_reduce_max,
    all_reduce_mean,
    gradient_sync,
    init_distributed,
    let_go_of_the_group,
    unwrap,
    wrap_model,
)
from pixart.train.errors import TrainingError
from pixart.train.exclusive import exclusive_run, forget_run_lock
from pixart.train.finish import finish_run
from pixart.train.flags import DeferredFlags, StepRecord, optimizer_step, skip_flag, step_flags
from pixart.train.init import build_model, initialize_from
from pixart.train.metrics import MetricsWriter, peak_flops
from pixart.train.previews import Previewer, preview_weights
from pixart.train.signals import StopFlag, leave_stop_signals_to_the_trainer
from pixart.train.step import build_optimizer, compute_loss, ema_decay, mfu, update_ema

FAULT_ENV = "PIXART_FAULT"  # testing hook: "exit:RANK:STEP" makes that rank die at that step, "stall:..." hang


def train(
    config: TrainConfig, run_dir: str | Path, *, device: str | torch.device | None = None, progress: bool = True
) -> dict:
    """Train (or resume) the run in `run_dir`; returns a summary dict.

    Under torchrun, the process group this call creates is destroyed when it returns (finished or
    interrupted), not when it raises; a group that existed before the call is left to its owner.
    """
    creates_group = not torch.distributed.is_initialized()
    run_dir = Path(run_dir)
    started = time.time()
    if (problem := device_problem(device)) is not None:
        raise TrainingError(f"device {problem}")
    device = None if device is None else str(device)
    check_preview_steps(config)  # the config alone: every process refuses it alike
    try:
        world = init_distributed(device, timeout_minutes=config.collective_timeout)
    except ValueError as error:  # a device index under torchrun
        raise TrainingError(str(error)) from None
    warnings = start_or_refuse_together(config, run_dir, world)
    if config.parallel == "fsdp" and not world.distributed:  # else it trained whole without a word (review)
        warnings.append(
            "parallel=fsdp in one process: nothing to shard across, so the model trains whole, as it would under "
            "ddp; FSDP shards over torchrun's processes (torchrun --nproc_per_node N)"
        )
    if world.is_main:
        for warning in warnings:
            print(f"[pixart train] warning: {warning}", flush=True)
    quiet = nullcontext() if progress else silenced_library_progress_bars()  # the text encoders' "Loading weights"
    with exclusive_run(run_dir, world), quiet:  # one job at a time in a run folder
        summary = train_in_world(config, run_dir, world, progress, started)
    if torch.distributed.is_initialized():
        # on a normal return only, as torchtitan does: tearing down while another rank is in a collective hangs
        let_go_of_the_group(world, destroy=creates_group)
    return summary


def start_or_refuse_together(config: TrainConfig, run_dir: Path, world: World) -> list[str]:
    """check_start's warnings, with the run folder made (main rank), once every process has passed both.

    What the file system holds may differ between nodes (a data.root mounted on one only, a run folder
    another cannot write): a node that refused before joining the process group left the others waiting in
    it, silent, for its 30-minute timeout, and one that refused after left them a gloo traceback ("Connection
    closed by peer"). Every process checks, then learns whether any refused, and those that did not say so.
    """
    refusal: Exception | None = None
    warnings: list[str] = []
    try:
        warnings = check_start(config, run_dir)
        if world.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
    except Exception as error:  # noqa: BLE001 - raised again below, once the others know
        refusal = error
    refused_anywhere = torch.tensor(float(refusal is not None), device=world.device)
    if world.distributed and all_reduce_max(refused_anywhere, world).item() and refusal is None:
        raise TrainingError(
            "another process of this job refused to start, and printed why on its node; fix that and rerun"
        )
    if refusal is not None:
        raise refusal
    return warnings


def worker_died(error: RuntimeError) -> bool:
    """Whether the data loader says one of its workers ended under it (a signal, an exit): torch's 28-line
    traceback said nothing of what to do (review)."""
    text = str(error)
    return "DataLoader worker" in text and ("killed by signal" in text or "exited unexpectedly" in text)


def init_worker(worker_id: int) -> None:
    """A data loader worker, forked from the trainer: it leaves stop signals and the run folder's lock to it."""
    leave_stop_signals_to_the_trainer(worker_id)
    forget_run_lock()


def train_in_world(config: TrainConfig, run_dir: Path, world: World, progress: bool, started: float) -> dict:
    """train()'s work in a run folder this job holds: the summary."""
    # Every rank (it only reads): checked on the main rank alone, the others learned of a refusal from gloo's
    # "Connection closed by peer" traceback. It checks only runs with checkpoints, which no rank writes yet.
    previous = check_run_config(config, run_dir, world.world_size)
    lineage = ("init_from", "init_new_keys")
    if previous is not None and any(getattr(previous, key) != getattr(config, key) for key in lineage):
        # A resume never reads init_from: written as given, config.json named weights the run never started from.
        if world.is_main:
            print(
                f"[pixart train] note: init_from is read when a run starts, and this one started from "
                f"{previous.init_from or 'scratch'}: kept as the run's own (init_from={config.init_from or 'none'} "
                "is not read)"
            )
        config = dataclasses.replace(config, init_from=previous.init_from, init_new_keys=previous.init_new_keys)
    if world.is_main:  # a finished run reopened saves nothing more, so would keep them for good
        ckpt.remove_partial_checkpoints(run_dir)
    check_one_checkpoint_view(run_dir, world)  # a folder local to each node resumed rank 0 alone
    resume_from = ckpt.latest_checkpoint(run_dir)
    torch.manual_seed(config.seed)  # the same initial weights on every rank and every rerun
    model = build_model(config)
    init_note = "from scratch (official initialisation)"
    if config.init_from and resume_from is None:  # before the data is built: a model it does not fit is refused
        init_note = initialize_from(model, config)
    data_dir = prepare_data(config, run_dir, world, progress=progress)
    try:
        # stage 1 is class-conditional: any caption field does (none is trained on), the recipe's may be absent
        captions = None if config.stage == "class" else config.data.caption_probs
        dataset = FeatureDataset(data_dir, captions, seed=config.seed)
    except DamagedData as error:  # a file cut short or of another format: its own advice
        raise TrainingError(str(error)) from None
    except ValueError as error:  # caption_probs naming a field this data lacks, say
        raise TrainingError(f"{error}; fix data.caption_probs or data.root") from None
    if config.stage == "class":
        check_class_labels(dataset.labels(), config.dit.num_classes)
    scaling = LatentScaling.from_info(dataset.info)
    cuda = world.device.type == "cuda"
    bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda)

    scaling.check_model(model, dataset.info, dataset.buckets, config.data.batch_size * world.world_size)
    sampler = BucketBatchSampler(
        dataset.buckets, config.data.batch_size, num_replicas=world.world_size, rank=world.rank, seed=config.seed
    )
    if len(sampler) == 0:
        raise TrainingError(
            f"no complete batch: {len(dataset)} samples, batch {config.data.batch_size} x "
            f"{world.world_size} ranks per bucket; lower data.batch_size or add data"
        )
    check_or_record_data(
        run_dir,
        len(dataset),
        resume_from=resume_from,
        record=world.is_main,
        root=data_dir,
        relative=bool(config.data.root) and not Path(config.data.root).is_absolute(),
    )
    if world.is_main:  # once the data is known to train this model: a run refused for it leaves no config behind
        write_json(run_dir / "config.json", config_io.to_dict(config))  # atomically: every resume reads it back
        write_json(run_dir / WORLD_FILE, {"world_size": world.world_size}, indent=None)
    model.gradient_checkpointing = config.gradient_checkpointing
    model.to(world.device)
    wrapped = wrap_model(model, world, config.parallel, bf16)
    inner = unwrap(wrapped)
    if config.compile:
        compile_blocks(inner)
    params = [p for p in inner.parameters() if p.requires_grad]
    ema = {n: p.detach().clone().float() for n, p in inner.named_parameters()}

    global_batch = config.data.batch_size * world.world_size * config.optim.grad_accum
    lr = effective_lr(config.optim, global_batch)
    optimizer = build_optimizer(params, config.optim, lr)
    warmup = max(1, config.optim.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    if world.is_main:
        warn_of_untrained_buckets(dataset.buckets, config.data.batch_size * world.world_size)
        warn_of_long_warmup(config)

    step, epoch, position, skipped, bad_in_a_row = 0, 0, 0, 0, 0
    # The log window in progress (this rank's loss summed over applied steps, and their count) and
    # the training time before this process: kept in checkpoints, so a resumed run logs what an
    # uninterrupted one would have.
    loss_sum = torch.zeros((), device=world.device)
    applied_steps = torch.zeros((), device=world.device)
    seconds_before = 0.0

    sharded = world.distributed and config.parallel == "fsdp"

    def training_state(at_step: int, window: list[float] | None = None) -> dict:
        optimizer_started = bool(optimizer.state)  # asked first: get_state_dict gives an empty one a zero step
        if sharded:  # DCP's view: optimizer state keyed by parameter name, created if still empty
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_state, optimizer_state = get_state_dict(inner, optimizer)
        else:
            model_state, optimizer_state = inner.state_dict(), optimizer.state_dict()
        return {
            "model": model_state,
            "ema": ema,
            "optimizer": optimizer_state,
            "optimizer_started": optimizer_started,
            "scheduler": scheduler.state_dict(),
            "step": at_step,
            "epoch": epoch,
            "position": position,
            "skipped_steps": skipped,
            "nonfinite_in_a_row": bad_in_a_row,
            # [loss summed over applied steps, applied steps] of each rank, one pair after another
            "log_window": window or [0.0, 0.0] * world.world_size,
            "train_seconds": seconds_before + time.time() - started,
            "config": config_io.to_dict(config),
            # what world.json and data.json say, for a copy of checkpoints/ without them (checks)
            "world_size": world.world_size,
            "data_samples": len(dataset),
        }

    if resume_from is not None:
        if (resume_from.suffix == ".dcp") != sharded:
            raise TrainingError(
                f"{resume_from.name} was written with parallel={'fsdp' if not sharded else 'ddp'}; "
                "resume with the same parallel setting"
            )
        from torch.distributed.checkpoint.api import CheckpointException

        template = training_state(0) if sharded else None
        try:
            state = ckpt.load_checkpoint(resume_from, template)
        except (Exception, CheckpointException) as error:  # torch's and DCP's (a BaseException) on a cut file
            raise TrainingError(damaged_checkpoint(run_dir, resume_from, error)) from None
        if sharded:
            from torch.distributed.checkpoint.state_dict import set_state_dict

            set_state_dict(inner, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        else:
            inner.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        if not state.get("optimizer_started", True):
            # Saved before any optimizer step (--steps 0, a stop before step 1): under FSDP, get_state_dict had
            # filled the empty state with a zero step whose count (1) put every later bias correction one off.
            optimizer.state.clear()
        for name, value in state["ema"].items():
            ema[name].copy_(value)
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        skipped = state.get("skipped_steps", 0)
        bad_in_a_row = state.get("nonfinite_in_a_row", 0)
        window = state.get("log_window", [0.0, 0.0])
        # This rank's own pair: restored as it was left, the next row is an uninterrupted run's to the last bit.
        # Checkpoints before held one pair, every rank's mean (a resumed row under torchrun differed at 1e-7).
        own = window[2 * world.rank : 2 * world.rank + 2] if len(window) == 2 * world.world_size else window
        window_loss, window_applied = own
        loss_sum.fill_(window_loss)
        applied_steps.fill_(window_applied)
        seconds_before = state.get("train_seconds", 0.0)
        ckpt.restore_rng(state["rng"])
        init_note = f"resumed from {resume_from.name}"

    resumed_at = step
    # A finished run's last row, off the log grid (step 7 of log_every 4), is dropped when the run is
    # extended: its window went on in the checkpoint (below), and the row at step 8 logs steps 5-8 as an
    # uninterrupted run would. Checkpoints from before that kept no window, and keep their row.
    extended_off_grid = 0 < step < config.steps and step % config.log_every != 0 and float(applied_steps) > 0
    # later steps are logged again
    metrics = MetricsWriter(run_dir, world.is_main, resumed_at=step - 1 if extended_off_grid else step)
    previewer = Previewer.for_run(config, dataset, run_dir, world) if world.is_main and config.previews else None
    peak = peak_flops(world.device)
    if world.is_main:
        print(
            f"[pixart train] {config.recipe}: {config.stage} model, {sum(p.numel() for p in params):,} parameters, "
            f"{len(dataset):,} samples, global batch {global_batch}, lr {lr:.3g}; {world.describe()}; {init_note}"
        )

    saved_step = step if resume_from is not None else None
    said_slow_save = False

    def save(at_step: int) -> None:
        """Checkpoint `at_step` (every rank calls this), unless it is the checkpoint this run resumed from:
        written again, a sharded one would be replaced in place, for nothing."""
        nonlocal saved_step, said_slow_save
        if at_step == saved_step:
            return
        window = all_gather_flat(torch.stack([loss_sum, applied_steps]), world)  # each rank's own, in rank order
        state = training_state(at_step, window)
        began = time.time()
        ckpt.save_checkpoint(run_dir, at_step, state, world, sharded=sharded, keep=config.keep_checkpoints)
        if (seconds := time.time() - began) > SLOW_SAVE_S and not said_slow_save:  # once a run
            warn_of_slow_save(seconds, world)
            said_slow_save = True
        saved_step = at_step

    def batches() -> Generator[dict[str, torch.Tensor], None, None]:
        """The run's batches from (epoch, position) on, through one DataLoader: its workers start once and
        read ahead across epoch boundaries (one loader per epoch stalled the first step of every epoch)."""
        nonlocal epoch, position
        timeout = config.data.loader_timeout if config.data.num_workers else 0  # no worker: nothing to wait on
        loader = DataLoader(
            EpochTagged(dataset),
            batch_sampler=EpochStream(sampler, epoch, position),
            collate_fn=collate,
            num_workers=config.data.num_workers,
            pin_memory=cuda,
            worker_init_fn=init_worker,
            timeout=timeout,
        )
        iterator = iter(loader)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as error:
                if worker_died(error):
                    raise TrainingError(
                        f"a data loader worker died ({str(error).strip().splitlines()[0][:160]}): out of memory, "
                        "perhaps (the kernel's OOM killer); rerun the same command to resume from the last "
                        "checkpoint, with fewer workers (--set data.num_workers=N) if memory is short"
                    ) from None
                if "DataLoader timed out" not in str(error):
                    raise
                # torch's shutdown joins each worker for a while, then sends a SIGTERM it ignores (signals): one
                # stuck in a read outlived the trainer. Killed once torch no longer watches it (its SIGCHLD
                # handler raised "worker killed" then).
                workers = list(getattr(iterator, "_workers", ()))
                getattr(iterator, "_shutdown_workers", lambda: None)()
                for worker in workers:
                    if worker.is_alive():
                        worker.kill()
                        worker.join(5)
                raise TrainingError(
                    f"no batch from the data loader's workers in {timeout:g} s (a read stuck on a network or failing "
                    "disk?): the run stops here; rerun the same command to resume from its last checkpoint, or "
                    "raise data.loader_timeout"
                ) from None
            if position == len(sampler):  # the epoch ran out: this batch is the next one's first
                epoch, position = epoch + 1, 0
            position += 1
            yield batch

    fault = os.environ.get(FAULT_ENV, "")
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc=f"train {config.recipe}",
        disable=not (progress and world.is_main),
        dynamic_ncols=True,
    )
    step_lr = optimizer.param_groups[0]["lr"]
    window_start, window_steps, last_loss = time.time(), 0, float("nan")
    status, stop_now = "finished", False
    deferred = DeferredFlags()

    def finish_step(record: StepRecord) -> None:
        """The host's part of a step whose flags have arrived: its EMA update (which must run before the next
        optimizer update changes the weights) and the bookkeeping of skipped steps and stops."""
        nonlocal skipped, bad_in_a_row, stop_now
        stop_now = stop_now or record.stop_requested
        if not record.skipped:
            update_ema(ema, inner, ema_decay(config.optim, record.step - 1))
            bad_in_a_row = 0
            return
        skipped, bad_in_a_row = skipped + 1, bad_in_a_row + 1
        if world.is_main:
            what = "loss" if record.nonfinite_loss else "gradient"
            tqdm.write(f"step {record.step}: non-finite {what}; step skipped")
        if bad_in_a_row >= config.max_nonfinite_steps:
            raise TrainingError(
                f"{bad_in_a_row} non-finite steps in a row (last at step {record.step}); lower "
                "optim.lr, raise optim.warmup_steps or check the data"
            )

    with StopFlag() as stop, closing(batches()) as stream:  # closing it ends the loader's workers
        while step < config.steps:
            if fault.partition(":")[2] and [int(v) for v in fault.split(":")[1:]] == [world.rank, step]:
                if fault.startswith("stall:"):  # a process stuck (a hung file system, a deadlock): never returns
                    while True:
                        time.sleep(60)
                os._exit(3)
            wrapped.train()
            step_loss = torch.zeros((), device=world.device)
            for micro in range(config.optim.grad_accum):
                batch = next(stream)
                with gradient_sync(wrapped, sync=micro == config.optim.grad_accum - 1):
                    loss = compute_loss(wrapped, inner, batch, config, scaling, world, step, micro, bf16)
                    (loss / config.optim.grad_accum).backward()
                step_loss += loss.detach() / config.optim.grad_accum
            for record in deferred.settle():  # the step before: read while this one's backward runs
                finish_step(record)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm is a DTensor over all shards
                grad_norm = grad_norm.full_tensor()
            flags = all_reduce_max(step_flags(step_loss, grad_norm, stop.requested), world)  # no host read
            skip = skip_flag(flags)  # the device leaves weights and AdamW state alone on a bad step
            step_lr = optimizer.param_groups[0]["lr"]  # what this step trains with; scheduler.step() moves on
            optimizer_step(optimizer, skip)
            scheduler.step()  # the schedule follows the step count, skipped steps included
            optimizer.zero_grad(set_to_none=True)
            loss_sum += torch.where(skip > 0, 0.0, step_loss)  # a NaN times 0 would still be NaN
            applied_steps += 1.0 - skip
            deferred.push(step + 1, flags)  # its EMA update and bookkeeping: in finish_step, a step later
            step += 1
            window_steps += 1
            bar.update(1)
            log_now = step % config.log_every == 0 or step == config.steps
            checkpoint_now = step % config.checkpoint_every == 0 or step == config.steps
            preview_now = config.previews and config.sample_every and step % config.sample_every == 0
            if log_now or checkpoint_now or preview_now or stop_now:  # each needs this step finished
                for record in deferred.settle():
                    finish_step(record)
            if log_now:
                elapsed = max(time.time() - window_start, 1e-9)
                # Every rank's loss (rank 0's alone would change with the process count); NaN for a window
                # whose steps were all skipped, which has no loss to report.
                window = torch.stack([loss_sum, applied_steps])
                window_loss, counted = all_reduce_mean(window, world).tolist()
                last_loss = window_loss / counted if counted else float("nan")
                row = {
                    "step": step,
                    "loss": last_loss,
                    "grad_norm": grad_norm.item(),
                    "lr": step_lr,
                    "samples_per_s": window_steps * global_batch / elapsed,  # every step, skipped or not
                    "skipped_steps": skipped,
                    "epoch": epoch,
                    "time": seconds_before + time.time() - started,
                }
                if peak and isinstance(inner, torch.nn.Module) and not isinstance(inner, DiT):
                    row["mfu"] = mfu(inner, batch, row["samples_per_s"] / world.world_size, peak)
                metrics.write(row)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{row['lr']:.2e}")
                if step % config.log_every == 0:  # a last row off the grid leaves the window to an extension
                    loss_sum.zero_()
                    applied_steps.zero_()
                window_start, window_steps = time.time(), 0
            paused = time.time()  # previews and checkpoints are not training: samples/s leaves them out
            if stop_now:  # no preview first: a stop has seconds before the launcher's SIGKILL
                save(step)
                status = "interrupted"
                break
            if step % config.checkpoint_every == 0 and step < config.steps:
                save(step)  # before the step's preview, which cannot lose it
            if preview_now and step < config.steps and (sharded or previewer is not None):
                weights = preview_weights(inner, ema, sharded)  # under FSDP every rank gathers
                if previewer is not None:
                    previewer.write_or_warn(weights, step)
            window_start += time.time() - paused
        if status == "finished":  # under StopFlag too: a stop during this save must not cut it short
            save(step)
    bar.close()
    summary = finish_run(
        config, run_dir, world, inner, ema, previewer, status, step, skipped, last_loss, started, resumed_at
    )
    if status == "interrupted":  # another rank's signal reaches this one as a flag: SIGTERM, as torchrun sends
        summary["signal"] = signal.Signals(stop.signum or signal.SIGTERM).name
    metrics.close()
    return summary
