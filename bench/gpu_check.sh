#!/usr/bin/env bash
# GPU check for orderdp-dali: about 6 minutes on one data-centre GPU. Run from the repo root.
#
#   bash bench/gpu_check.sh                 # results to $OUT if set, else runs/gpu_check-<time>
#   bash bench/gpu_check.sh --dry-run       # print the steps, run nothing (CI runs this)
#   bash bench/gpu_check.sh --cpu           # tiny CPU versions of every step (no GPU needed)
#
# On the lent GPU machine (no DALI, no registry) follow ../shared/gpu/README.md: its wheel
# parts carry DALI and pytest (with pluggy, iniconfig, pygments, six, packaging) into
# /tmp/site, on PYTHONPATH, and its last command runs this script.
#
# Steps, each under its own time limit, each writing its results as soon as it ends:
#   0. environment facts: GPU and driver (nvidia-smi), then torch and CUDA, then DALI, each
#      asked on its own so that a missing DALI does not hide the rest; stops if CUDA is absent
#   1. the GPU tests (tests/test_gpu.py):      python -m pytest -m gpu -s tests
#      any skipped GPU test fails the check (--cpu: the iterator's CPU tests instead); the
#      output records the mixed-vs-CPU pixel difference with and without fancy upsampling
#   2. data: generated ImageNet-like JPEGs (configs/bench_gpu_r50.yaml's dataset)
#   3. loader only, batch 256: our plan iterator and fn.readers.file, both decoding "mixed";
#      loader.json also holds the mixed pipeline's set-up time and first-batch latency
#   4. ResNet-50 with AMP, full data vs OrderDP (configs/bench_gpu_r50.yaml); its
#      results.json is rewritten after every round of epochs, so a step cut off by its limit
#      still returns what it measured, with each run's pipeline set-up time and GPU memory
#      (free/used after the pipeline is built and after every epoch)
#   5. thresholds, printed as met / not met (python -m orderdp_dali.bench.gpu_thresholds)
#
# At most 8 files, directly in the output folder: env.txt, pytest.txt, loader.json,
# bench_report.md, bench_results.json, thresholds.md, log.txt (every step's output) and
# status.txt (each step's exit code, appended as the steps end). Exit status 0 only when
# CUDA was visible, every step succeeded, no GPU test was skipped and every threshold was met.
# Python: $PYTHON, else python3.
set -euo pipefail

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "options: --dry-run  --cpu  --out DIR  --skip-tests  --skip-loader  --skip-bench  -h|--help"
}

