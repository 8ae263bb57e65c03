"""`import keishiki` and inspecting non-graph formats load no heavy library."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import corpus_path

HEAVY = ["torch", "onnx", "onnxruntime", "transformers", "tokenizers", "gguf", "h5py", "vllm"]


def _loaded_after(code: str) -> list[str]:
    script = (
        code + f"\nimport sys, json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return __import__("json").loads(out.stdout.strip().splitlines()[-1])


def test_import_keishiki_is_light():
    assert _loaded_after("import keishiki; keishiki.__version__") == []


def test_cli_help_is_light():
    assert _loaded_after("from keishiki.cli.app import _load_commands; _load_commands()") == []


@pytest.mark.parametrize(
    "rel",
    [
        "safetensors/safetensors-samples/overall.safetensors",
        "pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt",
        "pytorch_legacy/torch-1.13.1-debian/tinynet_state_dict_legacy.pt",
        "torchscript/torch-1.13.1-debian/tinynet_scripted.pt",
        "torch7_binary/python-torchfile/floattensor.t7",
        "other/npz/candle/test.npz",
        "onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx",
    ],
)
def test_inspect_loads_no_torch_or_onnx(rel):
    path = corpus_path(rel)
    loaded = _loaded_after(f"import keishiki; keishiki.inspect({str(path)!r})")
    assert not {"torch", "onnx", "onnxruntime", "transformers"} & set(loaded), loaded


def _modules_after_cli(args: list[str]) -> set[str]:
    """Top-level modules imported by one in-process CLI run (stdout discarded)."""
    script = (
        "import io, sys, contextlib, json\nfrom keishiki.cli.app import run\n"
        f"with contextlib.redirect_stdout(io.StringIO()): run({args!r})\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(__import__("json").loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "rel",
    [
        None,  # keishiki --help
        "safetensors/safetensors-samples/overall.safetensors",
        "pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt",
        "pytorch_legacy/torch-1.13.1-debian/tinynet_state_dict_legacy.pt",
        "onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx",  # sniffed last: every module
    ],
)
def test_cli_start_up_needs_no_numpy(rel):
    """numpy costs ~130 ms of start-up: --help, info and scan of these files never need it
    (the modules that load tensors use ``keishiki.core.lazy_numpy``)."""
    runs = (
        [["--help"]]
        if rel is None
        else [["info", str(corpus_path(rel))], ["scan", str(corpus_path(rel))]]
    )
    for args in runs:
        assert "numpy" not in _modules_after_cli(args), args


def test_a_command_loads_only_its_own_module():
    """`keishiki info` imports cmd_info alone (each cmd module brings its own imports)."""
    script = (
        "import io, sys, contextlib\nfrom keishiki.cli.app import run\n"
        "with contextlib.redirect_stdout(io.StringIO()): run(['info', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('keishiki.cli.cmd_')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['keishiki.cli.cmd_info']"


def test_lazy_numpy_is_numpy():
    """The stand-in gives numpy's own objects once used."""
    import numpy

    from keishiki.core.lazy_numpy import _LazyNumpy

    lazy = _LazyNumpy("numpy")
    assert lazy.float32 is numpy.float32 and lazy.frombuffer is numpy.frombuffer
    assert "frombuffer" in vars(lazy)  # later reads are plain attribute lookups


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["info", "--help"],
        ["info", "SMALL"],
        ["tensors", "SMALL", "--json"],
        ["scan", "SMALL"],
        ["scan", "TORCH"],
    ],
)
def test_cli_start_up_skips_pydantic_and_markdown(args):
    """typer 0.29 imports pydantic to coerce parameters (60-120 ms) and rich's markdown
    renderer and tracebacks for --help (markdown_it, pygments: ~30 ms); cli/_startup.py
    keeps all three out (a typer that changes its internals makes this fail)."""
    files = {
        "SMALL": "safetensors/safetensors-samples/overall.safetensors",
        "TORCH": "pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt",
    }
    args = [str(corpus_path(files[a])) if a in files else a for a in args]
    loaded = _modules_after_cli(args)
    assert not {"pydantic", "pydantic_core", "markdown_it", "pygments"} & loaded, args


def test_scan_imports_the_format_registry_without_the_readers():
    """``keishiki._scan`` takes its list of code-bearing formats from the format registry;
    that must not pull in ModelInfo and the readers' imports (`scan` start-up)."""
    path = corpus_path("pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt")
    script = (
        "import io, sys, contextlib, json\nfrom keishiki.cli.app import run\n"
        f"with contextlib.redirect_stdout(io.StringIO()): run(['scan', {str(path)!r}])\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "keishiki.formats.registry" in loaded
    assert not {"keishiki.core.model", "html"} & loaded


def test_plain_scan_without_colour_imports_no_rich(tmp_path):
    """``keishiki scan`` to a pipe or a file prints through cli/plain.py: rich's console and
    markup (~20 ms of start-up, measured against picklescan's) stay out; an unsafe file's
    table and a clean one's alike."""
    import pickle

    (tmp_path / "evil.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"a": 1}))
    for args in (["scan", str(tmp_path)], ["scan", "--json", str(tmp_path)]):
        script = (
            "import io, sys, json\nfrom keishiki.cli.app import run\n"
            f"sys.stdout = io.StringIO(); code = run({args!r}); out = sys.stdout.getvalue()\n"
            "sys.stdout = sys.__stdout__\n"
            "print(json.dumps([code, 'verdict: dangerous' in out or '\"dangerous\"' in out,"
            " sorted(m for m in sys.modules if m.split('.')[0] == 'rich')]))"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
        )
        assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, True, []], args
