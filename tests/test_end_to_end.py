"""The command line end to end: train with DALI on a generated JPEG tree, resume, evaluate.

Runs `python -m resnet_jax.main` as a user would (conftest.py: 2 simulated CPU
devices, a controlled environment), with the tiny model, and checks what it
writes and prints; and, once, that bad input is one line `error: ...` on the
command itself (the other bad inputs: test_bad_input and test_config, in-process).
"""

import glob
import json
import os
import re
import sys

from conftest import error_line, run, run_main, tiny_config
import numpy as np
import pytest


@pytest.fixture(scope="module")
def data_root(demo_root):
    return demo_root


# Every run of this module: warmup over the first epoch, a progress line every 2 steps.
RUN = ("--config.warmup_epochs=1", "--config.log_every_steps=2")


def _only_own_lines(result):
    """Every line a run prints is resnet_jax's: its log lines, nothing from other libraries."""
    for line in result.stderr.splitlines():
        assert re.match(r"I\d{4} [\d:.]+ +\d+ (loop|reporting|checkpoint|parallel|folders)"
                        r"\.py:\d+\] ", line), line


def _tensorboard_tags(workdir):
    from tensorboard.backend.event_processing import event_accumulator

    (events,) = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    accumulator = event_accumulator.EventAccumulator(events)
    accumulator.Reload()
    return set(accumulator.Tags()["tensors"])


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_writes_logs_and_checkpoints_then_resumes_then_evaluates(tmp_path, data_root,
                                                                       capsys):
    from resnet_jax.errors import exit_code
    from resnet_jax.train import evaluate

    workdir = str(tmp_path / "run")
    result = run_main(workdir, data_root, *RUN, "--config.num_epochs=2", "--config.precision=fp16",
                      "--config.tensorboard=true")
    assert result.returncode == 0, result.output
    output = result.output
    # 33 images, global batch 8 (2 devices x 4): 4 steps per epoch.
    assert "4 steps/epoch" in output and "img/s" in output and "ETA" in output
    _only_own_lines(result)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
    assert {"train/loss", "train/top1", "train/learning_rate", "train/images_per_sec",
            "train/loss_scale", "eval/loss", "eval/top1", "eval/top5"} <= _tensorboard_tags(workdir)
    records = _records(workdir)
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/top1" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert {"train/learning_rate", "train/images_per_sec", "train/loss_scale"} <= set(train[0])
    assert [r["step"] for r in evals] == [4, 8]
    assert all(r["eval/images"] == 15 for r in evals)  # every val image, exactly once

    # Resuming it as another arch is refused, with one line, before anything changes.
    result = run_main(workdir, data_root, *RUN, "--config.num_epochs=3",
                      "--config.arch=resnet50_v15")
    assert "holds arch='resnet_tiny' but the config has arch='resnet50_v15'" in error_line(result)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]

    # Resumed with an EMA of the weights, which the checkpoint does not have yet.
    result = run_main(workdir, data_root, *RUN, "--config.num_epochs=3", "--config.precision=fp16",
                      "--config.ema_decay=0.9")
    assert result.returncode == 0, result.output
    output = result.output
    assert "resumed from" in output and "at step 8" in output
    assert "checkpoint 8 has no EMA of the weights: it starts from them now" in output
    assert "eval epoch 3: top1" in output and " | EMA: top1 " in output
    steps = [r["step"] for r in _records(workdir) if "train/loss" in r]
    assert steps == [2, 4, 6, 8, 10, 12]  # resumed at 8, not from scratch
    assert "12" in os.listdir(os.path.join(workdir, "checkpoints"))

    # Evaluated in the precision it was trained and evaluated in, the result is the same.
    result = run_main(workdir, data_root, *RUN, "--config.mode=eval", "--config.precision=fp16")
    assert result.returncode == 0, result.output
    output = result.output
    _only_own_lines(result)
    assert len(result.stderr.splitlines()) == 1  # the result, one line
    assert "(step 12, resnet_tiny)" in output and "on 15 images" in output
    last_eval = [r for r in _records(workdir) if "eval/top1" in r][-1]
    assert f"top1 {100 * last_eval['eval/top1']:.2f}%" in output
    # The moving average, evaluated from the checkpoint: what the training's eval found.
    result = run_main(workdir, data_root, *RUN, "--config.mode=eval", "--config.precision=fp16",
                      "--config.eval_ema=true")
    assert result.returncode == 0, result.output
    output = result.output
    assert "(step 12, resnet_tiny, EMA of the weights)" in output
    assert f"top1 {100 * last_eval['eval/top1_ema']:.2f}%" in output

    # An older checkpoint, named by its step folder, from outside the workdir.
    step_8 = os.path.join(workdir, "checkpoints", "8")
    result = run_main(str(tmp_path / "elsewhere"), data_root, *RUN, "--config.mode=eval",
                      "--config.precision=fp16", f"--config.checkpoint={step_8}")
    assert result.returncode == 0, result.output
    output = result.output
    assert "(step 8, resnet_tiny)" in output
    # Its moving average, which it does not have: what `main` runs, in this process.
    config = tiny_config(data_root, mode="eval", checkpoint=step_8, eval_ema=True)
    capsys.readouterr()
    assert exit_code(evaluate.evaluate_checkpoint, config, str(tmp_path / "elsewhere")) == 2
    assert ("(step 8) holds no EMA of the weights: drop the EMA option"
            in capsys.readouterr().err.splitlines()[-1])
    eval_at_8 = [r for r in _records(workdir) if "eval/top1" in r][1]
    assert eval_at_8["step"] == 8
    assert f"top1 {100 * eval_at_8['eval/top1']:.2f}%" in output


