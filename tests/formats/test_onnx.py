"""ONNX reader: corpus facts, values against onnx.numpy_helper, external data confinement."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from keishiki import inspect
from keishiki.errors import CorruptFile, UnknownFormat, UnsafeFile
from keishiki.formats import identify
from keishiki.formats import onnx_proto as pb
from tests.conftest import FACTS, corpus_path, facts_where, run_cli

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

CASES = facts_where(lambda f: f.get("format") in ("onnx", "onnx (external data)"))
GRAPH_FACTS = [
    "ir_version",
    "opset_import",
    "producer",
    "graph_name",
    "n_nodes",
    "n_initializers",
    "op_types",
    "inputs",
    "outputs",
    "n_functions",
    "external_data_files",
]


@pytest.mark.parametrize("rel", CASES)
def test_corpus_graph_facts(rel):
    facts = FACTS[rel]
    info = inspect(corpus_path(rel))
    assert info.format == "onnx"
    expected_variant = "external-data" if facts["external_data_files"] else "embedded"
    assert info.variant == identify(corpus_path(rel)).variant == expected_variant
    for key in GRAPH_FACTS:
        assert info.graph[key] == facts[key], key
    assert info.graph["missing_external_data_files"] == []
    if "n_external_initializers" in facts:
        external = [t for t in info.tensors if t.extra.get("storage") == "external"]
        assert len(external) == facts["n_external_initializers"]


def _reference_arrays(path) -> dict[str, np.ndarray]:
    """Top-graph initializers and Constant values, as onnx itself loads them."""
    model = onnx.load(str(path))
    ref = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    ref[node.output[0]] = numpy_helper.to_array(attr.t)
    return ref


def _assert_same_arrays(info, ref):
    checked = 0
    for lazy in info.lazy_tensors():
        if "graph" in lazy.info.extra:
            continue  # subgraph constants: not in the top graph's reference
        got, want = lazy.load(), ref[lazy.name]
        assert got.dtype == want.dtype and got.shape == want.shape, lazy.name
        np.testing.assert_array_equal(got, want)
        checked += 1
    assert checked == len(ref)


@pytest.mark.parametrize("rel", CASES)
def test_corpus_values_match_numpy_helper(rel):
    path = corpus_path(rel)
    info = inspect(path)
    model_file = path if path.is_file() else next(path.glob("*.onnx"))
    _assert_same_arrays(info, _reference_arrays(model_file))


def test_subgraph_constants_are_listed():
    info = inspect(corpus_path("onnx/silero-vad-6.2.3/silero_vad_16k_op15.onnx"))
    nested = [t for t in info.tensors if "graph" in t.extra]
    assert nested and all(t.extra["source"] in ("constant", "initializer") for t in nested)
    assert info.graph["n_nodes_with_subgraphs"] > info.graph["n_nodes"] == 121


def test_symbolic_dims_structured():
    info = inspect(corpus_path("onnx/silero-vad-6.2.3/silero_vad_16k_op15.onnx"))
    first = info.graph["inputs_detail"][0]
    assert first == {
        "name": "input",
        "type": "FLOAT['batch', 'sequence']",
        "dtype": "float32",
        "shape": ["batch", "sequence"],
    }


# ---- models built here ------------------------------------------------------------------------


def _model(initializers, nodes=None, inputs=None, outputs=None, opset=17, name="g"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = nodes or [helper.make_node("Identity", ["x"], ["y"])]
    graph = helper.make_graph(nodes, name, inputs or [x], outputs or [y], initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)],
        producer_name="keishiki-test",
        producer_version="0.1",
    )
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
    """Every storage flavour: raw_data, float_data, int32_data (fp16, int8, bool), int64_data,
    double_data, strings, empty, a Constant node and generated names."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "raw_f32"),
        helper.make_tensor("typed_f32", TensorProto.FLOAT, [2, 2], [1.5, -2.0, 3.25, 0.0]),
        helper.make_tensor(
            "typed_f16", TensorProto.FLOAT16, [3], np.array([1.0, -0.5, 65504], np.float16)
        ),
        helper.make_tensor("typed_bf16", TensorProto.BFLOAT16, [2], [1.0, -3.0]),
        helper.make_tensor("typed_i8", TensorProto.INT8, [3], [-128, 0, 127]),
        helper.make_tensor("typed_bool", TensorProto.BOOL, [2], [True, False]),
        helper.make_tensor("typed_i64", TensorProto.INT64, [3], [-(2**40), 0, 7]),
        helper.make_tensor("typed_f64", TensorProto.DOUBLE, [2], [1e-300, 2.5]),
        helper.make_tensor("typed_u64", TensorProto.UINT64, [2], [2**63 + 5, 1]),
        helper.make_tensor("strings", TensorProto.STRING, [2], [b"ab", b"\xe3\x81\x82"]),
        numpy_helper.from_array(np.zeros((0, 3), np.float32), "empty"),
        numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "onnx::MatMul_12"),
        numpy_helper.from_array(np.ones(2, np.int64), "val_7"),
    ]
    const = helper.make_node(
        "Constant",
        [],
        ["c_out"],
        name="Constant_3",
        value=numpy_helper.from_array(np.array([[1, 2]], np.int32)),
    )
    nodes = [const, helper.make_node("Identity", ["x"], ["y"], name="id")]
    path = tmp_path_factory.mktemp("onnx") / "mixed.bin"  # the extension must not matter
    onnx.save(_model(inits, nodes), str(path))
    return path


