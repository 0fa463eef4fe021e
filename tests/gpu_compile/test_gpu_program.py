"""The GPU program, compiled on every commit: the real train and eval steps compiled for
NVIDIA GPUs by XLA's CUDA plugin on this CPU-only machine, and read kernel by kernel.

Run by scripts/test.sh as its second stage, with .venv-gpu-compile/ (the gpu-compile extra)
on PYTHONPATH and JAX_PLATFORMS=cpu; without the plugin every test here is skipped.
"""

import math

import pytest

from resnet_jax.bench import compiled

pytestmark = pytest.mark.skipif(
    not compiled.has_cuda_compiler(),
    reason="XLA's CUDA plugin is not importable: run scripts/test.sh, or put "
           ".venv-gpu-compile on PYTHONPATH with JAX_PLATFORMS=cpu")

GIB = 2**30
# The parameters' f32 bytes: what a step's gradient all-reduce must move, no more.
PARAMETER_BYTES = {"resnet50_v15": 4 * 25_557_032, "se_resnext101_32x4d": 4 * 45_251_128}


def _check_step(arch, precision_name, target_name, devices, batch):
    """Compiles the arch's recipe and checks what every GPU program of it must be."""
    target = compiled.TARGETS[target_name]
    steps = compiled.compile_steps(compiled.step_config(arch, precision_name, batch), target,
                                   devices)
    counts = compiled.count(steps.train, target, batch, precision_name=precision_name)
    hlo = steps.train.as_text()
    kinds = counts.by_kind
    # Every convolution is a cuDNN call on NHWC activations (HWIO filters as cuDNN's o01i),
    # and no activation changes layout on the way.
    assert not any(k.startswith("convolution") for k in kinds), kinds
    assert sum(v for k, v in kinds.items() if k.startswith("cudnn")) >= 3 * 50
    assert counts.conv_layouts.keys() == {"b01f_o01i->b01f"}, counts.conv_layouts
    assert counts.activation_layout_changes == 0
    assert counts.host_transfers == 0
    # No copies of the parameters or their momentum back into the state's buffers (with the
    # state donated, XLA made two per conv kernel: 108 per RN50 v1.5 step).
    assert kinds.get("copy", 0) <= 8, kinds
    # fp16 scales the loss and adapts the scale; bf16 has no scale to adapt.
    assert ("update_loss_scale" in compiled.source_functions(hlo)) == (precision_name == "fp16")
    if devices == 1:
        assert counts.collectives == 0
    else:  # the gradients' all-reduce, combined into a handful of collectives per step
        assert 1 <= counts.collectives <= 8, kinds
        assert PARAMETER_BYTES[arch] <= counts.collective_bytes <= 1.05 * PARAMETER_BYTES[arch]
    # The recipe's batch fits in 80% of an 80 GB GPU, with its arguments.
    assert counts.argument_bytes + counts.temp_bytes <= 0.8 * 80 * GIB
    assert counts.flops_per_image > 0 and math.isfinite(counts.images_per_sec)
    # The eval step compiles too, with NHWC convolutions and no training bookkeeping.
    evaluation = compiled.count(steps.eval, target, batch, precision_name=precision_name)
    assert evaluation.conv_layouts.keys() == {"b01f_o01i->b01f"}
    assert evaluation.kernels < counts.kernels / 3
    return counts


@pytest.mark.parametrize("precision_name,target_name,devices", [
    ("bf16", "h200", 1), ("bf16", "a100", 8), ("fp16", "a100", 1), ("fp16", "h100", 8)])
def test_resnet50_v15_step_compiles_for_gpus_as_cudnn_nhwc_without_host_transfers(
        precision_name, target_name, devices):
    counts = _check_step("resnet50_v15", precision_name, target_name, devices, 192)
    # RN50 v1.5's 53 convolutions: forward, and the backward ones (the stem has no input
    # gradient); XLA may write some as forward convolutions of the transposed filter.
    convs = sum(v for k, v in counts.by_kind.items() if k.startswith("cudnn"))
    assert convs == 53 + 52 + 53
    assert 23.5e9 < counts.conv_flops_per_image < 25e9  # 3 x 4.09 GMACs x 2


def test_se_resnext101_step_compiles_for_an_a100_at_the_recipes_batch():
    _check_step("se_resnext101_32x4d", "bf16", "a100", 1, 128)


def test_gpu_check_counts_the_program_of_the_gpu_it_found(tmp_path):
    """gpu_check's 'compiled program' part: the ceiling of the GPU the devices part named,
    kept for the throughput table, even with no GPU at all."""
    import os

    from resnet_jax.bench import gpu_check

    ctx = gpu_check.Context(out=str(tmp_path), env=dict(os.environ), cpu=False, devices=1,
                            data_root="", model_flags=[], bench_flags=[], epochs=1,
                            log_every=1, per_device=8, device_kind="NVIDIA H200")
    lines = gpu_check.counted_part("resnet_tiny", "bf16", 8)(ctx, 300)
    ceiling = ctx.ceilings[("resnet_tiny", "bf16", 8)]
    assert ceiling > 0
    assert lines[0].startswith("- resnet_tiny bf16 training, batch 8/GPU, compiled for one "
                               "NVIDIA H200 in ")
    assert f"ceiling {ceiling:,.0f} img/s per GPU" in lines[0]
    row = {"arch": "resnet_tiny", "mode": "train", "data": "synthetic", "precision": "bf16",
           "batch": 8, "devices": 1, "images_per_sec_per_gpu": ceiling / 2}
    assert "| 50% |" in gpu_check.throughput_table([row], ctx.ceilings)[2]
    ctx.device_kind = "Tesla T4"
    with pytest.raises(gpu_check.PartFailed, match="no counted target for 'Tesla T4'"):
        gpu_check.counted_part("resnet_tiny", "bf16", 8)(ctx, 300)
