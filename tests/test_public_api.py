"""The public API as a Python caller meets it: the lazy exports and their types, errors that
are also the builtins a caller catches, messages that name parameters (and the CLI's flags
for them), and results that print short and render as escaped tables."""

from __future__ import annotations

import ast
import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import keishiki
from keishiki.cli.app import as_flags
from keishiki.errors import (
    CorruptFile,
    HubError,
    InvalidRequest,
    KeishikiError,
    Mismatch,
    MissingDependency,
    NoConversionPath,
    PathNotFound,
    RuntimeUnavailable,
    UnknownFormat,
    UnsafeFile,
)
from tests.conftest import run_cli

SRC = Path(keishiki.__file__).parent
HOSTILE = "<script>alert(1)</script>"  # a tensor name from a file: text, never markup


def _save(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path


@pytest.fixture
def hostile_st(tmp_path: Path) -> Path:
    """A safetensors file of 30 tensors, one named like an HTML script and one like markup."""
    tensors = {f"layers.{i:02d}.weight": np.full((4, 8), i, np.float32) for i in range(28)}
    tensors[HOSTILE] = np.zeros(3, np.float16)
    tensors["[bold red]x[/]"] = np.zeros(2, np.int8)
    return _save(tmp_path / "model.safetensors", tensors)


# ---- exports -------------------------------------------------------------------------------


def test_type_checkers_see_every_lazy_export():
    """keishiki/__init__.py's TYPE_CHECKING imports name exactly what __getattr__ exports,
    from the same modules, so a type checker sees each with its real type."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    seen = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                for alias in imp.names:
                    assert alias.asname == alias.name  # "X as X": an explicit re-export
                    seen[alias.name] = "keishiki." + (imp.module or "")
    assert seen == keishiki._EXPORTS
    assert keishiki.__all__ == sorted(keishiki._EXPORTS)


@pytest.mark.parametrize("name", keishiki.__all__)
def test_each_export_resolves_and_is_documented(name):
    value = getattr(keishiki, name)
    assert value.__module__.startswith("keishiki.")
    assert (value.__doc__ or "").strip(), f"keishiki.{name} has no docstring"


def test_map_names_is_exported(tmp_path):
    a = _save(tmp_path / "a.safetensors", {"module.w": np.ones((2, 3), np.float32)})
    b = _save(tmp_path / "b.safetensors", {"w": np.ones((2, 3), np.float32)})
    names = keishiki.map_names(keishiki.inspect(a), keishiki.inspect(b))
    assert [(p.a, p.b, p.how) for p in names.pairs] == [("module.w", "w", "prefix")]


def test_py_typed_ships_with_the_package():
    import tomllib

    assert (SRC / "py.typed").is_file()
    config = tomllib.loads((SRC.parent.parent / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["keishiki"]


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error,builtin,exit_code",
    [
        (PathNotFound("m.pt"), FileNotFoundError, 2),
        (InvalidRequest("top_p=0"), ValueError, 2),
        (NoConversionPath("no path from onnx to gguf"), ValueError, 2),
        (MissingDependency("onnx", "onnx", "read ONNX"), ImportError, 2),
        (HubError("org/name: repository not found"), OSError, 2),
        (RuntimeUnavailable("vllm needs a GPU"), RuntimeError, 2),
        (UnknownFormat("m.bin", "gguf"), Exception, 2),
        (CorruptFile("m.gguf", "short read", offset=8), Exception, 2),
        (UnsafeFile("m.pt", "calls os.system"), Exception, 1),
        (Mismatch("differs"), Exception, 1),
    ],
)
def test_errors_are_the_builtin_a_caller_catches(error, builtin, exit_code):
    assert isinstance(error, KeishikiError) and isinstance(error, builtin)
    assert error.exit_code == exit_code
    assert str(error) == error.message and "\n" not in str(error)


def test_file_errors_are_not_value_errors():
    """keishiki's readers catch the ValueError their parsers raise: a file's own verdict
    (corrupt, unknown) must not be caught there."""
    assert not issubclass(CorruptFile, ValueError)
    assert not issubclass(UnknownFormat, (ValueError, OSError))


def test_path_not_found_reads_as_open_does(tmp_path):
    missing = tmp_path / "missing.safetensors"
    for call in (keishiki.inspect, keishiki.identify, keishiki.scan):
        with pytest.raises(FileNotFoundError) as info:
            call(missing)
        assert info.value.filename == str(missing)
        assert info.value.errno == 2
        assert str(info.value) == f"{missing}: no such file or folder"


def test_missing_dependency_is_an_import_error():
    from keishiki._optional import EXTRA_OF

    error = MissingDependency("onnxruntime", "onnx", "run ONNX models")
    assert error.name == "onnxruntime"
    assert str(error) == (
        "onnxruntime is needed to run ONNX models but is not installed: "
        "pip install 'keishiki[onnx]'"
    )
    # vLLM is no keishiki extra: it is installed on its own (it pins its own torch)
    error = MissingDependency("vllm", EXTRA_OF["vllm"], "serve with vLLM")
    assert str(error) == (
        "vllm is needed to serve with vLLM but is not installed: "
        "pip install vllm (in its own environment: it pins its own torch)"
    )


def test_bad_parameters_are_value_errors(tmp_path):
    src = _save(tmp_path / "m.safetensors", {"w": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="`to` must be one of safetensors"):
        keishiki.convert(src, tmp_path / "o", to="tflite")
    with pytest.raises(ValueError, match=re.escape("dtype='int3': use one of")):
        keishiki.convert(src, tmp_path / "o.safetensors", to="safetensors", dtype="int3")
    with pytest.raises(ValueError, match="`atol` must be >= 0"):
        keishiki.convert(src, tmp_path / "o.safetensors", to="safetensors", atol=-1.0)


def test_errors_keep_their_attributes_through_pickle():
    error = pickle.loads(pickle.dumps(InvalidRequest("bad")))
    assert isinstance(error, ValueError) and str(error) == "bad"


# ---- messages: parameters in the library, flags in the CLI ----------------------------------


def test_library_names_the_parameter_the_cli_its_flag(tmp_path):
    src = _save(tmp_path / "m.safetensors", {"w": np.ones(3, np.float32)})
    out = _save(tmp_path / "out.safetensors", {"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError) as info:
        keishiki.convert(src, out, to="safetensors")
    assert str(info.value) == f"{out}: already exists (pass force=True to overwrite)"
    code, stdout, err = run_cli("convert", src, out, "--to", "safetensors")
    assert (code, stdout) == (2, "")
    assert err == f"keishiki: error: {out}: already exists (pass --force to overwrite)\n"


@pytest.mark.parametrize(
    "message,cli",
    [
        (
            "x: already exists (pass force=True to overwrite)",
            "x: already exists (pass --force to overwrite)",
        ),
        ("dtype='int3': use one of float16", "--dtype 'int3': use one of float16"),
        ("quant='int8' for to=gguf: use one of", "--quant 'int8' for --to gguf: use one of"),
        ("pass verify=False and strict=True", "pass --no-verify and --strict"),
        ("needs opset=N and/or external_data=False", "needs --opset N and/or --no-external-data"),
        ("`atol` must be >= 0", "--atol must be >= 0"),
        ("`quant` applies to to=onnx only", "--quant applies to --to onnx only"),
        ("(trust_remote_code=True loads it anyway)", "(--trust-remote-code loads it anyway)"),
        # not a parameter: a name inside a path or a longer word, an unknown name
        ("/tmp/force=True/x and model.to=3", "/tmp/force=True/x and model.to=3"),
        ("forced=1 top_p=0 `name`", "forced=1 top_p=0 `name`"),
    ],
)
def test_cli_maps_parameters_to_flags(message, cli):
    assert as_flags(message) == cli


def test_bad_hub_name_is_one_keishiki_line():
    """InvalidRequest is a ValueError: typer's argument parser must still not turn it into
    a usage error of its own."""
    code, out, err = run_cli("run", "hf://bad..name", "-p", "x")
    assert (code, out) == (2, "")
    assert err.startswith("keishiki: error: hf://bad..name: not an hf:// path")
    assert len(err.splitlines()) == 1


# ---- reprs and tables -------------------------------------------------------------------------


def test_model_info_repr_is_one_short_line(hostile_st):
    info = keishiki.inspect(hostile_st)
    text = repr(info)
    assert text == (
        f"ModelInfo(format='safetensors', tensors=30, params=901, path={str(hostile_st)!r})"
    )
    assert "\n" not in text and len(text) < 100 + len(str(hostile_st))
    assert repr(info.tensor(HOSTILE)) == (
        "TensorInfo(name='<script>alert(1)</script>', dtype='float16', shape=(3,), nbytes=6)"
    )
    lazy = next(info.lazy_tensors())
    assert repr(lazy) == f"LazyTensor({lazy.info!r})"
    assert lazy.load().shape == lazy.info.shape


def test_model_info_counts_read_as_people_write_them(hostile_st):
    info = keishiki.inspect(hostile_st)
    info.tensors = [keishiki.TensorInfo("w", "bfloat16", (4096, 1_645_068), 2)]
    assert "params=6.7B" in repr(info)


def test_model_info_html_is_escaped_and_bounded(hostile_st):
    info = keishiki.inspect(hostile_st)
    info.tensors.sort(key=lambda t: t.name)  # "<script>..." first: among the rows shown
    page = info._repr_html_()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<tr><td>") == 20 and "… 10 more" in page  # the first 20 tensors
    assert "<th>parameters</th><td>901</td>" in page


def _rendered(obj: object) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=200, color_system=None).print(obj)
    return buffer.getvalue()


def test_model_info_renders_as_a_rich_table(hostile_st):
    info = keishiki.inspect(hostile_st)
    info.tensors.sort(key=lambda t: t.name)  # the two hostile names first: among the rows shown
    text = _rendered(info)
    assert text.splitlines()[0] == f"ModelInfo {hostile_st}"
    assert "[bold red]x[/]" in text  # markup in a name stays text
    assert re.search(r"│ layers\.00\.weight\s+│ float32\s+│ \[4, 8\]\s+│ 128 B\s+│", text)
    assert "… 10 more" in text


def test_tensor_info_table_escapes_control_characters():
    tensor = keishiki.TensorInfo("a\x1b[2Jb", "float32", (2, 3), 24, data_offset=8)
    assert "\x1b" not in _rendered(tensor)
    assert "a\\x1b[2Jb" in _rendered(tensor)
    assert "<td>24 B</td>" in tensor._repr_html_()


def test_scan_report_repr_and_tables(tmp_path):
    class Payload:
        def __reduce__(self):
            import os

            return (os.system, ("true",))

    evil = tmp_path / "<script>alert(1)<script>.pkl"  # a file name is text from outside too
    evil.write_bytes(pickle.dumps({"w": Payload()}))
    report = keishiki.scan(evil)
    assert (
        repr(report) == "ScanReport(verdict='dangerous', files=1, dangerous=1, unknown=0, safe=0)"
    )
    assert repr(report.files[0]) == (
        f"FileReport(path={str(evil)!r}, verdict='dangerous', kind='pickle', "
        f"dangerous=1, unknown=0, safe=0)"
    )
    page = report._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<td>dangerous</td><td>posix.system</td>" in page
    text = _rendered(report.files[0])
    assert "posix.system" in text and "dangerous" in text


def test_compare_report_repr_and_tables(tmp_path, hostile_st):
    other = {n: np.asarray(v) for n, v in _arrays(hostile_st).items()}
    other["layers.05.weight"] = other["layers.05.weight"] + np.float32(0.5)
    b = _save(tmp_path / "b.safetensors", other)
    report = keishiki.compare(hostile_st, b, atol=0.1)
    assert repr(report) == (
        f"CompareReport(verdict='different', pairs=30, max_abs_diff=0.5, "
        f"a={str(hostile_st)!r}, b={str(b)!r})"
    )
    page = report._repr_html_()
    assert "<script>" not in page
    # the pair that differs comes first
    assert "<tr><td>layers.05.weight</td><td>layers.05.weight</td><td>exact</td>" in page
    assert "different" in _rendered(report)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_convert_report_repr_and_tables(tmp_path, hostile_st):
    out = tmp_path / "out.safetensors"
    report = keishiki.convert(hostile_st, out, to="safetensors", dtype="float16", quiet=True)
    assert repr(report) == (
        f"ConvertReport(path='safetensors -> safetensors', passed=True, verified=True, "
        f"out={str(out)!r})"
    )
    assert repr(report.steps[0]).startswith(
        "StepReport(edge='safetensors -> safetensors', tensors=30, bytes_written="
    )
    assert "passed (read-back)" in report._repr_html_()
    assert "safetensors -> safetensors" in _rendered(report)
