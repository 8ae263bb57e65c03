"""The `pickle` format: plain pickle streams and joblib.dump files, identified strictly,
read by the restricted VM (joblib's inline arrays as tensors), never loaded."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

from keishiki import inspect
from keishiki.core.pickle_reader import read_pickle
from keishiki.errors import CorruptFile, KeishikiError, UnknownFormat
from keishiki.formats import identify
from tests.conftest import run_cli


class Estimator:
    """Stands in for a fitted scikit-learn model (attributes ending in _)."""

    def __init__(self):
        self.coef_ = np.arange(6, dtype=np.float32).reshape(2, 3)
        self.intercept_ = np.array([0.5, -0.5])
        self.classes_ = np.array(["a", "b"])  # unicode: not numeric, not listed
        self.n_iter_ = 7


@pytest.mark.parametrize("protocol", range(6))
def test_plain_pickles(tmp_path, protocol):
    path = tmp_path / "obj.pkl"
    path.write_bytes(
        pickle.dumps({"a": [1, 2], "od": collections.OrderedDict(x=1)}, protocol=protocol)
    )
    assert identify(path).format == "pickle"
    info = inspect(path)
    d = info.details["pickle"]
    assert d["root_type"] == "builtins.dict" and "collections.OrderedDict" in d["globals"]
    assert d["protocol"] == (protocol if protocol >= 2 else 0)
    assert info.n_tensors == 0 and info.variant is None


def test_garbage_is_not_a_pickle(tmp_path):
    for i, data in enumerate(
        [
            b"\x80\x02garbage here",
            b"(random text, not a pickle)\n",
            b"\x80\x09N.",
            b"N",
            b"]]]]",
            os.urandom(200),
        ]
    ):
        path = tmp_path / f"g{i}.bin"
        path.write_bytes(data)
        try:
            match = identify(path)
        except UnknownFormat:
            continue
        assert match.format != "pickle", data


def test_truncated_pickle_is_an_error(tmp_path):
    data = pickle.dumps({"a": list(range(100))}, protocol=4)
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(KeishikiError):
        inspect(path)
    code, _, err = run_cli("info", path)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_payload_is_named_not_run(tmp_path):
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ok": 1, "x": Payload()}, protocol=2))
    info = inspect(path)
    assert f"{os.system.__module__}.system" in info.details["pickle"]["globals"]
    assert not marker.exists()


@pytest.fixture(scope="module")
def joblib_file(tmp_path_factory):
    joblib = pytest.importorskip("joblib")
    path = tmp_path_factory.mktemp("joblib") / "model.joblib"
    obj = {
        "model": Estimator(),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "big_endian": np.arange(4, dtype=">i4"),
        "empty": np.zeros((0, 2)),
        "objects": np.array([1, "x", None], dtype=object),
        "scalar": np.float64(2.5),
    }
    joblib.dump(obj, path)
    return path, obj


def test_joblib_arrays_are_tensors(joblib_file):
    import joblib

    path, obj = joblib_file
    assert identify(path).format == "pickle"
    info = inspect(path)
    assert info.variant == "joblib" and info.details["pickle"]["joblib"] is True
    listed = {t.name: (t.dtype, t.shape) for t in info.tensors}
    assert listed == {
        "model.coef_": ("float32", (2, 3)),
        "model.intercept_": ("float64", (2,)),
        "fortran": ("float64", (3, 4)),
        "big_endian": ("int32", (4,)),
        "empty": ("float64", (0, 2)),
    }
    loaded = joblib.load(path)
    expected = {
        "model.coef_": loaded["model"].coef_,
        "model.intercept_": loaded["model"].intercept_,
        "fortran": obj["fortran"],
        "big_endian": obj["big_endian"],
        "empty": obj["empty"],
    }
    for lazy in info.lazy_tensors():
        got = lazy.load()
        assert got.flags["C_CONTIGUOUS"] and got.dtype.isnative
        assert np.array_equal(got, expected[lazy.name]), lazy.name
    assert "test_pickle_format.Estimator" in " ".join(info.details["pickle"]["globals"])


def test_joblib_object_array_payload_is_seen(tmp_path):
    """A payload hidden in an object array (joblib's nested pickle) is still recorded."""
    joblib = pytest.importorskip("joblib")
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.joblib"
    joblib.dump({"w": np.ones(3), "objs": np.array([Payload()], dtype=object)}, path)
    rec = read_pickle(path.read_bytes(), joblib_arrays=True)
    assert f"{os.system.__module__}.system" in {g.qualname for g in rec.globals}
    nested = [a for a in rec.inline_arrays if a.nested is not None]
    assert len(nested) == 1
    info = inspect(path)
    assert f"{os.system.__module__}.system" in info.details["pickle"]["globals"]
    assert [t.name for t in info.tensors] == ["w"]
    assert not marker.exists()


def test_joblib_plain_reading_differs(joblib_file):
    """pickle.load would run the inline array bytes as opcodes: plain mode fails or differs."""
    path, _ = joblib_file
    data = path.read_bytes()
    joblib_rec = read_pickle(data, joblib_arrays=True)
    assert joblib_rec.end == len(data)
    plain = read_pickle(data, lenient=True)
    # it fails: joblib's padding byte before the first inline array is no pickle opcode
    assert plain.error is not None and plain.error.startswith("unknown opcode")
    assert plain.error_offset < joblib_rec.inline_arrays[0].offset


def test_joblib_truncated_array(joblib_file, tmp_path):
    path, _ = joblib_file
    data = path.read_bytes()
    rec = read_pickle(data, joblib_arrays=True)
    last = rec.inline_arrays[-1]
    cut = tmp_path / "cut.joblib"
    cut.write_bytes(
        data[: last.offset + last.nbytes // 2 + 1] if last.nbytes else data[: last.offset]
    )
    with pytest.raises(CorruptFile):
        read_pickle(cut.read_bytes(), joblib_arrays=True)
