"""Errors that a user can fix: bad configuration values and bad input data; and how a
command line reports them."""

import sys


class ConfigError(ValueError):
    """A configuration value or input that the user must change.

    The message names the value and the fix, on one line; `main` prints it
    without a traceback and exits non-zero.
    """


class TrainingError(Exception):
    """Training cannot go on (e.g. non-finite gradients); saved checkpoints are intact."""


class ConversionError(ConfigError):
    """Weights from elsewhere do not fit the architecture; the message names the bad ones."""


def exit_code(run, *args) -> int:
    """A command line's body run to its exit code: what `run(*args)` returns (0 for None),
    or, for an error the user can fix, one `error: ...` line on stderr and 2 (ConfigError,
    bad input) or 3 (TrainingError), without a traceback."""
    try:
        return run(*args) or 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3


def first_items(items: list[str], separator: str, shown: int = 6) -> str:
    """The first `shown` items, and how many more: a wrong arch can misfit hundreds of names."""
    more = f"{separator}... {len(items) - shown} more" if len(items) > shown else ""
    return separator.join(items[:shown]) + more


def describe_mismatch(missing: list[str], unexpected: list[str], wrong_shape: list[str]) -> str:
    """'missing N: ... | unexpected N: ... | wrong shape N: ...' for the kinds that occur
    (empty when none does), for a ConversionError."""
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {first_items(missing, ', ')}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {first_items(unexpected, ', ')}")
    if wrong_shape:
        problems.append(f"wrong shape {len(wrong_shape)}: {first_items(wrong_shape, '; ')}")
    return " | ".join(problems)
