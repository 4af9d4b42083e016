"""`pixart demo --quick`: the whole embedded path end to end, every artefact written (so it cannot rot).

The score targets are checked by running the real demo (see README), not here.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import run_quick_demo
from PIL import Image

from pixart.generate import TextToImage
from pixart.weights.formats import FINAL_EMA


@pytest.mark.slow
def test_demo_quick_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    result = run_quick_demo(out)
    assert result.returncode == 0, result.stderr
    for name in (
        "samples.png",
        "loss.png",
        "report.md",
        "report.json",
        "model/model.json",
        "model/transformer.safetensors",
        "model/codec.safetensors",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    for key in ("color", "shape", "size", "position", "binding", "relation"):
        assert 0.0 <= report["probe"][key] <= 1.0
    assert report["wall_seconds"] > 0 and report["kind"] == "quick" and report["calls"] == 1
    assert set(report["stages"]) == {"stage1", "stage2", "stage3"}
    # a smoke run says so, and judges no target (its report marked every one "missed", which read as a failure)
    text = (out / "report.md").read_text()
    assert "A `--quick` smoke run" in text and "missed" not in text and " met " not in text
    assert "A quick smoke run: every part ran, too briefly trained to score" in result.stdout
    assert "Probe on generated images" not in result.stdout
    assert "re-parameterised from the class-conditional DiT" in result.stdout  # stage 1 -> stage 2
    assert "new: ['ar_embedder.mlp', 'csize_embedder.mlp']" in result.stdout  # stage 3 adds micro-conditions
    assert Image.open(out / "samples.png").size[0] > 400
    assert "pixart demo finished" in result.stdout
    assert "warning" not in result.stdout  # e.g. a warm-up longer than a stage: the demo's own settings to mend
    # the commands report.md suggests are ones the command line takes (generate's lacked its required --out)
    import re
    import shlex

    from pixart.cli.main import build_parser

    suggested = re.findall(r"`(pixart (?:generate|serve) [^`]*)`", (out / "report.md").read_text())
    assert len(suggested) == 2
    for command in suggested:
        build_parser().parse_args(shlex.split(command)[1:])  # argparse exits on a missing or unknown option
    # the summary's generate writes elsewhere than the report's: run one, and the other was refused its --out
    tried = re.search(r"try: (pixart generate .*?)    or:", result.stdout)
    assert tried is not None
    outs = [build_parser().parse_args(shlex.split(c)[1:]).out for c in (tried.group(1), suggested[0])]
    assert outs[0] != outs[1], outs
    # The model folder is what `pixart generate` and `pixart serve` accept, non-square buckets included.
    pipe = TextToImage.from_path(out / "model")
    assert pipe.transformer.config.micro_conditions
    images = pipe.generate(["a large red circle in the centre, on a grey background"], seed=1, progress=False)
    assert images[0].image.size == (36, 36)
    assert sorted(pipe.table.values()) == [(36, 36), (36, 72), (72, 36)]
    # A rerun of the finished demo trains nothing: its evaluation stands (it sampled and scored it all again)
    first, drawn = json.loads((out / "report.json").read_text()), (out / "samples.png").stat().st_mtime_ns
    result = run_quick_demo(out)
    assert result.returncode == 0, result.stderr
    assert f"nothing trained in this call: the evaluation in {out.resolve() / 'report.json'} stands" in result.stdout
    again = json.loads((out / "report.json").read_text())
    assert (again["probe"], again["frechet"], again["calls"]) == (first["probe"], first["frechet"], 2)
    assert (out / "samples.png").stat().st_mtime_ns == drawn
    # its timings are the evaluating call's, and the report says so (it said "this call", of seconds it did not spend)
    assert again["timings"] == first["timings"]
    assert "Time spent in the call that trained and evaluated these weights" in (out / "report.md").read_text()
    # ... and so is its wall-clock (the headline read the rerun's few seconds, beside timings adding to minutes)
    assert again["wall_seconds"] == first["wall_seconds"] and again["total_seconds"] > first["wall_seconds"]
    headline = f"Wall-clock: **{first['wall_seconds']:.0f} s** in the call that evaluated these weights ("
    assert headline in (out / "report.md").read_text()


def test_the_report_names_the_processor():
    """platform.processor() is the architecture on Linux: reports read "on x86_64"."""
    import platform
    from pathlib import Path

    from pixart.demo import cpu_name

    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")]
    if not names:
        pytest.skip("no model name in /proc/cpuinfo here")
    assert cpu_name() == names[0] != platform.machine()


def test_a_report_stands_only_while_it_describes_the_folder(tmp_path):
    """What lets a rerun keep the last evaluation: nothing trained, the same evaluation size, every file there."""
    from pixart.demo_folder import REPORTED, standing_report

    sizes = {"eval_single": 16, "eval_pairs": 16}
    stages = {"stage1": {"steps": 4}, "stage2": {"steps": 8}}
    summaries = {name: {"steps": stage["steps"], "trained_steps": 0} for name, stage in stages.items()}
    for name in REPORTED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    report = {"plan": sizes, "stages": stages, "probe": {"color": 0.5}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert standing_report(tmp_path, sizes, summaries) == report
    trained = {**summaries, "stage2": {"steps": 8, "trained_steps": 3}}  # a stage deleted and trained again
    assert standing_report(tmp_path, sizes, trained) is None
    assert standing_report(tmp_path, {"eval_single": 128, "eval_pairs": 128}, summaries) is None  # a full-size eval
    other = {**summaries, "stage1": {"steps": 6, "trained_steps": 0}}  # a stage of another run put in its place
    assert standing_report(tmp_path, sizes, other) is None
    assert standing_report(tmp_path, sizes, {"stage1": {"status": "finished"}}) is None  # no trained_steps: trained
    (tmp_path / "samples.png").unlink()  # drawn again when deleted
    assert standing_report(tmp_path, sizes, summaries) is None
    (tmp_path / "samples.png").write_text("x")
    (tmp_path / "report.json").write_text(json.dumps({"probe": {}}))  # an older version's report
    assert standing_report(tmp_path, sizes, summaries) is None


def test_the_wall_clock_counts_every_call(tmp_path):
    """A rerun (or a resume after Ctrl-C) reported its own seconds as the demo's: 33 s for a 124 s demo."""
    from pixart.demo_folder import DEMO_KIND_FILE, add_call_seconds, check_or_record_kind

    check_or_record_kind(tmp_path, quick=True)
    assert add_call_seconds(tmp_path, 124.0) == (124.0, 1)
    assert add_call_seconds(tmp_path, 33.0) == (157.0, 2)
    assert json.loads((tmp_path / DEMO_KIND_FILE).read_text())["kind"] == "quick"
    check_or_record_kind(tmp_path, quick=True)  # the kind is still read


