#!/usr/bin/env bash
# A GPU lease's one command (15 minutes of device time, no network there): the machine check, its report written
# row by row under $OUT so that a run cut short keeps what it measured. Before the call, here:
#   mkdir -p carry && cp ../shared/data/cifar10-jpeg.npz carry/        (carry/ is git-ignored)
# then run `bash benchmarks/gpu_session.sh` on the device with carry=["carry"] and a timeout of about 560 s.
# The device's torch is 2.11, not the project's pin: `make test-compat` here first runs the compiled paths under it.
# CHECK_SECONDS bounds the check; CHECK_ARGS adds to it (e.g. "--full --compile graphs" on a longer lease).
set -u
py=${PY:-python3}  # the device's python3 holds torch
out=${OUT:-runs/gpu_session}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
if [ ! -f carry/cifar10-jpeg.npz ]; then
    echo "carry/cifar10-jpeg.npz is missing: copy ../shared/data/cifar10-jpeg.npz into carry/ and carry it" >&2
    exit 1
fi
"$py" benchmarks/cifar10_from_npz.py carry/cifar10-jpeg.npz /tmp/cifar10 || exit 1
# shellcheck disable=SC2086  # CHECK_ARGS holds several arguments
timeout "${CHECK_SECONDS:-520}" "$py" -m mocolab.check --data-root /tmp/cifar10 --out "$out/check" ${CHECK_ARGS:-}
echo "check exit status $?"
