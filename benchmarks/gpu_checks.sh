#!/usr/bin/env bash
# Every GPU check of one short lease, most important first, each under its own time cap, cut further to
# what BUDGET_S (560 s by default, counted after the install and preflight, kill margins included) leaves:
# the caps alone summed to 590 s with their margins, more than a 590 s call holds after the install (about
# 400 s in all on an H100 in the eleventh session). STEPS picks and orders the steps (below). Results go to $OUT (default gpu-results/), each step's as it ends. Run
# from the repository root:   bash benchmarks/gpu_checks.sh
# The lent machines have python3 with torch but neither diffusers nor this package installed: wheels that
# benchmarks/fetch_gpu_wheels.sh saved in .whl/ (carried with the call) are installed first, and src/ is
# put on the path. A preflight stops the script in seconds when something is still missing.
set -o pipefail
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
SITE=${SITE:-/tmp/site}  # where the carried wheels go (gpu_second_call.sh adds FlashAttention-4 there in call 2)
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl ||
        exit 1
    export PYTHONPATH="$PYTHONPATH:$SITE"
fi
"$PYTHON" -c "import torch, diffusers, pixart; assert torch.cuda.is_available(), 'no CUDA device'" ||
    { echo "preflight failed: see above (carry .whl from benchmarks/fetch_gpu_wheels.sh?)" | tee "$OUT/preflight.txt"; exit 1; }
# FlashAttention-4's first part, carried now, is kept out of the tree for gpu_second_call.sh: a call's
# carry removes the ignored paths it does not name (seen in the eleventh session's lease).
if compgen -G ".fa4/part-1/libs.*" >/dev/null; then
    mkdir -p "${FA4_PART1:-/tmp/fa4-part-1}" && cp .fa4/part-1/libs.* "${FA4_PART1:-/tmp/fa4-part-1}/"
fi
# Temporary folders in memory when it has room: bench_trainer's data, run and final ~10 GB of checkpoint
# and weights took about 90 s of each trainer step on the lent disk (eighteenth session); on /dev/shm
# (128 GiB there) a 30-step run took 104 s in all (nineteenth).
SHM=${SHM:-/dev/shm}
if [[ -d $SHM ]] && (($(df -k --output=avail "$SHM" | tail -1) >= ${SHM_MIN_KB:-30000000})); then
    export TMPDIR=$SHM
fi
echo "temporary files in ${TMPDIR:-/tmp}"
started=$(date +%s)
mark() { echo "=== $1 at $(($(date +%s) - started)) s"; }
failed=()
skipped=()
# A step's time cap: its own ($1), or what is left of BUDGET_S less its 10 s kill margin, if less.
cap() {
    local left=$((${BUDGET_S:-560} - ($(date +%s) - started) - 10))
    echo $(($1 < left ? $1 : left))
}  # steps left out for want of time: not failures, but said at the end beside them
# The status of a step's command (its pipeline's first): every step runs, and the script fails at the end
# naming those that did not pass (124 or 137: cut at its time cap), rather than end in "done" and 0.
check() {
    local status=$1
    ((status == 0)) && return
    failed+=("$2: exit status $status$( ((status == 124 || status == 137)) && echo ', cut at its time cap')")
}