def test_a_loss_curve_of_one_logged_step_is_drawn(tmp_path):
    """A --quick stage logs one row; a line through one point drew nothing, leaving loss.png empty."""
    import numpy as np

    from pixart.train.metrics import plot_loss

    plot_loss({"stage1": [{"step": 4, "loss": 1.2}], "stage2": [{"step": 8, "loss": 0.9}]}, tmp_path / "loss.png")
    pixels = np.asarray(Image.open(tmp_path / "loss.png").convert("RGB")).reshape(-1, 3).astype(int)
    first_colour = np.array([0x1F, 0x77, 0xB4])  # matplotlib's first line colour, C0
    assert (np.abs(pixels - first_colour).sum(axis=1) < 30).sum() > 10


def test_later_stages_shrink_to_fit_the_time_left(tmp_path):
    from pixart.demo_plan import STEP_COST, DemoPlan, fit_to_budget, stage_configs

    stages = stage_configs(DemoPlan(), tmp_path, tmp_path, tmp_path)
    pace = 0.1  # seconds per stage-1 step
    needed = sum(pace * STEP_COST[name] * stages[name].steps for name in STEP_COST)

    unchanged, factor = fit_to_budget(stages, needed + 1, pace)
    assert factor == 1.0 and unchanged["stage2"].steps == stages["stage2"].steps

    halved, factor = fit_to_budget(stages, needed / 2, pace)
    assert factor == pytest.approx(0.5)
    for name in STEP_COST:
        assert halved[name].steps == int(stages[name].steps * 0.5)
        assert halved[name].checkpoint_every <= halved[name].steps
    assert halved["stage1"] is stages["stage1"]
    # what is left now fits the time that was left
    assert sum(pace * STEP_COST[n] * halved[n].steps for n in STEP_COST) <= needed / 2


