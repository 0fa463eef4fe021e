"""What a benchmark's JSON says about where and how it ran (the CPU, the command, the date),
and how its files are written."""

import datetime
import os
import platform
import shlex
import sys


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows, else 'unknown'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu() -> dict:
    """{'cpu': model name, 'cpu_count': cores}, for a JSON header."""
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count()}


def provenance() -> dict:
    """{'command': this process's command line, 'date': now, UTC}, for a JSON header."""
    return {"command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def write_atomic(path: str, text: str) -> None:
    """Writes `path` whole or not at all: a process killed during the write leaves the
    previous version, so a benchmark that rewrites its results after every row keeps the
    rows it finished."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
