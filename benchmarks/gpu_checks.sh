#!/usr/bin/env bash
# Every GPU check of one short lease, most important first, each under its own time cap (about 6 minutes
# in all on an H100, at most 590 s). Results go to $OUT (default gpu-results/). Needs diffusers importable;
# run from the repository root:   PYTHON=python3 bash benchmarks/gpu_checks.sh
set -o pipefail
PYTHON=${PYTHON:-python}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
started=$(date +%s)
mark() { echo "=== $1 at $(($(date +%s) - started)) s"; }

mark "GPU tests"  # the tests marked gpu: CUDA smoke runs of both benchmarks, GELU's tanh form when compiled
timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_model.py tests/test_benchmarks.py 2>&1 |
    tail -15 | tee "$OUT/tests.txt"
mark "bench_gpu.py --compile"  # training, forward and sampling against diffusers: about 215 s on an H200, timed in two parts
timeout 270 "$PYTHON" benchmarks/bench_gpu.py --compile --out "$OUT/bench.json" 2>&1 |
    grep --line-buffered -v -i warning | tee "$OUT/bench.txt"
mark "bench_trainer.py"  # pixart train itself (loader, IDDPM loss, guard, EMA) at 512 px, batch 16, compiled
timeout 100 "$PYTHON" benchmarks/bench_trainer.py --recipe stage3-aesthetic-512 --batch 16 --steps 40 --compile \
    --out "$OUT/trainer.json" 2>&1 | grep --line-buffered -v -i warning | tail -8 | tee "$OUT/trainer.txt"
# Where a 512 px step's time goes, what pixart train adds around the step, and batch 32 (pure-, the bound
# of a bf16 stream, was priced in the ninth session). --budget-s skips the variants left rather than lose them.
mark "profile_gpu.py"
timeout 100 "$PYTHON" benchmarks/profile_gpu.py --budget-s 75 --profile all \
    --variants regional:16,trainer-regional:16,regional:32,fa4-regional:16 2>&1 |
    grep --line-buffered -v -i warning | tee "$OUT/profile.txt"
mark done