def test_a_slow_machine_shortens_the_later_stages_to_a_quarter_at_the_least(tmp_path):
    """A loaded machine cut stages 2 and 3 to 1 step each (with 50-step warm-ups): they learned nothing and a
    rerun kept them so. At most to a quarter of their steps left, which then runs over; a warm-up at most a
    quarter of the shortened stage."""
    from pixart.demo_plan import MIN_SHARE, STEP_COST, DemoPlan, fit_to_budget, seconds_to_train, stage_configs

    stages = stage_configs(DemoPlan(), tmp_path, tmp_path, tmp_path)
    pace = 0.1
    needed = seconds_to_train(stages, pace, {})
    short, factor = fit_to_budget(stages, needed / 1000, pace)
    assert factor == MIN_SHARE == 0.25
    for name in STEP_COST:
        assert short[name].steps == int(stages[name].steps * MIN_SHARE)
        assert short[name].optim.warmup_steps <= max(1, short[name].steps // 4)
    assert seconds_to_train(short, pace, {}) > needed / 1000  # over the budget: the demo says so
    tiny = dataclasses.replace(stages["stage3"], steps=8)  # a shortened stage of 2 steps: a warm-up of 1 at most
    fitted, _ = fit_to_budget({**stages, "stage3": tiny}, 0.0, pace)
    assert fitted["stage3"].steps == 2 and fitted["stage3"].optim.warmup_steps == 1
    # a stage begun keeps the warm-up it began with: another would be another run, refused on the rerun
    small = {**stages, "stage2": dataclasses.replace(stages["stage2"], steps=100)}  # 25 steps once shortened
    fresh, _ = fit_to_budget(small, 0.0, pace)
    assert fresh["stage2"].optim.warmup_steps == 6 < stages["stage2"].optim.warmup_steps == 50
    begun, _ = fit_to_budget(small, 0.0, pace, {"stage2": 10, "stage3": 0})
    assert begun["stage2"].steps == 32 and begun["stage2"].optim.warmup_steps == 50


def test_a_rerun_keeps_the_warm_up_its_shortened_stage_began_with(tmp_path):
    """A stage shortened with its warm-up capped (27 of 50) was refused on the rerun after a Ctrl-C: "another
    config ... optim.warmup_steps: 27 -> 50"."""
    from pixart.demo_plan import DemoPlan, keep_saved_progress, stage_configs

    stage2 = stage_configs(DemoPlan(), tmp_path, tmp_path, tmp_path)["stage2"]
    run = tmp_path / "stage2"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-0000040.pt").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"steps": 110, "optim": {"warmup_steps": 27}}))
    kept = keep_saved_progress(stage2, run)
    assert kept.optim.warmup_steps == 27 and kept.steps == stage2.steps
    assert dataclasses.replace(kept.optim, warmup_steps=stage2.optim.warmup_steps) == stage2.optim


def test_a_demo_that_must_overrun_says_so(tmp_path, monkeypatch, capsys):
    """Stage 1 at 100 s a step leaves no time for stages 2 and 3: they keep a quarter of their steps, and the
    notice says the budget will be passed and that a new --out (not this folder) trains them in full."""
    import pixart.data.shapes_features
    import pixart.encoders.shapes_ae
    import pixart.evaluate.probe_training
    import pixart.train.loop
    from pixart.demo import run_demo
    from pixart.demo_plan import DemoPlan

    monkeypatch.setattr(pixart.encoders.shapes_ae, "load_or_train_shapes_codec", lambda **kw: None)
    monkeypatch.setattr(pixart.evaluate.probe_training, "load_or_train_probe", lambda **kw: None)
    monkeypatch.setattr(pixart.data.shapes_features, "build_shapes_features", lambda *a, **kw: None)
    trained = []

    def train(config, run_dir, **kw):
        trained.append((config.recipe, config.steps))
        if config.recipe != "demo-stage1":
            raise KeyboardInterrupt  # the plan is what is checked
        return {"status": "finished"}

    monkeypatch.setattr(pixart.train.loop, "train", train)
    steps = DemoPlan.for_budget(10.0, False).stage1_steps
    (tmp_path / "d" / "stage1").mkdir(parents=True)
    (tmp_path / "d" / "stage1" / "metrics.jsonl").write_text(json.dumps({"step": steps, "time": 100.0 * steps}) + "\n")
    (tmp_path / "d" / "stage1" / "config.json").write_text(json.dumps({"recipe": "demo-stage1"}))
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "d", minutes=10.0, progress=False)
    planned = DemoPlan.for_budget(10.0, False).stage2_steps
    assert trained[1] == ("demo-stage2", int(planned * 0.25))
    said = capsys.readouterr().out
    assert f"stages 2 and 3 shortened to {int(planned * 0.25)} and" in said
    assert "(a quarter of the steps left, the least that shows anything: past the 10 minutes)" in said
    assert "a new --out with a larger --minutes trains them in full" in said


