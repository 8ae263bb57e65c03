"""``keishiki view A B``: the name mapping and comparison in one page (pairs and how they
were matched, transposed/folded/permuted marks, per-tensor errors, unmatched tensors, the
layer-by-layer table from ``compare --layers --json``), by API, in node and from the CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from keishiki import inspect
from keishiki.view import ViewServer
from keishiki.view.payload import compare_payload
from tests.conftest import corpus_path, run_cli

from .pages import offline, render_in_node, routes_of

# a `keishiki compare A B --layers --json` document (schema keishiki.compare.layers/1)
LAYERS = {
    "schema": "keishiki.compare.layers/1",
    "verdict": "diverged",
    "exit_code": 1,
    "a": {"path": "a", "format": "hf-model", "backend": "torch", "precision": "float32"},
    "b": {"path": "b", "format": "gguf", "backend": "torch", "precision": "8-bit"},
    "prompt": "The quick brown fox",
    "prompt_token_ids": [1, 2, 3],
    "atol": 1e-6,
    "rtol": 1e-3,
    "rtol_source": "given",
    "n_pairs": 3,
    "n_over_tolerance": 2,
    "first_divergence": {
        "position": 1,
        "module": "model.layers.0.mlp",
        "module_b": None,
        "index": None,
        "shape_a": [1, 3, 64],
        "shape_b": [1, 3, 64],
        "max_abs_diff": 0.02,
        "max_rel_diff": 0.5,
        "cosine": 0.9,
        "ok": False,
    },
    "layers": [
        {
            "module": "model.embed_tokens",
            "module_b": None,
            "index": None,
            "name_a": "x",
            "name_b": "y",
            "shape_a": [1, 3, 64],
            "shape_b": [1, 3, 64],
            "max_abs_diff": 0.0,
            "max_rel_diff": 0.0,
            "cosine": 1.0,
            "ok": True,
        },
        {
            "module": "model.layers.0.mlp",
            "module_b": None,
            "index": None,
            "name_a": "x",
            "name_b": "y",
            "shape_a": [1, 3, 64],
            "shape_b": [1, 3, 64],
            "max_abs_diff": 0.02,
            "max_rel_diff": 0.5,
            "cosine": 0.9,
            "ok": False,
        },
        {
            "module": "model.rotary_emb",
            "module_b": None,
            "index": 1,
            "name_a": "x",
            "name_b": "y",
            "shape_a": [1, 3, 16],
            "shape_b": [1, 3, 16],
            "max_abs_diff": "inf",
            "max_rel_diff": "inf",
            "cosine": "nan",
            "ok": False,
        },
    ],
    "unpaired_a": ["lm_head"],
    "unpaired_b": [],
}


def compare_server(a, b, **kwargs) -> ViewServer:
    ma, mb = inspect(a), inspect(b)
    return offline(ViewServer(ma, other=mb, comparison=compare_payload(ma, mb, **kwargs)))


def test_pairs_with_how_and_transposed_marks(tmp_path, seq_files):
    server = compare_server(seq_files["safetensors"], seq_files["onnx"])
    cmp = server.comparison
    assert cmp["values_compared"] and cmp["verdict"] == "identical"
    by_a = {t["a"]: t for t in cmp["tensors"]}
    assert by_a["0.weight"]["how"] == "value-transposed" and by_a["0.weight"]["transposed"]
    assert by_a["0.bias"]["how"] == "exact" and not by_a["0.bias"]["transposed"]
    page = render_in_node(tmp_path, routes_of(server), "matmul")
    assert {"pairs", "unmatched-a", "unmatched-b", "compare-summary", "verdict", "layers"} <= set(
        page["ids"]
    )
    assert page["filtered"] == 2  # the two onnx::MatMul_<N> pairs
    assert "identical" in page["badges"] and "safetensors vs onnx" in page["badges"]
    assert "transposed" in page["main"] and "value-transposed" in page["main"]
    assert "Matched by exact: 2, value-transposed: 2" in page["main"]
    assert "keishiki compare A B --layers --json" in page["main"]  # the table's slot


@pytest.mark.parametrize(
    "typed, shown",
    [
        ("matmul", 2),
        ("MatMul_", 2),  # matched without case
        (r"^\D", 0),  # every row starts with a digit: \D is not lower-cased into \d
        (r"^\d\.b\S", 2),
        (r"bias\W", 2),
        ("0.b[", 0),  # not a pattern: a substring
    ],
)
def test_filter_takes_the_pattern_as_typed(tmp_path, seq_files, typed, shown):
    server = compare_server(seq_files["safetensors"], seq_files["onnx"])
    assert render_in_node(tmp_path, routes_of(server), typed)["filtered"] == shown


def test_per_tensor_error(tmp_path, seq_files):
    server = compare_server(seq_files["safetensors"], seq_files["perturbed"], atol=1e-2)
    cmp = server.comparison
    assert cmp["verdict"] == "within tolerance"
    diff = next(t for t in cmp["tensors"] if t["a"] == "2.weight")
    assert diff["status"] == "within tolerance"
    assert diff["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    page = render_in_node(tmp_path, routes_of(server), "within")
    assert page["filtered"] == 1 and "0.001" in page["main"]


def test_unmatched_tensors_per_side(tmp_path, seq_files):
    server = compare_server(seq_files["extra"], seq_files["safetensors"])
    cmp = server.comparison
    assert cmp["verdict"] == "different"
    assert [t["name"] for t in cmp["unmatched_a"]] == ["3.weight"] and not cmp["unmatched_b"]
    page = render_in_node(tmp_path, routes_of(server))
    assert "Only in A (1)" in page["main"] and "counts as a difference" in page["main"]
    assert "different" in page["badges"] and "unpaired tensors" in page["main"]


def test_gguf_pairs_carry_their_transform(tmp_path, llama_gguf_pair):
    hf, gguf_path, _ = llama_gguf_pair
    server = compare_server(hf, gguf_path, atol=0.05)
    q = next(t for t in server.comparison["tensors"] if t["a"].endswith("q_proj.weight"))
    assert q["how"] == "gguf" and q["transform"].startswith("llama-rope")
    page = render_in_node(tmp_path, routes_of(server))
    assert q["transform"] in page["main"] and "blk.0.attn_q.weight" in page["main"]
    assert "q8_0" in page["main"]


def test_folded_batchnorm_pairs(tmp_path):
    pt = corpus_path("pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt")
    onnx = corpus_path("onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx")
    server = compare_server(pt, onnx, atol=1e-5)
    folded = [t for t in server.comparison["tensors"] if t["how"] == "folded"]
    assert folded and all(t["status"] in ("equal", "within tolerance") for t in folded)
    page = render_in_node(tmp_path, routes_of(server))
    assert "folded" in page["main"] and "BatchNorm folded into" in page["main"]


def test_remote_side_shows_names_only(tmp_path, seq_files, remote_model):
    a = inspect(seq_files["safetensors"])
    cmp = compare_payload(a, remote_model)
    assert cmp["values_compared"] is False and cmp["verdict"] is None
    assert "B: a remote hf:// model" in cmp["values_note"]
    assert {(t["a"], t["how"]) for t in cmp["tensors"]} == {
        ("0.weight", "exact"),
        ("0.bias", "exact"),
    }
    server = offline(ViewServer(a, other=remote_model, comparison=cmp))
    page = render_in_node(tmp_path, routes_of(server))
    assert "names only" in page["badges"] and "not downloaded" in page["main"]
    assert "No statistics" in page["stats"]


def test_layers_table(tmp_path, seq_files):
    server = compare_server(seq_files["safetensors"], seq_files["pt"], layers=LAYERS)
    page = render_in_node(tmp_path, routes_of(server))
    assert "layers-table" in page["ids"] and "Layer by layer (3)" in page["main"]
    assert "first divergence" in page["main"] and "model.layers.0.mlp (row 1)" in page["main"]
    assert "model.rotary_emb[1]" in page["main"] and "inf" in page["main"]
    assert "1 in A, 0 in B" in page["main"]  # unpaired intermediates


def test_stats_of_both_sides_of_a_pair(tmp_path, seq_files):
    server = compare_server(seq_files["safetensors"], seq_files["onnx"])
    stats_a = server.stats("a", "0.bias")
    page = render_in_node(tmp_path, routes_of(server, **{"/api/stats": stats_a}), click=True)
    assert [u for u in page["requested"] if "stats" in u] == [
        "/api/stats?side=a&name=0.bias",
        "/api/stats?side=b&name=0.bias",
    ]
    assert page["stats"].count("0.bias") == 2 and "A:" in page["stats"]


def test_cli_view_two_models(tmp_path, seq_files):
    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps(LAYERS))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keishiki",
            "view",
            str(seq_files["pt"]),
            str(seq_files["onnx"]),
            "--layers-json",
            str(layers),
            "--no-browser",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stdout.readline()
        assert "(pytorch) vs" in line and "(onnx)" in line
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url + "api/compare", timeout=10) as resp:
            cmp = json.loads(resp.read())
        assert cmp["verdict"] == "identical" and cmp["layers"]["n_pairs"] == 3
        with urllib.request.urlopen(url + "api/info?side=b", timeout=10) as resp:
            assert json.loads(resp.read())["format"] == "onnx"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--layers-json", "{layers}"], "--layers-json needs a second model"),
        (["{b}", "--layers-json", "{missing}"], "cannot read"),
        (["{b}", "--layers-json", "{notjson}"], "is not JSON"),
        (
            ["{b}", "--layers-json", "{wrong}"],
            "is not the output of `keishiki compare A B --layers",
        ),
        (["{b}", "--atol", "-1"], "--atol must be >= 0, got -1.0"),
        (["{b}", "--rtol", "nan"], "--rtol must be >= 0, got nan"),
    ],
)
def test_cli_view_bad_input(tmp_path, seq_files, extra, message):
    files = {
        "layers": tmp_path / "layers.json",
        "missing": tmp_path / "missing.json",
        "notjson": tmp_path / "bad.json",
        "wrong": tmp_path / "wrong.json",
        "b": seq_files["onnx"],
    }
    files["layers"].write_text(json.dumps(LAYERS))
    files["notjson"].write_text("{")
    files["wrong"].write_text(json.dumps({"schema": "keishiki.compare/1", "layers": []}))
    args = [a.format(**files) for a in extra]
    code, _out, err = run_cli("view", seq_files["safetensors"], *args, "--no-browser")
    assert code == 2 and err.startswith("keishiki: error:") and message in err, err
    assert err.count("\n") == 1
