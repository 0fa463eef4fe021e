#!/usr/bin/env bash
# Multi-node training under SLURM: one process per node, each driving all of its GPUs.
#
#   DATA=/shared/imagenet sbatch scripts/launch_slurm.sh [CONFIG] [WORKDIR] [--config.x=y ...]
#
# e.g. DATA=/shared/imagenet sbatch --nodes=2 scripts/launch_slurm.sh \
#          configs/resnet50_v15.py runs/rn50-2x8
#
# Run from the checkout, after `EXTRAS=cuda12,test bash scripts/setup.sh` on a node
# (the checkout, its .venv, DATA and WORKDIR must be on a filesystem every node sees).
# resnet_jax reads the SLURM environment (node list, task count and rank), elects the
# first node as coordinator, joins the processes (jax.distributed) and gives each
# process every GPU of its node; the batch is then split over all 2 x 8 GPUs: 192 images per
# GPU for ResNet50 v1.5, a global batch of 3072, learning rate 3.072. Only process 0 logs and writes
# TensorBoard; all processes write the checkpoints together. Restarting the
# same command resumes from WORKDIR's latest checkpoint.
#
#SBATCH --job-name=resnet_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=06:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:-configs/resnet50_v15.py}
[ $# -gt 0 ] && shift
WORKDIR=${1:-runs/${SLURM_JOB_NAME:-resnet_jax}-${SLURM_JOB_ID:-local}}
[ $# -gt 0 ] && shift
: "${DATA:?set DATA to the ImageNet folder (DATA/train/<class>, DATA/val/<class>)}"

# --kill-on-bad-exit: one failed process ends the job instead of leaving the others
# waiting forever in a collective. --cpus-per-task again: since Slurm 22.05 srun does not
# inherit it from sbatch, and a task would get one core for its DALI threads.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-64}" \
    .venv/bin/python -m resnet_jax.main --config "$CONFIG" --workdir "$WORKDIR" \
    --config.data.root="$DATA" --config.data.backend=dali_gpu "$@"
