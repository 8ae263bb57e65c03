"""The protobuf (upb) path of the ONNX reader and scan gives exactly what the walk gives.

:mod:`keishiki.formats.onnx_upb` parses small canonical ModelProtos with protobuf's C parser;
anything else goes to :mod:`keishiki.formats.onnx_proto`'s walk.  Each case here runs both
and compares every record the reader builds (and the scan's external-data list), on models
built here, on hand-made protobufs with duplicated fields, groups, wrong wire types, odd
values and deep nesting, on the corpus, and on randomly damaged copies.
"""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from keishiki import inspect
from keishiki._scan import onnx_refs
from keishiki.errors import KeishikiError
from keishiki.formats import onnx as konnx
from keishiki.formats import onnx_proto as pb
from keishiki.formats import onnx_upb
from tests.conftest import corpus_path, facts_where
from tests.formats.test_onnx import _varint  # protobuf's varint, written

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

if onnx_upb.model_class() is None:
    pytest.skip("protobuf cannot build onnx's descriptor here", allow_module_level=True)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _model(graph: bytes, after: bytes = b"") -> bytes:
    """ir_version 9, the graph, opset ai.onnx 17: fields in canonical order."""
    return b"\x08\x09" + _field(7, graph) + _field(8, b"\x10\x11") + after


def _tensor(*fields: bytes) -> bytes:
    return _field(5, b"".join(fields))


DIMS_2 = b"\x08\x02"
FLOAT = b"\x10\x01"
RAW_8 = _field(9, b"\0" * 8)
EXTERNAL = b"\x70\x01"


def _location(value: bytes | None, key: bytes = b"location") -> bytes:
    return _field(13, _field(1, key) + (_field(2, value) if value is not None else b""))


def _nested_ifs(depth: int) -> bytes:
    graph = _field(1, _field(4, b"Identity"))
    for _ in range(depth):
        graph = _field(
            1, _field(4, b"If") + _field(5, _field(1, b"then_branch") + _field(6, graph))
        )
    return _model(graph)


def _nested_types(depth: int, in_subgraph: bool = False) -> bytes:
    t = _field(1, b"\x08\x01")
    for _ in range(depth):
        t = _field(4, _field(1, t))
    graph = _field(12, _field(1, b"deep") + _field(2, t))
    if in_subgraph:  # an If node's then_branch outputs it
        graph = _field(
            1, _field(4, b"If") + _field(5, _field(1, b"then_branch") + _field(6, graph))
        )
    return _model(graph)


