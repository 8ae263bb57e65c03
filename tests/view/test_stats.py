"""Tensor statistics on request: values against numpy, sampling and refusal bounds, GGUF
dequantisation, models without tensor data, and the /api/stats route."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from keishiki import inspect
from keishiki.errors import InvalidRequest
from keishiki.mapping import load_array
from keishiki.view import ViewServer
from keishiki.view.stats import tensor_stats, unavailable_reason
from tests.conftest import corpus_path


def expected(arr: np.ndarray, bins: int = 48) -> dict:
    flat = arr.reshape(-1).astype(np.float64)
    finite = flat[np.isfinite(flat)]
    counts, edges = np.histogram(finite, bins=bins)
    return {
        "min": finite.min(),
        "max": finite.max(),
        "mean": finite.mean(),
        "std": finite.std(),
        "n_nan": int(np.isnan(flat).sum()),
        "n_posinf": int(np.isposinf(flat).sum()),
        "n_neginf": int(np.isneginf(flat).sum()),
        "n_zero": int((flat == 0).sum()),
        "counts": counts.tolist(),
        "edges": edges,
    }


@pytest.mark.parametrize("name", ["special", "big", "const", "ints"])
def test_stats_match_numpy(stats_file, name):
    path, arrays = stats_file
    got = tensor_stats(inspect(path), name)
    want = expected(arrays[name])
    assert got["sampled"] is None and got["n_counted"] == arrays[name].size
    assert got["shape"] == list(arrays[name].shape) and got["numel"] == arrays[name].size
    for key in ("n_nan", "n_posinf", "n_neginf", "n_zero"):
        assert got[key] == want[key], key
    for key in ("min", "max", "mean", "std"):
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    assert got["histogram"]["counts"] == want["counts"]
    assert np.allclose(got["histogram"]["edges"], want["edges"])
    if name == "special":
        assert (got["n_nan"], got["n_posinf"], got["n_neginf"]) == (2, 1, 3)
        assert got["n_zero"] == 20 and sum(got["histogram"]["counts"]) == 1000 - 6


def test_all_nan_tensor_has_counts_and_no_range(stats_file):
    got = tensor_stats(inspect(stats_file[0]), "nan")
    assert got["n_nan"] == 5 and got["min"] is None and got["std"] is None
    assert got["histogram"] is None


def test_large_tensor_is_sampled_and_says_so(stats_file):
    path, arrays = stats_file
    got = tensor_stats(inspect(path), "big", max_elements=1000)
    assert got["sampled"] == {"step": 5, "n": 1000} and got["n_counted"] == 1000
    want = expected(arrays["big"].reshape(-1)[::5])
    assert got["mean"] == pytest.approx(want["mean"]) and got["max"] == want["max"]
    assert got["histogram"]["counts"] == want["counts"]


def test_tensor_over_the_memory_bound_is_refused(stats_file):
    with pytest.raises(
        InvalidRequest, match=r"'big' needs 39.1 KiB in memory; .* only up to 1000 B per tensor"
    ):
        tensor_stats(inspect(stats_file[0]), "big", max_bytes=1000)  # 40,000 bytes


def test_unknown_tensor_is_refused(stats_file):
    with pytest.raises(InvalidRequest, match="no tensor named 'nope'"):
        tensor_stats(inspect(stats_file[0]), "nope")


def test_gguf_quantized_tensor_is_dequantized():
    model = inspect(corpus_path("gguf/llama.cpp-convert/tiny-bert-q8_0.gguf"))
    q8 = next(t for t in model.tensors if t.dtype == "q8_0")
    got = tensor_stats(model, q8.name)
    want = expected(load_array(model, q8))
    assert got["shape"] == list(q8.shape) and got["dtype"] == "q8_0"
    assert got["mean"] == pytest.approx(want["mean"]) and got["min"] == want["min"]


def test_remote_model_has_no_statistics_and_says_why(remote_model):
    reason = unavailable_reason(remote_model)
    assert "hf://" in reason and "not downloaded" in reason
    with pytest.raises(InvalidRequest, match="no statistics: a remote hf:// model"):
        tensor_stats(remote_model, "0.weight")
    server = ViewServer(remote_model)
    server._httpd.server_close()
    assert server.payload["view"]["stats"] is False
    assert server.payload["view"]["stats_reason"] == reason


def test_stats_route(stats_file):
    server = ViewServer(inspect(stats_file[0]), max_stats_bytes=10_000).start()
    try:

        def get(query: str):
            url = server.url + "api/stats?" + urllib.parse.urlencode(query)
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, body = get({"name": "special"})
        assert status == 200 and body["side"] == "a" and body["n_posinf"] == 1
        assert body["min"] == pytest.approx(expected(stats_file[1]["special"])["min"])
        status, body = get({"name": "big"})
        assert status == 400 and "only up to" in body["error"]
        assert get({"name": "nope"})[0] == 400
        assert get({})[0] == 400
        status, body = get({"name": "special", "side": "b"})  # one model: no side b
        assert status == 404 and "no model 'b'" in body["error"]
    finally:
        server.stop()


def test_page_says_when_statistics_are_sampled(tmp_path, stats_file):
    from .pages import offline, render_in_node, routes_of

    server = offline(ViewServer(inspect(stats_file[0]), max_stats_elements=1000))
    sampled = server.stats("a", "big")
    page = render_in_node(tmp_path, routes_of(server, **{"/api/stats": sampled}), click=True)
    assert "Sampled: 1 element in 5 (evenly strided), 1,000 of 5,000." in page["stats"]
    assert "5.00K" in page["stats"] and "5,000" in page["stats"]  # elements: short + exact


def test_page_says_why_a_remote_model_has_no_statistics(tmp_path, remote_model):
    from .pages import offline, render_in_node, routes_of

    page = render_in_node(tmp_path, routes_of(offline(ViewServer(remote_model))), click=True)
    assert "No statistics: a remote hf:// model" in page["stats"]
    assert not [u for u in page["requested"] if "stats" in u]  # names are not links


def _labels_onnx(path, labels):
    """An ONNX file with a string initializer (sklearn-onnx keeps class labels so)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[
            numpy_helper.from_array(np.array(labels, dtype=object), "labels"),
            numpy_helper.from_array(np.ones(2, np.float32), "w"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_string_tensors_compare_by_value_and_have_no_statistics(tmp_path):
    """Strings are compared element by element (their arrays have no bytes to compare:
    "internal error: TypeError"), and refused by the statistics as not numbers, also on
    the route (a ValueError there dropped the connection)."""
    import keishiki

    a = _labels_onnx(tmp_path / "a.onnx", ["cat", "dog"])
    b = _labels_onnx(tmp_path / "b.onnx", ["cat", "cow"])
    same = keishiki.compare(a, a)
    assert same.verdict == "identical" and len(same.tensors) == 2
    diff = {d.pair.a: d for d in keishiki.compare(a, b).tensors}
    assert (diff["labels"].status, diff["labels"].n_over_tolerance) == ("different", 1)
    assert diff["w"].status == "identical"
    with pytest.raises(InvalidRequest, match="'labels' holds string values, not numbers"):
        tensor_stats(inspect(a), "labels")
    server = ViewServer(inspect(a)).start()
    try:
        url = server.url + "api/stats?name=labels"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=10)
        assert info.value.code == 400 and "not numbers" in json.loads(info.value.read())["error"]
    finally:
        server.stop()


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
def test_ml_dtypes_floats_have_statistics(tmp_path, dtype):
    """bfloat16 and float8 (numpy kind "V" through ml_dtypes) are numbers: statistics, not
    the refusal meant for string tensors."""
    import ml_dtypes
    from safetensors.numpy import save_file

    values = np.array([1.0, -2.0, 0.5, 0.0], np.float32)
    path = tmp_path / "w.safetensors"
    save_file({"w": values.astype(getattr(ml_dtypes, dtype))}, str(path))
    stats = tensor_stats(inspect(path), "w")
    assert (stats["min"], stats["max"], stats["n_zero"]) == (-2.0, 1.0, 1)
