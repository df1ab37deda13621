#!/usr/bin/env bash
# ImageNet-1K ResNet-50, batch 128 per GPU (global 1024 on 8 GPUs), 90 epochs, policy: full.
#   scripts/imagenet_r50_full.sh [IMAGENET_ROOT] [KEY=VALUE ...] [--resume auto]
# See scripts/_launch.sh for the environment variables (NPROC_PER_NODE, NNODES,
# MASTER_ADDR, NODE_RANK, OUTPUT_DIR, DRY_RUN).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" imagenet_r50_full.yaml "$@"