def test_a_demo_folder_moved_elsewhere_is_refused_before_any_work(tmp_path, capsys):
    """Its stages name their data and each other by absolute path: a copy resumed to stage 1 refusing its own
    checkpoint, with advice about --run-dir, an option the demo does not have."""
    from pixart.cli.main import main
    from pixart.demo_folder import check_not_moved

    old, new = tmp_path / "old", tmp_path / "new"
    (new / "stage1").mkdir(parents=True)
    (new / "demo-kind.json").write_text(json.dumps({"kind": "quick"}))
    (new / "stage1" / "config.json").write_text(json.dumps({"data": {"root": str(old / "data" / "base")}}))
    assert main(["demo", "--quick", "--out", str(new)]) == 2
    assert f"{new} was moved or copied from {old}" in capsys.readouterr().err
    (new / "stage1" / "config.json").write_text(json.dumps({"data": {"root": str(new / "data" / "base")}}))
    check_not_moved(new)  # its own place


def test_a_cache_folder_that_cannot_be_written_is_said_before_any_work(tmp_path, monkeypatch, capsys):
    """PIXART_CACHE=/dev/null/x failed after the codec had trained, as "Not a directory: /dev/null/x"."""
    from pixart.cli.main import main

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("PIXART_CACHE", str(tmp_path / "a_file" / "cache"))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert f"cannot use the cache folder {tmp_path / 'a_file' / 'cache'}" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_a_damaged_cached_codec_is_trained_again(tmp_path, capsys):
    """A codec file cut short stopped the demo ("cut short or damaged?"), where a damaged probe is retrained."""
    from pixart.encoders.shapes_ae import load_or_train_shapes_codec

    first = load_or_train_shapes_codec(cache=tmp_path, progress=False, steps=2, width=16)
    (cached,) = tmp_path.glob("shapes-codec-*.safetensors")
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    again = load_or_train_shapes_codec(cache=tmp_path, progress=False, steps=2, width=16)
    assert f"note: the cached codec {cached} cannot be read" in capsys.readouterr().err
    assert again.scaling_factor == pytest.approx(first.scaling_factor)  # the same seed trains the same codec
    assert load_or_train_shapes_codec(cache=tmp_path, progress=False, steps=2, width=16) is not None


def test_a_folder_holds_one_kind_of_demo_run(tmp_path):
    """A full demo into a --quick run's folder (or the reverse) is refused, naming --out; the same kind continues."""
    from pixart.demo_folder import DemoError, check_or_record_kind

    check_or_record_kind(tmp_path, quick=True)
    check_or_record_kind(tmp_path, quick=True)  # the same kind again: a rerun continues it
    with pytest.raises(DemoError, match=r"pixart demo --quick --out .*choose another --out"):
        check_or_record_kind(tmp_path, quick=False)
    other = tmp_path / "full"
    check_or_record_kind(other, quick=False)
    with pytest.raises(DemoError, match=r"\(full\); this one is quick"):
        check_or_record_kind(other, quick=True)


def test_demo_of_the_other_kind_stops_with_one_line_before_any_work(tmp_path, capsys):
    from pixart.cli.main import main
    from pixart.demo_folder import check_or_record_kind

    check_or_record_kind(tmp_path, quick=False)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "choose another --out" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # nothing trained or rendered


