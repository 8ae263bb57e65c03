"""One reading of each torch pickle serves the reader and the verdict: ``inspect`` gives what
the VM gives, the scan takes the reader's reading instead of lexing the stream again, and
the bounding lexer's fast lane leaves it in exactly the state the full checks would."""

from __future__ import annotations

import argparse
import collections
import importlib
import io
import json
import pickle
import random
import struct
import zipfile

import pytest

import keishiki
from keishiki._scan import oplex, unpickler
from keishiki.core.pickle_reader import read_pickle
from keishiki.formats import _torch_pickle as tp
from keishiki.formats import pytorch

torch = pytest.importorskip("torch")
scan_pkg = importlib.import_module("keishiki._scan")


def _objects() -> dict:
    lin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    base = torch.arange(10.0)
    return {
        "state_dict": lin.state_dict(),
        "module": lin,
        "checkpoint": {
            "model": lin.state_dict(),
            "epoch": 3,
            "args": argparse.Namespace(lr=0.1),
            "optimizer": torch.optim.Adam(lin.parameters()).state_dict(),
        },
        "shared": {"a": base, "b": base[2:5], "t": torch.ones(3, 3).t()},
        "nested": {
            "a": {"b": [torch.ones(1)] * 3},
            "s": {1, 2},
            "f": frozenset([3]),
            "x": (1, "x", None, b"yy"),
            "h": torch.ones(1, dtype=torch.bfloat16),
            "o": collections.OrderedDict(k=torch.zeros(2, dtype=torch.int64)),
        },
        "parameter": torch.nn.Parameter(torch.ones(2)),
        "meta": {"m": torch.empty(3, device="meta")},
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-reading")
    paths = []
    for name, obj in _objects().items():
        for legacy in (False, True):
            path = out / f"{name}_{'legacy' if legacy else 'zip'}.pt"
            torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
            paths.append(path)
    return paths


def _vm_only(
    data, start=0, *, path="<pickle>", max_ops=10_000_000, torch_names=True, state_dicts=True
):
    return read_pickle(data, start, path=path, max_ops=max_ops)


def _described(path) -> str:
    scan_pkg._CACHE.clear()
    info = keishiki.inspect(path).to_dict()
    info.pop("safety", None)
    return json.dumps(info, sort_keys=True, default=str)


def test_inspect_equals_the_vm_reading(saved, monkeypatch):
    shared = [_described(p) for p in saved]
    monkeypatch.setattr(pytorch, "read_torch_object", _vm_only)
    assert [_described(p) for p in saved] == shared


def test_the_scan_takes_the_readers_reading(saved, monkeypatch):
    lexed: list[int] = []
    real = unpickler.cleared_stream

    def counting(data, start, deadline):
        lexed.append(len(data) - start)
        return real(data, start, deadline)

    monkeypatch.setattr(unpickler, "cleared_stream", counting)
    path = next(p for p in saved if p.name == "checkpoint_zip.pt")
    with zipfile.ZipFile(path) as zf:
        size = len(zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl"))))
    scan_pkg._CACHE.clear()
    unpickler._SHARED.clear()
    info = keishiki.inspect(path)
    assert info.safety["verdict"] == "safe" and len(info.tensors) == 4
    assert lexed.count(size) == 1  # the reader lexed data.pkl; the scan took that reading
    assert unpickler._SHARED == []  # and nothing is kept afterwards


def test_a_dangerous_stream_falls_back_to_the_vm(tmp_path):
    """A stand-in reaching a call of a load-time object: the VM reads it, the scan says so."""

    class Payload:
        def __reduce__(self):
            return getattr, (print, "__call__")

    path = tmp_path / "payload.pt"
    torch.save({"w": torch.ones(2), "p": Payload()}, path)
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    ours, vm = tp.read_torch_pickle(data), read_pickle(data)
    assert [(g.qualname, g.note) for g in ours.globals] == [
        (g.qualname, g.note) for g in vm.globals
    ]
    scan_pkg._CACHE.clear()
    assert keishiki.inspect(path).safety["verdict"] == "dangerous"


def _state(lexer: oplex.Lexer) -> tuple:
    return (
        lexer.pos,
        lexer.ok,
        lexer.n_ops,
        lexer.capped,
        lexer.dead,
        list(lexer.naming_at),
        bytes(lexer.naming_op),
        lexer.ext,
        lexer.protos,
        lexer.frame_end,
        lexer.inline,
        lexer.py2_text,
    )


class _FullChecks(oplex.Lexer):
    """The lexer with its fast lane closed: every opcode through the full checks."""

    def advance(self, end: int, to_stop: bool = False) -> None:
        saved, oplex._FAST[:] = oplex._FAST[:], [0] * 256
        try:
            super().advance(end, to_stop)
        finally:
            oplex._FAST[:] = saved


def _streams() -> list[bytes]:
    value = {
        "a": [
            1,
            2.5,
            "x" * 5000,
            b"y" * 300,
            (1, 2, 3),
            {1, 2},
            frozenset([3]),
            bytearray(b"zz"),
            None,
            True,
            2**70,
            -5,
            300,
            70000,
            "é" * 40,
        ],
        "b": collections.OrderedDict(k=1),
        "c": list(range(600)),
    }
    out = [pickle.dumps(value, protocol=p) for p in range(6)]
    out.append(b"\x80\x02r" + struct.pack("<I", 1 << 23) + b".")  # a memo bomb: capped
    out.append(b"\x80\x02X" + struct.pack("<I", 5000) + b"z" * 5000 + b".")  # long payload
    return out


@pytest.mark.parametrize("max_ops", [3, 50, 5000, oplex.MAX_OPS])
def test_the_lexer_fast_lane_changes_nothing(max_ops):
    rng = random.Random(12)
    for stream in _streams():
        cases = [stream] + [stream[: rng.randrange(len(stream))] for _ in range(40)]
        for _ in range(60):
            mutated = bytearray(stream)
            for _ in range(rng.randint(1, 3)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            cases.append(bytes(mutated))
        for case in cases:
            fast = oplex.Lexer(memoryview(case), 0, float("inf"), max_ops)
            full = _FullChecks(memoryview(case), 0, float("inf"), max_ops)
            fast.advance(len(case), to_stop=True)
            full.advance(len(case), to_stop=True)
            assert _state(fast) == _state(full), case[:40]


# ---- plain state_dicts: tensors straight from the stand-ins ----------------------------------


def _general_reading(monkeypatch) -> None:
    """Every stream through the VM's records (the state_dict shortcut closed)."""
    monkeypatch.setattr(tp, "_state_dict", lambda rec, path: None)


@pytest.mark.parametrize(
    "state",
    [
        {f"l.{i}.w": torch.randn(2, 3) for i in range(5)},
        collections.OrderedDict([("x.w", torch.ones(2)), ("y", torch.zeros(3, 2))]),
        {"a": torch.arange(10.0)[2:5], "t": torch.ones(3, 3).t(), "h": torch.ones(2).half()},
        {"": torch.ones(1), "e": torch.zeros(0, 3), "s": torch.tensor(3.0)},
        {},
    ],
    ids=["dict", "ordered", "views", "edge-names", "empty"],
)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_dict_shortcut_equals_the_general_reading(tmp_path, monkeypatch, state, legacy):
    path = tmp_path / "sd.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    taken: list[str] = []
    real = tp._state_dict

    def spying(rec, where):
        out = real(rec, where)
        taken.append(type(out).__name__)
        return out

    monkeypatch.setattr(tp, "_state_dict", spying)
    shortcut = _described(path)
    assert "StateDictReading" in taken
    _general_reading(monkeypatch)
    assert _described(path) == shortcut


_OTHER_LAYOUTS = {
    "module-state-dict": lambda: torch.nn.Linear(2, 2).state_dict(),  # with _metadata
    "mixed": lambda: {"w": torch.ones(2), "epoch": 3},  # a value that is no tensor
    "parameter": lambda: {"p": torch.nn.Parameter(torch.ones(2))},  # _rebuild_parameter
    "nested": lambda: {"n": {"w": torch.ones(2)}},
    "module": lambda: torch.nn.Linear(2, 2),
    "quantized": lambda: {"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 3, torch.qint8)},
}


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("layout", sorted(_OTHER_LAYOUTS))
def test_other_layouts_read_the_general_way_with_the_same_result(tmp_path, monkeypatch, layout):
    path = tmp_path / "o.pt"
    torch.save(_OTHER_LAYOUTS[layout](), path)
    shortcut = _described(path)
    _general_reading(monkeypatch)
    assert _described(path) == shortcut


def test_state_dict_shortcut_refuses_what_the_vm_records_otherwise():
    """Streams one byte away from a plain state_dict: the shortcut declines, the record is
    the VM's (the general reading gives the exact error or value)."""
    state = {"a": torch.ones(2, 2), "b": torch.zeros(3)}
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(buf) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    assert type(tp.read_torch_object(data)) is tp.StateDictReading
    unpickler._SHARED.clear()
    # a negative storage offset: BININT of -1 where the offset's BININT1 0 is
    i = data.index(b"K\x00K\x02")
    bad = data[:i] + b"J\xff\xff\xff\xff" + data[i + 2 :]
    reading = tp.read_torch_object(bad)
    assert type(reading) is not tp.StateDictReading
    with pytest.raises(keishiki.errors.CorruptFile, match="storage_offset"):
        list(tp.walk_tensors(reading.value, "x"))


# ---- the zip directory read once for the reader and the scan ----------------------------------


def test_the_scan_takes_the_readers_zip_directory(saved, monkeypatch):
    from keishiki._scan import archives

    parsed: list[object] = []
    real = archives.zipfile.ZipFile

    class Counting(real):
        def __init__(self, file, *args, **kwargs):
            parsed.append(file)
            super().__init__(file, *args, **kwargs)

    path = next(p for p in saved if p.name == "state_dict_zip.pt")
    monkeypatch.setattr(archives.zipfile, "ZipFile", Counting)
    scan_pkg._CACHE.clear()
    assert keishiki.inspect(path).safety["verdict"] == "safe"
    # the reader opened it by path; the scan took that directory instead of reading its own
    assert parsed == [path] and archives._SHARED_DIRECTORY == []
    scan_pkg._CACHE.clear()
    keishiki.scan(path)  # a scan on its own reads the directory itself (from its open file)
    assert len(parsed) == 2 and parsed[1] is not path


def test_a_shared_zip_directory_serves_only_its_own_unchanged_file(tmp_path):
    from keishiki._scan import archives

    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"a": torch.ones(1)}, first)
    torch.save({"b": torch.ones(1)}, second)
    with zipfile.ZipFile(first) as zf:
        infos = zf.infolist()
    archives.share_directory(first, infos)
    with open(second, "rb") as fh:  # another file: its own directory, the offer dropped
        assert [i.filename for i in archives._zipfile_infos(fh)][0].startswith("b/")
    assert archives._SHARED_DIRECTORY == []
    archives.share_directory(first, infos)
    first.touch()  # rewritten (times changed): read again
    with open(first, "rb") as fh:
        assert archives._zipfile_infos(fh) is not infos
    archives.share_directory(first, infos)
    with open(first, "rb") as fh:
        assert archives._zipfile_infos(fh) is infos
        assert archives._zipfile_infos(io.BytesIO(fh.read())) is not infos  # taken once
