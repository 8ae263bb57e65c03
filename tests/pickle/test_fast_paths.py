"""The VM's inline opcode handling and the torch readers' fast paths give exactly what the
general code gives: every opcode, global, call and persistent id at CPython's offsets, the
same tensors and data offsets, and the same CorruptFile on malformed input."""

from __future__ import annotations

import ast
import dataclasses
import io
import pickle
import pickletools
import struct
import zipfile

import numpy as np
import pytest

from keishiki.core.pickle_reader import Call, GlobalRef, PersistentId, read_pickle
from keishiki.errors import CorruptFile
from keishiki.formats import _torch_pickle as tp
from keishiki.formats.torchscript import _source_segment, parse_classes

torch = pytest.importorskip("torch")


def _genops(data: bytes):
    return list(pickletools.genops(data))


@pytest.fixture(scope="module")
def torch_pickles(tmp_path_factory):
    """data.pkl of torch.save state_dicts: protocol 2 (torch's default) and 4, with more than
    256 memo entries (LONG_BINPUT/LONG_BINGET), big ints (BININT/BININT2), 0-4 dim tensors,
    a non-contiguous view and a parameter."""
    folder = tmp_path_factory.mktemp("fast")
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    state = {f"layer.{i}.w": torch.zeros(300 + i, 2) for i in range(120)}
    state.update(
        {
            "scalar": torch.tensor(3.0),
            "vec": torch.arange(70000, dtype=torch.int16),
            "t4": torch.zeros(1, 2, 3, 4),
            "view": base.transpose(0, 2),
            "p": torch.nn.Parameter(torch.ones(5)),
            "b": torch.zeros(3, dtype=torch.bool),
        }
    )
    out = {}
    for proto in (2, 4):
        path = folder / f"p{proto}.pt"
        torch.save(state, path, pickle_protocol=proto)
        with zipfile.ZipFile(path) as zf:
            out[proto] = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    return out


@pytest.mark.parametrize("proto", [2, 4])
def test_record_matches_pickletools(torch_pickles, proto):
    data = torch_pickles[proto]
    ops = _genops(data)
    rec = read_pickle(data)
    assert rec.n_ops == len(ops) and rec.end == len(data) and rec.protocol == proto
    at = {pos: op.name for op, _arg, pos in ops}
    assert [(g.offset, g.opcode) for g in rec.globals] == [
        (pos, op.name) for op, _a, pos in ops if op.name in ("GLOBAL", "STACK_GLOBAL")
    ]
    assert [c.offset for c in rec.calls] == [pos for op, _a, pos in ops if op.name == "REDUCE"]
    assert all(at[c.offset] == c.opcode == "REDUCE" for c in rec.calls)
    assert [p.offset for p in rec.persistent_ids] == [
        pos for op, _a, pos in ops if op.name == "BINPERSID"
    ]
    assert all(p.pid[0] == "storage" for p in rec.persistent_ids)
    names = [n for n, _c, _r in tp.walk_tensors(rec.value, "x")]
    assert names[:2] == ["layer.0.w", "layer.1.w"] and len(names) == 126


def test_persistent_id_still_frozen(torch_pickles):
    pid = read_pickle(torch_pickles[2]).persistent_ids[0]
    assert type(pid) is PersistentId and pid.offset > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        pid.offset = 0


@pytest.mark.parametrize("proto", [2, 4])
def test_every_truncation_fails_like_the_helpers(torch_pickles, proto):
    """Cut the stream at every opcode boundary and inside every argument: always CorruptFile,
    lenient records agree with the strict error, and the offset is the opcode's."""
    data = torch_pickles[proto]
    starts = sorted(pos for _op, _a, pos in _genops(data))
    # every cut in the first ~80 opcodes (each opcode kind), then every 37th opcode
    some = starts[:80] + starts[80::37]
    cuts = sorted(set(some) | {p + 1 for p in some} | {p + 3 for p in some})
    for cut in cuts:
        if cut >= len(data):
            continue
        with pytest.raises(CorruptFile) as exc:
            read_pickle(data[:cut])
        rec = read_pickle(data[:cut], lenient=True)
        assert rec.error and f"pickle: {rec.error}" == exc.value.reason
        assert rec.error_offset == exc.value.offset and rec.error_offset in starts
        assert rec.error_offset <= rec.end <= cut


