#!/usr/bin/env bash
# GPU check for orderdp-dali: under 8 minutes on one data-centre GPU. Run from the repo root.
#
#   bash bench/gpu_check.sh                 # results to $OUT if set, else runs/gpu_check-<time>
#   bash bench/gpu_check.sh --dry-run       # print the steps, run nothing (CI runs this)
#   bash bench/gpu_check.sh --cpu           # tiny CPU versions of every step (no GPU needed)
#
# Steps (each under its own time limit):
#   1. the GPU-marked tests:                  python -m pytest -m gpu tests
#   2. loader only, no model: DALI "mixed" (GPU) decoding through our plan iterator and
#      through fn.readers.file, against torchvision's DataLoader with every CPU core
#   3. ResNet-50 with AMP, full data vs OrderDP, on generated ImageNet-like JPEGs
#      (configs/bench_gpu_r50.yaml)
# and writes environment.txt (nvidia-smi, versions), loader.json, pytest.txt and the bench
# run folder (results.json, report.md, plots) under the output folder.
set -euo pipefail

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
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
[[ -n "$OUT_DIR" ]] || OUT_DIR="runs/gpu_check-$(date +%Y%m%d-%H%M%S)"
PY="${PYTHON:-python}"
NPROC="$(nproc 2>/dev/null || echo 1)"

if [[ $CPU -eq 1 ]]; then
    DEVICE=cpu
    DATA=data/gpu_check_cpu_small
    MAKE_ARGS=(--mode small --classes 4 --train-per-class 40 --val-per-class 5)
    LOADER_ARGS=(--device cpu --workers "$NPROC" --batch-size 32 --crop 64 --warmup 1 --repeats 1)
    BENCH_ARGS=(--config configs/bench_cpu_demo.yaml "dataset.root=$DATA"
                "dataset.make={mode: small, num_classes: 4, train_per_class: 40, val_per_class: 5, seed: 0}"
                train.epochs=2 "policies=[full,orderdp]" warmup=false)
    LIMIT_DATA=120; LIMIT_TESTS=300; LIMIT_LOADER=180; LIMIT_BENCH=240
else
    DEVICE=gpu
    DATA=data/bench_imagenet_like_gpu   # the dataset of configs/bench_gpu_r50.yaml
    MAKE_ARGS=(--mode imagenet-like --classes 20 --train-per-class 400 --val-per-class 20)
    LOADER_ARGS=(--device gpu --workers "$NPROC" --batch-size 128 --crop 224 --warmup 1 --repeats 3)
    BENCH_ARGS=(--config configs/bench_gpu_r50.yaml)
    LIMIT_DATA=90; LIMIT_TESTS=90; LIMIT_LOADER=100; LIMIT_BENCH=190  # 470 s at most
fi

step() {  # step NAME LIMIT_S CMD...: print, then run under a time limit unless --dry-run
    local name="$1" limit="$2"
    shift 2
    printf '[gpu-check] %s (limit %ss): %s\n' "$name" "$limit" "$*"
    [[ $DRY_RUN -eq 1 ]] && return 0
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    printf '[gpu-check] %s: exit %s after %ss\n' "$name" "$rc" "$((SECONDS - t0))"
    STATUS+=("$name=$rc")
    return 0
}

STATUS=()
echo "[gpu-check] output: $OUT_DIR  device: $DEVICE  cpus: $NPROC  dry-run: $DRY_RUN"
if [[ $DRY_RUN -eq 0 ]]; then
    mkdir -p "$OUT_DIR"
    {
        date -u +%FT%TZ
        nvidia-smi 2>&1 || echo "nvidia-smi: not available"
        "$PY" -c "import sys, torch, torchvision, nvidia.dali as d; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('torchvision', torchvision.__version__); print('dali', d.__version__)"
        lscpu 2>/dev/null | head -20 || true
    } > "$OUT_DIR/environment.txt" 2>&1 || true
fi

# pytest exits 5 when no test carries the gpu mark: not a failure of this check.
[[ $SKIP_TESTS -eq 1 ]] || step tests "$LIMIT_TESTS" bash -c "$PY -m pytest -m gpu -q -rs tests 2>&1 | tee '$OUT_DIR/pytest.txt'; rc=\${PIPESTATUS[0]}; [[ \$rc -eq 5 ]] && rc=0; exit \$rc"
if [[ $SKIP_LOADER -eq 0 ]]; then
    step data "$LIMIT_DATA" "$PY" -m orderdp_dali.make_data "$DATA" "${MAKE_ARGS[@]}"
    step loader "$LIMIT_LOADER" "$PY" -m orderdp_dali.bench.loader_compare --root "$DATA/train" "${LOADER_ARGS[@]}" --json "$OUT_DIR/loader.json"
fi
[[ $SKIP_BENCH -eq 1 ]] || step bench "$LIMIT_BENCH" orderdp-dali bench "${BENCH_ARGS[@]}" --out "$OUT_DIR/bench"

if [[ $DRY_RUN -eq 1 ]]; then
    echo "[gpu-check] dry run: nothing executed"
    exit 0
fi
echo "[gpu-check] steps: ${STATUS[*]}" | tee "$OUT_DIR/status.txt"
for s in "${STATUS[@]}"; do
    [[ "${s#*=}" == "0" ]] || exit 1
done
