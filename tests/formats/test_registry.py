"""The format registry: one spec per format, and every other list derived from it (issue 14).

A new format is one module in keishiki/formats plus one FormatSpec; these tests fail when the
two disagree, when a derived list drifts from the registry, or when README.md's table was not
regenerated (``python -m keishiki.formats --readme``).
"""

from __future__ import annotations

import ast
import inspect as pyinspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from keishiki.core.model import ModelInfo
from keishiki.errors import KeishikiError
from keishiki.formats import identify, registry
from keishiki.formats.__main__ import main as formats_main
from keishiki.formats.registry import FORMATS, SNIFF_ORDER, FormatModule
from tests.conftest import CORPUS, FACTS, REPO, run_cli

FORMATS_DIR = REPO / "src" / "keishiki" / "formats"
IDS = [spec.id for spec in FORMATS]


def test_ids_modules_and_sniff_ranks_are_unique():
    for field in ("id", "module", "sniff_rank"):
        values = [getattr(spec, field) for spec in FORMATS]
        assert len(set(values)) == len(values), field
    assert registry.BY_ID["tensorflow-savedmodel"].module == "tf_savedmodel"
    assert registry.BY_ID["torch-export"].module == "torch_export"  # the id, "_" for "-"


@pytest.mark.parametrize("spec", FORMATS, ids=IDS)
def test_format_module_follows_the_protocol(spec):
    module = spec.load()
    assert isinstance(module, FormatModule)
    assert module.FORMAT == spec.id
    assert list(pyinspect.signature(module.sniff).parameters) == ["src"]
    assert len(pyinspect.signature(module.read).parameters) == 2


def _sniffing_modules() -> set[str]:
    """Modules of keishiki/formats that define a top-level ``sniff``."""
    found = set()
    for path in FORMATS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.FunctionDef) and n.name == "sniff" for n in tree.body):
            found.add(path.stem)
    return found


def test_every_module_with_a_sniffer_is_registered():
    assert _sniffing_modules() == {spec.module for spec in FORMATS}


@pytest.mark.slow
def test_format_modules_satisfy_the_protocol_for_mypy(tmp_path, monkeypatch):
    """mypy checks each module against FormatModule as a module-as-protocol (PEP 544): a
    sniffer returning something other than ``Match | None`` or a missing ``read`` fails."""
    from mypy import api

    monkeypatch.setenv("MYPYPATH", str(REPO / "src"))  # the source, py.typed or not
    names = sorted(spec.module for spec in FORMATS)
    check = tmp_path / "check_protocol.py"
    check.write_text(
        f"from keishiki.formats import {', '.join(names)}\n"
        "from keishiki.formats.registry import FormatModule\n\n"
        f"MODULES: list[FormatModule] = [{', '.join(names)}]\n"
        # and a control: a module with neither sniff() nor read() is refused
        "from keishiki.formats import gguf_split\n"
        "NOT_ONE: FormatModule = gguf_split\n"
    )
    stdout, stderr, _ = api.run(
        [
            "--config-file=",
            "--follow-imports=silent",
            f"--cache-dir={tmp_path / 'cache'}",
            "--python-version=3.10",
            str(check),
        ]
    )
    errors = [ln for ln in stdout.splitlines() if ": error:" in ln]
    assert len(errors) == 1 and "check_protocol.py:6:" in errors[0], stdout + stderr