def test_inline_opcodes_errors():
    proto = b"\x80\x02"
    cases = {
        proto + b"r\x00\x00\x00\x00.": ("stack underflow", 2),  # LONG_BINPUT on empty
        proto + b"j\x07\x00\x00\x00.": ("memo key 7 was never stored", 2),  # LONG_BINGET
        proto + b"h\x07.": ("memo key 7 was never stored", 2),
        proto + b"(\x86.": ("stack underflow", 3),  # MARK starts a new, empty stack
        proto + b"K\x01R.": ("stack underflow", 4),
        proto + b"(K\x01R.": ("stack underflow", 5),
        proto + b"(Q.": ("stack underflow", 3),
        proto + b"Q.": ("stack underflow", 2),
        proto + b"t.": ("no MARK to pop to", 2),
        proto + b"X\x02\x00\x00\x00\xff\xfe.": ("string is not valid UTF-8", 2),
        proto + b"X\x09\x00\x00\x00ab": ("needs 9 bytes but only 2 are left", 2),
        proto + b"J\x01\x00": ("needs 4 bytes but only 2 are left", 2),
        proto + b"M\x01": ("needs 2 bytes but only 1 are left", 2),
        b"\x80\x04\x95\x01\x00": ("needs 8 bytes but only 2 are left", 2),
        b"\x80\x04\x8c\x05ab": ("needs 5 bytes but only 2 are left", 2),
        b"\x80\x04\x94.": ("stack underflow", 2),
        proto + b"K\x01": ("stream ends before STOP (truncated)", 4),
    }
    for data, (reason, offset) in cases.items():
        with pytest.raises(CorruptFile) as exc:
            read_pickle(data)
        assert exc.value.reason == f"pickle: {reason}" and exc.value.offset == offset, data


def test_caps_still_hold():
    many = b"\x80\x02" + b"K\x01" * 5000 + b"."
    with pytest.raises(CorruptFile, match="more than 1000 opcodes"):
        read_pickle(many, max_ops=1000)
    memo = b"\x80\x02K\x01" + b"".join(b"r" + struct.pack("<I", i) for i in range(20)) + b"."
    with pytest.raises(CorruptFile, match="memo larger than 10 entries"):
        read_pickle(memo, max_memo=10)
    deep = b"\x80\x02" + b"(" * 50 + b"."
    with pytest.raises(CorruptFile, match="MARKs nested deeper than 20"):
        read_pickle(deep, max_depth=20)


def test_memoryview_and_bytes_agree(torch_pickles):
    data = torch_pickles[2]
    whole, sliced = read_pickle(memoryview(data)), read_pickle(memoryview(b"xx" + data), 2)
    assert whole.n_ops == sliced.n_ops and sliced.end == len(data) + 2
    assert [g.offset - 2 for g in sliced.globals] == [g.offset for g in whole.globals]


def _rebuild(shape, stride, offset=0, name="_rebuild_tensor_v2", numel=100):
    pid = PersistentId(
        ("storage", GlobalRef("torch", "HalfStorage", 0, "GLOBAL"), "7", "cpu", numel), 1
    )
    return Call(
        GlobalRef("torch._utils", name, 0, "GLOBAL"),
        (pid, offset, shape, stride, False, None),
        None,
        5,
        "REDUCE",
    )


