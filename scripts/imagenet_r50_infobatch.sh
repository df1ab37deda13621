#!/usr/bin/env bash
# ImageNet-1K ResNet-50, global batch 1024 (8 x 128), 90 epochs, policy: infobatch.
#   scripts/imagenet_r50_infobatch.sh [IMAGENET_ROOT] [KEY=VALUE ...] [--resume auto]
# See scripts/_launch.sh for the environment variables (NPROC_PER_NODE, DRY_RUN, ...).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" imagenet_r50_infobatch.yaml "$@"
