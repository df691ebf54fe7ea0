"""Which CPUs a measurement runs on: pinned, and not shared with another measurement.

Pinning keeps the scheduler from migrating a measurement between cores. Every thread of the
process is pinned, not only the caller: sched_setaffinity(0) moves the calling thread alone, and
runtimes (OpenVINO's CPU streams) start their workers when the model is compiled, before
measuring starts. Two measurements must not share a CPU: OpenVINO's caller waits while its
worker computes, so two OpenVINO measurements on one CPU pay a scheduler time slice per
inference and read 2.5-3x slow, 7x with OpenVINO's own pinning on (tools/bench_pinning.py,
BENCHMARKS.md). Concurrent edgeprune
processes therefore claim CPUs through lock files: a free CPU if there is one (the one the
thread runs on first), else they wait for the CPU they prefer, since a measurement that waits
is worth more than one that shares.
"""
from __future__ import annotations

import os
import tempfile
import threading
from contextlib import ExitStack, contextmanager

LOCK_DIR = os.path.join(tempfile.gettempdir(), "edgeprune-cpus")


def passive_openmp() -> None:
    """Ask OpenMP threads to sleep, not busy-wait, between ops: spinning threads steal the core
    a latency measurement runs on. Only effective before torch loads, so processes that measure
    (the CLI, the tools) call it first; ``import edgeprune`` does not, because the pytest
    plugin would then change every pytest run. A user's own setting wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_held: dict[int, int] = {}   # CPU -> how many nested pinned() of this process hold it


@contextmanager
def pinned(threads: int):
    """Restrict every thread of this process (see the module docstring) to ``threads`` CPUs
    that no other edgeprune process is measuring on while measuring (Linux), then restore."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    with ExitStack() as claims:
        cpus = set(claim(preference(before, _current_cpu()), max(1, threads), claims))
        saved = {tid: _set_affinity(tid, cpus) for tid in _threads()}
        try:
            yield
        finally:
            for tid in _threads():
                _set_affinity(tid, saved.get(tid) or before)


def claim(preferred: list[int], n: int, claims: ExitStack) -> list[int]:
    """``n`` CPUs of ``preferred`` (in that order of preference), locked for this process until
    ``claims`` closes: free ones if there are enough, else (holding none) wait for the ``n``
    most preferred in ascending order, so two waiting processes cannot deadlock. Without lock
    files (no fcntl, unwritable temp dir), the first ``n``."""
    try:
        import fcntl
        os.makedirs(LOCK_DIR, exist_ok=True)
    except (ImportError, OSError):
        return preferred[:n]
    got = [c for c in preferred if c in _held][:n]  # nested in this process: already ours
    rest = [c for c in preferred if c not in got]
    with ExitStack() as attempt:
        new: list[int] = []
        for cpu in rest:
            if len(new) == n - len(got):
                break
            if _lock(cpu, False, fcntl, attempt):
                new.append(cpu)
        if len(new) < n - len(got):
            attempt.close()
            new = sorted(rest[:n - len(got)])
            for cpu in new:
                _lock(cpu, True, fcntl, attempt)
        claims.push(attempt.pop_all())
    for cpu in got + new:
        _held[cpu] = _held.get(cpu, 0) + 1
        claims.callback(_release, cpu)
    return got + new


def _lock(cpu: int, blocking: bool, fcntl, claims: ExitStack) -> bool:
    try:
        f = open(os.path.join(LOCK_DIR, f"cpu{cpu}.lock"), "a")
    except OSError:
        return True  # cannot coordinate: use it anyway
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        f.close()
        return False
    claims.callback(f.close)  # closing the file releases the lock
    return True


def _release(cpu: int) -> None:
    _held[cpu] -= 1
    if not _held[cpu]:
        del _held[cpu]


def preference(allowed: set[int], current: int | None) -> list[int]:
    """The ``allowed`` CPUs in order of preference: the ``current`` one first, then by number."""
    return sorted(allowed, key=lambda c: (c != current, c))


def _current_cpu() -> int | None:
    """The CPU this thread last ran on (Linux /proc), else None."""
    try:
        with open("/proc/thread-self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def _threads() -> list[int]:
    """Thread ids of this process (just this thread where /proc is absent)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def _set_affinity(tid: int, cpus: set[int]) -> set[int] | None:
    """Set a thread's CPUs; its previous set, or None if it could not be changed (gone, denied)."""
    try:
        previous = os.sched_getaffinity(tid)
        os.sched_setaffinity(tid, cpus)
        return previous
    except OSError:
        return None


def cpu_wait_ns() -> int | None:
    """Nanoseconds this thread has spent runnable but not running (Linux), else None."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