def test_minutes_with_quick_is_refused_not_ignored(tmp_path, capsys):
    """--quick is a fixed smoke run: a budget given with it used to be dropped without a word."""
    from pixart.cli.main import main

    assert main(["demo", "--quick", "--minutes", "3", "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "--quick is a fixed smoke run" in capsys.readouterr().err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("minutes", ["nan", "inf", "0", "-1", "4", "1e6"])
def test_a_budget_the_demo_cannot_keep_is_refused(tmp_path, capsys, minutes):
    from pixart.cli.main import main

    assert main(["demo", "--minutes", minutes, "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert (
        "--minutes must be a finite number from 5 " in error and " to 600 " in error and not (tmp_path / "d").exists()
    )


def test_run_demo_itself_refuses_a_budget_it_cannot_keep(tmp_path):
    """Checked in the library, not only in the command line: a caller's minutes=inf used to crash mid-plan."""
    from pixart.demo import run_demo
    from pixart.demo_folder import DemoError

    with pytest.raises(DemoError, match="--minutes must be a finite number from 5 "):
        run_demo(tmp_path / "d", minutes=float("inf"), progress=False)
    assert not (tmp_path / "d").exists()


def test_the_demo_keeps_out_of_a_folder_of_other_files(tmp_path):
    from pixart.demo_folder import DemoError, check_or_record_kind

    (tmp_path / "photo.png").write_bytes(b"mine")
    with pytest.raises(DemoError, match=r"holds files that are not a demo run's \(e.g. photo.png\)"):
        check_or_record_kind(tmp_path, quick=True)
    (tmp_path / "photo.png").unlink()
    check_or_record_kind(tmp_path, quick=True)  # empty: taken, and recorded as a quick run's folder


def test_a_stage_stopped_by_a_signal_stops_the_demo_with_how_to_continue(tmp_path, monkeypatch):
    """Ctrl-C during a stage: the stage checkpoints and returns 'interrupted'; the demo used to go on to
    the next stage and fail there on the missing weights."""
    import pixart.data.shapes_features
    import pixart.encoders.shapes_ae
    import pixart.evaluate.probe_training
    import pixart.train.loop
    from pixart.demo import run_demo
    from pixart.demo_folder import DemoInterrupted

    monkeypatch.setattr(pixart.encoders.shapes_ae, "load_or_train_shapes_codec", lambda **kw: None)
    monkeypatch.setattr(pixart.evaluate.probe_training, "load_or_train_probe", lambda **kw: None)
    monkeypatch.setattr(pixart.data.shapes_features, "build_shapes_features", lambda *a, **kw: None)
    ran = []
    monkeypatch.setattr(
        pixart.train.loop, "train", lambda config, run_dir, **kw: ran.append(run_dir) or {"status": "interrupted"}
    )
    with pytest.raises(DemoInterrupted, match="interrupted during stage1; rerun the same command to continue"):
        run_demo(tmp_path / "d", quick=True, progress=False)
    assert ran == [tmp_path / "d" / "stage1"]


def test_an_evaluation_cut_short_leaves_no_report_to_stand_for_new_weights(tmp_path, monkeypatch):
    """The last report was rewritten only at the end: a stage retrained, then the evaluation stopped, and the
    next call (training nothing) kept the report of the weights before."""
    import pixart.data.shapes_features
    import pixart.demo
    import pixart.encoders.shapes_ae
    import pixart.evaluate.probe_training
    import pixart.train.loop
    from pixart.demo import run_demo

    monkeypatch.setattr(pixart.encoders.shapes_ae, "load_or_train_shapes_codec", lambda **kw: None)
    monkeypatch.setattr(pixart.evaluate.probe_training, "load_or_train_probe", lambda **kw: None)
    monkeypatch.setattr(pixart.data.shapes_features, "build_shapes_features", lambda *a, **kw: None)
    trained = {"status": "finished", "steps": 4, "trained_steps": 4}  # a stage trained in this call
    monkeypatch.setattr(pixart.train.loop, "train", lambda config, run_dir, **kw: trained)
    monkeypatch.setattr(pixart.demo, "write_model_folder", lambda out, codec: out / "model")

    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pixart.demo, "evaluate_and_report", stopped)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "demo-kind.json").write_text(json.dumps({"kind": "quick"}))  # a demo run's folder
    (tmp_path / "d" / "report.json").write_text(json.dumps({"probe": {"color": 0.9}}))  # of the weights before
    for name in ("report.md", "samples.png", "loss.png"):  # report.md, samples and curve stayed, of those too
        (tmp_path / "d" / name).write_text("of the weights before")
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "d", quick=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["demo-kind.json"]


def test_the_command_exits_130_when_stopped_and_tells_its_stages_without_progress_bars(tmp_path, monkeypatch, capsys):
    """It exited 2 (an error) on Ctrl-C, and --no-progress hid the demo's own lines (a shortened plan too)."""
    import pixart.data.shapes_features
    import pixart.encoders.shapes_ae
    import pixart.evaluate.probe_training
    import pixart.train.loop
    from pixart.cli.main import main

    monkeypatch.setattr(pixart.encoders.shapes_ae, "load_or_train_shapes_codec", lambda **kw: None)
    monkeypatch.setattr(pixart.evaluate.probe_training, "load_or_train_probe", lambda **kw: None)
    monkeypatch.setattr(pixart.data.shapes_features, "build_shapes_features", lambda *a, **kw: None)
    monkeypatch.setattr(pixart.train.loop, "train", lambda config, run_dir, **kw: {"status": "interrupted"})
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--no-progress"]) == 130
    out, err = capsys.readouterr()
    assert "[pixart demo] stage1: class-conditional DiT" in out
    assert err.strip() == "pixart demo: interrupted during stage1; rerun the same command to continue from there"
    # stopped by SIGTERM (a scheduler's preemption), the exit code says so, as pixart train's does: 128 + 15
    stopped = {"status": "interrupted", "signal": "SIGTERM"}
    monkeypatch.setattr(pixart.train.loop, "train", lambda config, run_dir, **kw: stopped)
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--no-progress"]) == 143


def test_an_out_that_is_a_file_is_one_line_naming_out(tmp_path, capsys):
    from pixart.cli.main import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--quick", "--out", str(tmp_path / "notes.txt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'notes.txt'} is a file, not a folder" in err and len(err.strip().splitlines()) == 1


