"""Faults: SIGKILL and SIGTERM mid-run, an interrupted save, a diverging run, a changed batch.

Each run is `python -m resnet_jax.main` on a generated JPEG tree with the tiny
model and DALI on the CPU, killed for real; the final parameters are compared
with those of an uninterrupted run of the same length, which must be identical.
"""

import os
import random
import shutil
import signal
import sys
import textwrap

from conftest import assert_tree_equal, final_variables, main_command, run, start
import numpy as np
import pytest

from resnet_jax import checkpoint
from resnet_jax.errors import TrainingError
from resnet_jax.train import loop

# 33 images, global batch 8 (2 devices x 4): 4 steps per epoch, 3 epochs = 12 steps.
TOTAL_STEPS = 12


@pytest.fixture(scope="module")
def data_root(demo_root):
    return demo_root


def _command(workdir, data_root, *overrides):
    # With an EMA of the weights: it too must resume exactly.
    return main_command(workdir, data_root, "--config.num_epochs=3", "--config.warmup_epochs=1",
                        "--config.log_every_steps=1", "--config.deterministic=true",
                        "--config.data.num_threads=2", "--config.ema_decay=0.9", *overrides)


def _run(workdir, data_root, *overrides):
    return run(_command(workdir, data_root, *overrides))


def _run_until_step(workdir, data_root, step, sig):
    """Starts a run, sends `sig` once its progress line for `step` is out; returns its output."""
    process = start(_command(workdir, data_root))
    lines = []
    for line in process.stdout:
        lines.append(line)
        if f"step {step}/{TOTAL_STEPS}" in line:
            process.send_signal(sig)
            break
    lines.extend(process.stdout)
    process.wait(timeout=300)
    return process.returncode, "".join(lines)


def _final(workdir):
    """(step, the weights, their moving average)."""
    step, variables = final_variables(workdir)
    return step, variables, final_variables(workdir, ema=True)[1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _run(workdir, data_root)
    assert result.returncode == 0, result.output
    output = result.output
    assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in output
    # --config.tensorboard=false (conftest.TINY): metrics.jsonl alone (best/: the best eval).
    assert sorted(os.listdir(workdir)) == ["best", "checkpoints", "metrics.jsonl"]
    return _final(workdir), workdir


def _assert_identical(got, want):
    assert got[0] == want[0] == TOTAL_STEPS
    assert_tree_equal(got[1], want[1])
    assert_tree_equal(got[2], want[2])  # the EMA too


def _committed_steps(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if folder.is_dir() else []


def test_sigterm_then_sigkill_then_restart_ends_identical(tmp_path, data_root, uninterrupted):
    workdir = tmp_path / "run"
    # Preemption: finish the step, save mid-epoch, flush, exit 0.
    code, output = _run_until_step(workdir, data_root, 5, signal.SIGTERM)
    assert code == 0, output
    assert "SIGTERM: stopping after this step" in output
    assert "stopped by SIGTERM after step" in output and "run the same command" in output
    stopped_at = int(output.split("stopped by SIGTERM after step ")[1].split(":")[0])
    assert 5 <= stopped_at < TOTAL_STEPS - 1
    assert _committed_steps(workdir)[-1] == stopped_at
    with open(workdir / "metrics.jsonl") as f:  # flushed before the exit
        assert f'"step": {stopped_at}' in f.read()

    # Resumed there, then killed for real at a random later step.
    kill_at = random.Random().randint(stopped_at + 1, TOTAL_STEPS - 1)
    code, output = _run_until_step(workdir, data_root, kill_at, signal.SIGKILL)
    assert code == -signal.SIGKILL, output
    assert f"at step {stopped_at}" in output
    latest = _committed_steps(workdir)[-1]  # an async save may not have finished

    result = _run(workdir, data_root)
    assert result.returncode == 0, result.output
    output = result.output
    assert f"at step {latest}" in output, (kill_at, latest, output)
    _assert_identical(_final(workdir), uninterrupted[0])


def test_interrupted_save_is_never_the_latest(tmp_path):
    """A process killed while Orbax writes step 2 leaves step 1 as the latest checkpoint."""
    script = textwrap.dedent(f"""
        import os, signal, jax, jax.numpy as jnp
        from resnet_jax import checkpoint
        from resnet_jax.train.state import TrainState
        def state(step, size):
            return TrainState(step=jnp.int32(step), params={{"w": jnp.ones((size,))}},
                              batch_stats={{}}, opt_state={{}}, loss_scale=jnp.float32(1),
                              good_steps=jnp.int32(0))
        ckpt = checkpoint.Checkpointer({str(tmp_path)!r}, keep=3)
        ckpt.save(state(1, 8), {{"arch": "resnet_tiny", "num_classes": 3}})
        ckpt.wait()
        ckpt.save(state(2, 50_000_000), {{"arch": "resnet_tiny", "num_classes": 3}})
        os.kill(os.getpid(), signal.SIGKILL)  # while the 200 MB write is under way
    """)
    result = run([sys.executable, "-c", script])
    assert result.returncode == -signal.SIGKILL, result.stderr
    leftovers = os.listdir(tmp_path / "checkpoints")
    assert "1" in leftovers and "2" not in leftovers, leftovers
    saved = checkpoint.Saved(str(tmp_path))
    assert saved.step == 1 and saved.meta["num_classes"] == 3


def test_resume_with_another_batch_then_a_diverging_run_stops(tmp_path, data_root,
                                                            uninterrupted):
    # The uninterrupted run as it was after its first epoch (step 4, 32 images seen).
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[1], workdir)
    for later in ("8", "12"):
        shutil.rmtree(workdir / "checkpoints" / later)
    # Twice the batch: 16 images a step, 2 steps per epoch; 4 steps of 8 = 2 steps of 16.
    result = _run(workdir, data_root, "--config.per_device_batch_size=8",
                  "--config.num_epochs=2")
    assert result.returncode == 0, result.output
    output = result.output
    assert "step 4 becomes step 2, after the same 32 images" in output
    assert "at step 2 (epoch 1.00)" in output
    before = _final(workdir)
    assert before[0] == 4

    # Back to batch 8 (step 8), with a learning rate that soon overflows every step:
    # fp16 skips those steps, and 3 in a row stop the run before the next checkpoint.
    result = _run(workdir, data_root, "--config.base_learning_rate=1e30",
                  "--config.precision=fp16", "--config.max_nonfinite_steps=3")
    assert result.returncode == 3, result.output
    output = result.output
    assert "step 4 becomes step 8, after the same 64 images" in output
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 3 training step(s) in a row up to step")
    # The checkpoint resumed from, renumbered in batches of 8 (step 8), is the last one.
    assert "the last checkpoint (step 8) is intact" in error
    after = _final(workdir)
    assert after[0] == 8
    assert_tree_equal(after[1], before[1])


def test_non_finite_guard_counts_steps_in_a_row():
    class Checkpoints:
        def latest_step(self):
            return 40

    guard = loop.NonFiniteGuard(3, "fp16")
    for finite in (True, False, False, True, False, False):
        guard.add(np.bool_(finite))
    guard.check(46, Checkpoints())  # never 3 in a row
    guard.add(np.bool_(False))
    with pytest.raises(TrainingError, match=r"^3 training step\(s\) in a row up to step 47 "
                                            r".*\(fp16\).*checkpoint \(step 40\) is intact"):
        guard.check(47, Checkpoints())
    strict = loop.NonFiniteGuard(1, "bf16")
    strict.add(np.bool_(False))
    with pytest.raises(TrainingError, match="1 training step"):
        strict.check(1, Checkpoints())
