"""Errors that a user can fix: bad configuration values and bad input data."""


class ConfigError(ValueError):
    """A configuration value or input that the user must change.

    The message names the value and the fix, on one line; `main` prints it
    without a traceback and exits non-zero.
    """


class TrainingError(Exception):
    """Training cannot go on (e.g. non-finite gradients); saved checkpoints are intact."""


class ConversionError(ConfigError):
    """Weights from elsewhere do not fit the architecture; the message names the bad ones."""


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
