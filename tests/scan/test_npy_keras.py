"""NumPy and Keras files judged as their loaders read them.

NumPy: every header spelling is judged by numpy's own parser; the table's verdicts are
checked against ``np.load`` itself (``allow_pickle=False`` names object arrays without
unpickling) and, in one subprocess, against ``np.load(allow_pickle=True)`` running the
payloads.  Keras: ``.keras`` zips are written by hand as Keras 3 writes them (keras is not
installed here) with each family of config node that imports or runs code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import keishiki
from keishiki._scan import keras as keras_scan
from keishiki._scan import npy


class _Touch:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _npy(header: str, payload: bytes, version: int = 1) -> bytes:
    enc = "utf8" if version == 3 else "latin1"
    raw = header.encode(enc)
    lenfmt = "<H" if version == 1 else "<I"
    pre = 8 + struct.calcsize(lenfmt)
    raw += b" " * (-(pre + len(raw) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(lenfmt, len(raw)) + raw + payload


def _hdr(descr: str, shape: str = "(1,)") -> str:
    return f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}"


# name -> (header text, version, what np.load makes of it: object | plain | refused)
NPY_CASES = {
    "pipe_O": (_hdr("'|O'"), 1, "object"),
    "bare_O": (_hdr("'O'"), 1, "object"),
    "big_endian_O": (_hdr("'>O'"), 1, "object"),
    "O8": (_hdr("'O8'"), 1, "object"),
    "object_word": (_hdr("'object'"), 1, "object"),
    "double_quoted": ('{"descr": "|O", "fortran_order": False, "shape": (1,), }', 1, "object"),
    "hex_escape": (_hdr(r"'\x4f'"), 1, "object"),
    "unicode_escape": (_hdr(r"'|\u004f'"), 1, "object"),
    "concatenated_literal": (_hdr("'|' 'O'"), 1, "object"),
    "structured_object_field": (_hdr("[('a', '<f4'), ('b', 'O')]"), 1, "object"),
    "nested_object_field": (_hdr("[('a', [('x', '<i4'), ('y', '|O')])]"), 1, "object"),
    "subarray_object_field": (_hdr("[('a', '|O', (2,))]"), 1, "object"),
    "tuple_descr": (_hdr("('|O', (2,))"), 1, "object"),
    "python2_long_shape": (
        "{'descr': '|O', 'fortran_order': False, 'shape': (1L,), }",
        1,
        "object",
    ),
    "version_2": (_hdr("'|O'"), 2, "object"),
    "version_3_utf8": (_hdr("'|O'") + "  # \u00e9", 3, "object"),
    "float": (_hdr("'<f4'"), 1, "plain"),
    "field_named_O": (_hdr("[('O', '<f4')]"), 1, "plain"),
    "fields_named_O_and_object": (_hdr("[('object', '<i8'), ('O', '<f8')]"), 1, "plain"),
    "unicode_dtype": (_hdr("'<U5'"), 1, "plain"),
    "bytes_dtype": (_hdr("'|S3'"), 1, "plain"),
    "unknown_dtype": (_hdr("'Q9'"), 1, "refused"),
    "missing_key": ("{'descr': '|O', 'shape': (1,), }", 1, "refused"),
    "extra_key": ("{'descr': '|O', 'fortran_order': False, 'shape': (1,), 'x': 1, }", 1, "refused"),
    "shape_not_tuple": (_hdr("'|O'", "[1]"), 1, "refused"),
    "not_a_literal": (_hdr("__import__('os')"), 1, "refused"),
    "not_a_dict": ("['|O']", 1, "refused"),
}


def _numpy_verdict(path: Path) -> str:
    """np.load's own answer, without unpickling anything."""
    try:
        np.load(path, allow_pickle=False)
    except ValueError as exc:
        return "object" if "allow_pickle=False" in str(exc) else "refused"
    except Exception:  # noqa: BLE001 - SyntaxError, TypeError...: numpy cannot read it
        return "refused"
    return "plain"


@pytest.fixture(scope="module")
def npy_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("npy")
    out = {}
    for name, (header, version, _kind) in NPY_CASES.items():
        marker = root / f"ran_{name}"
        path = root / f"{name}.npy"
        path.write_bytes(_npy(header, pickle.dumps(_Touch(str(marker)), protocol=2), version))
        out[name] = (path, marker)
    return out