# name -> (bytes, whether protobuf's path takes them)
HAND_MADE = {
    "canonical": (_model(_tensor(DIMS_2, FLOAT, _field(8, b"t"), RAW_8)), True),
    "graph twice (protobuf merges, the walk keeps the last)": (
        b"\x08\x09" + _field(7, _tensor(_field(8, b"a"))) + _field(7, _field(2, b"g2")),
        False,
    ),
    "group at the end (the walk refuses it)": (
        _model(b"") + _varint(100 << 3 | 3) + _varint(100 << 3 | 4),
        False,
    ),
    "unknown field at the end": (_model(b"") + _varint(99 << 3) + b"\x05", False),
    "name twice": (_model(_tensor(DIMS_2, FLOAT, _field(8, b"a"), _field(8, b"b"), RAW_8)), False),
    "fields out of order": (_model(_tensor(_field(8, b"t"), DIMS_2, FLOAT, RAW_8)), False),
    "padded varint": (_model(_tensor(b"\x08\x82\x00", FLOAT, _field(8, b"t"), RAW_8)), False),
    "int32_data as a varint (wrong wire type)": (
        _model(_tensor(DIMS_2, b"\x10\x06", _field(8, b"t"), b"\x28\x07")),
        False,
    ),
    "data_type past int32": (
        _model(_tensor(DIMS_2, b"\x10" + _varint(1 << 40), _field(8, b"t"), RAW_8)),
        False,
    ),
    "unknown data_location enum value": (
        _model(_tensor(DIMS_2, FLOAT, _field(8, b"t"), RAW_8, b"\x70\x05")),
        False,
    ),
    "negative data_type": (
        _model(_tensor(DIMS_2, b"\x10" + _varint(2**64 - 1), _field(8, b"t"), RAW_8)),
        True,
    ),
    "negative dims": (_model(_tensor(b"\x08" + _varint(2**64 - 2), FLOAT, _field(8, b"n"))), True),
    "names not UTF-8": (
        _model(_field(2, b"g\xff") + _tensor(DIMS_2, FLOAT, _field(8, b"n\xfe"), RAW_8)),
        True,
    ),
    "segment": (
        _model(_tensor(DIMS_2, FLOAT, _field(3, b"\x08\x00\x10\x02"), _field(8, b"s"), RAW_8)),
        True,
    ),
    "external strings": (
        _model(
            _tensor(
                DIMS_2,
                b"\x10\x08",
                _field(6, b"ab"),
                _field(6, b"c"),
                _field(8, b"es"),
                _location(b"w.bin"),
                EXTERNAL,
            )
        ),
        True,
    ),
    "external with raw_data too": (
        _model(_tensor(DIMS_2, FLOAT, _field(8, b"er"), RAW_8, _location(b"w.bin"), EXTERNAL)),
        True,
    ),
    "location key without a value": (
        _model(_tensor(DIMS_2, FLOAT, _field(8, b"lv"), _location(None), EXTERNAL)),
        True,
    ),
    "empty location": (_model(_tensor(DIMS_2, FLOAT, _location(b""), EXTERNAL)), True),
    "dims: empty dim_param, a value, nothing": (
        _model(
            _field(
                11,
                _field(1, b"x")
                + _field(
                    2,
                    _field(
                        1,
                        b"\x08\x01"
                        + _field(
                            2,
                            _field(1, _field(2, b"")) + _field(1, b"\x08\x05") + _field(1, b""),
                        ),
                    ),
                ),
            )
        ),
        True,
    ),
    "opaque, sequence, map, optional types": (
        _model(
            _field(11, _field(1, b"o") + _field(2, _field(7, _field(1, b"d"))))
            + _field(
                11,
                _field(1, b"s")
                + _field(2, _field(4, _field(1, _field(5, b"\x08\x07" + _field(2, b""))))),
            )
            + _field(12, _field(1, b"p") + _field(2, _field(9, b""))),
        ),
        True,
    ),
    "no graph": (b"\x08\x09" + _field(8, b"\x10\x11"), True),
    "empty graph": (_model(b""), True),
    "metadata key twice": (
        _model(b"", _field(14, _field(1, b"k") + _field(2, b"1")))
        + _field(14, _field(1, b"k") + _field(2, b"2")),
        True,
    ),
    "subgraphs 32 deep": (_nested_ifs(32), True),
    "subgraphs 33 deep (past the walk's bound)": (_nested_ifs(33), False),
    "types 32 deep": (_nested_types(32), True),
    "types 33 deep (past the walk's bound)": (_nested_types(33), False),
    "types 32 deep in a subgraph": (_nested_types(32, in_subgraph=True), True),
    "types 33 deep in a subgraph": (_nested_types(33, in_subgraph=True), False),
}


def _walk(data: bytes) -> konnx.Parsed:
    return konnx._from_walk(pb.parse_model(pb.BytesReader(data)))


def _tensor_view(t, where) -> tuple:
    """What the reader and the loader read from a tensor record."""
    view = (t.name, t.data_type, list(t.dims), t.is_external, dict(t.external), t.has_segment)
    if t.is_external and t.data_type != onnx_upb.STRING:
        return view + (where,)  # read from its file: embedded bytes are not looked at
    payload = (t.raw, dict(t.typed), t.string_count, t.string_bytes, list(t.string_spans))
    return view + payload + (where,)


def _view(parsed: konnx.Parsed) -> dict:
    model = dict(vars(parsed.model), graph=None)
    rest = {k: v for k, v in vars(parsed).items() if k not in ("model", "tensors")}
    return {
        "model": model,
        **rest,
        "tensors": [_tensor_view(t, where) for t, where in parsed.tensors],
    }


