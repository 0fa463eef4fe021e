"""The first checks on a GPU machine, with one markdown report: python scripts/gpu_check.py [--cpu]

  python scripts/gpu_check.py [--out DIR] [--epochs N] [--precisions bf16,fp16] [--cpu]

1. Devices: what JAX, the NVIDIA driver and DALI see.
2. Training through the real path (`python -m resnet_jax.main`, DALI on the
   GPU) on a generated JPEG tree, in bf16 and in fp16, for a few dozen steps:
   the loss must fall, the train step must compile once (JAX_LOG_COMPILES),
   and `mode=eval` on the checkpoint must find the top-1 of the last
   in-training evaluation.
3. Throughput: scripts/benchmark.py for RN50 v1.5 (synthetic data and
   DALI, bf16 and fp16) on one GPU and on all GPUs, with the PyTorch
   reference on the same GPU when it can use it.

Everything goes to DIR (default runs/gpu_check): report.md, each command's
output and the benchmark JSON. The exit code is 1 when a check failed.

--cpu is a dry run of the same steps on the CPU (the tiny model, DALI on the
CPU, 2 simulated devices, a small benchmark), for the test suite.
"""

# isort: off
import resnet_jax  # noqa: F401  first, before jax: XLA's and TensorFlow's C++ logs stay quiet
# isort: on

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "resnet50_v15.py")
PRECISIONS = ("bf16", "fp16")


