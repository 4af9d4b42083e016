#!/usr/bin/env bash
# Run HERE, where PyPI is reachable, before a lease (no device time): saves the wheels the lent machine
# cannot fetch (it reaches nothing). Both folders are git-ignored, so each session fetches them again.
#   .whl/             diffusers and importlib_metadata, 6.4 MB: gpu_checks.sh installs them (carry .whl)
#   .fa4/part-1, -2   with --fa4: FlashAttention-4 and its CuTe DSL, 109 MB, over one call's 64 MiB, so its
#                     92 MB libs wheel is cut in two: call 1 carries .whl and part-1, call 2 part-2, and
#                     gpu_second_call.sh joins them (BENCHMARKS.md, "A lease, step by step").
# Versions are pinned to what was read for the lent image (Python 3.12, torch 2.11.0+cu130).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TARGET=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
ignore() { grep -qxF "$1" .git/info/exclude 2>/dev/null || echo "$1" >>.git/info/exclude; }

ignore /.whl/
"$PYTHON" -m pip download -q "${TARGET[@]}" -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
du -sh .whl

if [[ ${1:-} == --fa4 ]]; then
    ignore /.fa4/
    rm -rf .fa4 && mkdir -p .fa4/download .fa4/part-1 .fa4/part-2
    "$PYTHON" -m pip download -q "${TARGET[@]}" --pre -d .fa4/download flash-attn-4==4.0.0b36 \
        nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 \
        nvidia-cutlass-dsl-libs-core==4.8.1 \
        apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5
    big=$(ls .fa4/download/nvidia_cutlass_dsl_libs_cu13-*.whl)
    (cd .fa4/download && sha256sum "$(basename "$big")") >.fa4/part-2/checksum.sha256
    split -b 55M -d "$big" .fa4/part-1/libs.
    mv .fa4/part-1/libs.01 .fa4/part-2/
    rm "$big" && mv .fa4/download/*.whl .fa4/part-2/ && rmdir .fa4/download
    du -sh .whl .fa4/part-1 .fa4/part-2  # call 1 carries .whl and part-1, call 2 part-2: each under 64 MiB
fi
