"""How the benchmarks time a step, and what they report of the times.

Training (`time_steps`): the first step (compilation included) is timed
alone, then the warm-up steps run, then each timed step is dispatched before
the host waits for the previous step's result, so that one step is queued as
in the trainer. A step's time is the interval between two results; img/s is
the batch over the median step time (`step_summary`).

Inference (`time_latency`), as NVIDIA's inference tables give it: one batch
at a time, each call timed from taking the batch to its result being ready;
img/s is the batch over the mean latency, and the latency's mean, 90th, 95th
and 99th percentiles are reported (`latency_summary`; with 20 calls the upper
percentiles are close to the slowest call).

Both also report the share of the cores that other processes kept busy
meanwhile (Linux; a shared machine's noise).
"""

import os
import statistics
import time

import numpy as np

LATENCY_PERCENTILES = (90, 95, 99)


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, of this process) so far; None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def others_load(start, end, wall: float) -> float | None:
    """The share of all cores that other processes kept busy between two cpu_seconds().

    None when unknown, or for less than a second (the machine's counters tick at 10 ms).
    """
    if start is None or end is None or wall < 1.0:
        return None
    others = (end[0] - start[0]) - (end[1] - start[1])
    return min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1))))


def time_steps(dispatch, wait, warmup: int, steps: int) -> tuple[float, list[float], float]:
    """(first step's seconds, per-step seconds of the timed steps, others' load) of a step.

    `dispatch()` starts one step and returns what `wait` blocks on. Timed steps
    keep one step queued: step i+1 is dispatched before waiting for step i, and
    a step's time runs from the previous wait's end to its own. One more step
    than timed is dispatched, so that a framework that runs each step inside
    `dispatch` (eager PyTorch on a CPU) is timed on full steps too.
    """
    start = time.perf_counter()
    wait(dispatch())
    first = time.perf_counter() - start
    for _ in range(warmup):
        wait(dispatch())
    times = []
    pending = dispatch()
    cpu, last = cpu_seconds(), time.perf_counter()
    start = last
    for _ in range(steps):
        handle = dispatch()
        wait(pending)
        now = time.perf_counter()
        times.append(now - last)
        last, pending = now, handle
    load = others_load(cpu, cpu_seconds(), last - start)
    wait(pending)
    return first, times, load


def time_latency(run_once, warmup: int, steps: int) -> tuple[float, list[float], float]:
    """(first call's seconds, per-call seconds of the timed calls, others' load) of
    `run_once()`, which takes a batch and returns when its result is ready: one batch in
    flight at a time, so that each call's time is a latency."""
    start = time.perf_counter()
    run_once()
    first = time.perf_counter() - start
    for _ in range(warmup):
        run_once()
    times = []
    cpu, begin = cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return first, times, others_load(cpu, cpu_seconds(), time.perf_counter() - begin)


def latency_summary(first: float, times: list[float], load: float | None, batch: int) -> dict:
    """img/s over the mean latency, and the latency's mean and percentiles in ms."""
    mean = statistics.fmean(times)
    row = {"images_per_sec": batch / mean, "step_ms": 1e3 * mean, "latency_ms_avg": 1e3 * mean}
    for q in LATENCY_PERCENTILES:
        row[f"latency_ms_p{q}"] = 1e3 * float(np.percentile(times, q))
    return {**row, "step_ms_min": 1e3 * min(times), "step_ms_max": 1e3 * max(times),
            "compile_s": first, "others_load": load}


def step_summary(first: float, times: list[float], load: float | None, batch: int) -> dict:
    """img/s over the median step time, and the step's median, fastest and slowest in ms."""
    median = statistics.median(times)
    times = sorted(times)
    return {"images_per_sec": batch / median, "step_ms": 1e3 * median,
            "step_ms_min": 1e3 * times[0], "step_ms_max": 1e3 * times[-1], "compile_s": first,
            "others_load": load}