@pytest.mark.parametrize("name", NPY_CASES)
def test_npy_header_verdicts_match_numpy(name, npy_files):
    path, marker = npy_files[name]
    kind = NPY_CASES[name][2]
    assert _numpy_verdict(path) == kind, "the table's expectation is out of date"
    head = npy.read_header(path.read_bytes())
    assert (head.error != "") == (kind == "refused")
    assert head.hasobject == (kind == "object")
    report = keishiki.scan(path)
    expected = {"object": "dangerous", "plain": "safe", "refused": "error"}[kind]
    assert report.verdict == expected, [f.to_dict() for f in report.findings]
    assert not marker.exists()


def test_object_headers_really_unpickle(npy_files, tmp_path):
    """Under np.load(allow_pickle=True) exactly the 'object' rows run their payload."""
    script = (
        "import sys, numpy as np\nfor p in sys.argv[1:]:\n    try:\n"
        "        np.load(p, allow_pickle=True)\n    except Exception:\n        pass\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, *(str(p) for p, _m in npy_files.values())],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    ran = {n for n, (_p, m) in npy_files.items() if m.exists()}
    assert ran == {n for n, (_h, _v, k) in NPY_CASES.items() if k == "object"}
    for _p, m in npy_files.values():
        m.unlink(missing_ok=True)


@pytest.mark.parametrize("variant", ["structured_object_field", "hex_escape", "bare_O"])
def test_npz_member_with_object_dtype(variant, npy_files, tmp_path):
    path = tmp_path / "arrays.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", _npy(NPY_CASES["float"][0], np.zeros(1, "<f4").tobytes()))
        zf.writestr("x.npy", npy_files[variant][0].read_bytes())
    report = keishiki.scan(path)
    assert report.verdict == "dangerous"
    assert any(f.member == "x.npy" and f.severity == "dangerous" for f in report.findings)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_npy_that_is_really_a_pickle(suffix, tmp_path):
    """np.load(allow_pickle=True) unpickles a file with no NumPy or zip magic, even one
    that starts with an opcode other than PROTO (here FRAME)."""
    marker = tmp_path / "ran"
    data = pickle.dumps(_Touch(str(marker)), protocol=4)[2:]  # PROTO dropped: FRAME first
    assert data[:1] == b"\x95"
    path = tmp_path / f"x{suffix}"
    path.write_bytes(data)
    report = keishiki.scan(path)
    assert report.verdict == "dangerous", [f.to_dict() for f in report.findings]
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, numpy as np; np.load(sys.argv[1], allow_pickle=True)",
            str(path),
        ],
        capture_output=True,
        timeout=60,
    )
    assert marker.exists(), "numpy did not unpickle it: the test proves nothing"


def test_real_numpy_files_are_safe(tmp_path):
    rec = np.zeros(3, dtype=[("O", "<f4"), ("b", "<i8")])
    for name, arr in {"f": np.arange(5.0), "rec": rec, "u": np.array(["ab"])}.items():
        np.save(tmp_path / f"{name}.npy", arr)
        assert keishiki.scan(tmp_path / f"{name}.npy").verdict == "safe"
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    head = npy.read_header((tmp_path / "obj.npy").read_bytes())
    assert head.hasobject and head.descr == "object"


# ---- Keras ---------------------------------------------------------------------------------


def _layer(
    cls: str,
    config: dict | None = None,
    module: str = "keras.layers",
    registered: str | None = None,
) -> dict:
    return {
        "module": module,
        "class_name": cls,
        "config": {"name": cls.lower(), **(config or {})},
        "registered_name": registered,
    }


_LAMBDA = _layer(
    "Lambda",
    {
        "function": {
            "class_name": "__lambda__",
            "config": {"code": "4wEAAAAAAAAAAAAAAAEAAAAD", "defaults": None, "closure": None},
        },
        "arguments": {},
    },
)
_INPUT = _layer("InputLayer", {"batch_shape": [None, 4], "dtype": "float32"})


def _fn(module: str, name: str) -> dict:
    """Keras 3's serialization of a function object: imported from ``module`` by name."""
    return {
        "module": module,
        "class_name": "function",
        "config": name,
        "registered_name": "function",
    }


