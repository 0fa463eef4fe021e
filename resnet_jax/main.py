"""Command line: `python -m resnet_jax.main --config configs/resnet50_v15.py --workdir DIR`.

`--config.mode=train` (default) trains and evaluates, resuming from DIR's
latest checkpoint; `--config.mode=eval` evaluates DIR's (or
--config.checkpoint's) latest checkpoint.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from resnet_jax import config as config_lib
from resnet_jax import parallel, quiet
from resnet_jax.errors import ConfigError, exit_code

FLAGS = flags.FLAGS
STOP_EXIT_CODE_ENV = "RESNET_JAX_STOP_EXIT_CODE"
config_flags.DEFINE_config_file(
    "config", None, "Recipe file, e.g. configs/resnet50_v15.py[:preset].", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard events and metrics go.")
flags.DEFINE_string("coordinator_address", None,
                    "Several processes without SLURM/Open MPI: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Several processes: how many in all.")
flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0..N-1.")
flags.DEFINE_bool("library_logs", False, "Also show the log lines of TensorFlow, XLA, JAX, Orbax, "
                  "DALI and clu (as RESNET_JAX_VERBOSE=1 does).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.library_logs:
        quiet.set_verbose()  # before TensorFlow loads and the XLA backend starts
    quiet.keep_own_lines()
    return exit_code(_run, FLAGS.config)


def _run(config) -> int:
    config_lib.validate(config)
    stop_code = stop_exit_code()
    # XLA flags are read when the backend starts, i.e. before the first JAX computation.
    parallel.configure_runtime(deterministic=config.deterministic,
                               memory_fraction=parallel.memory_fraction(config),
                               dali_on_gpu=parallel.dali_on_gpu(config))
    if config.mode == "train" and not FLAGS.workdir:
        raise ConfigError("--workdir is required for training: pass --workdir=runs/NAME")
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    parallel.check_devices()
    # Here, not above: the training package (Orbax, optax, the train step) loads only once
    # the config and the launch are known to be good.
    from resnet_jax.train import evaluate, loop, setup

    if config.mode == "eval":
        evaluate.evaluate_checkpoint(config, FLAGS.workdir)
        return 0
    run = setup.setup_train_loop(config, FLAGS.workdir)
    loop.train_loop(run)
    return stop_code if run.stopped_by else 0


def stop_exit_code(environ=None) -> int:
    """The exit code of a run that a signal stopped early, its checkpoint saved:
    $RESNET_JAX_STOP_EXIT_CODE, else 0. A scheduler that must not count such a process as
    finished sets another (scripts/k8s/resnet50.yaml: 143, SIGTERM's code)."""
    text = (os.environ if environ is None else environ).get(STOP_EXIT_CODE_ENV, "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) > 255:
        raise ConfigError(f"{STOP_EXIT_CODE_ENV}={text!r} is not an exit code: set it to a "
                          "number from 0 to 255 (e.g. 143) or unset it")
    return int(text)


def parse_flags(argv):
    """absl's flag parsing, with a one-line error for a config field that does not exist."""
    try:
        return FLAGS(argv)
    except AttributeError as error:
        # ml_collections reports `--config.num_epoch=5` as AttributeError with a suggestion.
        cause = error.args[0] if error.args else error
        text = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        detail = " ".join(str(text).split())
        print(f"error: unknown config field {detail} (fields: resnet_jax/config.py)",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