def test_mixed_storage_values(mixed_model):
    info = inspect(mixed_model)
    assert info.format == "onnx" and info.variant == "embedded"
    g = info.graph
    assert g["ir_version"] == 9 and g["opset_import"] == {"ai.onnx": 17, "com.microsoft": 1}
    assert g["producer"] == "keishiki-test 0.1" and g["inputs"] == ["x:FLOAT['batch', 4]"]
    assert g["n_initializers"] == 13 and g["n_constants"] == 1 and g["n_nodes"] == 2
    assert g["op_types"] == {"Constant": 1, "Identity": 1}
    _assert_same_arrays(info, _reference_arrays(mixed_model))
    raw = info.tensor("raw_f32")
    assert raw.extra["storage"] == "raw_data" and raw.nbytes == 48
    assert (
        mixed_model.read_bytes()[raw.data_offset : raw.data_offset + 48]
        == np.asarray(info.tensor_loader(raw)).tobytes()
    )
    assert info.tensor("c_out").extra["source"] == "constant"
    assert info.tensor("typed_bf16").dtype == "bfloat16"


def test_generated_names_explained(mixed_model):
    gen = inspect(mixed_model).graph["generated_names"]
    assert gen["onnx::MatMul_<N>"]["examples"] == ["onnx::MatMul_12"]
    assert "transposed" in gen["onnx::MatMul_<N>"]["meaning"]
    assert gen["val_<N>"]["count"] == 1 and "optimize" in gen["val_<N>"]["meaning"]


@pytest.fixture()
def external_model(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "w1": rng.standard_normal((64, 32)).astype(np.float32),
        "onnx__MatMul_9": rng.standard_normal((32, 16)).astype(np.float16),
        "small": np.arange(3, dtype=np.int64),
    }
    model = _model([numpy_helper.from_array(v, k) for k, v in arrays.items()])
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=64,
    )
    return folder, arrays


def test_external_data_values(external_model):
    folder, arrays = external_model
    for path in (folder, folder / "model.onnx"):  # the folder and the file both work
        info = inspect(path)
        assert info.variant == identify(path).variant == "external-data"
        assert info.graph["external_data_files"] == ["model.onnx.data"]
        assert {t.name: t.extra["storage"] for t in info.tensors} == {
            "w1": "external",
            "onnx__MatMul_9": "external",
            "small": "raw_data",
        }
        for lazy in info.lazy_tensors():
            np.testing.assert_array_equal(lazy.load(), arrays[lazy.name])
    assert "onnx__MatMul_<N>" in info.graph["generated_names"]
    assert info.graph["initializer_bytes"] == sum(a.nbytes for a in arrays.values())


