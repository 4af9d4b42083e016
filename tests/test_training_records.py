"""What a training run records: its EMA with warm-up, the logged samples/s and training time, the summary's
trained steps, and how metrics.jsonl is read back.

Timing is made deterministic with a fake clock in the training loop that moves one second per micro-batch
(per compute_loss call) and nowhere else, so no assertion depends on the machine's load. The code handled each
case already; a mutation run (twenty-third session) found that no test would have noticed it going wrong.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_train import config_for, fake_clock, stop_during

from pixart.train.init import build_model
from pixart.train.loop import train
from pixart.train.metrics import read_metrics


def test_the_ema_with_warmup_uses_each_updates_own_decay(shapes_data, tmp_path):
    """With optim.ema_warmup the decay after update k (from 0) is (1 + k) / (10 + k): 0.1, then 2/11. Taken one
    update late, a short run's EMA would keep almost twice as much of its starting weights as it should."""
    config = config_for(
        shapes_data, ["optim.ema_warmup=true", "optim.ema_decay=0.9999", "keep_checkpoints=5"], steps=2, every=1
    )
    train(config, tmp_path / "run", progress=False)
    torch.manual_seed(config.seed)  # as train() builds its model
    start = {name: p.detach().float() for name, p in build_model(config).named_parameters()}
    states = [torch.load(tmp_path / "run" / "checkpoints" / f"step-000000{k}.pt", weights_only=True) for k in (1, 2)]
    ema = start
    for k, state in enumerate(states):  # ema <- ema + (1 - decay_k) (weights_k - ema)
        decay = (1 + k) / (10 + k)
        ema = {name: value + (1 - decay) * (state["model"][name].float() - value) for name, value in ema.items()}
        moved = sum((state["model"][n].float() - start[n]).abs().sum().item() for n in start)
        assert moved > 0  # the step changed the weights, so the decay shows
        for name, value in ema.items():
            torch.testing.assert_close(state["ema"][name], value, rtol=1e-5, atol=1e-7, msg=f"update {k}: {name}")


def test_samples_per_second_counts_the_global_batch_of_accumulated_steps(shapes_data, tmp_path, monkeypatch):
    """With grad_accum 2 a step trains 2 x 8 samples: counted from the per-rank batch alone, samples/s would read
    half what the run trained. Two steps of 2 micro-batches each take 4 seconds of the fake clock: 32 / 4 = 8."""
    fake_clock(monkeypatch)
    config = config_for(shapes_data, ["optim.grad_accum=2"], steps=4, every=2)
    train(config, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [2, 4]
    assert [row["samples_per_s"] for row in rows] == [pytest.approx(8.0), pytest.approx(8.0)]


def test_a_resumed_runs_rows_count_the_training_time_before_its_checkpoint(shapes_data, tmp_path, monkeypatch):
    """A row's time is the run's training time, the seconds before its checkpoint included: without them a
    resumed run's rows would restart from zero, the time axis jumping backwards at every resume. At one fake
    second per step, every row's time is its step, before and after the stop."""
    fake_clock(monkeypatch)
    config = config_for(shapes_data, steps=6, every=100)
    stop_during(monkeypatch, 1)  # stops, with a checkpoint, at step 2
    stopped = train(config, tmp_path / "run", progress=False)
    assert (stopped["status"], stopped["steps"]) == ("interrupted", 2)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-0000002.pt", weights_only=True)
    assert state["train_seconds"] == pytest.approx(2.0)
    monkeypatch.undo()
    fake_clock(monkeypatch)
    train(config, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [2, 4, 6]  # rows 4 and 6 from the resumed run
    assert [row["time"] for row in rows] == [pytest.approx(2.0), pytest.approx(4.0), pytest.approx(6.0)]


def test_the_summary_counts_the_steps_trained_in_this_call(shapes_data, tmp_path):
    """trained_steps is what this call trained: a run extended from step 2 to 4 trained 2, and a finished run
    reopened trained none; counting from step 0 would say a reopened run had trained all its steps again."""
    config = config_for(shapes_data, steps=2, every=2)
    assert train(config, tmp_path / "run", progress=False)["trained_steps"] == 2
    extended = dataclasses.replace(config, steps=4)
    summary = train(extended, tmp_path / "run", progress=False)
    assert (summary["steps"], summary["trained_steps"]) == (4, 2)
    reopened = train(extended, tmp_path / "run", progress=False)
    assert (reopened["status"], reopened["steps"], reopened["trained_steps"]) == ("finished", 4, 0)


def test_a_damaged_last_row_is_an_error_and_a_torn_one_is_skipped(tmp_path):
    """Only a last line without its newline is a write a crash cut short; a last line that does not parse but
    ends in a newline was damaged some other way, and skipping it would hide the damage (and drop its row)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2: not a JSON row"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1}]


def test_metrics_rows_are_strict_json_with_non_finite_numbers_as_null(tmp_path):
    """A skipped step's grad_norm went out as Python's bare NaN token, which jq and JavaScript refuse; the loss
    curve and the summary read past a null loss."""
    import json

    from pixart.train.metrics import MetricsWriter, plot_loss

    writer = MetricsWriter(tmp_path, enabled=True)
    writer.write({"step": 1, "loss": 0.5, "grad_norm": float("nan"), "lr": 1e-4})
    writer.write({"step": 2, "loss": float("inf"), "grad_norm": float("-inf")})
    writer.write({"step": 3, "loss": 0.25, "grad_norm": 2.0})
    writer.close()

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=refuse) for line in lines]
    assert rows == [
        {"step": 1, "loss": 0.5, "grad_norm": None, "lr": 1e-4},
        {"step": 2, "loss": None, "grad_norm": None},
        {"step": 3, "loss": 0.25, "grad_norm": 2.0},
    ]
    assert plot_loss({"tiny": read_metrics(tmp_path / "metrics.jsonl")}, tmp_path / "loss.png").stat().st_size > 0