def test_a_rerun_keeps_what_each_stage_has_trained(tmp_path):
    """A smaller --minutes on a rerun planned stage 1 below its saved step 300 and was refused (advising
    --steps and --run-dir, which the demo lacks); a finished stage kept training towards a longer plan."""
    from pixart.demo_plan import DemoPlan, keep_saved_progress, stage_configs
    from pixart.weights.formats import FINAL_EMA

    stage1 = stage_configs(DemoPlan(), tmp_path, tmp_path, tmp_path)["stage1"]
    stage1 = dataclasses.replace(stage1, steps=200)
    run = tmp_path / "stage1"
    assert keep_saved_progress(stage1, run) == stage1  # nothing saved: the plan
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-0000300.pt").write_bytes(b"")
    assert keep_saved_progress(stage1, run).steps == 300  # unfinished: on to at least its saved step
    assert keep_saved_progress(dataclasses.replace(stage1, steps=400), run).steps == 400
    (run / FINAL_EMA).write_bytes(b"")
    assert keep_saved_progress(dataclasses.replace(stage1, steps=400), run).steps == 300  # finished: kept


def test_a_rerun_plans_the_later_stages_from_stage_1s_real_pace(tmp_path, monkeypatch):
    """A rerun finds stage 1 finished: reopening it took a fraction of a second, which read as a machine
    20 times faster, so stages 2 and 3 went back to their full plan and the budget was not kept."""
    import pixart.data.shapes_features
    import pixart.demo
    import pixart.encoders.shapes_ae
    import pixart.evaluate.probe_training
    import pixart.train.loop
    from pixart.demo import run_demo
    from pixart.demo_plan import DemoPlan

    monkeypatch.setattr(pixart.encoders.shapes_ae, "load_or_train_shapes_codec", lambda **kw: None)
    monkeypatch.setattr(pixart.evaluate.probe_training, "load_or_train_probe", lambda **kw: None)
    monkeypatch.setattr(pixart.data.shapes_features, "build_shapes_features", lambda *a, **kw: None)
    monkeypatch.setattr(pixart.train.loop, "train", lambda config, run_dir, **kw: {"status": "finished"})
    steps = DemoPlan.for_budget(10.0, False).stage1_steps
    (tmp_path / "d" / "stage1").mkdir(parents=True)  # what the first call trained: 2 s a step
    (tmp_path / "d" / "stage1" / "metrics.jsonl").write_text(json.dumps({"step": steps, "time": 2.0 * steps}) + "\n")
    (tmp_path / "d" / "stage1" / "config.json").write_text(json.dumps({"recipe": "demo-stage1"}))
    seen = {}

    def fit(stages, seconds_left, pace, done=None):
        seen.update(pace=pace, done=done, stage2=stages["stage2"].steps)
        raise KeyboardInterrupt  # enough: the plan is what is checked

    monkeypatch.setattr(pixart.demo, "fit_to_budget", fit)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "d", progress=False)
    full = DemoPlan.for_budget(10.0, False).stage2_steps
    assert seen == {"pace": pytest.approx(2.0), "done": {"stage2": 0, "stage3": 0}, "stage2": full}
    # Stage 2 finished shortened in that first call: it has no steps left, where the plan's 2200 less its 1650
    # were counted, and stage 3 was cut for them
    (tmp_path / "d" / "stage2" / "checkpoints").mkdir(parents=True)
    (tmp_path / "d" / "stage2" / "checkpoints" / "step-0001650.pt").write_bytes(b"")
    (tmp_path / "d" / "stage2" / FINAL_EMA).write_bytes(b"")
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "d", progress=False)
    assert seen["done"] == {"stage2": 1650, "stage3": 0} and seen["stage2"] == 1650


