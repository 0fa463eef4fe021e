#!/usr/bin/env bash
# One training process per GPU on this node: the recommended launch for a multi-GPU node.
#
#   bash scripts/launch_node.sh python -m resnet_jax.main --config configs/resnet50_v15.py \
#       --workdir runs/rn50 --config.data.root=/data/imagenet
#
# Each process feeds and drives one GPU, so its Python thread prepares 192 images a step
# instead of 8 x 192 (docs/benchmarks.md, "Main-thread cost of the training feed"). Process i
# gets JAX_PROCESS_ID=i, JAX_NUM_PROCESSES=N, JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT and
# JAX_LOCAL_DEVICE_IDS=i (its GPU among those CUDA shows); resnet_jax joins them
# (jax.distributed) and only process 0 logs. N is GPUS, else the GPUs in CUDA_VISIBLE_DEVICES,
# else nvidia-smi's count; PORT is JAX_COORDINATOR_PORT, else a free one. SIGTERM and SIGINT
# go to every process (each stops after its step and the checkpoint is saved); when one
# process fails, the others are stopped, and the script exits with the first failure's code.
set -uo pipefail
if [ $# -eq 0 ]; then
    echo "usage: bash scripts/launch_node.sh python -m resnet_jax.main --config CONFIG ..." >&2
    exit 2
fi
if [ -n "${GPUS:-}" ]; then
    n=$GPUS
elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    n=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
elif command -v nvidia-smi >/dev/null 2>&1; then
    n=$(nvidia-smi -L | grep -c '^GPU')
else
    n=0
fi
if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ]; then
    echo "error: launch_node.sh found no GPU (GPUS='${GPUS:-}', CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES:-}'): set GPUS=N, or run the command itself for one process" >&2
    exit 2
fi
port=${JAX_COORDINATOR_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < n; i++)); do
    JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
        JAX_LOCAL_DEVICE_IDS="$i" "$@" &
    pids+=("$!")
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
running=("${pids[@]}")
while [ "${#running[@]}" -gt 0 ]; do
    finished=
    wait -n -p finished "${running[@]}"
    code=$?
    [ -z "$finished" ] && continue  # a signal interrupted the wait: wait again
    still=()
    for pid in "${running[@]}"; do
        [ "$pid" != "$finished" ] && still+=("$pid")
    done
    running=("${still[@]}")
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
        status=$code
        # The others would wait for it forever in a collective.
        kill -TERM "${running[@]}" 2>/dev/null
    fi
done
exit "$status"