def _run(command, log_path, env=None, timeout=3600):
    """Runs a command in the checkout; its output goes to log_path. Returns (code, output)."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    with open(log_path, "w") as f:
        f.write(f"$ {' '.join(command)}\n{output}")
    print(f"  {os.path.basename(log_path)}: exit {result.returncode}, "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return result.returncode, output


class Report:
    """Markdown lines, and whether every check passed."""

    def __init__(self):
        self.lines, self.failed = [], []

    def add(self, *lines):
        self.lines.extend(lines)

    def check(self, name: str, ok: bool, detail: str) -> str:
        if not ok:
            self.failed.append(name)
        return f"{'pass' if ok else '**FAIL**'}: {detail}"


def _devices(report, env):
    """What JAX, the driver and DALI see."""
    probe = ("import resnet_jax, jax; "
             "print(jax.__version__, jax.default_backend(), jax.device_count()); "
             "[print(' ', d.id, d.device_kind) for d in jax.devices()]")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    jax_out = (result.stdout + result.stderr).strip()
    smi = shutil.which("nvidia-smi")
    smi_out = (subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip()
               if smi else "nvidia-smi not found")
    import nvidia.dali

    report.add("## Devices", "", "```", f"python {platform.python_version()}, "
               f"DALI {nvidia.dali.__version__}, {platform.platform()}", jax_out, smi_out, "```",
               "")
    return result.returncode == 0


def _train_and_eval(report, args, env, data_root, precision):
    """One training run and an eval of its checkpoint; a table row."""
    workdir = os.path.join(args.out, f"train_{precision}")
    shutil.rmtree(workdir, ignore_errors=True)
    common = [f"--config={RECIPE}", f"--workdir={workdir}", f"--config.data.root={data_root}",
              f"--config.precision={precision}", *args.model_flags]
    code, output = _run([sys.executable, "-m", "resnet_jax.main", *common,
                         f"--config.num_epochs={args.epochs}", "--config.warmup_epochs=1",
                         "--config.log_every_steps=1",
                         # One evaluation and checkpoint, at the end: mode=eval must match it.
                         f"--config.eval_every_epochs={args.epochs}",
                         f"--config.checkpoint_every_epochs={args.epochs}"],
                        os.path.join(args.out, f"train_{precision}.log"),
                        env=dict(env, JAX_LOG_COMPILES="1"))
    row = [precision]
    if code != 0:
        report.failed.append(f"train {precision}")
        return row + [f"**FAIL**: exit {code}, see train_{precision}.log"] + [""] * 3
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.startswith("{\"step\"")]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/top1" in r]
    k = max(1, min(5, len(losses) // 3))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    row.append(report.check(f"loss {precision}", math.isfinite(last) and last < first,
                            f"{len(losses)} steps, loss {first:.3f} -> {last:.3f} "
                            f"(mean of the first and last {k})"))
    compiles = len(re.findall(r"Compiling jit\(train_step\)", output))
    row.append(report.check(f"compiles {precision}", compiles == 1,
                            f"train_step compiled {compiles} time(s)"))
    code, eval_output = _run([sys.executable, "-m", "resnet_jax.main", *common,
                              "--config.mode=eval"],
                             os.path.join(args.out, f"eval_{precision}.log"), env=env)
    found = re.search(r"top1 ([\d.]+)%", eval_output)
    in_training = 100 * evals[-1]["eval/top1"] if evals else float("nan")
    agree = code == 0 and found is not None and abs(float(found.group(1)) - in_training) < 0.006
    row.append(report.check(f"eval {precision}", agree,
                            f"mode=eval top1 {found.group(1) if found else '?'}% vs "
                            f"{in_training:.2f}% in training"))
    speeds = [r["train/images_per_sec"] for r in records[1:] if "train/images_per_sec" in r]
    row.append(f"{sorted(speeds)[len(speeds) // 2]:,.0f}" if speeds else "n/a")
    return row


def _benchmark(report, args, env, data_root, label, extra_env):
    """scripts/benchmark.py on `label`'s devices; its table goes into the report."""
    json_path = os.path.join(args.out, f"benchmark_{label}.json")
    command = [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
               f"--data-root={data_root}", f"--json={json_path}", *args.bench_flags]
    code, output = _run(command, os.path.join(args.out, f"benchmark_{label}.log"),
                        env=dict(env, **extra_env))
    lines = output.splitlines()
    # The table: from the machine line above its header to the end.
    header = next((i for i, line in enumerate(lines) if line.startswith("arch ")), None)
    table = lines[max(0, header - 1):] if header is not None else ["(no table)"]
    report.add(f"### {label}", "", "```", *table, "```", "")
    if code != 0:
        report.failed.append(f"benchmark {label}")
        report.add(f"**FAIL**: exit {code}, see benchmark_{label}.log", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "gpu_check"))
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs of each training run (default: 3 on GPUs, 12 with --cpu)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="comma-separated precisions of the training runs")
    parser.add_argument("--cpu", action="store_true",
                        help="a dry run on the CPU: tiny model, DALI on the CPU, 2 devices")
    args = parser.parse_args()
    args.epochs = args.epochs or (12 if args.cpu else 3)
    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ)
    if args.cpu:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
                   XLA_FLAGS=" ".join([*flags, "--xla_force_host_platform_device_count=2"]))
        devices, per_device, size, steps_per_epoch, classes, image_px = 2, 4, 32, 4, 3, 40
        args.model_flags = ["--config.arch=resnet_tiny", f"--config.num_classes={classes}",
                            "--config.data.backend=dali_cpu", "--config.base_learning_rate=1.0",
                            f"--config.per_device_batch_size={per_device}",
                            f"--config.image_size={size}", f"--config.eval_resize_size={size + 4}",
                            f"--config.eval_image_size={size}", "--config.data.num_threads=1",
                            "--config.tensorboard=false"]
        args.bench_flags = ["--archs=resnet_tiny", "--precisions=bf16", "--batch-sizes=4",
                            "--image-size=32", "--modes=train", "--data=dali",
                            "--warmup-steps=1", "--steps=2", "--dali-threads=1", "--no-torch"]
    else:
        from resnet_jax import parallel

        devices, per_device, steps_per_epoch, classes, image_px = (
            max(1, parallel.visible_gpus() or 1), 64, 12, 10, 256)
        args.model_flags = ["--config.data.backend=dali_gpu", f"--config.num_classes={classes}",
                            f"--config.per_device_batch_size={per_device}"]
        args.bench_flags = ["--archs=resnet50_v15", "--precisions=bf16,fp16",
                            "--data=synthetic,dali"]
    # The same steps per epoch on every device count.
    per_class = math.ceil(steps_per_epoch * devices * per_device / classes) + 1
    data_root = os.path.join(args.out, "data")
    print(f"gpu_check: writing {args.out}/report.md", flush=True)
    from resnet_jax.data import demo

    demo.make_demo_dataset(data_root, num_classes=classes, train_per_class=per_class,
                           val_per_class=max(4, per_class // 10), image_size=image_px, seed=0)

    report = Report()
    report.add("# resnet_jax GPU check" + (" (dry run on the CPU)" if args.cpu else ""), "",
               f"{time.strftime('%Y-%m-%d %H:%M')}, `python scripts/gpu_check.py"
               f"{' --cpu' if args.cpu else ''}`", "")
    if not _devices(report, env):
        report.failed.append("devices")
    report.add("## Training and evaluation", "",
               f"{classes} classes, {classes * per_class} generated training JPEGs, "
               f"{args.epochs} epochs, {devices} devices x {per_device} images.", "",
               "| precision | loss falls | compiles once | mode=eval agrees | img/s (median) |",
               "|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        report.add("| " + " | ".join(_train_and_eval(report, args, env, data_root, precision))
                   + " |")
    report.add("", "## Throughput (scripts/benchmark.py)", "")
    _benchmark(report, args, env, data_root, "all devices", {})
    if not args.cpu and devices > 1:
        _benchmark(report, args, env, data_root, "one GPU", {"CUDA_VISIBLE_DEVICES": "0"})
    verdict = ("every check passed" if not report.failed
               else "failed: " + ", ".join(report.failed))
    report.add("## Result", "", verdict, "")
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(report.lines))
    print(f"gpu_check: {verdict}; report in {args.out}/report.md", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
