"""Fuzz the pickle VM, the scanner and every format reader: bytes in, a result or a
KeishikiError out, never another exception, and each input handled in bounded work
(counted in function calls, so a loaded machine cannot fail it).

Inputs: random bytes, random bytes behind each format's magic prefix, and mutations
(byte flips, truncations, splices) of small files from the real corpus.

`make test` runs a fixed (derandomized) set of 400 examples per test, so CI passes or
fails the same way every time.  `make fuzz` (KEISHIKI_FUZZ_EXAMPLES=N) explores new random
inputs; whatever it finds becomes a regression test with the bytes written out.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from keishiki.core.pickle_reader import read_pickle, read_pickles  # noqa: E402
from keishiki.errors import KeishikiError  # noqa: E402
from tests.conftest import CORPUS, count_calls  # noqa: E402

SECONDS = 10.0  # the scanner's own time budget for one blob (an argument, not a check)
# function calls one input may take (instead of seconds, which a loaded machine stretches): the
# fixed set `make test` runs takes at most ~76 000 (a mutated TorchScript archive); a hostile
# count looped over, or a quadratic walk, runs into the millions
MAX_CALLS = 2_000_000
MAGIC = {
    "pickle2": b"\x80\x02",
    "pickle4": b"\x80\x04\x95",
    "pickle0": b"(dp0\n",
    "torch-legacy": b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.",
    "zip": b"PK\x03\x04",
    "safetensors": struct.pack("<Q", 64) + b'{"',
    "gguf": b"GGUF\x03\x00\x00\x00",
    "npy": b"\x93NUMPY\x01\x00",
    "hdf5": b"\x89HDF\r\n\x1a\n",
    "tflite": b"\x1c\x00\x00\x00TFL3",
    "onnx": b"\x08\x07\x12\x07pytorch",
    "torch7": b"\x04\x00\x00\x00\x01\x00\x00\x00",
    "msgpack": b"\x82\xa6params",
}
_DEEP = int(os.environ.get("KEISHIKI_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=_DEEP or 400,
    derandomize=not _DEEP,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _small_corpus_files(limit: int = 400_000) -> list[Path]:
    if not CORPUS.exists():
        return []
    picked: dict[tuple, Path] = {}
    for path in sorted(CORPUS.rglob("*")):
        if (
            path.is_file()
            and path.stat().st_size <= limit
            and path.suffix not in (".md", ".py", ".json", ".sh", ".txt", ".inp", ".out")
        ):
            # one per format folder and source (about two dozen): every reader gets mutants
            picked.setdefault(path.relative_to(CORPUS).parts[:2], path)
    return list(picked.values())


CORPUS_FILES = _small_corpus_files()


@pytest.fixture(scope="module", autouse=True)
def _imports_done(tmp_path_factory):
    """Each reader's first use imports its modules: done here, so the calls counted per input
    are the input's own work."""
    import keishiki
    from keishiki import inspect

    magic_files = []
    for fmt, magic in MAGIC.items():
        magic_files.append(tmp_path_factory.mktemp("warm") / f"f.{fmt}")
        magic_files[-1].write_bytes(magic)
    for path in CORPUS_FILES + magic_files:
        try:
            for lazy in inspect(path).lazy_tensors():
                lazy.load()
        except KeishikiError:
            pass
        keishiki.scan(path)


def _inspect_and_scan(path: Path) -> None:
    import keishiki
    from keishiki import inspect

    with count_calls() as work:
        try:
            inspect(path)
        except KeishikiError:
            pass
        keishiki.scan(path)  # never raises for an existing file
    assert work.calls < MAX_CALLS, path


@SETTINGS
@given(st.binary(max_size=2048), st.integers(0, 16))
def test_pickle_vm_only_raises_corrupt_file(data, start):
    try:
        read_pickle(data, min(start, len(data)))
    except KeishikiError:
        pass
    records = read_pickles(data, lenient=True)
    assert all(r.error is None or r.error_offset is not None for r in records)


@SETTINGS
@given(st.sampled_from(sorted(MAGIC)), st.binary(max_size=1024))
def test_magic_prefixed_random_bytes(tmp_path_factory, fmt, tail):
    path = tmp_path_factory.mktemp("fz") / f"f.{fmt}"
    path.write_bytes(MAGIC[fmt] + tail)
    _inspect_and_scan(path)


@pytest.mark.skipif(not CORPUS_FILES, reason="corpus absent")
@SETTINGS
@given(st.sampled_from(CORPUS_FILES), st.data())
def test_mutated_corpus_files(tmp_path_factory, source, data):
    blob = bytearray(source.read_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if kind == "flip" and blob:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    elif blob:
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i : i + 8] = struct.pack("<Q", data.draw(st.sampled_from([0, 2**31, 2**40, 2**63])))
    path = tmp_path_factory.mktemp("fz") / source.name
    path.write_bytes(bytes(blob))
    _inspect_and_scan(path)


@SETTINGS
@given(st.binary(max_size=512))
def test_scan_of_mutated_malicious_pickle_never_crashes(tail):
    from keishiki._scan.findings import FileReport
    from keishiki._scan.pickles import Where, scan_blob

    evil = b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R"
    report = FileReport("x")
    scan_blob(memoryview(evil + tail), Where("x"), report, time.monotonic() + SECONDS)
    # the gadget comes before any mutation: it is always named
    assert any(f.global_ == "os.system" and f.severity == "dangerous" for f in report.findings)


@pytest.mark.skipif(not CORPUS_FILES, reason="corpus absent")
@SETTINGS
@given(st.sampled_from(CORPUS_FILES), st.data())
def test_mutated_files_load_tensor_data_or_say_why(tmp_path_factory, source, data):
    """What convert does after inspect: read each tensor's bytes.  A damaged file gives
    arrays or a KeishikiError, never another exception (the first 16 tensors, bounded)."""
    from keishiki import inspect
    from keishiki.core.dtypes import itemsize

    blob = bytearray(source.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        if not blob:
            break
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("fz") / source.name
    path.write_bytes(bytes(blob))
    with count_calls() as work:
        try:
            info = inspect(path)
            for n, lazy in enumerate(info.lazy_tensors()):
                if n == 16:
                    break
                arr = lazy.load()
                if itemsize(lazy.info.dtype) is not None:  # GGML blocks come back raw
                    assert tuple(arr.shape) == tuple(lazy.info.shape), lazy.info.name
        except KeishikiError:
            pass
    assert work.calls < MAX_CALLS, source