def _dense(**config) -> dict:
    base = {
        "units": 2,
        "activation": "relu",
        "kernel_initializer": {
            "module": "keras.initializers",
            "class_name": "GlorotUniform",
            "config": {"seed": None},
            "registered_name": None,
        },
        "kernel_regularizer": {
            "module": "keras.regularizers",
            "class_name": "L2",
            "config": {"l2": 0.01},
            "registered_name": None,
        },
    }
    return _layer("Dense", {**base, **config})


def _sequential(*layers) -> dict:
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "seq", "trainable": True, "layers": [_INPUT, *layers]},
        "registered_name": None,
        "build_config": {"input_shape": [None, 4]},
        "compile_config": {
            "optimizer": {
                "module": "keras.optimizers",
                "class_name": "Adam",
                "config": {"learning_rate": 0.001},
                "registered_name": None,
            },
            "loss": "mean_squared_error",
        },
    }


def _functional(*layers) -> dict:
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {
            "name": "f",
            "layers": [_INPUT, *layers],
            "input_layers": [["input", 0, 0]],
            "output_layers": [[layers[-1]["config"]["name"], 0, 0]],
        },
        "registered_name": "Functional",
    }


# config.json of models saved by Keras 3.8 (Sequential: Dense+L2, Dropout, BatchNormalization,
# Adam; Functional: a shared Dense, a nested Sequential, Add)
REAL_SEQUENTIAL = json.loads(r"""
{"module":"keras","class_name":"Sequential","config":{"name":"seq","trainable":true,
"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"float32"},
"registered_name":null,"shared_object_id":140101885799312},
"layers":[{"module":"keras.layers","class_name":"InputLayer",
"config":{"batch_shape":[null,4],"dtype":"float32","sparse":false,"name":"input_layer"},
"registered_name":null},{"module":"keras.layers","class_name":"Dense",
"config":{"name":"dense","trainable":true,"dtype":{"module":"keras",
"class_name":"DTypePolicy","config":{"name":"float32"},"registered_name":null},"units":3,
"activation":"relu","use_bias":true,"kernel_initializer":{"module":"keras.initializers",
"class_name":"GlorotUniform","config":{"seed":null},"registered_name":null},
"bias_initializer":{"module":"keras.initializers","class_name":"Zeros","config":{},
"registered_name":null},"kernel_regularizer":{"module":"keras.regularizers",
"class_name":"L2","config":{"l2":0.01},"registered_name":null},"bias_regularizer":null,
"kernel_constraint":null,"bias_constraint":null},"registered_name":null,
"build_config":{"input_shape":[null,4]}},{"module":"keras.layers","class_name":"Dropout",
"config":{"name":"dropout","trainable":true,"dtype":{"module":"keras",
"class_name":"DTypePolicy","config":{"name":"float32"},"registered_name":null,
"shared_object_id":140101885799312},"rate":0.1,"seed":null,"noise_shape":null},
"registered_name":null},{"module":"keras.layers","class_name":"BatchNormalization",
"config":{"name":"batch_normalization","trainable":true,"dtype":{"module":"keras",
"class_name":"DTypePolicy","config":{"name":"float32"},"registered_name":null,
"shared_object_id":140101885799312},"axis":-1,"momentum":0.99,"epsilon":0.001,
"center":true,"scale":true,"beta_initializer":{"module":"keras.initializers",
"class_name":"Zeros","config":{},"registered_name":null},
"gamma_initializer":{"module":"keras.initializers","class_name":"Ones","config":{},
"registered_name":null},"moving_mean_initializer":{"module":"keras.initializers",
"class_name":"Zeros","config":{},"registered_name":null},
"moving_variance_initializer":{"module":"keras.initializers","class_name":"Ones",
"config":{},"registered_name":null},"beta_regularizer":null,"gamma_regularizer":null,
"beta_constraint":null,"gamma_constraint":null,"synchronized":false},
"registered_name":null,"build_config":{"input_shape":[null,3]}},{"module":"keras.layers",
"class_name":"Dense","config":{"name":"dense_1","trainable":true,
"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"float32"},
"registered_name":null,"shared_object_id":140101885799312},"units":2,
"activation":"linear","use_bias":true,"kernel_initializer":{"module":"keras.initializers",
"class_name":"GlorotUniform","config":{"seed":null},"registered_name":null},
"bias_initializer":{"module":"keras.initializers","class_name":"Zeros","config":{},
"registered_name":null},"kernel_regularizer":null,"bias_regularizer":null,
"kernel_constraint":null,"bias_constraint":null},"registered_name":null,
"build_config":{"input_shape":[null,3]}}],"build_input_shape":[null,4]},
"registered_name":null,"build_config":{"input_shape":[null,4]},
"compile_config":{"optimizer":{"module":"keras.src.backend.torch.optimizers.torch_adam",
"class_name":"Adam","config":{"name":"adam","learning_rate":0.0010000000474974513,
"weight_decay":null,"clipnorm":null,"global_clipnorm":null,"clipvalue":null,
"use_ema":false,"ema_momentum":0.99,"ema_overwrite_frequency":null,
"loss_scale_factor":null,"gradient_accumulation_steps":null,"beta_1":0.9,"beta_2":0.999,
"epsilon":1e-07,"amsgrad":false},"registered_name":"Adam"},"loss":"mse",
"loss_weights":null,"metrics":null,"weighted_metrics":null,"run_eagerly":false,
"steps_per_execution":1,"jit_compile":false}}
""")

