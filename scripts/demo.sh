#!/usr/bin/env bash
# Sets up .venv, makes a small generated ImageNet-layout JPEG dataset, trains the real
# ResNet50 v1.5 recipe on it through DALI on the CPU (small images, few epochs), then
# evaluates the saved checkpoint with --config.mode=eval.
#   DATA=demo_data WORKDIR=runs/demo bash scripts/demo.sh
# A finished WORKDIR is not trained again (the run resumes at its end); delete it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo needs resnet_jax alone, not the test tools (PyTorch, ONNX: several GB).
EXTRAS=${EXTRAS-} . scripts/setup.sh
set -euo pipefail
DATA=${DATA:-demo_data}
WORKDIR=${WORKDIR:-runs/demo}
SECONDS=0

python -m resnet_jax.data.demo --out "$DATA" --num-classes 5 --train-per-class 80 \
    --val-per-class 20 --image-size 64

# The real recipe, scaled down for a CPU: 5 classes, 48px crops, batch 32, 6 epochs.
OVERRIDES=(
    --config.data.root="$DATA" --config.data.backend=dali_cpu --config.num_classes=5
    --config.image_size=48 --config.eval_resize_size=55 --config.eval_image_size=48
    --config.per_device_batch_size=32 --config.num_epochs=6 --config.warmup_epochs=1
    --config.precision=fp32 --config.log_every_steps=4
)
python -m resnet_jax.main --config configs/resnet50_v15.py --workdir "$WORKDIR" "${OVERRIDES[@]}"
python -m resnet_jax.main --config configs/resnet50_v15.py --workdir "$WORKDIR" "${OVERRIDES[@]}" \
    --config.mode=eval
echo "demo finished in ${SECONDS}s; TensorBoard: tensorboard --logdir $WORKDIR"
