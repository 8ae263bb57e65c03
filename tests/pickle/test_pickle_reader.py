"""The restricted pickle VM against CPython's pickle: same values, every global recorded,
nothing called, and malformed input only ever raises CorruptFile."""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import tracemalloc
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keishiki.core.pickle_reader import (
    DYNAMIC,
    Call,
    OpaqueKey,
    PersistentId,
    read_pickle,
    read_pickles,
    type_name,
)
from keishiki.errors import CorruptFile

SAMPLE = {
    "ints": [0, 1, -1, 255, 256, 65535, 65536, -(2**31), 2**31 - 1, 2**63, -(2**100), 10**30],
    "floats": [0.0, -1.5, 1e300, float("inf")],
    "text": ["", "ascii", "日本語", "x" * 300, "\ud800" if False else "é"],
    "bytes": [b"", b"\x00\xff", b"y" * 300],
    "nested": {"t0": (), "t1": (1,), "t2": (1, 2), "t3": (1, 2, 3), "t4": (1, 2, 3, 4)},
    "flags": [None, True, False],
    "shared": None,
}
SAMPLE["shared"] = [SAMPLE["nested"], SAMPLE["nested"]]


def materialize(value):
    """Turn the VM's placeholders for harmless builtins back into objects (test-only)."""
    if isinstance(value, Call):
        name = value.qualname
        args = [materialize(a) for a in value.args]
        if name == "_codecs.encode":
            return args[0].encode(args[1])
        if name in ("builtins.set", "__builtin__.set"):
            return set(args[0]) if args else set()
        if name == "builtins.frozenset":
            return frozenset(args[0]) if args else frozenset()
        if name == "builtins.bytes":
            return bytes(*args)
        if name == "builtins.bytearray":
            return bytearray(*args)
        if name == "collections.OrderedDict":
            return collections.OrderedDict(
                (k, materialize(v)) for k, v in (value.dictitems or {}).items()
            )
        raise AssertionError(f"unexpected call {name}")
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v) for v in value]
    if isinstance(value, tuple):
        return tuple(materialize(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(materialize(v) for v in value)
    return value


@pytest.mark.parametrize("protocol", range(6))
def test_values_match_cpython(protocol):
    data = pickle.dumps(SAMPLE, protocol=protocol)
    rec = read_pickle(data)
    assert materialize(rec.value) == pickle.loads(data)
    assert rec.start == 0 and rec.end == len(data)
    assert rec.protocol == (protocol if protocol >= 2 else 0)  # protocols 0/1 have no PROTO
    assert rec.error is None


@pytest.mark.parametrize("protocol", range(6))
def test_sets_bytearrays_ordered_dicts(protocol):
    obj = {
        "s": {1, 2},
        "f": frozenset({3}),
        "ba": bytearray(b"ab"),
        "od": collections.OrderedDict([("b", 1), ("a", 2)]),
    }
    rec = read_pickle(pickle.dumps(obj, protocol=protocol))
    assert materialize(rec.value) == obj
    od = rec.value["od"]
    assert isinstance(od, Call) and list(od.dictitems) == ["b", "a"]
    assert type_name(od) == "collections.OrderedDict"
    assert "collections.OrderedDict" in {g.qualname for g in rec.globals}


def test_memo_shares_objects():
    inner = [1, 2]
    rec = read_pickle(pickle.dumps({"a": inner, "b": inner}, protocol=4))
    assert rec.value["a"] is rec.value["b"]


def test_recursive_structure_does_not_loop():
    lst: list = [1]
    lst.append(lst)
    rec = read_pickle(pickle.dumps(lst, protocol=2))
    assert rec.value[1] is rec.value


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /nonexistent-keishiki-marker",))


@pytest.mark.parametrize("protocol", range(6))
def test_reduce_is_recorded_not_called(protocol, tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = pickle.dumps({"x": Payload()}, protocol=protocol)
    rec = read_pickle(data)
    call = rec.value["x"]
    assert isinstance(call, Call) and call.args == (f"touch {marker}",)
    assert call.func.qualname == f"{os.system.__module__}.system"  # posix.system on Linux
    assert [c.offset for c in rec.calls] == [call.offset]
    assert data[call.offset : call.offset + 1] == b"R"
    assert not marker.exists()


def test_global_offsets_point_at_the_opcode():
    data = pickle.dumps(collections.OrderedDict(a=1), protocol=2)
    (ref,) = read_pickle(data).globals
    assert data[ref.offset : ref.offset + 1] == b"c" and ref.opcode == "GLOBAL"
    data4 = pickle.dumps(collections.OrderedDict(a=1), protocol=4)
    (ref4,) = read_pickle(data4).globals
    assert data4[ref4.offset : ref4.offset + 1] == b"\x93" and ref4.opcode == "STACK_GLOBAL"


def test_stack_global_from_memo():
    # module and name strings memoized then fetched with BINGET before STACK_GLOBAL
    data = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x930h\x00h\x01\x93\x8c\x02id\x85R."
    rec = read_pickle(data)
    assert [g.qualname for g in rec.globals] == ["os.system", "os.system"]
    assert rec.value.func.qualname == "os.system" and rec.value.args == ("id",)


def test_stack_global_with_placeholder_operands_is_dynamic():
    # module name produced by a call: a scanner cannot know it statically
    data = b"\x80\x04\x8c\x01a\x8c\x01b\x93)R\x8c\x04name\x93)R."
    rec = read_pickle(data)
    assert rec.globals[-1].module == DYNAMIC and rec.globals[-1].name == DYNAMIC
    assert "not strings" in rec.globals[-1].note


def test_inst_obj_ext_persid():
    data = b"(S'ls'\nios\nsystem\n."  # protocol 0 INST
    rec = read_pickle(data)
    assert rec.value.func.qualname == "os.system" and rec.value.opcode == "INST"
    assert rec.py2_strings
    data = b"\x80\x02(cos\nsystem\nX\x02\x00\x00\x00ido."  # OBJ
    rec = read_pickle(data)
    assert rec.value.opcode == "OBJ" and rec.value.func.qualname == "os.system"
    for op, arg in ((b"\x82", b"\x05"), (b"\x83", b"\x05\x01"), (b"\x84", b"\x05\x00\x00\x00")):
        rec = read_pickle(b"\x80\x02" + op + arg + b")R.")
        assert rec.globals[0].module == "copyreg.extension"
        assert rec.globals[0].opcode.startswith("EXT")
    rec = read_pickle(b"Pkey-1\n.")
    assert isinstance(rec.value, PersistentId) and rec.value.pid == "key-1"
    rec = read_pickle(b"\x80\x02X\x01\x00\x00\x00kQ.")
    assert rec.value.pid == "k" and rec.persistent_ids == [rec.value]


def test_python2_names_are_mapped_like_pickle_does():
    rec = read_pickle(b"c__builtin__\neval\n(S'1'\ntR.")
    ref = rec.globals[0]
    assert ref.qualname == "builtins.eval" and "__builtin__" in ref.note


def test_python2_strings_decode():
    rec = read_pickle(b"\x80\x02U\x03abcT\x02\x00\x00\x00\xe9\xff\x86.")
    assert rec.value == ("abc", "\xe9\xff") and rec.py2_strings


def test_protocol5_buffers():
    np = pytest.importorskip("numpy")
    from keishiki.core.pickle_reader import PickleBuffer

    bufs: list = []
    data = pickle.dumps(np.arange(4, dtype=np.uint8), protocol=5, buffer_callback=bufs.append)
    rec = read_pickle(data)
    assert rec.protocol == 5 and rec.value.qualname.endswith("_frombuffer")
    buf = rec.value.args[0]
    assert isinstance(buf, PickleBuffer) and data[buf.offset : buf.offset + 1] == b"\x97"
    rec = read_pickle(b"\x80\x05\x97\x98.")
    assert rec.value.readonly


def test_unhashable_keys_do_not_crash():
    # a dict keyed by a call result: {os.getcwd(): 1}
    data = b"\x80\x02}(cos\ngetcwd\n)RK\x01u."
    rec = read_pickle(data)
    (key,) = rec.value
    assert isinstance(key, OpaqueKey) and isinstance(key.value, Call)


def test_setitems_and_appends_on_placeholders():
    data = b"\x80\x02cmod\nK\n)R(K\x01K\x02ue(K\x03e."
    rec = read_pickle(b"\x80\x02cmod\nK\n)R(K\x01K\x02u(K\x03e.")
    assert rec.value.dictitems == {1: 2} and rec.value.listitems == [3]
    rec = read_pickle(b"\x80\x02cmod\nK\n)R}b.")
    assert rec.value.state == {}
    with pytest.raises(CorruptFile):
        read_pickle(data)


def test_torch_saved_data_pkl():
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2, 3), "n": 5}, buf)
    zf = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    data = zf.read("archive/data.pkl")
    rec = read_pickle(data)
    call = rec.value["w"]
    assert call.qualname == "torch._utils._rebuild_tensor_v2"
    storage = call.args[0]
    assert isinstance(storage, PersistentId)
    tag, stype, key, location, numel = storage.pid
    assert (tag, stype.qualname, key, location, numel) == (
        "storage",
        "torch.FloatStorage",
        "0",
        "cpu",
        6,
    )
    assert call.args[1:4] == (0, (2, 3), (3, 1))
    assert rec.value["n"] == 5
    assert sorted({g.qualname for g in rec.globals}) == [
        "collections.OrderedDict",
        "torch.FloatStorage",
        "torch._utils._rebuild_tensor_v2",
    ]


