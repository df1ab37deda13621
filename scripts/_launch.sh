#!/usr/bin/env bash
# Shared launcher of the ImageNet scripts: torchrun one process per GPU with a config.
#
#   _launch.sh CONFIG_NAME [IMAGENET_ROOT] [KEY=VALUE ... | --resume auto | --output-dir DIR ...]
#
# IMAGENET_ROOT (the folder holding train/ and val/) is the first argument, or the
# IMAGENET_ROOT environment variable. Everything after it goes to `orderdp_dali.train`
# unchanged (config overrides, --resume PATH|auto, --output-dir DIR).
#
# Environment:
#   NPROC_PER_NODE  processes (GPUs) on this node, a positive integer. Default: the GPUs
#                   visible here: the entries of CUDA_VISIBLE_DEVICES when it is set (set
#                   but empty means none), else the GPU lines of `nvidia-smi -L`. No GPU
#                   found and NPROC_PER_NODE unset is an error; under DRY_RUN=1 it prints
#                   the command with --nproc_per_node=1 and a note on stderr instead.
#                   The configs' batch size is per GPU and their lr assumes 8 GPUs in all.
#   NNODES          nodes (default 1). With 1: torchrun --standalone, which picks a free
#                   port itself, so several runs can share a node; MASTER_ADDR,
#                   MASTER_PORT and NODE_RANK are not used.
#                   With more, on every node: MASTER_ADDR (required: the address of node
#                   0), MASTER_PORT (default 29500), NODE_RANK (required: 0..NNODES-1).
#   OUTPUT_DIR      where the run writes (metrics.jsonl, checkpoints); a relative path is
#                   taken from the current directory and passed absolute. Default:
#                   <repo>/runs/<config name without .yaml>, whatever the current
#                   directory. Not used when the arguments hold --output-dir or
#                   train.output_dir=... (the user's choice is passed unchanged).
#   DRY_RUN=1       print the command (shell-quoted) instead of running it.
set -euo pipefail

die() {
    echo "error: $*" >&2
    exit 2
}

if [[ $# -lt 1 ]]; then
    echo "usage: $(basename "$0") CONFIG_NAME [IMAGENET_ROOT] [KEY=VALUE ...]" >&2
    exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config="$repo/configs/$1"
name=$(basename "$1" .yaml)
shift
if [[ ! -f $config ]]; then
    die "config file not found: $config"
fi

root=${IMAGENET_ROOT:-}
if [[ $# -gt 0 && $1 != -* && $1 != *=* ]]; then
    root=$1
    shift
fi
if [[ -z $root ]]; then
    die "no ImageNet folder: pass it as the first argument or set IMAGENET_ROOT (it must hold train/ and val/)"
fi
if [[ ! -d $root ]]; then
    die "ImageNet folder not found: $root"
fi
dry_run=${DRY_RUN:-0}

# ---- nodes: one node is standalone (free port), several use MASTER_ADDR:MASTER_PORT
nnodes=${NNODES:-1}
[[ $nnodes =~ ^[1-9][0-9]*$ ]] || die "NNODES must be a positive integer, got '$nnodes'"
if [[ $nnodes -eq 1 ]]; then
    topology=(--standalone --nnodes=1)
else
    [[ -n ${MASTER_ADDR:-} ]] || die "NNODES=$nnodes needs MASTER_ADDR (the address of node 0, the same on every node)"
    [[ -n ${NODE_RANK:-} ]] || die "NNODES=$nnodes needs NODE_RANK (this node's rank, 0..$((nnodes - 1)))"
    [[ $NODE_RANK =~ ^(0|[1-9][0-9]*)$ && $NODE_RANK -lt $nnodes ]] ||
        die "NODE_RANK must be an integer in 0..$((nnodes - 1)), got '$NODE_RANK'"
    port=${MASTER_PORT:-29500}
    [[ $port =~ ^[1-9][0-9]*$ && $port -le 65535 ]] || die "MASTER_PORT must be a port number (1..65535), got '$port'"
    topology=(
        "--nnodes=$nnodes"
        "--node_rank=$NODE_RANK"
        "--master_addr=$MASTER_ADDR"
        "--master_port=$port"
    )
fi

# ---- processes per node: NPROC_PER_NODE, else the visible GPUs
count_gpus() {
    # CUDA_VISIBLE_DEVICES: CUDA stops at the first entry that is not an index or a
    # GPU-/MIG- UUID (e.g. -1), so count the entries before it.
    if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
        local n=0 entry
        local -a entries
        IFS=, read -r -a entries <<<"$CUDA_VISIBLE_DEVICES"
        for entry in ${entries[@]+"${entries[@]}"}; do
            entry=${entry//[[:space:]]/}
            [[ $entry =~ ^([0-9]+|GPU-.+|MIG-.+)$ ]] || break
            n=$((n + 1))
        done
        echo "$n"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

if [[ -n ${NPROC_PER_NODE:-} ]]; then
    nproc=$NPROC_PER_NODE
    [[ $nproc =~ ^[1-9][0-9]*$ ]] || die "NPROC_PER_NODE must be a positive integer, got '$nproc'"
else
    nproc=$(count_gpus)
    if [[ $nproc -eq 0 ]]; then
        if [[ $dry_run == 1 ]]; then
            echo "note: no GPU found (CUDA_VISIBLE_DEVICES, nvidia-smi -L) and NPROC_PER_NODE unset: printing --nproc_per_node=1" >&2
            nproc=1
        else
            die "no GPU found (CUDA_VISIBLE_DEVICES, nvidia-smi -L): set NPROC_PER_NODE to the number of processes per node"
        fi
    fi
fi

# ---- output directory: absolute, unless the user chose one among the arguments
user_output=0
for arg in "$@"; do
    opt=${arg%%=*}
    # --output-dir, --output-dir=DIR, or an abbreviation argparse accepts (--out ...).
    if [[ ${#opt} -ge 3 && --output-dir == "$opt"* ]] || [[ $arg == train.output_dir=* ]]; then
        user_output=1
    fi
done
output=()
if [[ $user_output == 0 ]]; then
    out=${OUTPUT_DIR:-$repo/runs/$name}
    [[ $out == /* ]] || out=$PWD/$out
    output=(--output-dir "$out")
fi

cmd=(
    torchrun
    "${topology[@]}"
    "--nproc_per_node=$nproc"
    -m orderdp_dali.train
    --config "$config"
    ${output[@]+"${output[@]}"}
    "data.root=$root"
    "$@"
)
if [[ $dry_run == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
exec "${cmd[@]}"