REAL_FUNCTIONAL = json.loads(r"""
{"module":"keras.src.models.functional","class_name":"Functional","config":{"name":"fn",
"trainable":true,"layers":[{"module":"keras.layers","class_name":"InputLayer",
"config":{"batch_shape":[null,4],"dtype":"float32","sparse":false,"name":"x"},
"registered_name":null,"name":"x","inbound_nodes":[]},{"module":"keras",
"class_name":"Sequential","config":{"name":"sub","trainable":true,
"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"float32"},
"registered_name":null,"shared_object_id":140101885799312},
"layers":[{"module":"keras.layers","class_name":"InputLayer",
"config":{"batch_shape":[null,4],"dtype":"float32","sparse":false,"name":"input_layer_1"},
"registered_name":null},{"module":"keras.layers","class_name":"Dense",
"config":{"name":"inner","trainable":true,"dtype":{"module":"keras",
"class_name":"DTypePolicy","config":{"name":"float32"},"registered_name":null},"units":4,
"activation":"linear","use_bias":true,"kernel_initializer":{"module":"keras.initializers",
"class_name":"GlorotUniform","config":{"seed":null},"registered_name":null},
"bias_initializer":{"module":"keras.initializers","class_name":"Zeros","config":{},
"registered_name":null},"kernel_regularizer":null,"bias_regularizer":null,
"kernel_constraint":null,"bias_constraint":null},"registered_name":null,
"build_config":{"input_shape":[null,4]}}],"build_input_shape":[null,4]},
"registered_name":null,"build_config":{"input_shape":[null,4]},"name":"sub",
"inbound_nodes":[{"args":[{"class_name":"__keras_tensor__","config":{"shape":[null,4],
"dtype":"float32","keras_history":["x",0,0]}}],"kwargs":{"mask":null}}]},
{"module":"keras.layers","class_name":"Dense","config":{"name":"shared","trainable":true,
"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"float32"},
"registered_name":null,"shared_object_id":140101885799312},"units":4,"activation":"tanh",
"use_bias":true,"kernel_initializer":{"module":"keras.initializers",
"class_name":"GlorotUniform","config":{"seed":null},"registered_name":null},
"bias_initializer":{"module":"keras.initializers","class_name":"Zeros","config":{},
"registered_name":null},"kernel_regularizer":null,"bias_regularizer":null,
"kernel_constraint":null,"bias_constraint":null},"registered_name":null,
"build_config":{"input_shape":[null,4]},"name":"shared",
"inbound_nodes":[{"args":[{"class_name":"__keras_tensor__","config":{"shape":[null,4],
"dtype":"float32","keras_history":["x",0,0]}}],"kwargs":{}},
{"args":[{"class_name":"__keras_tensor__","config":{"shape":[null,4],"dtype":"float32",
"keras_history":["sub",0,0]}}],"kwargs":{}}]},{"module":"keras.layers","class_name":"Add",
"config":{"name":"add","trainable":true,"dtype":{"module":"keras",
"class_name":"DTypePolicy","config":{"name":"float32"},"registered_name":null,
"shared_object_id":140101885799312}},"registered_name":null,
"build_config":{"input_shape":[[null,4],[null,4]]},"name":"add",
"inbound_nodes":[{"args":[[{"class_name":"__keras_tensor__","config":{"shape":[null,4],
"dtype":"float32","keras_history":["shared",0,0]}},{"class_name":"__keras_tensor__",
"config":{"shape":[null,4],"dtype":"float32","keras_history":["shared",1,0]}}]],
"kwargs":{}}]},{"module":"keras.layers","class_name":"Dense","config":{"name":"head",
"trainable":true,"dtype":{"module":"keras","class_name":"DTypePolicy",
"config":{"name":"float32"},"registered_name":null,"shared_object_id":140101885799312},
"units":1,"activation":"linear","use_bias":true,
"kernel_initializer":{"module":"keras.initializers","class_name":"GlorotUniform",
"config":{"seed":null},"registered_name":null},
"bias_initializer":{"module":"keras.initializers","class_name":"Zeros","config":{},
"registered_name":null},"kernel_regularizer":null,"bias_regularizer":null,
"kernel_constraint":null,"bias_constraint":null},"registered_name":null,
"build_config":{"input_shape":[null,4]},"name":"head",
"inbound_nodes":[{"args":[{"class_name":"__keras_tensor__","config":{"shape":[null,4],
"dtype":"float32","keras_history":["add",0,0]}}],"kwargs":{}}]}],"input_layers":[["x",0,
0]],"output_layers":[["head",0,0]]},"registered_name":"Functional",
"build_config":{"input_shape":null}}
""")


