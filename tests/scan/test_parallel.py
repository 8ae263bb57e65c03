"""A folder scanned by forked workers (``_scan/parallel.py``) gives the reports, in the
order, that one process gives; forking happens only where it is safe.

The forking runs in a fresh interpreter (a pytest worker may run threads of its own, and
forking beside threads is what the module refuses to do).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from keishiki._scan import parallel
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")

# argv: workers, "ok" | "dies" | "cannot-fork" | "interrupted", roots...; prints what it saw
_SCRIPT = r"""
import itertools, json, os, sys
from pathlib import Path
from keishiki._scan import parallel, scanner

os.sched_getaffinity = lambda pid: set(range(8))  # as if on 8 cores
forks, real_fork, parent = [], os.fork, os.getpid()

def counting_fork():
    if how == "cannot-fork" and forks:  # the second fork fails (EAGAIN: too many processes)
        raise BlockingIOError(11, "Resource temporarily unavailable")
    pid = real_fork()
    if pid:
        forks.append(pid)
    return pid

workers, how, roots = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
os.fork = counting_fork
if how == "dies":  # every worker ends at once, sending nothing
    parallel._work = lambda jobs, fd: os._exit(3)
jobs = list(itertools.chain.from_iterable(scanner.folder_jobs(Path(r)) for r in roots))
if how == "interrupted":  # Ctrl-C in this process while the workers scan
    real_run = parallel.run_jobs

    def interrupted(jobs):
        if os.getpid() == parent:
            raise KeyboardInterrupt
        return real_run(jobs)

    parallel.run_jobs = interrupted
    try:
        parallel.run_forked(jobs, workers)
    except KeyboardInterrupt:
        pass
    try:
        left = os.waitpid(-1, os.WNOHANG)  # no worker may be left behind
    except ChildProcessError:
        left = None
    print(json.dumps({"forks": len(forks), "left": left}))
    sys.exit(0)
forked = [r.to_dict() for r in parallel.run_forked(jobs, workers)]
import gc
frozen = gc.get_freeze_count()  # the collector sees everything again
alone = [r.to_dict() for r in scanner.run_jobs(jobs)]
print(json.dumps({"same": forked == alone, "forks": len(forks), "n": len(alone), "frozen": frozen,
                  "verdicts": sorted({r["verdict"] for r in alone})}))
"""


def _roots(*sample_sets) -> list[str]:
    return [os.path.commonpath([str(s.path) for s in samples.values()]) for samples in sample_sets]


def _forked(workers: int, how: str, roots: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(workers), how, *roots],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_forked_workers_report_what_one_process_reports(workers, malicious_samples, benign_samples):
    """Every malicious and benign sample of the scanner's tests (links, shard indexes, code
    files, archives, damaged files), scanned both ways: the same reports in the same order."""
    seen = _forked(workers, "ok", _roots(malicious_samples, benign_samples))
    assert seen["same"] is True and seen["frozen"] == 0
    assert seen["forks"] == workers - 1
    assert seen["n"] > 200 and {"dangerous", "safe", "unknown"} <= set(seen["verdicts"])


def _folder_with_names_that_report_nothing(root: Path) -> Path:
    """40 pickles, one of them unsafe, and names a folder scan reports nothing for: a link
    inside the folder, a linked subfolder, a dangling link, a link loop, a FIFO."""
    import pickle

    root.mkdir()
    for n in range(40):
        (root / f"f{n:03d}.pkl").write_bytes(pickle.dumps({"n": n}))
    (root / "sub").mkdir()
    (root / "sub" / "g.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    os.symlink("f000.pkl", root / "a_link.pkl")
    os.symlink("sub", root / "linked_sub")
    os.symlink("gone.pkl", root / "dangling.pkl")
    os.symlink("loop", root / "loop")
    os.mkfifo(root / "fifo")
    return root


def test_names_with_nothing_to_report_keep_the_order(tmp_path):
    """Links inside the folder, FIFOs and the like give no report: each worker's reports
    still line up with its files (an HF cache repository's snapshot links are such names)."""
    root = _folder_with_names_that_report_nothing(tmp_path / "m")
    seen = _forked(2, "ok", [str(root)])
    assert seen["same"] is True and seen["forks"] == 1 and "dangerous" in seen["verdicts"]


def test_workers_end_with_their_parent(tmp_path):
    """SIGTERM (``timeout``, a CI runner) ends the parent alone: its workers stop after the
    file in hand (of 21 each here)."""
    import signal
    import time

    root = tmp_path / "m"
    root.mkdir()
    for n in range(64):
        (root / f"f{n:03d}.pkl").write_bytes(b"\x80\x04K\x01.")
    script = (  # each file takes a second in the workers
        "import os, sys, time\nfrom keishiki._scan import parallel\n"
        "parallel.workers_for = lambda n, cores=None: 3\n"
        "real_run, parent = parallel.run_jobs, os.getpid()\n"
        "def slow(jobs):\n"
        "    if os.getpid() != parent:\n"
        "        os.write(1, b'worker %d\\n' % os.getpid())  # (one write: never interleaved)\n"
        "        time.sleep(1)\n"
        "    return real_run(jobs)\n"
        "parallel.run_jobs = slow\n"
        f"from keishiki._scan.scanner import scan_paths\nscan_paths([{str(root)!r}], workers=3)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines = [parent.stdout.readline() for _ in range(2)]
    assert all(lines), parent.stderr.read()[-2000:]
    workers = {int(line.split()[1]) for line in lines}
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=60)
    deadline = time.monotonic() + 10  # (the file in hand is finished: 1 s)
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(_running(pid) for pid in workers)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_that_dies_has_its_share_scanned_here(malicious_samples):
    seen = _forked(3, "dies", _roots(malicious_samples))
    assert seen["same"] is True and seen["forks"] == 2


def test_a_worker_that_cannot_start_has_its_share_scanned_here(malicious_samples):
    seen = _forked(3, "cannot-fork", _roots(malicious_samples))
    assert seen["same"] is True and seen["forks"] == 1


def test_ctrl_c_ends_the_workers(malicious_samples):
    seen = _forked(3, "interrupted", _roots(malicious_samples))
    assert seen == {"forks": 2, "left": None}


@pytest.mark.parametrize(
    "n_jobs, cores, expected",
    [
        (200, 2, 2),
        (200, 8, 8),
        (10_000, 64, 8),  # at most MAX_WORKERS
        (40, 8, 2),  # at least 16 files each
        (31, 8, 1),
        (0, 4, 1),
        (10_000, 1, 1),
    ],
)
def test_workers_for(n_jobs, cores, expected, monkeypatch):
    monkeypatch.setattr(parallel, "can_fork", lambda: True)
    assert parallel.workers_for(n_jobs, cores) == expected


def test_no_fork_beside_threads_or_torch(monkeypatch):
    """A thread holding a lock at the fork leaves it locked in the child (a progress bar, a
    server); torch runs thread pools Python does not see."""
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert parallel.can_fork() is True
    monkeypatch.setitem(sys.modules, "torch", object())
    assert parallel.can_fork() is False and parallel.workers_for(1000, 8) == 1
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    assert parallel.can_fork() is False


def test_cli_scan_of_a_folder_prints_what_the_library_finds(tmp_path, malicious_samples):
    """``keishiki scan DIR`` (forked workers when the machine has cores to spare) and
    ``keishiki.scan(DIR)`` in this process agree, file by file."""
    import keishiki

    root = _roots(malicious_samples)[0]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "keishiki"), "scan", "--json", "--all", root],
        capture_output=True,
        text=True,
        timeout=600,
    )
    library = keishiki.scan(root)
    assert done.returncode == library.exit_code() == 1
    assert json.loads(done.stdout)["files"] == [
        f for f in library.to_dict()["files"] if not f["skipped"] or f["findings"]
    ]
    # and the in-process CLI (no fork: pytest's threads) says the same
    code, out, _ = run_cli("scan", "--json", "--all", root)
    assert code == 1 and json.loads(out)["files"] == json.loads(done.stdout)["files"]