def test_stage_3_is_refitted_at_stage_2s_measured_pace(tmp_path, monkeypatch, capsys):
    """Stage 2 ran at 1.6 times stage 1's pace under load, not the plan's 1.25: stage 3 kept its planned steps
    and the run ended 5 s inside its 10 minutes on the evaluation's spare time. After stage 2, stage 3 is
    fitted again at stage 2's own pace (in stage 1's seconds a step) with stage 2 counted done."""
    import pixart.data.shapes_features
    import pixart.demo
    import pixart.encoders.shapes_ae
    import pixart.evaluate.probe_training
    import pixart.train.loop
    from pixart.demo import run_demo
    from pixart.demo_plan import STEP_COST, DemoPlan, fit_to_budget

    monkeypatch.setattr(pixart.encoders.shapes_ae, "load_or_train_shapes_codec", lambda **kw: None)
    monkeypatch.setattr(pixart.evaluate.probe_training, "load_or_train_probe", lambda **kw: None)
    monkeypatch.setattr(pixart.data.shapes_features, "build_shapes_features", lambda *a, **kw: None)
    monkeypatch.setattr(pixart.train.loop, "train", lambda config, run_dir, **kw: {"status": "finished"})
    plan = DemoPlan.for_budget(10.0, False)
    for name, steps, seconds_per_step in (("stage1", plan.stage1_steps, 0.1), ("stage2", plan.stage2_steps, 0.2)):
        (tmp_path / "d" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "d" / name / "metrics.jsonl").write_text(
            json.dumps({"step": steps, "time": seconds_per_step * steps})
        )
        (tmp_path / "d" / name / "config.json").write_text(json.dumps({"recipe": f"demo-{name}"}))
        (tmp_path / "d" / name / "checkpoints" / f"step-{steps:07d}.pt").write_bytes(b"")
        (tmp_path / "d" / name / FINAL_EMA).write_bytes(b"")
    calls = []

    def fit(stages, seconds_left, pace, done=None):
        calls.append({"pace": pace, "done": done, "seconds_left": seconds_left})
        if len(calls) == 2:
            raise KeyboardInterrupt  # enough: the second fit is what is checked
        return fit_to_budget(stages, seconds_left, pace, done)

    monkeypatch.setattr(pixart.demo, "fit_to_budget", fit)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "d", progress=False)
    first, second = calls
    assert first["pace"] == pytest.approx(0.1) and second["pace"] == pytest.approx(0.2 / STEP_COST["stage2"])
    assert second["done"] == {"stage2": plan.stage2_steps, "stage3": 0}  # stage 2 has nothing left to shorten
    # and with too little time left, stage 3 alone is shortened, at that pace
    stages = pixart.demo_plan.stage_configs(plan, tmp_path, tmp_path, tmp_path)
    stage3_seconds = second["pace"] * STEP_COST["stage3"] * plan.stage3_steps
    fitted, factor = fit_to_budget(stages, stage3_seconds / 2, second["pace"], second["done"])
    assert factor == pytest.approx(0.5) and fitted["stage2"].steps == plan.stage2_steps
    assert fitted["stage3"].steps == plan.stage3_steps // 2