def test_concatenated_streams():
    data = (
        pickle.dumps({"a": 1}, protocol=2)
        + pickle.dumps([2], protocol=4)
        + pickle.dumps("three", protocol=0)
    )
    recs = read_pickles(data)
    assert [r.value for r in recs] == [{"a": 1}, [2], "three"]
    assert recs[0].start == 0 and recs[1].start == recs[0].end and recs[-1].end == len(data)


def test_concatenated_streams_stop_at_garbage():
    data = pickle.dumps(1, protocol=2) + b"\x00\x00\x00\x00" + b"\xff" * 10
    assert [r.value for r in read_pickles(data)] == [1]
    data = pickle.dumps(1, protocol=2) + b"\xff\xfe"
    assert [r.value for r in read_pickles(data)] == [1]


def test_concatenated_benign_then_payload():
    data = pickle.dumps({"ok": 1}, protocol=2) + b"cos\nsystem\n(S'id'\ntR."
    recs = read_pickles(data)
    assert recs[1].globals[0].qualname == "os.system"


def test_concatenated_broken_second_stream():
    data = pickle.dumps(1, protocol=2) + b"\x80\x02cos\nsys"
    with pytest.raises(CorruptFile):
        read_pickles(data)
    recs = read_pickles(data, lenient=True)
    assert recs[0].value == 1 and recs[1].error and recs[1].error_offset >= recs[0].end


