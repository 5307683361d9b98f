"""Timing helpers the benchmarks share: steady-state training windows, per-call wall times,
medians, serving latency summaries and peak memory."""

from __future__ import annotations

import statistics
import time


def timed_fit_window(model, dataset, steps: int) -> float:
    """Seconds of ``steps`` training steps in steady state: one ``fit`` call of two epochs of
    ``steps`` steps, timing only the second (so creating the iterator and filling the
    shuffle buffer, which happen once per ``fit`` call, are not counted)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.started

    timer = EpochTimer()
    model.fit(dataset, epochs=2, steps_per_epoch=steps, shuffle=False, verbose=0,
              callbacks=[timer])
    return timer.seconds


def call_times(fn, calls: int) -> list:
    """Wall seconds of each of ``calls`` calls of ``fn``, after one untimed call (tracing)."""
    fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one untimed call (tracing)."""
    return statistics.median(call_times(fn, repeats))


def latency_summary(batch64_times: list, single_times: list) -> dict:
    """Batch-64 examples/s (median) and batch-1 p50/p99 latency in ms; the one summary used
    for both sides of the serving comparison."""
    return {"batch64_examples_per_s": 64 / statistics.median(batch64_times),
            "batch1_p50_ms": 1000 * quantile(single_times, 0.5),
            "batch1_p99_ms": 1000 * quantile(single_times, 0.99)}


def quantile(values, q):
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's ``ru_maxrss`` carries the parent's
    high-water mark across fork+exec (a child of a 6 GB benchmark reports 6 GB), so the
    kernel's per-address-space ``VmHWM`` is read where it exists."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