def _with_lambda_in_submodel(config: dict) -> dict:
    """The real functional model with a Lambda appended to its nested Sequential."""
    config = json.loads(json.dumps(config))
    sub = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Sequential")
    sub["config"]["layers"].append(_LAMBDA)
    return config


KERAS_CASES = {
    "lambda_layer": ("dangerous", _sequential(_LAMBDA)),
    "lambda_in_nested_submodel": (
        "dangerous",
        _functional(_dense(), _sequential(_dense(), _LAMBDA)),
    ),
    "lambda_in_wrapper": ("dangerous", _sequential(_layer("TimeDistributed", {"layer": _LAMBDA}))),
    "lambda_registered_name_only": (
        "dangerous",
        _sequential(
            {
                "class_name": "CustomName",
                "registered_name": "keras.layers>Lambda",
                "config": {"name": "x"},
            }
        ),
    ),
    "keras2_function_type_lambda": (
        "dangerous",
        {
            "class_name": "Model",
            "config": {
                "layers": [
                    {
                        "class_name": "MyMap",
                        "config": {
                            "name": "m",
                            "function": ["4wEAAAA=", None, None],
                            "function_type": "lambda",
                        },
                    }
                ]
            },
        },
    ),
    "serialized_function_object": (
        "dangerous",
        _sequential(
            _dense(activation={"class_name": "__lambda__", "config": {"code": "4wEAAAA="}})
        ),
    ),
    "module_os_system_activation": (
        "dangerous",
        _sequential(_dense(activation=_fn("os", "system"))),
    ),
    "module_subprocess_top_level": (
        "dangerous",
        {
            "module": "subprocess",
            "class_name": "Popen",
            "config": {"args": ["true"]},
            "registered_name": None,
        },
    ),
    "builtins_exec_function": (
        "dangerous",
        _sequential(_dense(activation=_fn("builtins", "exec"))),
    ),
    "enable_unsafe_deserialization": (
        "dangerous",
        _sequential(
            _dense(activation=_fn("keras.config", "enable_unsafe_deserialization")), _LAMBDA
        ),
    ),
    "enable_unsafe_deserialization_src": (
        "dangerous",
        _sequential(
            _dense(
                activation=_fn(
                    "keras.src.saving.serialization_lib", "enable_unsafe_deserialization"
                )
            )
        ),
    ),
    "get_file": ("dangerous", _sequential(_dense(activation=_fn("keras.utils", "get_file")))),
    "legacy_saving_loader": (
        "dangerous",
        _sequential(
            _dense(
                activation=_fn("keras.src.legacy.saving.legacy_h5_format", "load_model_from_hdf5")
            )
        ),
    ),
    "func_load": (
        "dangerous",
        _sequential(_dense(activation=_fn("keras.src.utils.python_utils", "func_load"))),
    ),
    "tfsm_layer": ("dangerous", _sequential(_layer("TFSMLayer", {"filepath": "/tmp/sm"}))),
    "string_lookup_vocabulary_path": (
        "dangerous",
        _sequential(_layer("StringLookup", {"vocabulary": "/etc/passwd"})),
    ),
    "tf_op_lambda_write_file": (
        "dangerous",
        _sequential(
            {"class_name": "TFOpLambda", "config": {"name": "w", "function": "io.write_file"}}
        ),
    ),
    "custom_module_layer": ("unknown", _sequential(_layer("MyLayer", module="my_pkg.layers"))),
    "custom_registered_layer": (
        "unknown",
        _sequential({"class_name": "MyLayer", "registered_name": "my_pkg>MyLayer", "config": {}}),
    ),
    "plain_model": ("safe", _sequential(_dense(), _dense(activation=_fn("builtins", "relu")))),
    "functional_model": ("safe", _functional(_dense(), _layer("Dropout", {"rate": 0.5}))),
    "tf_op_lambda_math": (
        "safe",
        _sequential({"class_name": "TFOpLambda", "config": {"name": "a", "function": "math.add"}}),
    ),
    "string_lookup_inline_vocabulary": (
        "safe",
        _sequential(_layer("StringLookup", {"vocabulary": ["a", "b"]})),
    ),
    "layer_merely_named_lambda": ("safe", _sequential(_dense(name="lambda"))),
    "keras_3_8_sequential": ("safe", REAL_SEQUENTIAL),
    "keras_3_8_functional": ("safe", REAL_FUNCTIONAL),
    "keras_3_8_functional_lambda_in_submodel": (
        "dangerous",
        _with_lambda_in_submodel(REAL_FUNCTIONAL),
    ),
}