@pytest.mark.parametrize("protocol", range(6))
def test_truncated_streams(protocol):
    data = pickle.dumps(SAMPLE, protocol=protocol)
    for cut in range(0, len(data), max(1, len(data) // 40)):
        with pytest.raises(CorruptFile) as exc:
            read_pickle(data[:cut], path="x.pkl")
        assert exc.value.offset is not None and 0 <= exc.value.offset <= cut
        assert "x.pkl" in str(exc.value)
        rec = read_pickle(data[:cut], lenient=True)
        assert rec.error and rec.error_offset == exc.value.offset


def test_huge_declared_lengths_fail_fast():
    for op, width in ((b"\x8e", 8), (b"\x8d", 8), (b"\x96", 8), (b"X", 4), (b"B", 4)):
        data = b"\x80\x05" + op + (2 ** (8 * width) - 1).to_bytes(width, "little") + b"ab."
        tracemalloc.start()
        try:
            with pytest.raises(CorruptFile, match="bytes but only"):
                read_pickle(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2**20, (op, peak)  # refused before allocating the declared length


def test_caps():
    with pytest.raises(CorruptFile, match="MARKs nested"):
        read_pickle(b"(" * 20_000 + b".")
    with pytest.raises(CorruptFile, match="opcodes"):
        read_pickle(b"N0" * 1000 + b"N.", max_ops=100)
    with pytest.raises(CorruptFile, match="memo"):
        read_pickle(b"\x80\x04N" + b"\x94" * 50 + b".", max_memo=10)
    with pytest.raises(CorruptFile, match="integer literal"):
        read_pickle(b"I" + b"9" * 5000 + b"\n.")


def test_deep_nesting_is_iterative():
    data = b"\x80\x04)" + b"\x85" * 100_000 + b"."  # tuple nested 100,000 deep
    rec = read_pickle(data)
    depth, value = 0, rec.value
    while value:
        value, depth = value[0], depth + 1
    assert depth == 100_000
    data = b"\x80\x04" + b"]" * 50_000 + b"a" * 49_999 + b"."  # lists via APPEND, deep stack
    rec = read_pickle(data)
    assert isinstance(rec.value, list)


def test_errors_name_the_problem():
    cases = {
        b"": "before STOP",
        b"\x80\x02N": "before STOP",
        b"\x80\x02h\x05.": "memo key 5",
        b"\x80\x02R.": "stack underflow",
        b"\x80\x09N.": "unsupported pickle protocol 9",
        b"\x80\x02\xffN.": "unknown opcode 0xff",
        b"\x80\x02e.": "no MARK",
        b"S'abc\n.": "not quoted",
        b"\x80\x02\x8a\x01": "needs 1 bytes",
    }
    for data, message in cases.items():
        with pytest.raises(CorruptFile, match=message):
            read_pickle(data)


def test_matches_pickletools_opcode_walk():
    """Every opcode offset pickletools sees is covered: globals offsets agree."""
    data = pickle.dumps(
        [collections.OrderedDict(), collections.Counter(), collections.deque()], protocol=2
    )
    expected = [pos for op, _arg, pos in pickletools.genops(data) if op.name == "GLOBAL"]
    assert [g.offset for g in read_pickle(data).globals] == expected


# ---- fuzz: nothing but CorruptFile may escape --------------------------------------------------
SEEDS = [pickle.dumps(SAMPLE, protocol=p) for p in range(6)] + [
    b"\x80\x02cos\nsystem\n(S'id'\ntR.",
    b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93.",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
    try:
        read_pickle(data)
    except CorruptFile:
        pass
    read_pickle(data, lenient=True)
    read_pickles(data, lenient=True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.data())
def test_fuzz_mutated_pickles(seed, data):
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    try:
        read_pickles(bytes(buf))
    except CorruptFile:
        pass
    rec = read_pickle(bytes(buf), lenient=True)
    assert (rec.error is None) == (rec.error_offset is None)


def test_many_concatenated_streams_are_bounded():
    data = b"N." * 2000
    assert len(read_pickles(data)) == 2000
    with pytest.raises(CorruptFile, match="concatenated"):
        read_pickles(data + b"cos\nsystem\n(S'id'\ntR.", max_streams=2000)
    recs = read_pickles(data, lenient=True, max_streams=10)
    assert len(recs) == 11 and recs[-1].error


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5),
        st.tuples(kids),
        st.tuples(kids, kids),
        st.tuples(kids, kids, kids),
        st.lists(kids, max_size=5).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), kids, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_VALUES, st.integers(0, 5))
def test_differential_against_cpython(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    assert materialize(read_pickle(data).value) == pickle.loads(data)
