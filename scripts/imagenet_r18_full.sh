#!/usr/bin/env bash
# ImageNet-1K ResNet-18, global batch 512 (8 x 64), 90 epochs, policy: full.
#   scripts/imagenet_r18_full.sh [IMAGENET_ROOT] [KEY=VALUE ...] [--resume auto]
# See scripts/_launch.sh for the environment variables (NPROC_PER_NODE, DRY_RUN, ...).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" imagenet_r18_full.yaml "$@"
