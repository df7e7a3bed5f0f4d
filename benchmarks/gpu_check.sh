#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a GPU machine lent through the device tool: the one
# command a session runs there, after one preparation here.
#
#   here, once:  make gpu-data     # = bash benchmarks/gpu_check.sh prepare DATA_ROOT; fills .device-data/
#   there:       run(command="bash benchmarks/gpu_check.sh", carry=[".device-data"], timeout_s=600)
#
# What that machine has (the device tool's notes on its kinds and the H200, read 2026-12-02; the versions
# are other sessions' readings, not ours): one H200, x86-64, root, and no network at all, so no
# pip install from a registry. `python3` is Python 3.12 with torch 2.11 (CUDA 13), torchvision,
# numpy, scipy, matplotlib, scikit-learn, tqdm, tensorboard, torchmetrics and pytest. It lacks
# avalanche-lib and what `import avalanche` needs beyond those: dill, gdown (with beautifulsoup4
# and soupsieve), GPUtil, pytorchcv, qpsolvers (all pure Python) and wandb. Hence:
# - `prepare` copies those pure-Python packages, at the versions tested here, from .venv into
#   .device-data/site; that folder goes first on PYTHONPATH there. wandb is left behind (55 MB and a
#   dozen packages of its own; Avalanche imports it at start-up but uses it only in its W&B
#   logger and W&B confusion matrices, which hypercl never asks for): where the image has no
#   wandb, an empty stand-in module of that name is made in /tmp there.
# - MNIST travels gzipped (11 MB instead of 55: the tool carries 64 MiB in all, the repo included),
#   and Split CIFAR-100's first two tasks as a 37 MB CIFAR-100 folder (gpu_check.py's cifar step)
#   and is unpacked there into /tmp (not beside the .gz files: a rehearsal here must not grow
#   .device-data past what the tool carries).
# - hypercl runs from the source tree (PYTHONPATH), not pip-installed, on the image's own torch.
#   A difference between that torch and the one tested here shows as a failing step, not as a
#   broken install.
# - $OUT brings back at most 8 files, 2 folders down: $OUT/gpu-check gets report.md, report.json,
#   the three step logs and gpu-check.tar.gz (the whole check folder but the benchmark's
#   checkpoints: speed.json, run JSONs, plots).
# The check itself takes at most 8 minutes (gpu_check.py --budget-s 480) after about a minute of
# start-up; timeout_s=600 leaves room for both but not for a second try in one lease.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=.device-data
MNIST="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
CARRIED="avalanche-lib dill gdown beautifulsoup4 soupsieve gputil pytorchcv qpsolvers"

if [ "${1:-}" = prepare ]; then  # here: fill .device-data from DATA_ROOT and .venv
    root=${2:-${HYPERCL_DATA_ROOT:?"usage: $0 prepare DATA_ROOT (the folder holding MNIST/raw/)"}}
    mkdir -p "$DEV/MNIST/raw"
    for f in $MNIST; do
        gzip -c "$root/MNIST/raw/$f" >"$DEV/MNIST/raw/$f.gz.tmp"
        mv "$DEV/MNIST/raw/$f.gz.tmp" "$DEV/MNIST/raw/$f.gz"
    done
    rm -rf "$DEV/site"
    # shellcheck disable=SC2086
    "${VENV:-.venv}/bin/python" - "$DEV/site" $CARRIED <<'EOF'
"""Copy the installed files of the named distributions (with their metadata) into a folder."""
import importlib.metadata as md
import shutil
import sys
from pathlib import Path

dest, names = Path(sys.argv[1]), sys.argv[2:]
for name in names:
    dist = md.distribution(name)
    files = [f for f in dist.files or [] if f.parts[0] != ".." and "__pycache__" not in f.parts]
    if not files:
        sys.exit(f"gpu_check.sh: {name} lists no installed files; reinstall it in the venv")
    binary = [str(f) for f in files if f.suffix in (".so", ".pyd")]
    if binary:
        sys.exit(f"gpu_check.sh: {name} is not pure Python ({binary[0]}): carry a wheel built for the device")
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dist.locate_file(f), dest / f)
    print(f"gpu_check.sh: {name} {dist.version}")
EOF
    # Split CIFAR-100's first tasks for the check's cifar step: every image of their classes, and
    # one of each other class (the benchmark is built over all 100 classes; the check trains only
    # the first tasks). 37 MB where the whole data set is 186.
    rm -rf "$DEV/cifar-100-python"
    "${VENV:-.venv}/bin/python" - "$root/cifar-100-python" "$DEV/cifar-100-python" 20 <<'EOF'
"""Write a CIFAR-100 folder holding every image of the first N classes and one of each other."""
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np

src, dest, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
dest.mkdir(parents=True)
for name in ("train", "test"):
    with open(src / name, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    labels = np.asarray(batch[b"fine_labels"])
    keep = np.union1d(np.flatnonzero(labels < n), np.unique(labels, return_index=True)[1])
    out = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            out[key] = value[keep]
        elif isinstance(value, list):
            out[key] = [value[i] for i in keep]
        else:
            out[key] = value
    with open(dest / name, "wb") as f:
        pickle.dump(out, f, protocol=4)
    print(f"gpu_check.sh: cifar-100-python/{name}: {len(keep)} of {len(labels)} images")
shutil.copy2(src / "meta", dest / "meta")
EOF
    du -sh "$DEV"
    exit 0
fi

# there: make the environment, run the check, bring back the report
PY=${PYTHON:-python3}
if [ ! -d "$DEV/site" ]; then
    echo "gpu_check.sh: no $DEV/site: run 'make gpu-data' here first and carry .device-data" >&2
    exit 2
fi
tmp=$(mktemp -d)
mkdir -p "$tmp/data/MNIST/raw"
for f in $MNIST; do
    gunzip -c "$DEV/MNIST/raw/$f.gz" >"$tmp/data/MNIST/raw/$f"
done
if [ -d "$DEV/cifar-100-python" ]; then
    ln -s "$PWD/$DEV/cifar-100-python" "$tmp/data/cifar-100-python"
fi
if ! "$PY" -c "import wandb" 2>/dev/null; then
    mkdir -p "$tmp/stubs/wandb"
    echo '"""Stand-in: Avalanche imports wandb at start-up; hypercl never uses its W&B logger."""' \
        >"$tmp/stubs/wandb/__init__.py"
fi
export PYTHONPATH="$PWD:$PWD/$DEV/site:$tmp/stubs${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PY" -c "import sys, torch, avalanche, hypercl
print(f'gpu_check.sh: Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, '
      f'GPU {torch.cuda.is_available()}), avalanche {avalanche.__version__}, hypercl {hypercl.__version__}')"
check=$tmp/gpu-check
rc=0
"$PY" benchmarks/gpu_check.py "$check" --data-root "$tmp/data" "$@" || rc=$?
if [ -f "$check/report.md" ]; then
    dest=${OUT:-results}/gpu-check
    mkdir -p "$dest"
    cp "$check"/report.md "$check"/report.json "$check"/*.log "$dest"/
    tar czf "$dest/gpu-check.tar.gz" --exclude=checkpoints -C "$tmp" gpu-check  # checkpoints: MBs, no numbers
    cat "$check/report.md"
fi
exit $rc