# sniff order: (sniffed first, sniffed later, why)
ORDER_CONSTRAINTS = [
    ("hf-model", "gguf", "a model folder may hold GGUF files beside config.json"),
    ("hf-model", "onnx", "a model folder is not an ONNX export folder"),
    ("tensorflow-savedmodel", "onnx", "saved_model.pb opens like an ONNX ModelProto"),
    ("torchscript", "pytorch", "a TorchScript archive is also a zip with data.pkl"),
    ("torch-export", "pytorch", "a .pt2 archive is also a zip holding pickles"),
    ("keras", "pytorch", "a .keras archive is a zip too"),
    ("numpy", "pytorch", "an .npz is a zip too"),
    ("pytorch", "pickle", "a legacy torch.save file is a pickle stream"),
    ("keras-h5", "onnx", "ONNX has no magic number: the magic-number formats go first"),
    ("pickle", "torch7", "formats without a magic number are confirmed by parsing, last"),
    ("torch7", "onnx", "ONNX, parsed in full, is the last resort"),
]


@pytest.mark.parametrize("first, later, why", ORDER_CONSTRAINTS)
def test_sniff_order(first, later, why):
    order = [spec.id for spec in SNIFF_ORDER]
    assert order.index(first) < order.index(later), why


def test_sniff_order_is_unchanged():
    """The order sniffers ran in before the registry (formats/__init__.SNIFF_ORDER)."""
    assert [spec.module for spec in SNIFF_ORDER] == [
        "hf_model",
        "tf_savedmodel",
        "coreml",
        "torchscript",
        "torch_export",
        "keras",
        "numpy",
        "pytorch",
        "safetensors",
        "gguf",
        "keras_h5",
        "tflite",
        "flax_msgpack",
        "pickle",
        "torch7",
        "onnx",
    ]


def test_variants_seen_in_the_corpus_are_declared():
    seen: dict[str, set] = {}
    for rel in sorted(FACTS):
        path = CORPUS / rel
        if not path.exists():  # a PyPI file not fetched here
            continue
        try:
            match = identify(path)
        except KeishikiError:  # aux files: test vectors, reference outputs
            continue
        seen.setdefault(match.format, set()).add(match.variant)
    assert len(seen) >= 12, seen
    for fid, variants in seen.items():
        assert variants - {None} <= set(registry.BY_ID[fid].variants), fid


# ---- the lists derived from the registry -------------------------------------------------------


def test_formats_command_lists_the_registry_in_order():
    code, stdout, _ = run_cli("formats", "--json")
    assert code == 0
    rows = json.loads(stdout)["formats"]
    assert [r["id"] for r in rows] == IDS
    assert [r["what"] for r in rows] == [spec.what for spec in FORMATS]
    assert all(r["readable"] for r in rows)
    assert [r["id"] for r in rows if r["writable"]] == list(registry.WRITABLE)


def test_writable_formats_are_the_conversion_targets():
    from keishiki._convert.base import TARGETS
    from keishiki._convert.edges import EDGES
    from keishiki._convert.edges import FORMATS as EDGE_FORMATS

    assert list(EDGE_FORMATS) == IDS
    assert set(registry.WRITABLE) == {e.dst for e in EDGES}
    assert registry.WRITABLE == TARGETS  # `convert --to` choices, in the same order


def test_scan_verdict_formats_are_the_code_bearing_ones():
    from keishiki._scan import CODE_BEARING

    assert CODE_BEARING == {spec.id for spec in FORMATS if spec.code}
    assert {"pytorch", "pickle", "torchscript", "keras-h5", "numpy"} <= CODE_BEARING
    assert not {"safetensors", "flax-msgpack", "tflite"} & CODE_BEARING


@pytest.mark.parametrize("spec", FORMATS, ids=IDS)
def test_netron_link_follows_the_registry(spec):
    """A bare ModelInfo of each format: "graph" formats are drawn whatever the file, "no"
    never, "depends" only when the file's content says so (keishiki.view.netron)."""
    from keishiki.view.netron import draws_graph

    info = ModelInfo(path="x", format=spec.id)
    assert draws_graph(info) == (spec.netron == "graph")
    if spec.netron == "depends":
        assert spec.id in ("keras-h5", "gguf")  # the two content checks in draws_graph