def test_unknown_config_field_stops_with_one_line_and_nonzero_exit(tmp_path, data_root):
    # The command's own flag parsing (main.parse_flags), before any of the run.
    result = run_main(str(tmp_path / "run"), data_root, *RUN, "--config.num_epoch=5")
    assert error_line(result).startswith(
        "error: unknown config field 'num_epoch' Did you mean \"num_epochs\"")
    assert not os.path.exists(tmp_path / "run")


def _convert_tiny_torch_model(tmp_path, num_classes, name):
    import torch

    from resnet_jax.interop import torch_reference as ref

    model = ref.randomized(ref.ResNet("resnet_tiny", "torchvision", num_classes), seed=3)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    out = str(tmp_path / name)
    result = run([sys.executable, "-m", "resnet_jax.convert", "--arch=resnet_tiny",
                  f"--torch-checkpoint={path}", f"--output={out}"])
    assert result.returncode == 0, result.output
    # Its one line, nothing else.
    assert result.stderr == "" and result.stdout.count("\n") == 1, result.output
    assert f"{num_classes} classes -> {out}/checkpoints/0" in result.stdout
    return out


def test_converted_weights_evaluate_classify_and_fine_tune(tmp_path, data_root):
    from resnet_jax import classify
    from resnet_jax.data import MEAN_RGB, folders

    converted = _convert_tiny_torch_model(tmp_path, 3, "three")
    # classify reads the eval sizes from the checkpoint (crop 224 of 256 for converted
    # weights): an eval at those sizes must find the same top-1.
    result = run_main(str(tmp_path / "eval"), data_root, *RUN, "--config.mode=eval",
                      "--config.precision=fp32", f"--config.checkpoint={converted}",
                      "--config.eval_resize_size=256", "--config.eval_image_size=224")
    assert result.returncode == 0, result.output
    output = result.output
    assert "on 15 images" in output
    # The converted weights expect ImageNet's normalization, not the recipe's (MXNet's).
    assert f"mean_rgb={tuple(MEAN_RGB)} as checkpoint {converted!r} records" in output
    val = folders.scan_split(data_root, "val")
    probabilities, names = classify.predict(converted, val.files, precision="fp32")
    assert names == ["class_0", "class_1", "class_2"]
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    top1 = float(np.mean(probabilities.argmax(axis=1) == val.labels))
    assert f"top1 {100 * top1:.2f}%" in output

    result = run([sys.executable, "-m", "resnet_jax.classify", f"--checkpoint={converted}",
                  "--precision=bf16", val.files[0], val.files[7]])
    assert result.returncode == 0, result.output
    assert result.stderr == "", result.output  # only its answer
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    assert lines[0] == val.files[0] and lines[4] == val.files[7]
    assert all(line.startswith("  0.") and "class_" in line for line in lines[1:4] + lines[5:])

    # Fine-tuning a 5-class model on the 3-class tree: all but the classifier carry over.
    # (Converted in this process: the command line was run above.)
    from resnet_jax import convert
    from resnet_jax.interop import torch as torch_interop
    from resnet_jax.interop import torch_reference as ref

    five = str(tmp_path / "five")
    model = ref.randomized(ref.ResNet("resnet_tiny", "torchvision", 5), seed=3)
    convert.write_checkpoint(five, "resnet_tiny",
                             torch_interop.torch_to_flax("resnet_tiny", model.state_dict()),
                             source="test")
    result = run_main(str(tmp_path / "finetune"), data_root, *RUN,
                      f"--config.init_checkpoint={five}", "--config.num_epochs=1",
                      "--config.warmup_epochs=0")
    assert result.returncode == 0, result.output
    output = result.output
    assert "all but fc (new fc for 3 classes, was 5)" in output
