#!/usr/bin/env bash
# Call 2 of a lease (BENCHMARKS.md, "A lease, step by step"), on the machine call 1 (gpu_checks.sh) left
# warm, with call 1's packages in $SITE. Results go to $OUT (default gpu-results/).
# 1. With .fa4/part-2 carried: FlashAttention-4. Joins its libs wheel from the first part (carried by
#    call 1, which copied it to /tmp, since this call's carry removes .fa4/part-1 from the tree) and
#    part-2, checks it, installs FA4 and times its kernels against SDPA's on one block's attention.
# max-autotune, which this call ran until the eighteenth session, was measured then: cuBLAS beat inductor's
# Triton templates on 15 of the block's 16 product shapes (BENCHMARKS.md); gpu_checks.sh's autotune step
# runs it again if wanted.
set -o pipefail
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT" /tmp/fa4
export PYTHONUNBUFFERED=1
SITE=${SITE:-/tmp/site}  # call 1's packages (gpu_checks.sh), FA4 joins them
# The CuTe DSL's `cutlass` package lies under dsl_packages, put on sys.path by a .pth file, which Python
# reads in site-packages only, not in a folder on PYTHONPATH.
export PYTHONPATH="$PWD/src:$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then  # call 1's, should this machine be a fresh one after all
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl ||
        exit 1
fi
if [[ ! -f .fa4/part-2/checksum.sha256 ]]; then
    echo "no .fa4/part-2 carried: nothing to run (for the other checks: gpu_checks.sh with STEPS)" | tee "$OUT/failed.txt"
    exit 1
fi
root=$PWD
name=$(awk '{print $2}' .fa4/part-2/checksum.sha256)
first=${FA4_PART1:-/tmp/fa4-part-1}
compgen -G ".fa4/part-1/libs.*" >/dev/null && first=.fa4/part-1  # where the tree still holds it
cat "$first"/libs.* .fa4/part-2/libs.* >"/tmp/fa4/$name" || { echo "a part is missing: was call 1 on this machine?"; exit 1; }
(cd /tmp/fa4 && sha256sum -c "$root/.fa4/part-2/checksum.sha256") || { echo "the joined wheel is damaged"; exit 1; }
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "/tmp/fa4/$name" .fa4/part-2/*.whl || exit 1
"$PYTHON" -c "import flash_attn.cute" 2>&1 | tail -5 | tee "$OUT/fa4-import.txt"
imported=${PIPESTATUS[0]}  # the profile still runs (its other rows), but the call fails at the end
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
timeout -k 10 100 "$PYTHON" benchmarks/profile_gpu.py --budget-s 60 --profile none --variants regional:16 2>&1 |
    grep --line-buffered -v -i warning | tee "$OUT/fa4-profile.txt"
status=${PIPESTATUS[0]}
((status == 0)) || echo "FAILED FA4 profile: exit status $status" | tee -a "$OUT/failed.txt"
((imported == 0)) || { echo "FAILED FA4 import: exit status $imported" | tee -a "$OUT/failed.txt"; status=1; }
exit "$status"