def test_export_folder_suffixes_come_from_the_export_formats():
    assert [spec.id for spec in registry.EXPORT_FORMATS] == ["torchscript", "torch-export", "onnx"]
    assert set(registry.EXPORT_SUFFIXES) == {".pt", ".pth", ".jit", ".pt2", ".onnx"}


def test_unknown_file_names_every_format(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all\n")
    code, _, err = run_cli("info", junk)
    assert code == 2
    assert err.startswith("keishiki: error: ") and f"(looked for: {registry.LOOKED_FOR})" in err
    assert all(fid in registry.LOOKED_FOR for fid in IDS)


# ---- README.md's table ---------------------------------------------------------------------


def test_readme_table_is_the_rendered_registry():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert registry.with_readme_table(text) == text, (
        "README.md's formats table differs from the registry: run "
        "`python -m keishiki.formats --readme`"
    )


def test_readme_table_rows():
    lines = registry.readme_table().splitlines()
    assert len(lines) == 2 + len(FORMATS)
    assert lines[0].startswith('| id (`--json` `"format"`) | variants | what |')
    onnx = next(ln for ln in lines if ln.startswith("| `onnx` |"))
    cells = [c.strip() for c in onnx.strip("|").split("|")]
    assert cells[1] == "`embedded` / `external-data`"
    assert cells[3:] == ["yes", "code, graph", "yes"]
    gguf = next(ln for ln in lines if ln.startswith("| `gguf` |"))
    assert gguf.endswith("| yes | code, tokenizer | some files |")


def test_readme_command_rewrites_only_the_table(tmp_path, capsys):
    readme = tmp_path / "README.md"
    before, after = "# title\n\nintro\n\n", "\nAnything else ...\n"
    stale = f"{registry.README_BEGIN}\n| old | table |\n{registry.README_END}"
    readme.write_text(before + stale + after, encoding="utf-8")
    assert formats_main(["--readme", str(readme)]) == 0
    assert "rewritten" in capsys.readouterr().out
    text = readme.read_text(encoding="utf-8")
    expected = f"{registry.README_BEGIN}\n{registry.readme_table()}\n{registry.README_END}"
    assert text == before + expected + after
    assert formats_main(["--readme", str(readme)]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left


def test_readme_command_without_markers_fails_in_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        formats_main(["--readme", str(readme)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "markers" in err and "Traceback" not in err
    assert readme.read_text(encoding="utf-8") == "# no table here\n"


# ---- layering: no cycle, sniff modules loaded lazily -----------------------------------------


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, inside a function) for every import of ``path``, resolved to
    absolute names under ``keishiki``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    in_function = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = ["keishiki", "formats"][: 3 - node.level]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                out.append((f"{base}:{alias.name}", id(node) in in_function))
    return out


def test_formats_never_import_the_layer_above():
    """``keishiki.inspecting`` uses formats and scan; the formats package imports neither it
    nor scan's public package (the old formats <-> scan cycle)."""
    for path in sorted(FORMATS_DIR.glob("*.py")):
        for name, _ in _imports(path):
            assert not name.startswith("keishiki.inspecting"), (path.name, name)
            assert not name.startswith("keishiki._scan:"), (path.name, name)


def test_sniffers_import_match_at_module_top():
    for path in sorted(FORMATS_DIR.glob("*.py")):
        for name, in_function in _imports(path):
            if name.endswith(":Match"):
                assert not in_function, path.name
                assert name == "keishiki.formats.registry:Match", (path.name, name)


def test_registry_loads_no_format_module():
    code = (
        "import sys, keishiki, keishiki.formats, keishiki.formats.registry as r\n"
        "r.readme_table(); print(sorted(m for m in sys.modules if m.startswith('keishiki.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(eval(out.stdout))  # noqa: S307 - our own subprocess's repr of a list
    assert not {f"keishiki.formats.{spec.module}" for spec in FORMATS} & loaded, loaded
    assert "keishiki._scan" not in loaded and "keishiki.inspecting" not in loaded
