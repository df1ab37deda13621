#!/usr/bin/env bash
# Shared launcher of the ImageNet scripts: torchrun one process per GPU with a config.
#
#   _launch.sh CONFIG_NAME [IMAGENET_ROOT] [KEY=VALUE ... | --resume auto ...]
#
# IMAGENET_ROOT (the folder holding train/ and val/) is the first argument, or the
# IMAGENET_ROOT environment variable. Everything after it goes to `orderdp_dali.train`
# unchanged (config overrides, --resume PATH|auto, --output-dir DIR).
# Environment: NPROC_PER_NODE (8), NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1),
# MASTER_PORT (29500); DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $(basename "$0") CONFIG_NAME [IMAGENET_ROOT] [KEY=VALUE ...]" >&2
    exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config="$repo/configs/$1"
shift
if [[ ! -f $config ]]; then
    echo "error: config file not found: $config" >&2
    exit 2
fi

root=${IMAGENET_ROOT:-}
if [[ $# -gt 0 && $1 != -* && $1 != *=* ]]; then
    root=$1
    shift
fi
if [[ -z $root ]]; then
    echo "error: no ImageNet folder: pass it as the first argument or set IMAGENET_ROOT (it must hold train/ and val/)" >&2
    exit 2
fi
if [[ ! -d $root ]]; then
    echo "error: ImageNet folder not found: $root" >&2
    exit 2
fi

cmd=(
    torchrun
    "--nproc_per_node=${NPROC_PER_NODE:-8}"
    "--nnodes=${NNODES:-1}"
    "--node_rank=${NODE_RANK:-0}"
    "--master_addr=${MASTER_ADDR:-127.0.0.1}"
    "--master_port=${MASTER_PORT:-29500}"
    -m orderdp_dali.train
    --config "$config"
    "data.root=$root"
    "$@"
)
if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
exec "${cmd[@]}"