def test_a_short_budget_plans_its_stages_on_what_the_cache_left_of_it(tmp_path, monkeypatch):
    """--minutes 5 planned for a cold cache's 4 minutes of codec and probe training even when both came from
    the cache in seconds: the stages got a fifth of the 10-minute plan, and the run used 112 s of its 300.
    The stages are now planned on what is left once codec and probe are in hand, up to the 10-minute plan."""
    import pixart.data.shapes_features
    import pixart.demo
    import pixart.encoders.shapes_ae
    import pixart.evaluate.probe_training
    import pixart.train.loop
    from pixart.demo import run_demo
    from pixart.demo_plan import DATA_AND_EVAL_MINUTES, FIXED_MINUTES, DemoPlan

    full, cold = DemoPlan.for_budget(10.0, False), DemoPlan.for_budget(5.0, False)
    warm = DemoPlan.for_budget(5.0, False, minutes_spent=0.0)
    share = (5.0 - DATA_AND_EVAL_MINUTES) / 6.0  # of the 10-minute plan, whose stages take 6 minutes
    assert warm.stage2_steps == int(full.stage2_steps * share) > cold.stage2_steps == int(full.stage2_steps * 0.2)
    assert DemoPlan.for_budget(10.0, False, minutes_spent=0.0) == full  # the default demo's plan is unchanged
    assert DemoPlan.for_budget(20.0, False, minutes_spent=0.0) == DemoPlan.for_budget(20.0, False)
    # a cold cache spent its minutes: no more than planned for one
    assert DemoPlan.for_budget(5.0, False, minutes_spent=FIXED_MINUTES - DATA_AND_EVAL_MINUTES) == cold

    monkeypatch.setattr(pixart.encoders.shapes_ae, "load_or_train_shapes_codec", lambda **kw: None)
    monkeypatch.setattr(pixart.evaluate.probe_training, "load_or_train_probe", lambda **kw: None)
    monkeypatch.setattr(pixart.data.shapes_features, "build_shapes_features", lambda *a, **kw: None)
    trained = {}

    def train(config, run_dir, **kw):
        trained[config.recipe] = config.steps
        raise KeyboardInterrupt  # enough: stage 1's steps are what is checked

    monkeypatch.setattr(pixart.train.loop, "train", train)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "d", minutes=5.0, progress=False)
    # the seconds this call took before planning count too
    assert cold.stage1_steps < warm.stage1_steps - 5 <= trained["demo-stage1"] <= warm.stage1_steps


def test_later_stages_are_projected_on_the_steps_they_have_left(tmp_path):
    from pixart.demo_plan import STEP_COST, DemoPlan, fit_to_budget, stage_configs

    stages = stage_configs(DemoPlan(), tmp_path, tmp_path, tmp_path)
    pace, done = 0.1, {"stage2": stages["stage2"].steps // 2, "stage3": 0}
    left = sum(pace * STEP_COST[n] * (stages[n].steps - done[n]) for n in STEP_COST)
    kept, factor = fit_to_budget(stages, left + 1, pace, done)  # fits once the trained half is left out
    assert factor == 1.0 and kept["stage2"].steps == stages["stage2"].steps
    halved, factor = fit_to_budget(stages, left / 2, pace, done)
    assert factor == pytest.approx(0.5)
    assert halved["stage2"].steps == done["stage2"] + int((stages["stage2"].steps - done["stage2"]) * 0.5)


def test_a_folder_named_like_a_demo_run_is_not_taken_for_one(tmp_path):
    """Entries all named like a demo's (data/, model/) but no demo run in them: it was taken as a run from
    before the kind was recorded, and its data/base deleted to be rebuilt."""
    from pixart.demo_folder import DemoError, check_or_record_kind

    (tmp_path / "data" / "base").mkdir(parents=True)
    (tmp_path / "data" / "base" / "my-image.png").write_bytes(b"mine")
    with pytest.raises(DemoError, match="holds data but no demo run"):
        check_or_record_kind(tmp_path, quick=False)
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "config.json").write_text(json.dumps({"recipe": "demo-stage1"}))
    check_or_record_kind(tmp_path, quick=False)  # a demo's run from before the kind was recorded


def test_the_demos_stages_record_its_folder_whole(tmp_path, monkeypatch):
    """--out as typed went into each stage's config (data.root, init_from): rerun as ./d and /abs/d (or from
    another folder), every stage refused its own checkpoint as "a run with another config"."""
    import pixart.data.shapes_features
    import pixart.encoders.shapes_ae
    import pixart.evaluate.probe_training
    import pixart.train.loop
    from pixart.demo import run_demo
    from pixart.demo_folder import DemoInterrupted

    monkeypatch.setattr(pixart.encoders.shapes_ae, "load_or_train_shapes_codec", lambda **kw: None)
    monkeypatch.setattr(pixart.evaluate.probe_training, "load_or_train_probe", lambda **kw: None)
    monkeypatch.setattr(pixart.data.shapes_features, "build_shapes_features", lambda *a, **kw: None)
    roots = []
    monkeypatch.setattr(
        pixart.train.loop, "train", lambda config, run_dir, **kw: roots.append(config.data.root) or {"status": "x"}
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DemoInterrupted):
        run_demo("d", quick=True, progress=False)
    assert roots == [str(tmp_path / "d" / "data" / "base")]
