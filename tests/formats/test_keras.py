"""keras-h5 and keras (.keras zip): facts.json golden values, h5py as the reference for values,
Lambda layers flagged, links to other files not followed, bad input."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from keishiki import inspect
from keishiki.formats import identify
from tests.conftest import FACTS, corpus_path, facts_where, run_cli

h5py = pytest.importorskip("h5py")

H5_CASES = facts_where(lambda f: f.get("format") == "keras h5")
KERAS_CASES = facts_where(lambda f: f.get("format") == "keras v3 (.keras zip)")
H5_KEYS = (
    "top_level",
    "root_attrs",
    "keras_version",
    "backend",
    "model_class",
    "n_layers_in_config",
    "layer_classes",
    "n_datasets_total",
    "n_weight_datasets",
    "weight_param_count",
    "has_optimizer_weights",
)


@pytest.mark.parametrize("rel", H5_CASES)
def test_keras_h5_corpus_facts(rel):
    facts, path = FACTS[rel], corpus_path(rel)
    info = inspect(path)
    assert info.format == "keras-h5" and info.variant is None
    details = info.details["keras-h5"]
    for key in H5_KEYS:
        assert details[key] == facts[key], key
    listed = [f"{t.name}:{t.dtype}{list(t.shape)}" for t in info.tensors]
    assert listed[: len(facts["datasets_first"])] == facts["datasets_first"]
    assert info.n_parameters == facts["weight_param_count"]
    assert info.format_version == facts["keras_version"]
    with h5py.File(path, "r") as ref:
        for lazy in info.lazy_tensors():
            np.testing.assert_array_equal(lazy.load(), ref[lazy.name][()])
            if lazy.info.data_offset is not None:  # contiguous: the offset is the bytes' place
                raw = path.read_bytes()[lazy.info.data_offset :][: lazy.info.nbytes]
                assert raw == ref[lazy.name][()].tobytes()


@pytest.mark.parametrize("rel", KERAS_CASES)
def test_keras_v3_corpus_facts(rel):
    facts, path = FACTS[rel], corpus_path(rel)
    info = inspect(path)
    details = info.details["keras"]
    assert info.format == "keras" and info.format_version == facts["keras_version"]
    assert details["zip_members"] == facts["zip_members"]
    assert details["model_class"] == "Functional"
    assert details["layer_classes"] == {"InputLayer": 1, "Dense": 2, "BatchNormalization": 1}
    # the same weights as the legacy .h5 saved from the same model: 8 datasets, 259 values
    assert (info.n_tensors, info.n_parameters) == (8, 259)
    assert details["n_datasets_total"] == 22 and details["has_optimizer_weights"]
    with zipfile.ZipFile(path) as zf, h5py.File(zf.open("model.weights.h5"), "r") as ref:
        for lazy in info.lazy_tensors():
            np.testing.assert_array_equal(lazy.load(), ref[lazy.name][()])


def _model_config(lambda_layer: bool) -> dict:
    layers = [
        {"class_name": "InputLayer", "config": {"name": "x"}},
        {"class_name": "Dense", "config": {"name": "d"}},
    ]
    if lambda_layer:  # Keras 2 style: marshalled bytecode, base64, in "function"
        layers.append(
            {
                "class_name": "Lambda",
                "config": {
                    "name": "evil",
                    "function": [
                        "4wEAAAAAAAAAAQAAAAQAAABDAAAAcwQAAAB8AFMAKQFOqQCpAdoBeHIC",
                        None,
                        None,
                    ],
                    "function_type": "lambda",
                },
            }
        )
    return {"class_name": "Sequential", "config": {"name": "m", "layers": layers}}


def _write_keras_h5(path, lambda_layer=False, userblock=0):
    kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
    with h5py.File(path, "w", userblock_size=userblock) as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(_model_config(lambda_layer))
        f.create_dataset("model_weights/d/d/kernel:0", data=kernel)
        f.create_dataset(
            "model_weights/d/d/bias:0", data=np.ones(3, np.float32), chunks=(3,), compression="gzip"
        )
        f.create_dataset("optimizer_weights/adam/iter:0", data=np.int64(7))
    return kernel


def test_lambda_layer_flagged(tmp_path):
    p = tmp_path / "lambda.h5"
    _write_keras_h5(p, lambda_layer=True)
    info = inspect(p)
    details = info.details["keras-h5"]
    assert details["lambda_layers"] == [{"name": "evil", "function": "python bytecode"}]
    assert any("Lambda" in w and "evil" in w for w in info.warnings)
    assert details["layer_classes"] == {"InputLayer": 1, "Dense": 1, "Lambda": 1}


def test_userblock_chunked_and_optimizer_split(tmp_path):
    p = tmp_path / "ub.h5"
    kernel = _write_keras_h5(p, userblock=512)
    assert p.read_bytes()[512:520] == b"\x89HDF\r\n\x1a\n"
    info = inspect(p)
    assert [t.name for t in info.tensors] == [
        "model_weights/d/d/bias:0",
        "model_weights/d/d/kernel:0",
    ]
    assert info.tensor("model_weights/d/d/bias:0").data_offset is None  # chunked + gzip
    np.testing.assert_array_equal(
        info.tensor_loader(info.tensor("model_weights/d/d/kernel:0")), kernel
    )
    details = info.details["keras-h5"]
    assert details["n_datasets_total"] == 3 and details["n_weight_datasets"] == 2
    assert details["has_optimizer_weights"] and not details["lambda_layers"]


def test_plain_hdf5_is_variant_hdf5_and_links_not_followed(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["secret"] = np.arange(4)
    p = tmp_path / "plain.h5"
    with h5py.File(p, "w") as f:
        f["a/b"] = np.zeros((2, 2), np.float16)
        f["link"] = h5py.ExternalLink(str(other), "/secret")
        f["soft"] = h5py.SoftLink("/a/b")
    info = inspect(p)
    assert (info.format, info.variant) == ("keras-h5", "hdf5")
    assert [t.name for t in info.tensors] == ["a/b"]
    assert sorted(info.details["keras-h5"]["skipped_links"]) == ["link", "soft"]


def _write_dot_keras(path, lambda_layer=False, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["layers/dense/vars/0"] = np.full((2, 3), 0.5, np.float32)
        f["optimizer/vars/0"] = np.int64(1)
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.3.3"}))
        zf.writestr("config.json", json.dumps(_model_config(lambda_layer)))
        zf.writestr("model.weights.h5", buf.getvalue())


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_dot_keras_built_here(tmp_path, compression):
    p = tmp_path / "m.keras"
    _write_dot_keras(p, lambda_layer=True, compression=compression)
    assert identify(p).format == "keras"
    info = inspect(p)
    assert [t.name for t in info.tensors] == ["layers/dense/vars/0"]
    np.testing.assert_array_equal(info.tensor_loader(info.tensors[0]), np.full((2, 3), 0.5))
    assert info.details["keras"]["lambda_layers"][0]["name"] == "evil"
    assert any("Lambda" in w for w in info.warnings)


def test_dot_keras_with_broken_weights(tmp_path):
    p = tmp_path / "broken.keras"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    code, _, err = run_cli("info", p)
    assert code == 2 and "corrupt" in err and "Traceback" not in err


@pytest.mark.parametrize("cut", [8, 600, 2000])
def test_truncated_h5(tmp_path, cut):
    full = tmp_path / "full.h5"
    _write_keras_h5(full)
    p = tmp_path / "cut.h5"
    p.write_bytes(full.read_bytes()[:cut])
    code, out, err = run_cli("info", p)
    assert code == 2 and "corrupt" in err and "Traceback" not in err and err.count("\n") == 1


def test_group_hard_linked_into_itself_is_bounded(tmp_path):
    p = tmp_path / "cycle.h5"
    with h5py.File(p, "w") as f:
        group = f.create_group("g")
        group["w"] = np.ones(2, np.float32)
        group["again"] = group  # a hard link back to the group: an endless tree
    code, _, err = run_cli("info", p)
    assert code == 2 and "nested deeper" in err and "Traceback" not in err