@pytest.mark.parametrize(
    "swap, name",
    [
        ("file", "m.pkl"),
        ("folder on the way", "m.pkl"),
        ("fifo", "m.pkl"),
        ("fifo", "model.safetensors.index.json"),  # read again by the shard check: not waited on
        ("file", "config.json"),  # read again for auto_map: not read
    ],
)
def test_a_file_swapped_after_the_walk_is_not_read(swap, name, tmp_path):
    """The walk lists a folder's files before they are scanned (the workers share them):
    a file replaced after the walk by a link out of the folder, or a folder on its way
    replaced so, is an error, and what lies outside is never read (nor waited on)."""
    from keishiki._scan import scanner

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "m.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    (outside / "config.json").write_text('{"auto_map": {"AutoModel": "evil.Model"}}')
    root = tmp_path / "m"
    (root / "sub").mkdir(parents=True)
    target = root / "sub" / name
    target.write_bytes(b"\x80\x04K\x01." if name.endswith(".pkl") else b"{}")
    jobs = list(scanner.folder_jobs(root))
    if swap == "file":
        target.unlink()
        os.symlink(outside / ("m.pkl" if name.endswith(".pkl") else "config.json"), target)
    elif swap == "folder on the way":
        (root / "sub").rename(tmp_path / "old_sub")
        os.symlink(outside, root / "sub")
    else:
        target.unlink()
        os.mkfifo(target)
    (report,) = scanner.run_jobs(jobs)
    assert report.path == str(target) and not report.findings
    assert report.errors == [f"{target}: {scanner.CHANGED}"]


def test_a_file_emptied_before_its_map_is_not_read(tmp_path, monkeypatch):
    """Truncated to nothing between its size and its map (mmap refuses an empty file)."""
    from keishiki._scan import scanner

    (tmp_path / "m.pkl").write_bytes(b"\x80\x04K\x01.")
    jobs = list(scanner.folder_jobs(tmp_path))

    def emptied(*args, **kwargs):
        raise ValueError("cannot mmap an empty file")

    monkeypatch.setattr(scanner.mmap, "mmap", emptied)
    (report,) = scanner.run_jobs(jobs)
    assert report.errors == [f"{tmp_path / 'm.pkl'}: {scanner.CHANGED}"]


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda p: p.write_bytes(b"12345"), None),
        (lambda p: p.write_bytes(b"123456"), "holds more than 5 bytes"),
        (lambda p: os.mkfifo(p), "is not a regular file"),  # never waited on
        (lambda p: p.mkdir(), None),  # IsADirectoryError
    ],
)
def test_read_regular(make, error, tmp_path):
    from keishiki.core.source import read_regular

    path = tmp_path / "f"
    make(path)
    if error is None and path.is_file():
        assert read_regular(path, 5) == b"12345"
    elif error is None:
        with pytest.raises(OSError):
            read_regular(path, 5)
    else:
        with pytest.raises(ValueError, match=error):
            read_regular(path, 5)
