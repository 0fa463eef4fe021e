"""What the commands print: their own lines, and other libraries' chatter only on request.

TensorFlow (loaded by clu's TensorBoard writer) and XLA print INFO and
WARNING lines from C++ (oneDNN notes, CPU features, device counts, absl's
"log messages before absl::InitializeLog()"), and Orbax warns each time a
restore-only checkpoint manager opens. None of it is news to a user.

`quiet_native_logs()` runs when the package is imported, so before
TensorFlow loads and before XLA starts a backend: it sets
TF_CPP_MIN_LOG_LEVEL to 2 (errors only), and TF_ENABLE_ONEDNN_OPTS to 0
unless set (TensorFlow's oneDNN notice ignores the log level). `keep_own_lines()` is what the
commands call: Python log records of other libraries are kept only from
WARNING up, and Orbax's notes about read-only managers are dropped.

RESNET_JAX_VERBOSE=1 in the environment (or `--library_logs` of
`resnet_jax.main`) turns both off: everything is printed.
"""

import logging
import os

from absl import logging as absl_logging

VERBOSE_ENV = "RESNET_JAX_VERBOSE"
_NATIVE_ENV = "TF_CPP_MIN_LOG_LEVEL"
_NATIVE_QUIET = 2  # 0 INFO, 1 WARNING, 2 ERROR: TensorFlow's and XLA's C++ logs
_original_native = os.environ.get(_NATIVE_ENV)
# TensorFlow announces that oneDNN's custom operations are on (port.cc) whatever
# TF_CPP_MIN_LOG_LEVEL says, on CPUs where it turns them on (seen with tensorflow-cpu 2.21 on
# an AMD EPYC with AVX512_BF16). TensorFlow only writes TensorBoard events and reads
# checkpoints here, so its oneDNN graph rewrites do nothing for us: they are turned off
# unless the user chose, or asked for every library's lines.
_ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
_original_onednn = os.environ.get(_ONEDNN_ENV)

# Orbax warns whenever a restore-only checkpoint manager opens (eval, classify, fine-tuning).
_LIBRARY_NOTES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")


def verbose() -> bool:
    """True when the user asked for every library's lines (RESNET_JAX_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_native_logs() -> None:
    """Errors only from TensorFlow's and XLA's C++ logging, unless verbose; before they load."""
    if verbose():
        return
    try:
        level = int(os.environ.get(_NATIVE_ENV, "0"))
    except ValueError:
        level = 0
    os.environ[_NATIVE_ENV] = str(max(level, _NATIVE_QUIET))
    os.environ.setdefault(_ONEDNN_ENV, "0")


def set_verbose() -> None:
    """Turns verbosity on from a command-line flag: the environment as the user had it.

    Takes effect for C++ logs only if called before TensorFlow loads and XLA starts.
    """
    os.environ[VERBOSE_ENV] = "1"
    for name, original in ((_NATIVE_ENV, _original_native), (_ONEDNN_ENV, _original_onednn)):
        if original is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = original


class _OwnLinesOnly(logging.Filter):
    """Keeps INFO lines of resnet_jax and warnings/errors of everyone, less known notes."""

    def filter(self, record):
        if record.getMessage().startswith(_LIBRARY_NOTES):
            return False
        return record.levelno >= logging.WARNING or _is_ours(record.pathname)


def _is_ours(pathname: str) -> bool:
    package = os.path.dirname(os.path.abspath(__file__))
    scripts = os.path.join(os.path.dirname(package), "scripts")
    return pathname.startswith((package + os.sep, scripts + os.sep))


def keep_own_lines() -> None:
    """For a command: other libraries' INFO lines and known notes are dropped, unless verbose."""
    if verbose():
        return
    # The handler sees every record once absl's app runs; the logger, absl.logging's own
    # records (Orbax's among them) in commands that parse their flags with argparse.
    for where in (absl_logging.get_absl_handler(), logging.getLogger("absl")):
        if not any(isinstance(f, _OwnLinesOnly) for f in where.filters):
            where.addFilter(_OwnLinesOnly())