def test_decode_tensor_fast_path_values():
    ref = tp.decode_tensor(_rebuild((4, 5), (5, 1), 3), "f")
    expected = tp.TensorRef(
        tp.StorageRef("7", "float16", 100, "cpu"), "float16", 3, (4, 5), (5, 1), "tensor"
    )
    assert ref == expected and hash(ref) == hash(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.dtype = "x"
    assert tp.decode_tensor(_rebuild((), ()), "f").shape == ()
    assert tp.decode_tensor(_rebuild((2,), (1,), name="_rebuild_qtensor"), "f").kind == "quantized"
    wrapped = Call(
        GlobalRef("torch._utils", "_rebuild_parameter", 0, "GLOBAL"),
        (_rebuild((2,), (1,)), False, None),
        None,
        9,
        "REDUCE",
    )
    assert tp.decode_tensor(wrapped, "f").kind == "parameter"


@pytest.mark.parametrize(
    "shape,stride,reason",
    [
        ((2, True), (1, 1), "tensor size is not a tuple of ints"),
        ((2, 1.0), (1, 1), "tensor size is not a tuple of ints"),
        ((2, -1), (1, 1), "tensor size [2, -1] is out of range"),
        ((2, 2), (1, -1), "tensor stride [1, -1] is out of range"),
        ((1,) * 65, (1,) * 65, "is out of range"),
        ((2, 3), (1,), "differ in length"),
        ([2, 3], (3, 1), None),  # a list is accepted like a tuple
    ],
)
def test_decode_tensor_fast_path_errors(shape, stride, reason):
    if reason is None:
        assert tp.decode_tensor(_rebuild(shape, stride), "f").shape == (2, 3)
        return
    with pytest.raises(CorruptFile, match=reason.replace("[", r"\[").replace("]", r"\]")):
        tp.decode_tensor(_rebuild(shape, stride), "f")


def test_span_and_contiguity():
    assert tp.span((2, 3), (3, 1)) == 6 and tp.span((2, 0), (1, 1)) == 0
    assert tp.span((3, 2), (1, 3)) == 6 and tp.span((), ()) == 1
    assert tp.span((4, 5), (0, 0)) == 1
    for _ in range(2):  # second round is answered from the memo
        assert tp.is_contiguous((2, 3), (3, 1)) and not tp.is_contiguous((2, 3), (1, 2))
        assert tp.is_contiguous((1, 3), (99, 1)) and tp.is_contiguous((2, True), (1, 1))
    assert tp.is_contiguous([2, 3], [3, 1])  # unhashable arguments still answered


def test_zip_data_offsets_match_local_headers(tmp_path):
    """Members far apart (big tensors) and close together (small ones) get the offsets the
    local headers give, and loading reads the right bytes."""
    from keishiki import inspect

    state = {
        "big0": torch.randn(300, 300),
        "small": torch.arange(7, dtype=torch.int64),
        "big1": torch.randn(100, 700),
        **{f"s{i}": torch.full((3,), float(i)) for i in range(50)},
    }
    path = tmp_path / "mixed.pt"
    torch.save(state, path)
    info = inspect(path)
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for t in info.tensors:
            zi = zf.getinfo(t.file)
            fh.seek(zi.header_offset)
            n_name, n_extra = struct.unpack("<HH", fh.read(30)[26:30])
            assert t.data_offset == zi.header_offset + 30 + n_name + n_extra
    for lazy in info.lazy_tensors():
        np.testing.assert_array_equal(lazy.load(), state[lazy.name].numpy())


def test_zip_missing_member_and_short_member(tmp_path):
    from keishiki import inspect

    path = tmp_path / "m.pt"
    torch.save({"a": torch.zeros(4), "b": torch.ones(2)}, path)
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data/1"):
                data = data[:4]  # shorter than its 2 float32 elements
            dst.writestr(item, data)
    with pytest.raises(CorruptFile, match="holds 4 bytes but its storage needs 8"):
        inspect(broken)


SOURCE = """class A(Module):
  __parameters__ = ["weight", ]
  __buffers__ = []
  def forward(self: __torch__.A,
    x: Tensor) -> Tensor:
    y = "日本語"  # é
    return x
  def other(self) -> int: return 1
class B(Module):
  __parameters__ = []
  def forward(self, x: Tensor) -> Tensor: return x
"""


def test_source_segment_matches_stdlib():
    tree = ast.parse(SOURCE)
    lines = ast._splitlines_no_ff(SOURCE)
    for node in ast.walk(tree):
        if hasattr(node, "end_col_offset") and node.end_lineno is not None:
            assert _source_segment(SOURCE, lines, node) == ast.get_source_segment(SOURCE, node)
    classes = parse_classes(SOURCE)
    assert classes["A"].forward_source.startswith("def forward(self: __torch__.A,\n")
    assert classes["A"].forward_source.endswith("return x")
    assert classes["A"].parameters == ["weight"] and classes["B"].methods == ["forward"]
    assert classes["B"].forward_source == "def forward(self, x: Tensor) -> Tensor: return x"


def test_nothing_is_called(torch_pickles):
    """The fast paths build placeholders only: unpickling the same bytes with a
    find_class that refuses everything fails, ours records."""
    data = torch_pickles[2]

    class Refuse(pickle.Unpickler):
        def find_class(self, module, name):
            raise AssertionError(f"{module}.{name}")

        def persistent_load(self, pid):
            return pid

    with pytest.raises(AssertionError):
        Refuse(io.BytesIO(data)).load()
    rec = read_pickle(data)
    assert {g.qualname for g in rec.globals} == {
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "collections.OrderedDict",
        "torch.FloatStorage",
        "torch.ShortStorage",
        "torch.BoolStorage",
    }