def _same_as_walk(data: bytes) -> bool:
    """Assert that both paths agree; True when protobuf's path took the bytes."""
    try:
        walked = _walk(data)
    except pb.ProtoError:
        walked = None
    fast = konnx._parse_fast(data)
    if fast is not None:
        assert walked is not None
        assert _view(fast) == _view(walked)
    try:
        walked_refs = onnx_refs._locations_walked(data)
    except onnx_refs.NotOnnx as exc:
        walked_refs = f"NotOnnx: {exc}"
    model = onnx_upb.parse(data)
    if model is not None:
        try:
            refs = onnx_refs._locations_parsed(model)
        except onnx_refs.NotOnnx as exc:
            refs = f"NotOnnx: {exc}"
        assert refs == walked_refs
    return fast is not None


@pytest.mark.parametrize("name", list(HAND_MADE))
def test_hand_made_protobufs(name):
    data, taken = HAND_MADE[name]
    assert _same_as_walk(data) is taken


def _built_models(sub_location: str = "../sub.bin") -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    const = helper.make_node(
        "Constant", [], ["c"], value=numpy_helper.from_array(np.array([[1, 2]], np.int32))
    )
    sub_init = numpy_helper.from_array(np.ones(2, np.float32), "sub_init")
    sub_init.data_location = TensorProto.EXTERNAL
    sub_init.ClearField("raw_data")
    for key, value in (("location", sub_location), ("length", "8")):
        sub_init.external_data.add(key=key, value=value)
    then = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["t"], value=numpy_helper.from_array(np.array([5], np.int64))
            )
        ],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.INT64, [1])],
        [sub_init],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "raw"),
        helper.make_tensor("typed", TensorProto.FLOAT, [2], [1.5, -2.0]),
        helper.make_tensor("i64", TensorProto.INT64, [2], [-(2**40), 7]),
        helper.make_tensor("strings", TensorProto.STRING, [2], [b"ab", b"\xe3\x81\x82"]),
        numpy_helper.from_array(np.zeros((0, 3), np.float32), "onnx::MatMul_3"),
    ]
    external = numpy_helper.from_array(np.ones((4, 4), np.float32), "val_9")
    external.ClearField("raw_data")
    external.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", "64")):
        external.external_data.add(key=key, value=value)
    nodes = [
        const,
        helper.make_node("If", ["cond"], ["r"], then_branch=then, else_branch=other),
        helper.make_node("Identity", ["x"], ["y"], name="id"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits + [external],
    )
    values = helper.make_tensor("sv", TensorProto.FLOAT, [2], [1.0, 2.0])
    values.ClearField("float_data")
    values.data_location = TensorProto.EXTERNAL
    values.external_data.add(key="location", value="sparse.bin")
    for i in range(2):  # the scan reads sparse initializers, the reader only counts them
        graph.sparse_initializer.append(
            helper.make_sparse_tensor(
                values, helper.make_tensor(f"si{i}", TensorProto.INT64, [2], [0, 1]), [4]
            )
        )
    model = helper.make_model(graph, producer_name="keishiki-test", doc_string="doc")
    helper.set_model_props(model, {"a": "1", "b": "2"})
    with_function = helper.make_model(graph)
    in_function = helper.make_tensor("fw", TensorProto.FLOAT, [1], [1.0])
    in_function.ClearField("float_data")
    in_function.data_location = TensorProto.EXTERNAL
    in_function.external_data.add(key="location", value="fn.bin")
    body = [const, helper.make_node("Constant", [], ["b"], value=in_function)]
    with_function.functions.append(
        helper.make_function("custom", "F", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    )
    return {
        "model": model.SerializeToString(),
        "with a function": with_function.SerializeToString(),
    }


def test_built_models_take_the_fast_path_and_agree():
    for name, data in _built_models().items():
        assert _same_as_walk(data), name
    refs = onnx_refs._locations_parsed(onnx_upb.parse(_built_models()["with a function"]))
    assert [name for name, _location in refs] == ["fw", "sv", "sv", "val_9", "sub_init"]


@pytest.mark.parametrize(
    "rel", facts_where(lambda f: f.get("format") in ("onnx", "onnx (external data)"))
)
def test_corpus_takes_the_fast_path_and_agrees(rel):
    path = corpus_path(rel)
    model_file = path if path.is_file() else next(path.glob("*.onnx"))
    assert _same_as_walk(model_file.read_bytes())


def test_damaged_copies_agree():
    """Random byte changes and cuts: whichever path takes the bytes, the records agree."""
    rng = random.Random(12)
    seeds = list(_built_models().values())
    seeds.append(corpus_path("onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx").read_bytes())
    taken = 0
    for i in range(600):
        blob = bytearray(seeds[i % len(seeds)])
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(blob))
            if rng.random() < 0.85:
                blob[pos] = rng.getrandbits(8)
            else:
                del blob[pos:]
                break
        taken += _same_as_walk(bytes(blob))
    assert taken > 50  # many damaged copies are still canonical protobufs


@pytest.mark.parametrize("sub_location", ["sub.bin", "../sub.bin"])
def test_inspect_and_scan_agree_with_the_walk(tmp_path, monkeypatch, sub_location):
    """End to end: inspect (tensors, data, graph facts, verdict, or the refusal), both ways."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(_built_models(sub_location)["model"])
    (folder / "w.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    (tmp_path / "sub.bin").write_bytes(b"\0" * 8)
    (folder / "sub.bin").write_bytes(b"\0" * 8)

    def everything():
        from keishiki import _scan

        konnx._parse_cached.cache_clear()
        onnx_upb._LAST.clear()
        _scan._CACHE.clear()
        verdict = _scan.scan(folder / "model.onnx")
        findings = [(f.opcode, f.global_, f.severity, f.reason) for f in verdict.findings]
        try:
            info = inspect(folder)
        except KeishikiError as exc:
            return str(exc), findings
        data = [info.load_tensor(t).tolist() for t in info.tensors if t.dtype != "string"]
        return info.to_dict(with_tensors=True), data, findings

    fast = everything()
    monkeypatch.setattr(onnx_upb, "parse", lambda data: None)
    assert fast == everything()
    if sub_location == "sub.bin":
        assert fast[0]["safety"]["verdict"] == "safe" and len(fast[1]) == 8
    else:
        assert "refuses '../sub.bin'" in fast[0]
        assert ("onnx-external-data", "../sub.bin", "dangerous") in [f[:3] for f in fast[1]]


def test_no_onnx_package_imported(tmp_path):
    """The descriptor is read from onnx's generated file: ``import onnx`` costs ~0.8 s."""
    path = tmp_path / "m.onnx"
    path.write_bytes(_built_models("sub.bin")["model"])
    code = (
        "import sys, keishiki; from keishiki.formats import onnx_upb; "
        f"keishiki.inspect({str(path)!r}); "
        "assert onnx_upb._LAST, 'protobuf path not taken'; "
        "print(sorted(m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_onnx_the_walk_reads(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(_built_models("sub.bin")["model"])
    konnx._parse_cached.cache_clear()
    monkeypatch.setattr(onnx_upb, "model_class", lambda: None)
    onnx_upb._LAST.clear()
    info = inspect(path)
    assert info.graph["n_initializers"] == 6 and not onnx_upb._LAST


def test_big_files_keep_the_walk(monkeypatch):
    data = HAND_MADE["canonical"][0]
    assert onnx_upb.parse(data) is not None
    monkeypatch.setattr(onnx_upb, "FAST_MAX_BYTES", len(data) - 1)
    onnx_upb._LAST.clear()
    assert onnx_upb.parse(data) is None


def test_remembered_parse_is_only_for_the_same_bytes():
    a = HAND_MADE["canonical"][0]
    b = HAND_MADE["segment"][0]
    onnx_upb._LAST.clear()
    first = onnx_upb.parse(a)
    assert onnx_upb.parse(bytes(bytearray(a))) is first  # equal bytes, another object
    assert onnx_upb.parse(b) is not first


def test_public_protobuf_route_builds_the_same_class(monkeypatch):
    """Without upb's private module the classes come from descriptor_pool/message_factory."""
    import google._upb

    data = _built_models("sub.bin")["model"]
    private = onnx_upb.model_class()
    monkeypatch.delattr(google._upb, "_message")
    monkeypatch.setitem(sys.modules, "google._upb._message", None)
    onnx_upb.model_class.cache_clear()
    try:
        public = onnx_upb.model_class()
        assert public is not None and public is not private
        assert public.FromString(data).SerializeToString() == data
        assert private.FromString(data).SerializeToString() == data
    finally:
        onnx_upb.model_class.cache_clear()
