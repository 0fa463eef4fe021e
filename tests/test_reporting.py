"""The progress line's accounting: training time vs. time spent in eval and checkpoints."""

import time

import pytest

from resnet_jax import reporting
from resnet_jax.train import loop


class _QueuedWork:
    """Stands for training steps still queued on the devices: done `seconds` after creation."""

    def __init__(self, seconds: float):
        self.done_at = time.perf_counter() + seconds

    def block_until_ready(self):
        time.sleep(max(0.0, self.done_at - time.perf_counter()))
        return self


def test_queued_training_is_waited_for_before_a_pause_and_counted_as_training():
    progress = reporting.Progress(total_steps=20, start_step=0, global_batch_size=10)
    progress.reset(0)
    # Ten steps dispatched at once; the devices need 0.4 s more for them. Then an eval of 0.1 s.
    with progress.pause(_QueuedWork(0.4)):
        time.sleep(0.1)
    speed = progress.mark(10)
    assert progress.paused_seconds == pytest.approx(0.1, abs=0.05)
    # 100 images in about 0.4 s of training: 250 img/s, not 100 / 0.0 s.
    assert speed["images_per_sec"] == pytest.approx(250, rel=0.25)
    assert progress.eta_seconds(10) == pytest.approx(0.4, rel=0.25)
    line = progress.line(10, 1.0, 2, {"loss": 1.0, "top1": 0.5, "learning_rate": 0.1}, speed)
    assert "eval+checkpoint 0s" in line and "img/s" in line


def test_without_pending_work_the_whole_pause_is_paused():
    progress = reporting.Progress(total_steps=4, start_step=0, global_batch_size=1)
    with progress.pause():
        time.sleep(0.1)
    assert progress.paused_seconds == pytest.approx(0.1, abs=0.05)


@pytest.mark.parametrize("step, every, total, expected", [
    (4, 4, 12, True), (5, 4, 12, False), (12, 5, 12, True), (3, 0, 12, False), (12, 0, 12, True),
])
def test_itstime_every_n_steps_and_at_the_end(step, every, total, expected):
    assert loop.itstime(step, every, total) is expected


def test_tflops_and_mfu_follow_images_over_wall_time():
    # 3 steps of 64 images in 0.2 s of wall time, 12.3 GFLOP an image, on 2 devices of 100
    # TFLOP/s peak: 960 img/s, 11.8 TFLOP/s, MFU 5.9%.
    progress = reporting.Progress(total_steps=9, start_step=0, global_batch_size=64,
                                  flops_per_image=12.3e9, peak_flops=2 * 100e12)
    progress.reset(0)
    time.sleep(0.2)
    speed = progress.mark(3)
    seconds = 3 * 64 / speed["images_per_sec"]
    assert seconds == pytest.approx(0.2, abs=0.1)
    assert speed["tflops_per_sec"] == pytest.approx(speed["images_per_sec"] * 12.3e9 / 1e12)
    assert speed["mfu"] == pytest.approx(speed["tflops_per_sec"] * 1e12 / 200e12)
    line = progress.line(3, 0.3, 1, {"loss": 1.0, "top1": 0.5, "learning_rate": 0.1}, speed)
    assert f"img/s {speed['tflops_per_sec']:,.1f} TFLOP/s MFU {100 * speed['mfu']:.1f}% |" in line
    # Unknown peak (a GPU not in the table): TFLOP/s alone; unknown FLOPs (CPUs): neither.
    for peak, shown in ((None, ["TFLOP/s"]), (200e12, ["TFLOP/s", "MFU"])):
        speed = reporting.Progress(total_steps=9, start_step=0, global_batch_size=64,
                                   flops_per_image=12.3e9, peak_flops=peak).mark(3)
        assert [k for k in ("tflops_per_sec", "mfu") if k in speed] == [
            {"TFLOP/s": "tflops_per_sec", "MFU": "mfu"}[s] for s in shown]
    speed = reporting.Progress(total_steps=9, start_step=0, global_batch_size=64).mark(3)
    assert set(speed) == {"steps_per_sec", "images_per_sec"}


def test_peak_flops_and_published_figures_by_device_kind():
    from resnet_jax import hardware
    from resnet_jax.bench import baselines

    assert hardware.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert hardware.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert hardware.peak_flops("NVIDIA H200", "fp16") == 989e12
    assert hardware.peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == 156e12
    assert hardware.peak_flops("cpu", "bf16") is None
    assert hardware.mfu(1000, 1e9, None) is None
    assert hardware.mfu(1000, 1e9, 1e12, devices=2) == pytest.approx(0.5)
    assert hardware.model_flops_per_image(10, train=True) == 60
    assert baselines.best("resnet50_v15", "NVIDIA H200").images_per_sec_per_gpu == 7950
    # No figure for this GPU: the A100's, NVIDIA's reference GPU.
    best = baselines.best("resnet50_v15", "NVIDIA L40S")
    assert best.device == "A100" and best.images_per_sec_per_gpu == 3410.52
    assert baselines.best("resnet_tiny", "NVIDIA H200") is None


def test_training_on_gpus_reports_model_flops_and_the_devices_peak():
    """What the trainer hands the progress line on GPUs (a stand-in device), and on CPUs."""
    from types import SimpleNamespace

    import numpy as np

    from resnet_jax import config as config_lib
    from resnet_jax import models
    from resnet_jax.models import flops

    config = config_lib.recipe("resnet50_v15")
    config.arch, config.image_size, config.num_classes = "resnet_tiny", 32, 3
    gpu = SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    run = SimpleNamespace(config=config, mesh=SimpleNamespace(devices=np.array([gpu] * 8),
                                                              size=8))
    rate = loop.compute_rate(run)
    macs = flops.forward_macs(models.build(config, train=False), 32)
    assert rate == {"flops_per_image": 6.0 * macs, "peak_flops": 8 * 989e12}  # bf16 peak
    gpu.device_kind = "NVIDIA GeForce RTX 9090"  # not in the table: TFLOP/s without MFU
    assert loop.compute_rate(run)["peak_flops"] is None
    gpu.platform = "cpu"
    assert loop.compute_rate(run) == {}
