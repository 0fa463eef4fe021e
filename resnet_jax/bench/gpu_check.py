"""The first command on a GPU machine: does training work there, how fast, next to what.

The check is a list of parts, run one after another, each in a child process
with a time limit, within one overall budget. The report (report.md, and
report.json for tools) is rewritten after every part, so that a part that
crashes or hangs becomes one failed line, and a check that is itself killed
leaves every finished part on disk. Parts that need DALI say so in one line
and are skipped where DALI is not installed (a ready-made GPU container), and
the synthetic-data benchmarks still run there.

This module runs no JAX computation itself (JAX would take the GPUs' memory
from the children): `scripts/gpu_check.py` is its command line.
"""

import dataclasses
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

from resnet_jax import parallel  # imports jax; this process starts no backend
from resnet_jax.bench import baselines, machine
from resnet_jax.data import demo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "configs", "resnet50_v15.py")
BENCHMARK = os.path.join(ROOT, "scripts", "benchmark.py")
MIN_EVAL_SECONDS = 20  # a training part's mode=eval is not started with less of its time left


@dataclasses.dataclass
class Outcome:
    """How a child process ended: `code` None when it ran out of time and was killed."""

    code: int | None
    seconds: float
    output: str
    log: str


def run_logged(command: list[str], log_path: str, *, timeout: float, env: dict) -> Outcome:
    """Runs `command` in the checkout with its output in `log_path`, killed (its whole
    process group) after `timeout` seconds; what it printed until then is kept."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    with open(log_path, errors="replace") as log:
        output = log.read()
    return Outcome(code, time.perf_counter() - start, output, log_path)


class PartFailed(Exception):
    """A part's check did not pass; the message is the report's line."""


def _ended(outcome: Outcome, what: str) -> None:
    """Raises PartFailed unless `outcome` exited 0, naming its log and its last line."""
    name = os.path.basename(outcome.log)
    if outcome.code is None:
        raise PartFailed(f"{what} timed out after {outcome.seconds:.0f} s (see {name})")
    if outcome.code != 0:
        last = next((line for line in reversed(outcome.output.splitlines()) if line.strip()),
                    "")
        raise PartFailed(f"{what} exited {outcome.code}: {last.strip()[:200]} (see {name})")


class GpuMemory:
    """The most memory in use on each GPU while a part runs: nvidia-smi, every half second.

    It counts everything on the GPU (JAX's preallocated pool, DALI's decoders,
    PyTorch); JAX's own peak is in the parts' figures.
    """

    QUERY = ["--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"]

    def __init__(self):
        self.smi = shutil.which("nvidia-smi")
        self.peak, self.total = {}, {}
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        while not self._stop.is_set():
            try:
                text = subprocess.run([self.smi, *self.QUERY], capture_output=True, text=True,
                                      timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                return
            for line in text.splitlines():
                fields = [f.strip() for f in line.split(",")]
                if len(fields) == 3 and all(f.isdigit() for f in fields):
                    index, used, total = (int(f) for f in fields)
                    self.peak[index] = max(self.peak.get(index, 0), used)
                    self.total[index] = total
            self._stop.wait(0.5)

    def __enter__(self):
        if self.smi:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        return False

    def describe(self) -> str:
        """'GPU 0 41.2/139.8 GiB, GPU 1 ...', or '' without nvidia-smi."""
        return ", ".join(f"GPU {i} {self.peak[i] / 1024:.1f}/{self.total[i] / 1024:.1f} GiB"
                         for i in sorted(self.peak))


@dataclasses.dataclass
class Context:
    """What every part needs."""

    out: str
    env: dict
    cpu: bool
    devices: int
    data_root: str
    model_flags: list[str]
    bench_flags: list[str]
    epochs: int
    log_every: int
    per_device: int
    device_kind: str = "?"
    gpus: int | None = None  # GPUs seen before JAX starts, and where that was read
    gpu_source: str = "none found"
    rows: list = dataclasses.field(default_factory=list)  # the throughput table's rows
    # (arch, precision, per-GPU batch) -> the compiled program's counted ceiling, img/s per GPU
    ceilings: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Part:
    """One step of the check: `run(ctx, timeout)` returns report lines or raises PartFailed."""

    name: str
    run: object
    timeout: float
    needs_dali: bool = False


class Report:
    """report.md and report.json, rewritten after every part."""

    def __init__(self, out: str, head: list[str], rows: list[dict],
                 ceilings: dict | None = None):
        self.out, self.head, self.rows = out, head, rows
        self.ceilings = {} if ceilings is None else ceilings
        self.parts, self.blocks, self.failed, self.skipped = [], [], [], []
        self.result = None

    def part(self, name: str, status: str, seconds: float, lines: list[str]) -> None:
        """A part's block: 'pass', 'FAIL', 'skipped' or SKIPPED_BUDGET, and its lines; the
        terminal gets its first figure (a passed part's first '- ' line) or why not."""
        if status == "FAIL":
            self.failed.append(name)
        elif status.startswith("skipped"):
            self.skipped.append(name)
        shown = "**FAIL**" if status == "FAIL" else status
        self.parts.append({"name": name, "status": status, "seconds": round(seconds, 1),
                           "lines": lines})
        self.blocks += [f"### {name}: {shown} ({seconds:.0f} s)", "", *lines, ""]
        headline = (next((line[2:] for line in lines if line.startswith("- ")), None)
                    if status == "pass" else lines[0] if lines else None)
        print(f"gpu_check: {name}: {status} ({seconds:.0f} s)"
              + (f": {headline}" if headline else ""), flush=True)
        self.write()

    def write(self, pending: str | None = None) -> None:
        lines = [*self.head, "## Parts", "", *self.blocks]
        if self.rows:
            lines += ["## Throughput per GPU", "", *throughput_table(self.rows, self.ceilings),
                      ""]
        if self.result is not None:
            lines += ["## Result", "", self.result, ""]
        else:
            lines += [f"_Unfinished: {len(self.parts)} part(s) reported"
                      + (f", {pending} running_" if pending else "_"), ""]
        machine.write_atomic(os.path.join(self.out, "report.md"), "\n".join(lines))
        machine.write_atomic(os.path.join(self.out, "report.json"), json.dumps(
            {"parts": self.parts, "throughput": self.rows, "failed": self.failed,
             "result": self.result}, indent=1))

    def finish(self) -> str:
        self.result = ("every check passed" if not self.failed
                       else "failed: " + ", ".join(self.failed))
        if self.skipped:
            self.result += f" (skipped: {', '.join(self.skipped)})"
        self.write()
        return self.result


def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def throughput_table(rows: list[dict], ceilings: dict | None = None) -> list[str]:
    """The markdown table of every throughput figure measured, each beside the compiled
    program's counted ceiling (resnet_jax.bench.compiled): the row's own program's where the
    benchmark counted it, else the 'compiled program' part's for the same arch, precision
    and batch; and the share of it reached."""
    ceilings = ceilings or {}
    lines = ["| arch | mode | data | precision | batch/GPU | GPUs | img/s per GPU | counted "
             "ceiling | of ceiling | TFLOP/s per GPU | MFU | JAX peak mem | PyTorch img/s | "
             "ratio | NVIDIA published (per GPU) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = None if r.get("mfu") is None else 100 * r["mfu"]
        ceiling = r.get("ceiling") or (ceilings.get((r["arch"], r["precision"], r["batch"]))
                                       if r["mode"] == "train" else None)
        share = None if not ceiling else 100 * r["images_per_sec_per_gpu"] / ceiling
        lines.append(
            f"| {r['arch']} | {r['mode']} | {r['data']} | {r['precision']} | {r['batch']} | "
            f"{r['devices']} | {r['images_per_sec_per_gpu']:,.0f} | {_fmt(ceiling, ',.0f')} | "
            f"{_fmt(share, '.0f')}% | "
            f"{_fmt(r.get('tflops_per_gpu'), '.1f')} | {_fmt(mfu, '.1f')}% | "
            f"{_fmt(r.get('peak_memory_gib'), '.1f')} GiB | "
            f"{_fmt(r.get('torch_images_per_sec'), ',.0f')} | {_fmt(r.get('ratio'), '.2f')} | "
            f"{r.get('published', '')} |".replace("n/a%", "n/a").replace("n/a GiB", "n/a"))
    return lines


def _published(arch: str, device_kind: str, mode: str) -> str:
    figure = baselines.best(arch, device_kind) if mode == "train" else None
    return "" if figure is None else f"{figure.images_per_sec_per_gpu:,.0f} ({figure.source})"


# --- the parts ---------------------------------------------------------------------------

_PROBE = r"""
import importlib, importlib.util, json, platform
out = {"python": platform.python_version()}
# The settings every later part may run with (command buffers off too, as with dali_gpu): a
# flag this jaxlib refuses, or a memory variable that sends JAX to the CPU, shows here.
from resnet_jax import parallel
parallel.configure_runtime(dali_on_gpu=True)
out["settings"] = parallel.runtime_settings()
def present(name):
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False
import jax
out.update(jax=jax.__version__, backend=jax.default_backend(),
           devices=[d.device_kind for d in jax.devices()])
# Small integers: exact in every matmul precision (TF32 too) and in any summation order.
x = (jax.numpy.arange(256.0) % 8).reshape(16, 16)
total = float(jax.jit(lambda a: (a @ a.T).sum())(x))
rows = [[(16 * r + c) % 8 for c in range(16)] for r in range(16)]
expected = sum(sum(a * b for a, b in zip(u, v)) for u in rows for v in rows)
out["jit"] = {"ok": total == expected, "platform": x.devices().pop().platform}
for name in ("flax", "optax", "orbax.checkpoint", "ml_collections"):
    out[name] = getattr(importlib.import_module(name), "__version__", "present") \
        if present(name) else None
out["dali"] = importlib.import_module("nvidia.dali").__version__ \
    if present("nvidia.dali") else None
out["tensorflow"] = present("tensorflow")
out["torch"] = None
if present("torch"):
    import torch
    out["torch"] = torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda
                                        else " (CPU build)")
    out["torch_gpu"] = bool(torch.cuda.is_available())
print("PROBE " + json.dumps(out))
"""


def devices_part(ctx: Context, timeout: float) -> list[str]:
    """What JAX, the driver, DALI and PyTorch see; the libraries the other parts need."""
    outcome = run_logged([sys.executable, "-c", _PROBE], os.path.join(ctx.out, "devices.log"),
                         timeout=timeout, env=ctx.env)
    _ended(outcome, "the device probe")
    probe = json.loads(re.search(r"^PROBE (.*)$", outcome.output, re.M).group(1))
    ctx.device_kind = probe["devices"][0]
    smi = shutil.which("nvidia-smi")
    smi_out = (subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip()
               if smi else "nvidia-smi not found")
    torch = probe["torch"] or "not installed"
    if probe["torch"] and not probe["torch_gpu"] and not ctx.cpu:
        torch += ": cannot use the GPU, so the benchmarks run without a PyTorch column"
    jit = probe["jit"]
    lines = ["```", f"python {probe['python']}, {platform.platform()}",
             f"jax {probe['jax']}: {probe['backend']}, {len(probe['devices'])} device(s): "
             f"{', '.join(sorted(set(probe['devices'])))}",
             f"GPUs seen before JAX starts: {ctx.gpus} (from {ctx.gpu_source})",
             f"with {probe['settings']}: a jitted matmul on {jit['platform']} "
             f"{'agrees' if jit['ok'] else 'DISAGREES'}",
             f"flax {probe['flax']}, optax {probe['optax']}, orbax-checkpoint "
             f"{probe['orbax.checkpoint']}, ml_collections {probe['ml_collections']}",
             f"DALI {probe['dali'] or 'not installed'}; TensorFlow "
             f"{'installed' if probe['tensorflow'] else 'not installed'}; PyTorch {torch}",
             smi_out, "```"]
    missing = [name for name in ("flax", "optax", "orbax.checkpoint", "ml_collections")
               if probe[name] is None]
    if missing:
        raise PartFailed(f"{', '.join(missing)} not importable: every other part needs it "
                         "(copy its wheel into .whl/, see docs/benchmarks.md)")
    if not ctx.cpu and probe["backend"] != "gpu":
        raise PartFailed(f"JAX runs on {probe['backend']}, not on GPUs ({probe['settings']}): "
                         "install jax[cuda12] (EXTRAS=cuda12,test . scripts/setup.sh), and see "
                         "devices.log for why the GPU backend did not start")
    if not jit["ok"]:
        raise PartFailed(f"a jitted matmul on {jit['platform']} gave a wrong sum with "
                         f"{probe['settings']}")
    return lines


_SMOKE = r"""
import json, os, sys, time
import resnet_jax
from resnet_jax import config as config_lib, parallel
root, backend, per_device, classes, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5])
config = config_lib.recipe("resnet50_v15")
config.data.root, config.data.backend, config.num_classes = root, backend, classes
config.per_device_batch_size, config.image_size = per_device, size
config.eval_image_size, config.eval_resize_size = size, size + size // 7
config.precision = "bf16"
parallel.configure_runtime(memory_fraction=parallel.memory_fraction(config),
                           dali_on_gpu=parallel.dali_on_gpu(config))
import jax
from resnet_jax.data.source import open_data
mesh = parallel.make_mesh()
batch = per_device * mesh.size
start = time.perf_counter()
data = open_data(config, mesh, train_batch=batch, eval_batch=batch)
stream, passes = data.train(0), iter(data.eval)
train = jax.block_until_ready(next(stream))
built = time.perf_counter() - start
evaluation = jax.block_until_ready(next(passes))
out = {"seconds_to_first_batch": built}
for name, b in (("train", train), ("eval", evaluation)):
    images = b["images"]
    out[name] = {"shape": list(images.shape), "dtype": str(images.dtype),
                 "devices": len(images.sharding.device_set),
                 "platform": next(iter(images.sharding.device_set)).platform}
out["mesh"] = mesh.size
print("SMOKE " + json.dumps(out), flush=True)
# The batches hold DALI's GPU buffers (DLPack, no copy): drop them, then the pipelines, while
# DALI and CUDA are still whole, and leave without the interpreter's teardown.
del train, evaluation, b, images
stream.close()
passes.close()
del stream, passes, data
import gc
gc.collect()
sys.stdout.flush()
os._exit(0)
"""


def smoke_part(ctx: Context, timeout: float) -> list[str]:
    """Builds the DALI training and evaluation pipelines on every device and pulls a batch."""
    backend = "dali_cpu" if ctx.cpu else "dali_gpu"
    size = 32 if ctx.cpu else 224
    outcome = run_logged([sys.executable, "-c", _SMOKE, ctx.data_root, backend, "4",
                          str(_classes(ctx)), str(size)],
                         os.path.join(ctx.out, "dali_smoke.log"), timeout=timeout, env=ctx.env)
    found = re.search(r"^SMOKE (.*)$", outcome.output, re.M)
    if found is None:
        _ended(outcome, "the DALI smoke test")
        raise PartFailed("the DALI smoke test printed no result (see dali_smoke.log)")
    smoke = json.loads(found.group(1))
    lines = []
    for name in ("train", "eval"):
        b = smoke[name]
        if b["devices"] != smoke["mesh"]:
            raise PartFailed(f"the {name} batch is on {b['devices']} of {smoke['mesh']} devices")
        lines.append(f"- {name} batch {tuple(b['shape'])} {b['dtype']}, sharded over "
                     f"{b['devices']} {b['platform']} device(s)")
    lines.append(f"- {backend} pipelines built and the first training batch in "
                 f"{smoke['seconds_to_first_batch']:.1f} s")
    if outcome.code != 0:  # the batches were checked: a crash on the way out is a note
        how = "timed out" if outcome.code is None else f"exited {outcome.code}"
        lines.append(f"- note: the process then {how} while releasing DALI (see "
                     "dali_smoke.log)")
    return lines


def _classes(ctx: Context) -> int:
    return 3 if ctx.cpu else 10


def train_part(precision: str):
    """RN50 v1.5 (the tiny model with --cpu) trained through DALI, then mode=eval."""

    def run(ctx: Context, timeout: float) -> list[str]:
        started = time.perf_counter()
        workdir = os.path.join(ctx.out, f"train_{precision}")
        shutil.rmtree(workdir, ignore_errors=True)
        common = [f"--config={RECIPE}", f"--workdir={workdir}",
                  f"--config.data.root={ctx.data_root}", f"--config.precision={precision}",
                  "--config.tensorboard=false", *ctx.model_flags]
        with GpuMemory() as memory:
            outcome = run_logged(
                [sys.executable, "-m", "resnet_jax.main", *common,
                 f"--config.num_epochs={ctx.epochs}", "--config.warmup_epochs=1",
                 # Sparse logging: each log fetches the metrics, a sync that lowers img/s.
                 f"--config.log_every_steps={ctx.log_every}",
                 # One evaluation and checkpoint, at the end: mode=eval must find the same.
                 f"--config.eval_every_epochs={ctx.epochs}",
                 f"--config.checkpoint_every_epochs={ctx.epochs}"],
                os.path.join(ctx.out, f"train_{precision}.log"), timeout=timeout,
                env=dict(ctx.env, JAX_LOG_COMPILES="1"))
        _ended(outcome, "training")
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.startswith('{"step"')]
        train = [r for r in records if "train/loss" in r]
        evals = [r for r in records if "eval/top1" in r]
        losses = [r["train/loss"] for r in train]
        k = max(1, min(5, len(losses) // 3))
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        problems = []
        if not (math.isfinite(last) and last < first):
            problems.append(f"the loss did not fall ({first:.3f} -> {last:.3f})")
        compiles = len(re.findall(r"Compiling (?:jit\()?train_step\b", outcome.output))
        if compiles != 1:
            problems.append(f"train_step compiled {compiles} times")
        remaining = timeout - (time.perf_counter() - started)
        if remaining < MIN_EVAL_SECONDS:
            raise PartFailed("no time left for mode=eval; " + "; ".join(problems))
        evaluation = run_logged([sys.executable, "-m", "resnet_jax.main", *common,
                                 "--config.mode=eval"],
                                os.path.join(ctx.out, f"eval_{precision}.log"),
                                timeout=remaining, env=ctx.env)
        _ended(evaluation, "mode=eval")
        found = re.search(r"top1 ([\d.]+)%.* on (\d+) images", evaluation.output)
        in_training = 100 * evals[-1]["eval/top1"] if evals else float("nan")
        # GPU kernels need not give the same logits twice (deterministic=False), so an image
        # near the decision boundary may flip: the two may differ by one image, plus the
        # printed value's rounding.
        one_image = 100 / int(found.group(2)) if found else float("nan")
        agreement = ("the same" if found and found.group(1) == f"{in_training:.2f}" else
                     f"within one image ({one_image:.2f} points)")
        if found is None or not abs(float(found.group(1)) - in_training) <= one_image + 0.005:
            problems.append(f"mode=eval top1 {found.group(1) if found else '?'}% vs "
                            f"{in_training:.2f}% in training: more than one image apart")
        steady = train[1:] or train
        speed = sorted(r["train/images_per_sec"] for r in steady)[len(steady) // 2]
        median = next(r for r in steady if r["train/images_per_sec"] == speed)
        arch = "resnet_tiny" if ctx.cpu else "resnet50_v15"
        row = {"arch": arch, "mode": "train", "data": "dali_cpu" if ctx.cpu else "dali_gpu",
                   "precision": precision, "batch": ctx.per_device, "devices": ctx.devices,
                   "images_per_sec_per_gpu": speed / ctx.devices,
                   "tflops_per_gpu": _per(median.get("train/tflops_per_sec"), ctx.devices),
                   "mfu": median.get("train/mfu"),
                   "peak_memory_gib": max((r.get("train/peak_memory_gib", 0) for r in train),
                                          default=None) or None,
                   "published": _published(arch, ctx.device_kind, "train"),
                   "source": f"train_{precision} (median of {len(steady)} logged intervals)"}
        ctx.rows.append(row)
        lines = [f"- {len(train) * ctx.log_every} steps; loss {first:.3f} -> {last:.3f} (mean "
                 f"of the first and last {k} of {len(losses)} logged)",
                 f"- train_step compiled {compiles} time(s)",
                 f"- mode=eval top1 {found.group(1) if found else '?'}% vs {in_training:.2f}% in "
                 f"training ({agreement})",
                 f"- {speed / ctx.devices:,.0f} img/s per GPU (median logged interval)"]
        if memory.describe():
            lines.append(f"- GPU memory in use (nvidia-smi, most seen): {memory.describe()}")
        if problems:
            raise PartFailed("; ".join(problems) + "\n" + "\n".join(lines))
        return lines

    return run


def _per(value, devices):
    return None if value is None else value / devices


# XLA_FLAGS for a benchmark without command buffers (CUDA graphs), as runs with dali_gpu have.
NO_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer="


def bench_part(arch: str, precision: str, batches: str, data: str, modes: str = "train",
               label: str = "", visible: str | None = None, torch: bool = True,
               command_buffers: bool = True):
    """scripts/benchmark.py for one arch and precision, read from its JSON (written after
    every row, so a benchmark killed part-way keeps the rows it finished); `visible` limits
    it to some GPUs (CUDA_VISIBLE_DEVICES); `command_buffers=False` runs it as the trainer
    runs with dali_gpu, without XLA's command buffers."""

    def run(ctx: Context, timeout: float) -> list[str]:
        json_path = os.path.join(ctx.out, f"benchmark_{arch}_{precision}{label}.json")
        env = dict(ctx.env, **({"CUDA_VISIBLE_DEVICES": visible} if visible else {}))
        if not command_buffers:
            env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), NO_COMMAND_BUFFERS]).strip()
        command = [sys.executable, BENCHMARK, f"--archs={arch}", f"--precisions={precision}",
                   f"--batch-sizes={batches}", f"--data={data}", f"--modes={modes}",
                   f"--json={json_path}", *ctx.bench_flags, *([] if torch else ["--no-torch"])]
        if "dali" in data:
            command.append(f"--data-root={ctx.data_root}")
        if os.path.exists(json_path):
            os.remove(json_path)  # an earlier check's rows are not this one's
        with GpuMemory() as memory:
            outcome = run_logged(command, json_path.replace(".json", ".log"), timeout=timeout,
                                 env=env)
        rows = []
        if os.path.exists(json_path):
            with open(json_path) as f:
                rows = json.load(f)["rows"]
        note = "" if command_buffers else " (no command buffers)"
        lines = [_bench_row(ctx, r, note, os.path.basename(json_path)) for r in rows]
        if "warning: no PyTorch column" in outcome.output:
            lines.append("- " + next(line for line in outcome.output.splitlines()
                                     if "warning: no PyTorch column" in line))
        if memory.describe():
            lines.append(f"- GPU memory in use (nvidia-smi, most seen): {memory.describe()}")
        try:
            _ended(outcome, "the benchmark")
        except PartFailed as failure:
            kept = f"; the {len(rows)} row(s) it finished are below" if rows else ""
            raise PartFailed("\n".join([f"{failure}{kept}", *lines])) from None
        return lines

    return run


def _bench_row(ctx: Context, r: dict, note: str, source: str) -> str:
    """Adds one benchmark row to the throughput table; its report line."""
    per_gpu = r["images_per_sec"] / r["devices"]
    gflops = r.get("gflops_per_image")
    ctx.rows.append({
        "arch": r["arch"], "mode": r["mode"], "data": r["data"] + note,
        "precision": r["precision"], "batch": r["per_device_batch"],
        "devices": r["devices"], "images_per_sec_per_gpu": per_gpu,
        "tflops_per_gpu": None if gflops is None else per_gpu * gflops / 1e3,
        "mfu": r.get("mfu"),
        "peak_memory_gib": _per(r.get("peak_memory_bytes"), 2**30),
        "torch_images_per_sec": r.get("torch_images_per_sec"), "ratio": r.get("ratio"),
        "published": _published(r["arch"], ctx.device_kind, r["mode"]),
        "ceiling": r.get("ceiling_images_per_sec"), "source": source})
    return (f"- {r['mode']} {r['data']}{note} batch {r['per_device_batch']}/GPU on "
            f"{r['devices']} device(s): {per_gpu:,.0f} img/s per GPU"
            + (f", PyTorch {r['torch_images_per_sec']:,.0f} (ratio {r['ratio']:.2f})"
               if r.get("torch_images_per_sec") else ""))


COUNTER = os.path.join(ROOT, "scripts", "benchmark_compiled.py")


def counted_part(arch: str, precision: str, batch: int):
    """The training step of `arch` compiled for the GPU the devices part found, without
    running it (scripts/benchmark_compiled.py, JAX on the CPU), and counted: its ceiling
    stands beside every measured img/s of the same arch, precision and batch, and is in the
    report even when a part that runs on the GPU fails."""

    def run(ctx: Context, timeout: float) -> list[str]:
        # Here, not at the top: it imports the whole trainer, which this process (it runs no
        # JAX computation, see above) needs for nothing else.
        from resnet_jax.bench import compiled

        name = compiled.target_for(ctx.device_kind)
        if name is None:
            raise PartFailed(f"no counted target for {ctx.device_kind!r} (the counter knows "
                             f"{', '.join(t.name for t in compiled.TARGETS.values())})")
        json_path = os.path.join(ctx.out, f"compiled_{arch}_{precision}.json")
        outcome = run_logged([sys.executable, COUNTER, f"--archs={arch}",
                              f"--precisions={precision}", f"--targets={name}",
                              f"--batch={batch}", f"--json={json_path}"],
                             json_path.replace(".json", ".log"), timeout=timeout,
                             env=dict(ctx.env, JAX_PLATFORMS="cpu"))
        _ended(outcome, "the count of the compiled program")
        with open(json_path) as f:
            rows = json.load(f)["rows"]
        lines = []
        for r in rows:
            t = r["train"]
            ctx.ceilings[(r["arch"], r["precision"], r["per_device_batch"])] = (
                t["images_per_sec"])
            lines.append(
                f"- {r['arch']} {r['precision']} training, batch {r['per_device_batch']}/GPU, "
                f"compiled for one {compiled.TARGETS[name].name} in {r['compile_s']:.0f} s: "
                f"{t['kernels']:,} kernels, {t['bytes_per_image'] / 1e6:.0f} MB and "
                f"{t['conv_flops_per_image'] / 1e9:.1f} conv GFLOP per image, ceiling "
                f"{t['images_per_sec']:,.0f} img/s per GPU (per-kernel roofline at the "
                "data-sheet peaks: an upper bound; no autotuning)")
        return lines

    return run


def _injected_failure(name: str):
    """For testing the report: the part's child process fails as a crash would."""

    def run(ctx: Context, timeout: float) -> list[str]:
        log = os.path.join(ctx.out, re.sub(r"\W+", "_", name) + ".log")
        _ended(run_logged([sys.executable, "-c", f"raise SystemExit('injected failure of "
                                                  f"{name}')"], log, timeout=timeout,
                          env=ctx.env), name)
        return []

    return run


# --- the plans ---------------------------------------------------------------------------

# --quick's budget, start to end, compiles included: a 15-minute GPU window holds the
# machine's start, this and a rerun. A part starts only when its whole time limit fits in
# what is left, so the check cannot overrun it (docs/benchmarks.md: how the parts fit).
QUICK_BUDGET = 420
# By then the first figure that matters (RN50 v1.5 bf16 training img/s beside PyTorch) is out.
FIRST_FIGURE_SECONDS = 180
RN50, SE_RNXT = "resnet50_v15", "se_resnext101_32x4d"
# Per-GPU batches near NVIDIA's: its RN50 tables use 256 (PyTorch) and 192/512 (MXNet), its
# SE-ResNeXt101 ones 128.
BATCH = {RN50: 256, SE_RNXT: 128, "resnet_tiny": 4}
# Each part's time limit (seconds), from what each does on one GPU: a benchmark starts JAX,
# compiles the step (cross-compiled here: RN50 v1.5 14-19 s on 2 cores, SE-ResNeXt101 38-64
# s; a GPU also autotunes), times 25 steps, then PyTorch does the same.
LIMIT = {"devices": 40, "benchmark": 140, "benchmark without command buffers": 100,
         "compiled program": 60, "DALI smoke test": 90, "train": 240,
         "benchmark SE-ResNeXt101": 200, "inference": 120, "full benchmark": 600}


def plan(*, quick: bool, cpu: bool, precisions: list[str], devices: int) -> list[Part]:
    """The parts, most telling first: --quick may run out of budget before the last."""
    arch, first = ("resnet_tiny" if cpu else RN50), precisions[0]
    full = not quick
    # The full check adds the DALI rows and inference to each benchmark (not on the CPU,
    # where the dry run is a test and inference is the quick plan's).
    data = "synthetic,dali" if full else "synthetic"
    modes = "train,infer" if full and not cpu else "train"
    bench = LIMIT["full benchmark" if full else "benchmark"]

    def benchmark(precision, **kw):
        return bench_part(arch, precision, str(BATCH[arch]), data, modes, **kw)

    parts = [Part("devices", devices_part, LIMIT["devices"]),
             Part(f"benchmark {arch} {first}", benchmark(first), bench)]
    if devices > 1 and not cpu:
        parts.append(Part(f"benchmark {arch} {first}, one GPU",
                          benchmark(first, label="_1gpu", visible="0"), bench))
    if not cpu:  # a GPU flag: the CPU has no command buffers to turn off
        parts.append(Part(f"benchmark {arch} {first}, no command buffers",
                          bench_part(arch, first, str(BATCH[arch]), "synthetic", "train",
                                     label="_no_command_buffers", torch=False,
                                     command_buffers=False),
                          LIMIT["benchmark without command buffers"]))
    if not cpu:  # needs the GPU's kind (the devices part) and XLA's CUDA compiler
        parts.append(Part(f"compiled program {arch} {first}",
                          counted_part(arch, first, BATCH[arch]), LIMIT["compiled program"]))
    parts.append(Part("DALI smoke test", smoke_part, LIMIT["DALI smoke test"], needs_dali=True))
    for precision in precisions:
        parts.append(Part(f"train {precision}", train_part(precision), LIMIT["train"],
                          needs_dali=True))
        if precision != first:
            parts.append(Part(f"benchmark {arch} {precision}", benchmark(precision), bench))
    if quick and not cpu:
        parts.append(Part(f"benchmark {SE_RNXT} {first}",
                          bench_part(SE_RNXT, first, str(BATCH[SE_RNXT]), "synthetic"),
                          LIMIT["benchmark SE-ResNeXt101"]))
    if quick:
        parts.append(Part(f"benchmark {arch} {first} inference",
                          bench_part(arch, first, "1,8" if cpu else "1,256", "synthetic",
                                     "infer", label="_infer"), LIMIT["inference"]))
    if full and not cpu:
        parts += [Part(f"benchmark {name} bf16", bench_part(name, "bf16", str(BATCH[SE_RNXT]),
                                                            "synthetic,dali", "train,infer"),
                       LIMIT["full benchmark"])
                  for name in ("resnext101_32x4d", SE_RNXT)]
    return parts


def dali_available() -> bool:
    """Whether DALI imports here (ready-made GPU containers often lack it)."""
    try:
        import nvidia.dali  # noqa: F401  the question is whether this import works
    except ImportError:
        return False
    return True


SKIPPED_BUDGET = "skipped (budget)"


def run_parts(parts: list[Part], ctx: Context, report: Report, *, deadline: float,
              budget: float | None, has_dali: bool, fail=(), clock=time.perf_counter) -> None:
    """Runs `parts` in order into `report`. A part whose whole time limit no longer fits
    before `deadline` is not started ('skipped (budget)', not a failure): the check ends
    within its budget, and a part is never cut short by it."""
    for part in parts:
        left = deadline - clock()
        if part.needs_dali and not has_dali:
            report.part(part.name, "skipped", 0, [
                "DALI is not installed here (it is nvidia-dali-cuda120 on PyPI): this part "
                "reads JPEGs through it"])
            continue
        if part.timeout > left:
            report.part(part.name, SKIPPED_BUDGET, 0, [
                f"it may take {part.timeout:.0f} s and {max(0, left):.0f} s of the "
                f"{budget:.0f} s budget are left: raise --budget, or run the full check "
                "(without --quick)"])
            continue
        report.write(pending=part.name)
        run = _injected_failure(part.name) if part.name in fail else part.run
        start = clock()
        try:
            status, lines = "pass", run(ctx, part.timeout)
        except PartFailed as failure:
            status, lines = "FAIL", str(failure).splitlines()
        except Exception as error:  # noqa: BLE001  a bug here must not lose the report
            status, lines = "FAIL", [f"the check itself failed: {type(error).__name__}: {error}"]
        report.part(part.name, status, clock() - start, lines)


def run_check(args) -> int:
    """Runs the plan that `args` (scripts/gpu_check.py's) asks for; the exit code."""
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ)
    # The children import resnet_jax from this checkout, installed or not (scripts/gpu_check.py
    # has put .whl/'s wheels on PYTHONPATH too).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    if args.cpu:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
                   XLA_FLAGS=" ".join([*flags, "--xla_force_host_platform_device_count=2"]))
    gpus, gpu_source = parallel.find_gpus(env)
    devices = 2 if args.cpu else max(1, gpus or 1)
    if args.cpu:
        per_device, steps_per_epoch, epochs, log_every, image_px = 4, 4, args.epochs or 12, 4, 40
        model_flags = ["--config.arch=resnet_tiny", "--config.data.backend=dali_cpu",
                       "--config.base_learning_rate=1.0", "--config.image_size=32",
                       "--config.eval_resize_size=36", "--config.eval_image_size=32",
                       "--config.data.num_threads=1"]
        bench_flags = ["--image-size=32", "--warmup-steps=1", "--steps=2", "--dali-threads=1",
                       "--no-torch"]
    else:
        # NVIDIA's MXNet batch; a few hundred steps, a few images per step repeated.
        per_device, steps_per_epoch, log_every, image_px = 192, 5, 50, 256
        epochs = args.epochs or 60
        model_flags = ["--config.data.backend=dali_gpu"]
        bench_flags = []
    classes = 3 if args.cpu else 10
    model_flags += [f"--config.num_classes={classes}",
                    f"--config.per_device_batch_size={per_device}"]
    ctx = Context(out=args.out, env=env, cpu=args.cpu, devices=devices,
                  data_root=os.path.join(args.out, "data"), model_flags=model_flags,
                  bench_flags=bench_flags, epochs=epochs, log_every=log_every,
                  per_device=per_device, gpus=gpus, gpu_source=gpu_source)
    has_dali = dali_available()
    command = "bash scripts/gpu_check.sh" + "".join(
        f" --{flag}" for flag in ("quick", "cpu") if getattr(args, flag))
    head = [f"# resnet_jax GPU check{' (dry run on the CPU)' if args.cpu else ''}"
            f"{', quick' if args.quick else ''}", "",
            f"{time.strftime('%Y-%m-%d %H:%M')}, `{command}`"
            + (f", budget {args.budget:.0f} s" if args.budget else ""), ""]
    if has_dali:
        start = time.perf_counter()
        per_class = math.ceil(steps_per_epoch * devices * per_device / classes) + 1
        demo.make_demo_dataset(ctx.data_root, num_classes=classes, train_per_class=per_class,
                               val_per_class=max(4, per_class // 10), image_size=image_px,
                               seed=0)
        head += [f"Data: {classes} classes x {per_class} generated training JPEGs of "
                 f"{image_px} px ({time.perf_counter() - start:.0f} s to draw); training parts "
                 f"{epochs} epochs of {steps_per_epoch} steps, {devices} device(s) x "
                 f"{per_device} images.", ""]
    print(f"gpu_check: writing {args.out}/report.md", flush=True)
    report = Report(args.out, head, ctx.rows, ctx.ceilings)
    run_parts(plan(quick=args.quick, cpu=args.cpu, precisions=args.precisions,
                   devices=devices), ctx, report,
              deadline=started + (args.budget or math.inf), budget=args.budget,
              has_dali=has_dali, fail=args.fail)
    result = report.finish()
    print(f"gpu_check: {result}; report in {args.out}/report.md", flush=True)
    return 1 if report.failed else 0