DRY_RUN=0
CPU=0
SKIP_TESTS=0
SKIP_LOADER=0
SKIP_BENCH=0
OUT_DIR="${OUT:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --cpu) CPU=1 ;;
        --skip-tests) SKIP_TESTS=1 ;;
        --skip-loader) SKIP_LOADER=1 ;;
        --skip-bench) SKIP_BENCH=1 ;;
        --out)
            [[ $# -ge 2 ]] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }
            OUT_DIR="$2"
            shift
            ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
PY="${PYTHON:-python3}"
# Import orderdp_dali as installed, never from the working directory: in the source tree
# pipelines/ and bench/ are not yet orderdp_dali.pipelines / .bench (setup.py maps them).
export PYTHONSAFEPATH=1

[[ -n "$OUT_DIR" ]] || OUT_DIR="runs/gpu_check-$(date +%Y%m%d-%H%M%S)"
NPROC="$(nproc 2>/dev/null || echo 1)"
WORK="${TMPDIR:-/tmp}/orderdp-gpu-check-$$"   # the bench's run folder; only its summaries go to $OUT

if [[ $CPU -eq 1 ]]; then
    DEVICE=cpu
    DATA=data/gpu_check_cpu_small
    MAKE_ARGS=(--mode small --classes 4 --train-per-class 40 --val-per-class 5)
    LOADER_ARGS=(--device cpu --workers "$NPROC" --batch-size 32 --crop 64 --warmup 1 --repeats 1)
    BENCH_ARGS=(--config configs/bench_cpu_demo.yaml "dataset.root=$DATA"
                "dataset.make={mode: small, num_classes: 4, train_per_class: 40, val_per_class: 5, seed: 0}"
                training.train.epochs=2 "policies=[full,orderdp]" "seeds=[0]" warmup=false)
    LIMIT_ENV=60; LIMIT_TESTS=300; LIMIT_DATA=120; LIMIT_LOADER=180; LIMIT_BENCH=240
else
    DEVICE=gpu
    DATA=data/bench_imagenet_like_gpu   # the dataset of configs/bench_gpu_r50.yaml
    MAKE_ARGS=(--mode imagenet-like --classes 20 --train-per-class 1000 --val-per-class 25)
    LOADER_ARGS=(--device gpu --workers "$NPROC" --batch-size 256 --crop 224 --warmup 1 --repeats 3
                 --loaders dali-plan,dali-reader)
    BENCH_ARGS=(--config configs/bench_gpu_r50.yaml)
    # The bench step, sized at an assumed 2,500 ResNet-50 AMP training images/s: a 20,000-image
    # warm-up epoch, 4 full epochs (80,000) and 4 OrderDP epochs (4 x 12,000) are 148,000 images,
    # 59 s, plus 8 validations of 500 images and start-up (model, cuDNN autotuning, 3 pipeline
    # builds), about 15 s: 75 s of the 135 s limit, a margin of 1.8x (it still fits at 1,400/s).
    # A step cut off by its limit keeps the rounds it finished (results.json after each round).
    LIMIT_ENV=30; LIMIT_TESTS=60; LIMIT_DATA=75; LIMIT_LOADER=60; LIMIT_BENCH=135  # 360 s at most
fi

STATUS=()
step() {  # step NAME LIMIT_S CMD...: print, then run under a time limit (output to log.txt) unless --dry-run
    local name="$1" limit="$2"
    shift 2
    printf '[gpu-check] %s (limit %ss): %s\n' "$name" "$limit" "$*"
    [[ $DRY_RUN -eq 1 ]] && return 0
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" >> "$OUT_DIR/log.txt" 2>&1 || rc=$?
    printf '[gpu-check] %s: exit %s after %ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$OUT_DIR/status.txt"
    STATUS+=("$name=$rc")
    return 0
}

echo "[gpu-check] output: $OUT_DIR  device: $DEVICE  cpus: $NPROC  python: $PY  dry-run: $DRY_RUN"
if [[ $DRY_RUN -eq 0 ]]; then
    mkdir -p "$OUT_DIR"
    : > "$OUT_DIR/status.txt"
    : > "$OUT_DIR/log.txt"
    {
        date -u +%FT%TZ
        nvidia-smi 2>&1 || echo "nvidia-smi: not available"
        "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'devices', torch.cuda.device_count(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1 || echo "torch: not importable"
        "$PY" -c "import nvidia.dali as d; print('dali', d.__version__)" 2>&1 || echo "dali: not importable"
        "$PY" -c "import torchvision, numpy; print('torchvision', torchvision.__version__, 'numpy', numpy.__version__)" 2>&1
        "$PY" -c "import pytest; print('pytest', pytest.__version__)" 2>&1 || echo "pytest: not importable"
        lscpu 2>/dev/null | head -20 || true
    } > "$OUT_DIR/env.txt" 2>&1
    if [[ $CPU -eq 0 ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "[gpu-check] CUDA is not visible to $PY: see $OUT_DIR/env.txt" | tee -a "$OUT_DIR/status.txt" >&2
        exit 1
    fi
fi

if [[ $SKIP_TESTS -eq 0 && $CPU -eq 1 ]]; then
    step tests "$LIMIT_TESTS" bash -c "$PY -m pytest -q -p no:cacheprovider tests/test_iterator.py > '$OUT_DIR/pytest.txt' 2>&1"
elif [[ $SKIP_TESTS -eq 0 ]]; then
    # Every GPU test must run: a skip (no CUDA, a missing module) is a failure of this check.
    # -s: the tests print what they measured (the mixed-vs-CPU pixel difference both ways).
    step tests "$LIMIT_TESTS" bash -c "$PY -c 'import pytest' 2> '$OUT_DIR/pytest.txt' || { echo 'pytest is not \
importable: the wheel parts of ../shared/gpu/fetch_wheels.sh carry it (see ../shared/gpu/README.md)' >> '$OUT_DIR/pytest.txt'; exit 4; }; \
$PY -m pytest -m gpu -q -s -rs -p no:cacheprovider tests > '$OUT_DIR/pytest.txt' 2>&1; \
rc=\$?; if grep -q SKIPPED '$OUT_DIR/pytest.txt'; then echo 'a GPU test was skipped' >> '$OUT_DIR/pytest.txt'; rc=3; fi; exit \$rc"
fi
if [[ $SKIP_LOADER -eq 0 || $SKIP_BENCH -eq 0 ]]; then
    step data "$LIMIT_DATA" "$PY" -m orderdp_dali.make_data "$DATA" "${MAKE_ARGS[@]}"
fi
if [[ $SKIP_LOADER -eq 0 ]]; then
    step loader "$LIMIT_LOADER" "$PY" -m orderdp_dali.bench.loader_compare --root "$DATA/train" "${LOADER_ARGS[@]}" \
        --json "$OUT_DIR/loader.json"
fi
if [[ $SKIP_BENCH -eq 0 ]]; then
    step bench "$LIMIT_BENCH" "$PY" -m orderdp_dali.cli bench "${BENCH_ARGS[@]}" --out "$WORK/bench"
    if [[ $DRY_RUN -eq 0 ]]; then
        cp "$WORK/bench/report.md" "$OUT_DIR/bench_report.md" 2>/dev/null || true
        cp "$WORK/bench/results.json" "$OUT_DIR/bench_results.json" 2>/dev/null || true
    fi
fi
if [[ $CPU -eq 0 ]]; then
    step thresholds 30 "$PY" -m orderdp_dali.bench.gpu_thresholds --loader "$OUT_DIR/loader.json" \
        --bench "$OUT_DIR/bench_results.json" --out "$OUT_DIR/thresholds.md"
fi

if [[ $DRY_RUN -eq 1 ]]; then
    echo "[gpu-check] dry run: nothing executed"
    exit 0
fi
[[ -f "$OUT_DIR/thresholds.md" ]] && cat "$OUT_DIR/thresholds.md"
echo "[gpu-check] steps: ${STATUS[*]}" | tee -a "$OUT_DIR/status.txt"
for s in "${STATUS[@]}"; do
    [[ "${s#*=}" == "0" ]] || exit 1
done