# timeout -k: the trainer answers SIGTERM by finishing its step and checkpointing; KILL if that overruns.
step_tests() {  # the tests marked gpu: CUDA smoke runs of both benchmarks, GELU's tanh form when compiled
    timeout -k 10 "$(cap 90)" "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_model.py tests/test_benchmarks.py 2>&1 |
        tail -15 | tee "$OUT/tests.txt"
    check "${PIPESTATUS[0]}" "GPU tests"
}
step_bench() {  # training, forward and sampling against diffusers: 94 s at 512 and 1024 px on an H100
    timeout -k 10 "$(cap 200)" "$PYTHON" benchmarks/bench_gpu.py --compile --out "$OUT/bench.json" 2>&1 |
        grep --line-buffered -v -i warning | tee "$OUT/bench.txt"
    check "${PIPESTATUS[0]}" "bench_gpu.py"
}
# pixart train itself (loader, IDDPM loss, guard, EMA) at 512 px, batch 16, compiled. --profile 5: where the
# real trainer's step goes (it ran 10% below trainer-regional on an H100). 40 steps took 127 s of wall time
# there, unprofiled, 47 s of it in the run (the rest: start, data, the final checkpoint and weights, about
# 10 GB), so a 75 s cap had cut a run off before its figures; the profiled 5 fall within the 40. The
# figures are written before the profile is read.
# The H200 of the eighteenth session took 154 s (61 s in the run; the rest start, data and the final ~10 GB
# of checkpoint and weights): a 150 s cap cut its teardown, after the figures. 180 s now.
# bench_trainer.py at 512 px, batch 16, compiled, 5 steps profiled: its results as $OUT/NAME.json and .txt.
run_trainer() {
    local name=$1 label=$2
    shift 2
    timeout -k 10 "$(cap 180)" "$PYTHON" benchmarks/bench_trainer.py --recipe stage3-aesthetic-512 --batch 16 --steps 40 --compile \
        --profile 5 "$@" --out "$OUT/$name.json" 2>&1 | grep --line-buffered -v -i warning | tail -8 | tee "$OUT/$name.txt"
    check "${PIPESTATUS[0]}" "$label"
}
step_trainer() { run_trainer trainer "bench_trainer.py"; }
# The same with each batch's captions cut to its longest (the trainer before the eighteenth session; now
# data.caption_padding=auto pads them to 120 on a GPU): what one shape for every batch is worth. Profiled
# alike, so that the two differ in the padding alone.
step_trainer_longest() { run_trainer trainer-longest "bench_trainer.py (longest)" --set data.caption_padding=longest; }
# Where a 512 px step's time goes, what pixart train adds around the step, and batch 32 (pure-, the bound
# of a bf16 stream, was priced in the ninth session). --budget-s skips the variants left rather than lose them;
# the kernel timings before the variants count in it, so they are left out unless PROFILE_KERNEL_BATCH is
# set (16 measured them in the eighteenth session: five attention kernels compiled forward and backward
# could take the whole budget before regional:16, the figure this step is for).
step_profile() {
    local budget=${PROFILE_BUDGET_S:-50} limit
    limit=$(cap $((budget + 30)))
    ((budget > limit - 30)) && budget=$((limit - 30))
    timeout -k 10 "$limit" "$PYTHON" benchmarks/profile_gpu.py --budget-s "$budget" --profile all \
        --kernel-batch "${PROFILE_KERNEL_BATCH:-0}" \
        --variants "${PROFILE_VARIANTS:-regional:16,trainer-regional:16,regional:32}" 2>&1 |
        grep --line-buffered -v -i warning | tee "$OUT/profile.txt"
    check "${PIPESTATUS[0]}" "profile_gpu.py"
}
# A 512 px step compiled with max-autotune, profiled against profile.txt's default: whatever time the call
# has left (BUDGET_S from the start, less a margin), so it goes last (measured in the eighteenth session).
step_autotune() {
    local left=$((${BUDGET_S:-560} - ($(date +%s) - started) - 15))
    if ((left < 90)); then
        echo "autotune skipped: $left s left of BUDGET_S" | tee "$OUT/autotune.txt"
        skipped+=("autotune: $left s left of BUDGET_S")
        return
    fi
    timeout -k 10 "$left" "$PYTHON" benchmarks/profile_gpu.py --kernel-batch 0 --profile all \
        --variants autotune-regional:16 2>&1 | grep --line-buffered -v -i warning | tee "$OUT/autotune.txt"
    check "${PIPESTATUS[0]}" "autotune"
}
# STEPS: which steps, in which order (a lease with other questions reorders them, e.g. "tests profile
# trainer autotune" with PROFILE_VARIANTS and PROFILE_BUDGET_S set).
for step in ${STEPS:-tests bench trainer profile}; do  # every name checked before the first step runs
    declare -F "step_$step" >/dev/null ||
        { echo "unknown step $step in STEPS: use tests, bench, trainer, trainer_longest, profile, autotune"; exit 1; }
done
# A malformed number would end the loop at its first arithmetic (bash's error), skipping every later step,
# and the script would still say "every step passed".
for name in BUDGET_S PROFILE_BUDGET_S PROFILE_KERNEL_BATCH; do
    # no leading zero: bash reads 090 as octal (an error) and 0600 as 384
    [[ -z ${!name:-} || ${!name} =~ ^(0|[1-9][0-9]*)$ ]] ||
        { echo "$name must be a whole number of seconds (no leading zero), got '${!name}'"; exit 1; }
done
for step in ${STEPS:-tests bench trainer profile}; do
    mark "$step"
    left=$(cap 1000)
    if ((left < 40)); then  # timeout 0 would mean no cap at all
        echo "$step skipped: $left s left of BUDGET_S"
        skipped+=("$step: $left s left of BUDGET_S")
        continue
    fi
    "step_$step"
done
mark done
((${#skipped[@]})) && printf 'SKIPPED %s\n' "${skipped[@]}"
if ((${#failed[@]})); then
    printf 'FAILED %s\n' "${failed[@]}" | tee "$OUT/failed.txt"
    exit 1
fi
echo "every step that ran passed"
