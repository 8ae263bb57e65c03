"""Scan the files of a folder in processes forked from this one, one per core.

Each file is judged on its own (:func:`.scanner.scan_job`), so a folder of many files
spreads over the cores: worker ``k`` of ``n`` scans jobs ``k, k + n, ...`` and sends its
reports back through a pipe as plain values (``marshal``: strings, numbers and lists, no
object of the scan's is unpickled here), and this process puts them back in order.  The
reports are the ones a single process makes (tests/scan/test_parallel.py compares them).

Forking is done only where it is safe: a process with no other thread (a thread holding a
lock at the fork leaves it locked forever in the child: a progress bar, a server, torch's
pool) and a platform with ``fork``.  Otherwise, and for a handful of files, the scan runs
here as usual.  A worker that dies, cannot start or sends something unreadable has its
share scanned here again; Ctrl-C ends the workers with this process, and a worker whose
parent is gone (SIGTERM) stops before its next file.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import signal
import sys
import threading
from typing import Iterator

from .findings import FileReport, Finding
from .scanner import Job, run_jobs

MIN_JOBS_PER_WORKER = 16  # below this a fork (a few ms) costs more than it saves
# each worker holds what its own files need (a member, a stream's records): on a machine with
# many cores, a bound on how much a scan may hold at once
MAX_WORKERS = 8


def workers_for(n_jobs: int, cores: int | None = None) -> int:
    """How many processes a scan of ``n_jobs`` jobs should use: one per core (at most
    :data:`MAX_WORKERS`), each with at least :data:`MIN_JOBS_PER_WORKER` jobs, and 1 where
    forking is not safe."""
    if not can_fork():
        return 1
    if cores is None:  # the cores this process may run on (a container's share)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(cores, MAX_WORKERS, n_jobs // MIN_JOBS_PER_WORKER))


def can_fork() -> bool:
    """Whether this process may fork scan workers: ``fork`` exists, no other thread runs,
    and no library that runs threads of its own outside Python's knowledge is loaded."""
    return (
        hasattr(os, "fork")
        and sys.platform != "darwin"  # (fork without exec is unsafe there with any framework)
        and threading.active_count() == 1
        and "torch" not in sys.modules
    )


def run_forked(jobs: list[Job], workers: int) -> list[FileReport]:
    """The report of every job, in order, scanned by ``workers`` processes (this one
    included); in this process alone when forking is not safe or not worth it."""
    # one report per job from here on (a None job, a name with nothing to report, has none)
    jobs = [job for job in jobs if job is not None]
    workers = min(workers, workers_for(sum(isinstance(j, tuple) for j in jobs)))
    if workers <= 1:
        return run_jobs(jobs)
    # worker k (k >= 1) scans jobs k, k + workers, ...: (pid, read end), None if not started
    started: dict[int, tuple[int, int] | None] = {}
    shares: dict[int, list[FileReport]] = {}
    # what exists now is moved out of the collector's sight while the workers run: a worker's
    # collections then never walk (and so copy, page by page) the heap it shares with this
    # process, nor does this one spend time on it (~6% of a 200-file scan's CPU here)
    gc.freeze()
    try:
        with _interrupts_held():  # each worker recorded before Ctrl-C can come
            for k in range(1, workers):
                started[k] = _fork(jobs[k::workers])
        shares[0] = run_jobs(jobs[0::workers])
        for k in range(1, workers):
            child = started.pop(k)
            reports = _reports(child, len(jobs[k::workers])) if child else None
            shares[k] = reports if reports is not None else run_jobs(jobs[k::workers])
    finally:
        gc.unfreeze()
        for child in started.values():  # interrupted (Ctrl-C) or failed: end the rest
            if child:
                _end(*child)
    return [shares[i % workers][i // workers] for i in range(len(jobs))]


def _fork(share: list[Job]) -> tuple[int, int] | None:
    """Start a worker on ``share``: (its pid, the read end of its pipe), or None when no
    process can be started (this one then scans the share)."""
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        try:  # (an interrupt must never let the child run on in the parent's code)
            os.close(read_end)
            _allow_interrupts()
            _work(share, write_end, parent)
        finally:
            os._exit(1)
    os.close(write_end)
    if pid < 0:
        os.close(read_end)
        return None
    return pid, read_end


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT (Ctrl-C) held back while workers are started, delivered after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        _allow_interrupts()


def _allow_interrupts() -> None:
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _work(share: list[Job], write_end: int, parent: int) -> None:  # pragma: no cover - child
    """A worker: scan ``share``, write the reports to ``write_end``, leave without running
    anything of the parent's at exit (no atexit handlers, no flush of its buffers).

    It stops when its parent has gone (SIGTERM from ``timeout`` or a CI runner ends the
    parent alone), checked before each file: at most one file's scan later."""
    code = 0
    try:
        reports = []
        for job in share:
            if os.getppid() != parent:
                os._exit(1)
            reports += run_jobs([job])
        payload = marshal.dumps([_to_plain(rep) for rep in reports])
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
    except BaseException:  # noqa: BLE001 - Ctrl-C or anything: the parent rescans the share
        code = 1
    finally:
        os._exit(code)


def _reports(child: tuple[int, int], expected: int) -> list[FileReport] | None:
    """A worker's reports, or None when it failed (its share is then scanned here).  The
    pipe is closed and the worker waited for (killed first if this is interrupted)."""
    pid, read_end = child
    chunks, status = [], None
    try:
        while chunk := os.read(read_end, 1 << 20):
            chunks.append(chunk)
        status = os.waitpid(pid, 0)[1]
    finally:
        os.close(read_end)
        if status is None:
            _kill(pid)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    try:
        reports = [_from_plain(plain) for plain in marshal.loads(b"".join(chunks))]
    except (EOFError, ValueError, TypeError):
        return None
    return reports if len(reports) == expected else None


def _end(pid: int, read_end: int) -> None:
    """A worker not collected: its pipe closed, the process killed and waited for."""
    os.close(read_end)
    _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:  # (ended already: still ours to wait for until waited)
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _to_plain(rep: FileReport) -> tuple:
    return (
        rep.path,
        rep.kind,
        [
            (f.file, f.member, f.offset, f.opcode, f.global_, f.severity, f.reason)
            for f in rep.findings
        ],
        list(rep.errors),
        list(rep.scanned),
        rep.skipped,
    )


def _from_plain(plain: tuple) -> FileReport:
    path, kind, findings, errors, scanned, skipped = plain
    return FileReport(
        path,
        kind=kind,
        findings=[Finding(*f) for f in findings],
        errors=errors,
        scanned=scanned,
        skipped=skipped,
    )