def _keras_zip(
    path: Path,
    config: dict,
    members=("metadata.json", "model.weights.h5"),
    config_name: str = "config.json",
) -> Path:
    with zipfile.ZipFile(path, "w") as zf:  # the members Keras 3's saving_lib writes
        zf.writestr(config_name, json.dumps(config))
        if "metadata.json" in members:
            zf.writestr(
                "metadata.json",
                json.dumps({"keras_version": "3.12.0", "date_saved": "2026-01-01@00:00:00"}),
            )
        if "model.weights.h5" in members:
            zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    return path


@pytest.mark.parametrize("name", KERAS_CASES)
@pytest.mark.parametrize(
    "members", [("metadata.json", "model.weights.h5"), ()], ids=["full", "config_only"]
)
def test_keras_config_verdicts(name, members, tmp_path):
    expected, config = KERAS_CASES[name]
    path = _keras_zip(tmp_path / "m.keras", config, members)
    report = keishiki.scan(path)
    assert report.verdict == expected, [f.to_dict() for f in report.findings]
    if expected != "safe":
        assert any(
            f.member == "config.json" and f.opcode == "keras-config" for f in report.findings
        )


@pytest.mark.parametrize(
    "name",
    ["lambda_layer", "module_os_system_activation", "enable_unsafe_deserialization", "plain_model"],
)
def test_keras_h5_model_config(name, tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as fh:
        fh.attrs["model_config"] = json.dumps(KERAS_CASES[name][1])
        fh.attrs["keras_version"] = "2.15.0"
    assert keishiki.scan(path).verdict == KERAS_CASES[name][0]


def test_upper_case_config_name_is_judged(tmp_path):
    path = _keras_zip(
        tmp_path / "m.keras", KERAS_CASES["lambda_layer"][1], (), config_name="CONFIG.JSON"
    )
    assert keishiki.scan(path).verdict == "dangerous"


def test_oversized_config_is_not_safe():
    config = {"layers": [{"class_name": "Dense"}] * (keras_scan.MAX_NODES // 2 + 10)}
    findings = keras_scan.config_findings(config)
    assert any(sev == "unknown" and "not judged" in reason for sev, _s, reason in findings)


def test_keras_h5_training_config_is_judged(tmp_path):
    """load_model(compile=True) deserializes the loss and optimizer of ``training_config``."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as fh:
        fh.attrs["model_config"] = json.dumps(KERAS_CASES["plain_model"][1])
        fh.attrs["training_config"] = json.dumps(
            {"loss": _fn("os", "system"), "optimizer_config": {"class_name": "Adam"}}
        )
    report = keishiki.scan(path)
    assert report.verdict == "dangerous"
    assert any(f.global_ == "os.system" for f in report.findings)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_npz_members_compressed_as_only_zipfile_reads_them(method, npy_files, tmp_path):
    """np.load reads .npz members through zipfile, which also expands bzip2 and LZMA."""
    path = tmp_path / "arrays.npz"
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("x.npy", npy_files["pipe_O"][0].read_bytes())
    assert np.load(path, allow_pickle=False).files == ["x"]  # numpy reads this layout
    report = keishiki.scan(path)
    assert report.verdict == "dangerous", report.files[0].errors


def test_npz_with_a_pickle_in_front_of_the_zip(tmp_path):
    """np.load tests only the first bytes: a pickle with a zip behind it is unpickled (the
    zip directory still parses, so zip tools and zip-first scanners see an innocent .npz)."""
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(2))
    path = tmp_path / "arrays.npz"
    path.write_bytes(pickle.dumps(_Touch(str(marker)), protocol=4)[2:] + buf.getvalue())
    assert zipfile.ZipFile(path).namelist() == ["w.npy"]
    assert keishiki.scan(path).verdict == "dangerous"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, numpy as np; np.load(sys.argv[1], allow_pickle=True)",
            str(path),
        ],
        capture_output=True,
        timeout=60,
    )
    assert marker.exists()


@pytest.mark.parametrize(
    "name,expected",
    [
        ("lambda_layer", "dangerous"),
        ("keras2_function_type_lambda", "dangerous"),
        ("keras_3_8_sequential", "safe"),
    ],
)
def test_keras_h5_without_h5py_falls_back_to_the_bytes(name, expected, tmp_path, monkeypatch):
    """Without h5py the attribute text is searched in the file's bytes, any JSON spacing."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as fh:
        fh.attrs["model_config"] = json.dumps(KERAS_CASES[name][1], indent=1)
    monkeypatch.setattr(keras_scan, "h5_config", lambda _path: (None, None))
    assert keishiki.scan(path).verdict == expected


@pytest.mark.parametrize(
    "how, where, verdict",
    [
        ("external_link", "inside", "safe"),
        ("external_link", "outside", "dangerous"),
        ("external_storage", "outside", "dangerous"),
        ("virtual_source", "outside", "dangerous"),
    ],
)
def test_hdf5_references_are_judged_by_the_path_gate(tmp_path, how, where, verdict):
    """h5py follows external links, external storage and virtual-dataset sources when Keras
    reads a weight: like ONNX external data, a reference out of the folder is dangerous."""
    h5py = pytest.importorskip("h5py")
    folder = tmp_path / "model"
    folder.mkdir()
    other = (folder if where == "inside" else tmp_path) / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("kernel", data=np.ones((2, 2), np.float32))
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\0" * 16)
    path = folder / "weights.h5"
    with h5py.File(path, "w") as f:
        if how == "external_link":
            f["kernel"] = h5py.ExternalLink(
                str(other) if where == "outside" else "other.h5", "/kernel"
            )
        elif how == "external_storage":
            f.create_dataset("kernel", shape=(2, 2), dtype="<f4", external=[(str(raw), 0, 16)])
        else:
            layout = h5py.VirtualLayout(shape=(2, 2), dtype="<f4")
            layout[:] = h5py.VirtualSource(str(other), "kernel", shape=(2, 2))
            f.create_virtual_dataset("kernel", layout)
    report = keishiki.scan(path)
    assert report.verdict == verdict
    (finding,) = [f for f in report.findings if f.opcode == "hdf5-reference"]
    assert finding.member == "kernel" and finding.severity == verdict
