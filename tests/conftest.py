"""Test set-up: simulated CPU devices, a persistent compilation cache, shared helpers.

* Eight simulated CPU devices in the test process, so that sharding runs as on
  an 8-GPU node. Commands started by the tests get 2 unless a test asks for
  more: on 2 cores, 8 simulated devices prove nothing more for a whole run
  and cost several times the time.
* XLA compiles for the CPU without LLVM's optimizations
  (--xla_backend_optimization_level=0, in the test process and the commands
  it starts): the tests' programs are tiny, compiling them is most of a fresh
  machine's test time (a third less at -O0), and every comparison a test
  makes is between programs compiled the same way.
* XLA's programs are cached on disk outside the checkout
  (~/.cache/resnet_jax/jax-tests, or $RESNET_JAX_TEST_CACHE), shared by the
  test process and every command it starts: the same small model compiled by
  twenty runs is compiled once.
* Commands run in a controlled environment (`command_env`): PATH, HOME and
  the settings above, nothing else from the caller, plus TF_CPP_MIN_LOG_LEVEL=0,
  the noisiest value a user's environment can hold, so that a test of what a
  command prints proves it for every environment.
"""

import functools
import os
import subprocess
import sys

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
CACHE_DIR = os.environ.setdefault(
    "RESNET_JAX_TEST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "resnet_jax",
                                          "jax-tests"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "resnet50_v15.py")

# The recipe scaled down for tests, one set of values for every test that does not need
# another (each difference is another XLA program to compile on a fresh machine): the tiny
# model, 3 classes, 32 px, fp32, 4 images per device, DALI on the CPU, and no TensorBoard
# (TensorFlow costs ~5 s per process; test_end_to_end turns it back on).
TINY_FIELDS = {"arch": "resnet_tiny", "num_classes": 3, "image_size": 32,
               "eval_resize_size": 36, "eval_image_size": 32, "precision": "fp32",
               "per_device_batch_size": 4, "data.backend": "dali_cpu", "data.num_threads": 1,
               "tensorboard": False}
TINY = tuple(f"--config.{name}={str(value).lower() if isinstance(value, bool) else value}"
             for name, value in TINY_FIELDS.items())


def tiny_config(data_root: str = "", **fields):
    """The recipe with TINY_FIELDS and `fields` (`data__root` sets data.root), as
    `python -m resnet_jax.main --config=RECIPE ...` builds it."""
    from resnet_jax import config as config_lib

    config = config_lib.recipe("resnet50_v15")
    values = {**TINY_FIELDS, "data.root": data_root,
              **{name.replace("__", "."): value for name, value in fields.items()}}
    for name, value in values.items():
        parent, _, key = name.rpartition(".")
        (config[parent] if parent else config)[key] = value
    return config


def tiny_run(data_root: str = "", *, devices: int = 2, workdir=None, **fields):
    """`setup_train_loop` of `tiny_config` on the first `devices` devices of this process, as
    a process with that many devices builds it (without a data root: synthetic images)."""
    from resnet_jax import parallel
    from resnet_jax.train import setup

    if not data_root:
        fields = {"data__backend": "synthetic", "data__synthetic_train_images": 32, **fields}
    config = tiny_config(data_root, **fields)
    make_mesh = parallel.make_mesh
    parallel.make_mesh = lambda found=None: make_mesh(jax.devices()[:devices])
    try:
        return setup.setup_train_loop(config, None if workdir is None else str(workdir))
    finally:
        parallel.make_mesh = make_mesh


def command_env(devices: int = 2, **extra) -> dict:
    """The environment of a command started by a test (see the module docstring)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "HOME": os.environ.get("HOME", "/tmp"),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}",
           "JAX_COMPILATION_CACHE_DIR": CACHE_DIR,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "TF_CPP_MIN_LOG_LEVEL": "0"}
    env.update(extra)
    return env


def main_command(workdir, data_root, *overrides) -> list[str]:
    """`python -m resnet_jax.main` of the tiny recipe (global batch 8 on 2 devices)."""
    return [sys.executable, "-m", "resnet_jax.main", f"--config={RECIPE}",
            f"--workdir={workdir}", *TINY, f"--config.data.root={data_root}", *overrides]


def run(command: list[str], *, devices: int = 2, timeout: int = 300, **env):
    """Runs a command as a user would; the result has `.output`, stdout + stderr."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env=command_env(devices, **env), stdin=subprocess.DEVNULL)
    result.output = result.stdout + result.stderr
    return result


def run_main(workdir, data_root, *overrides, devices: int = 2):
    """`main_command` run to its end; the result has `.output`, stdout + stderr."""
    return run(main_command(workdir, data_root, *overrides), devices=devices)


def start(command: list[str], *, devices: int = 2, stderr=subprocess.STDOUT,
          **env) -> subprocess.Popen:
    """Starts a command with its output on a pipe (stderr joins stdout unless given)."""
    return subprocess.Popen(command, cwd=ROOT, env=command_env(devices, **env),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)


def error_line(result) -> str:
    """What a user sees of a run stopped by bad input: exit 2 and exactly one line, `error: ...`."""
    assert result.returncode == 2, result.output
    assert result.stdout == "", result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def final_variables(workdir, arch: str = "resnet_tiny", num_classes: int = 3, *,
                    ema: bool = False):
    """(step, {'params', 'batch_stats'} as numpy) of the latest checkpoint in `workdir` (with
    `ema`: its moving average's)."""
    from resnet_jax import checkpoint, parallel

    saved = checkpoint.Saved(str(workdir))
    assert (saved.meta["arch"], saved.meta["num_classes"]) == (arch, num_classes)
    mesh = parallel.make_mesh(jax.devices()[:1])
    variables = saved.restore_variables(parallel.replicated(mesh), ema=ema)
    return saved.step, jax.device_get(variables)


def assert_tree_equal(got, want, **tolerance):
    """Every leaf of two pytrees equal: bit for bit, or within `tolerance` (assert_allclose's
    rtol, atol)."""
    got, want = jax.device_get((got, want))
    if tolerance:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tolerance), got, want)
    else:
        jax.tree.map(np.testing.assert_array_equal, got, want)


@functools.cache
def _eval_apply(model):
    return jax.jit(lambda variables, images: model.apply(variables, images, train=False))


def logits(model, variables, images) -> np.ndarray:
    """`model`'s eval-mode logits as numpy, jitted once per model for the whole session (the
    converters' and exporters' tests compare the same models on images of the same shape)."""
    return np.asarray(_eval_apply(model)(variables, images))


assert_same_variables = assert_tree_equal  # the name the tests of records and LARS use


def relative_error(got, want) -> float:
    """The largest difference relative to the largest |value| of `want`."""
    want = np.asarray(want)
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The demo data set drawn small: 3 classes, 33 train and 15 val JPEGs of 40 px.

    With a global batch of 8: 4 steps per epoch.
    """
    from resnet_jax.data.demo import make_demo_dataset

    root = str(tmp_path_factory.mktemp("demo"))
    make_demo_dataset(root, num_classes=3, train_per_class=11, val_per_class=5, image_size=40,
                      seed=1)
    return root