def _set_location(folder, new_location):
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = new_location
    onnx.save(model, str(folder / "model.onnx"))


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_location_escaping_folder_is_refused(external_model, location):
    folder, _ = external_model
    (folder.parent / "secret.bin").write_bytes(b"\0" * 100000)
    _set_location(folder, location)
    with pytest.raises(UnsafeFile, match="refuses"):
        inspect(folder / "model.onnx")
    code, out, err = run_cli("info", folder / "model.onnx")  # a finding: exit 1
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err


def test_external_symlink_out_of_folder_is_refused(external_model, tmp_path):
    folder, _ = external_model
    outside = tmp_path / "outside.data"
    os.replace(folder / "model.onnx.data", outside)
    os.symlink(outside, folder / "model.onnx.data")
    with pytest.raises(UnsafeFile, match="outside"):
        inspect(folder)


def test_missing_external_file_is_reported(external_model):
    folder, _ = external_model
    (folder / "model.onnx.data").unlink()
    info = inspect(folder)
    assert info.graph["missing_external_data_files"] == ["model.onnx.data"]
    assert any("missing" in w for w in info.warnings)
    with pytest.raises(CorruptFile, match="missing"):
        info.tensor_loader(info.tensor("w1"))


def test_external_range_beyond_file(external_model):
    folder, _ = external_model
    data = folder / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(CorruptFile, match="beyond the end"):
        inspect(folder)


def test_truncated_model_is_one_line_error(mixed_model, tmp_path):
    blob = mixed_model.read_bytes()
    for cut in (len(blob) // 2, len(blob) - 3, 40):
        p = tmp_path / f"cut{cut}.onnx"
        p.write_bytes(blob[:cut])
        code, _out, err = run_cli("info", p)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (cut, err)
    p = tmp_path / "half.onnx"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptFile, match="truncated"):
        inspect(p)


def test_absurd_length_inside_graph(tmp_path):
    # ir_version 8, graph whose first node claims 2^40 bytes
    node = bytes([0x0A]) + _varint(2**40)
    graph = node + b"\0" * 8
    blob = b"\x08\x08" + b"\x3a" + _varint(len(graph)) + graph
    p = tmp_path / "absurd.onnx"
    p.write_bytes(blob)
    with pytest.raises(CorruptFile):
        inspect(p)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_random_bytes_and_tensor_protos_are_not_onnx(tmp_path):
    rng = random.Random(0)
    p = tmp_path / "r.onnx"
    for i in range(300):
        n = rng.choice([1, 7, 64, 1000, 70000])
        blob = bytes(rng.getrandbits(8) for _ in range(n))
        if i % 3 == 0:  # plausible start, garbage after
            blob = b"\x08" + bytes([rng.randint(1, 20)]) + blob
        assert not pb.looks_like_model(blob[:65536], len(blob)), (i, blob[:16])
    tensor = numpy_helper.from_array(np.ones((2, 3), np.float32), "t")
    p.write_bytes(tensor.SerializeToString())
    with pytest.raises(UnknownFormat):
        identify(p)


def test_folder_with_two_models_is_not_onnx(mixed_model, tmp_path):
    for name in ("a.onnx", "b.onnx"):
        (tmp_path / name).write_bytes(mixed_model.read_bytes())
    with pytest.raises(UnknownFormat):
        identify(tmp_path)


def test_cli_json(mixed_model):
    code, out, _ = run_cli("info", mixed_model, "--json")
    data = json.loads(out)
    assert code == 0 and data["format"] == "onnx" and data["graph"]["n_initializers"] == 13
    code, out, _ = run_cli("tensors", mixed_model, "--json", "--filter", "raw_*")
    assert [t["name"] for t in json.loads(out)["tensors"]] == ["raw_f32"]


