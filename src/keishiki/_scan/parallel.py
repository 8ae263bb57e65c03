"""Scan the files of a folder in processes forked from this one, one per core.

Each file is judged on its own (:func:`.scanner.scan_job`), so a folder of many files
spreads over the cores: worker ``k`` of ``n`` scans jobs ``k, k + n, ...`` and sends its
reports back through a pipe as plain values (``marshal``: strings, numbers and lists, no
object of the scan's is unpickled here), and this process puts them back in order.  The
reports are the ones a single process makes (tests/scan/test_parallel.py compares them).

Forking is done only where it is safe: a process with no other thread (a thread holding a
lock at the fork leaves it locked forever in the child: a progress bar, a server, torch's
pool) and a platform with ``fork``.  Otherwise, and for a handful of files, the scan runs
here as usual.  A worker that dies or sends something unreadable has its share scanned
here again; Ctrl-C ends the workers with this process.
"""

from __future__ import annotations

import marshal
import os
import sys
import threading

from .findings import FileReport, Finding
from .scanner import Job, _run

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
    workers = min(workers, workers_for(sum(isinstance(j, tuple) for j in jobs)))
    if workers <= 1:
        return _run(jobs)
    children: list[tuple[int, int, int]] = []  # (pid, read end, worker index)
    try:
        for k in range(1, workers):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child leaves through os._exit
                os.close(read_end)
                _work(jobs[k::workers], write_end)
            os.close(write_end)
            children.append((pid, read_end, k))
        shares = {0: _run(jobs[0::workers])}
        for pid, read_end, k in children:
            shares[k] = _collect(pid, read_end, jobs[k::workers])
        children.clear()
    finally:
        for pid, read_end, _ in children:  # interrupted (Ctrl-C) or failed: end them
            _end(pid, read_end)
    out: list[FileReport] = []
    for i in range(len(jobs)):
        out.append(shares[i % workers][i // workers])
    return out


def _work(jobs: list[Job], write_end: int) -> None:  # pragma: no cover - runs in the child
    """A worker: scan ``jobs``, write their reports to ``write_end``, leave without running
    anything of the parent's at exit (no atexit handlers, no flush of its buffers)."""
    code = 0
    try:
        payload = marshal.dumps([_to_plain(rep) for rep in _run(jobs)])
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
    except BaseException:  # noqa: BLE001 - Ctrl-C or anything: the parent rescans the share
        code = 1
    finally:
        os._exit(code)


def _collect(pid: int, read_end: int, jobs: list[Job]) -> list[FileReport]:
    """A worker's reports; its share scanned here when it failed."""
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        try:
            reports = [_from_plain(plain) for plain in marshal.loads(payload)]
            if len(reports) == len(jobs):
                return reports
        except (EOFError, ValueError, TypeError):
            pass
    return _run(jobs)


def _end(pid: int, read_end: int) -> None:
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except OSError:
        pass
    try:
        os.close(read_end)
    except OSError:
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
