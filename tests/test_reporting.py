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
