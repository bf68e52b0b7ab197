"""Pieces shared by the benchmarks in tools/."""
from __future__ import annotations

import argparse
import resource
import time


def parser(doc: str, model_required: bool = True) -> argparse.ArgumentParser:
    """A benchmark's parser (its docstring as help) with the model arguments already added."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, model_required)
    return p


def add_model_args(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    """--model, --val, --mean, --std: the model and its preprocessed validation images."""
    floats = lambda s: tuple(map(float, s.split(",")))  # noqa: E731
    p.add_argument("--model", required=model_required)
    p.add_argument("--val", required=True)
    p.add_argument("--mean", type=floats, default=(0.0,))
    p.add_argument("--std", type=floats, default=(1.0,))


def best_seconds(fn, repeats: int = 3, inner: int = 1) -> float:
    """Best of `repeats` timings of `inner` calls of fn (after one warm-up call), per call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def high_water_mb() -> float:
    """This process's peak resident memory in MB. Read from /proc (VmHWM, reset at exec) where there
    is one: getrusage's ru_maxrss keeps the forking parent's peak across exec on Linux."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