def test_inspect_external_data_loads_no_onnx():
    import subprocess
    import sys

    path = corpus_path("onnx_external_data/onnx-1.12.0-debian/nmp_external_single")
    code = (
        f"import sys, keishiki; i = keishiki.inspect({str(path)!r}); "
        f"next(i.lazy_tensors()).load(); "
        f"print([m for m in ('onnx', 'onnxruntime', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("window", [0, 64, 4096])
def test_streaming_walk_equals_in_memory_walk(monkeypatch, window):
    """FileReader's field-by-field reads (messages over the window) give the same model."""
    path = corpus_path("onnx/silero-vad-6.2.3/silero_vad_16k_op15.onnx")
    reference = pb.parse_model(pb.BytesReader(path.read_bytes()))
    monkeypatch.setattr(pb, "WINDOW_BYTES", window)
    reader = pb.open_file(str(path))
    try:
        assert pb.parse_model(reader) == reference
    finally:
        os.close(reader.fd)


def test_info_does_not_touch_payload_pages(tmp_path):
    """A 64 MB embedded model is described with a few small reads, not by mapping it."""
    big = numpy_helper.from_array(np.ones((4096, 4096), np.float32), "big")
    path = tmp_path / "big.onnx"
    onnx.save(_model([big, big]), str(path))
    reads = []
    real_pread = os.pread

    def counting_pread(fd, n, offset):
        reads.append(n)
        return real_pread(fd, n, offset)

    import keishiki.formats.onnx as konnx

    konnx._parse_cached.cache_clear()
    pb.os.pread, saved = counting_pread, pb.os.pread
    try:
        info = inspect(path)
    finally:
        pb.os.pread = saved
    assert info.n_tensors == 2 and info.tensor("big").nbytes == 64 * 2**20
    assert sum(reads) < 64 * 1024, sum(reads)


def test_mutated_models_fail_cleanly(mixed_model, tmp_path):
    """Random byte flips, overwrites and truncations: a model or a KeishikiError, fast."""
    from keishiki.core.source import Source
    from keishiki.errors import KeishikiError
    from keishiki.formats import onnx as konnx

    rng = random.Random(7)
    seed = mixed_model.read_bytes()
    for i in range(300):
        blob = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(blob))
            if rng.random() < 0.7:
                blob[pos : pos + 4] = rng.getrandbits(32).to_bytes(4, "little")
            else:
                del blob[pos:]
                break
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(bytes(blob))
        try:
            src = Source(path)
            match = konnx.sniff(src)
            if match is not None:
                for lazy in konnx.read(src, match).lazy_tensors():
                    try:
                        lazy.load()
                    except KeishikiError:
                        pass
        except KeishikiError:
            pass


def _onnx_counts(graph) -> tuple[int, int]:
    """(initializer elements, Constant-node elements) of a graph and its subgraphs, by onnx."""
    import math

    weights = sum(math.prod(t.dims) for t in graph.initializer)
    constants = 0
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and not node.domain and attr.name == "value":
                constants += math.prod(attr.t.dims)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                w, c = _onnx_counts(sub)
                weights, constants = weights + w, constants + c
    return weights, constants


@pytest.mark.parametrize("rel", CASES)
def test_parameters_count_weights_and_constants_apart(rel):
    """Graph constants (shapes, scalars) are not parameters: the count is the initializers'
    (202,255 was reported where the model has 202,048 weights)."""
    path = corpus_path(rel)
    info = inspect(path)
    model_file = path / "model.onnx" if path.is_dir() else path
    if not model_file.exists():  # a folder: its one .onnx file
        (model_file,) = path.glob("*.onnx")
    weights, constants = _onnx_counts(onnx.load(str(model_file), load_external_data=False).graph)
    assert info.n_parameters == weights
    assert info.graph["constant_elements"] == constants
