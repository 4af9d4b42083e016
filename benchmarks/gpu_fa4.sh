#!/usr/bin/env bash
# Call 2 of a lease with FlashAttention-4 (BENCHMARKS.md, "A lease, step by step"), on the machine call 1
# left warm: joins the libs wheel from .fa4/part-1 (carried by call 1, still there) and .fa4/part-2
# (carried now), checks it, installs FA4 beside call 1's packages, and times a 512 px step with and
# without it. Results go to $OUT (default gpu-results/).
set -o pipefail
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT" /tmp/fa4
export PYTHONUNBUFFERED=1
SITE=${SITE:-/tmp/site}  # call 1's packages (gpu_checks.sh), FA4 joins them
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
root=$PWD
name=$(awk '{print $2}' .fa4/part-2/checksum.sha256)
cat .fa4/part-1/libs.* .fa4/part-2/libs.* >"/tmp/fa4/$name" || { echo "a part is missing: was call 1 on this machine?"; exit 1; }
(cd /tmp/fa4 && sha256sum -c "$root/.fa4/part-2/checksum.sha256") || { echo "the joined wheel is damaged"; exit 1; }
if compgen -G ".whl/*.whl" >/dev/null; then  # call 1's, should this machine be a fresh one after all
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "/tmp/fa4/$name" .fa4/part-2/*.whl || exit 1
"$PYTHON" -c "import flash_attn.cute" 2>&1 | tail -5 | tee "$OUT/fa4-import.txt"
timeout -k 10 300 "$PYTHON" benchmarks/profile_gpu.py --budget-s 240 --variants regional:16,fa4-regional:16 2>&1 |
    grep --line-buffered -v -i warning | tee "$OUT/fa4-profile.txt"
