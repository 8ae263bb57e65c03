"""torchscript: corpus facts, scripted and traced modules built here, values equal
torch.jit.load(...).state_dict(), and no code from the archive ever runs."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from keishiki import inspect, scan
from keishiki.errors import KeishikiError
from keishiki.formats import identify
from keishiki.formats.torchscript import class_file, parse_classes, schema_type
from tests.conftest import FACTS, corpus_path, run_cli

CORPUS = sorted(k for k in FACTS if k.startswith("torchscript/"))


@pytest.mark.parametrize("rel", CORPUS)
def test_corpus_facts(rel):
    facts = FACTS[rel]
    info = inspect(corpus_path(rel))
    assert info.format == "torchscript"
    d = info.details["torchscript"]
    for key in (
        "archive_prefix",
        "n_records",
        "version_record",
        "has_constants_pkl",
        "extra_files",
        "has_bytecode_pkl",
        "n_data_records",
        "original_name",
        "n_parameters",
        "n_buffers",
        "param_numel",
        "forward_schema",
    ):
        assert d[key] == facts[key], key
    assert d["code_files"][: len(facts["code_files"])] == facts["code_files"]
    assert "def forward" in d["forward_source"]
    assert (
        sum(t.numel for t in info.tensors if t.extra["role"] == "parameter") == facts["param_numel"]
    )


@pytest.mark.parametrize("rel", CORPUS)
def test_corpus_values_equal_jit_state_dict(rel):
    torch = pytest.importorskip("torch")
    info = inspect(corpus_path(rel))
    state = torch.jit.load(corpus_path(rel)).state_dict()
    listed = {t.name: t for t in info.tensors}
    assert set(state) <= set(listed)
    assert {n for n, t in listed.items() if t.extra["role"] != "attribute"} == set(state)
    for lazy in info.lazy_tensors():
        if lazy.name in state:
            assert np.array_equal(lazy.load(), state[lazy.name].numpy()), lazy.name


@pytest.fixture(scope="module")
def jit_files(tmp_path_factory):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Sequential(
                torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2, bias=False)
            )
            self.register_buffer("scale", torch.full((2,), 0.5))

        def forward(self, x: torch.Tensor, k: int = 2) -> torch.Tensor:
            y = torch.relu(self.bn(self.conv(x))).mean((2, 3))
            return self.head(y) * self.scale * k

    torch.manual_seed(0)
    net = Net().eval()
    out = tmp_path_factory.mktemp("jit")
    scripted, traced = out / "scripted.pt", out / "traced.pt"
    torch.jit.save(torch.jit.script(net), scripted, _extra_files={"meta.txt": "hello"})
    torch.jit.save(torch.jit.trace(net, (torch.randn(1, 3, 8, 8),)), traced)
    return scripted, traced


@pytest.mark.parametrize("which", ["scripted", "traced"])
def test_built_here(jit_files, which):
    torch = pytest.importorskip("torch")
    path = jit_files[0] if which == "scripted" else jit_files[1]
    assert identify(path).format == "torchscript"
    info = inspect(path)
    d = info.details["torchscript"]
    assert d["original_name"] == "Net"
    assert d["n_parameters"] == 7 and d["n_buffers"] == 4
    state = torch.jit.load(path).state_dict()
    assert {t.name for t in info.tensors} == set(state)
    roles = {t.name: t.extra["role"] for t in info.tensors}
    assert roles["conv.weight"] == "parameter" and roles["scale"] == "buffer"
    assert roles["bn.num_batches_tracked"] == "buffer" and roles["head.2.weight"] == "parameter"
    for lazy in info.lazy_tensors():
        assert np.array_equal(lazy.load(), state[lazy.name].numpy()), lazy.name
    if which == "scripted":
        assert d["forward_schema"] == (
            "forward(__torch__.tests.formats.test_torchscript.Net "
            "self, Tensor x, int k=2) -> Tensor"
        )
        assert d["extra_files"] == ["meta.txt"]
    else:
        assert d["has_traced_inputs"] is True  # torch 2.13 saves traced_inputs.pkl
        assert "Net self, Tensor x" in d["forward_schema"]  # traced classes are mangled
    top_file = class_file(d["root_class"])[0]
    assert top_file in d["code_files"] and "def forward" in d["code"][top_file]
    assert info.warnings and "code" in info.warnings[0]
    assert scan(path).verdict == "safe"  # every call in a real export is allowlisted


def test_code_is_parsed_not_run(tmp_path, jit_files):
    # a code file that would write a marker if executed: keishiki must only parse it
    scripted, _ = jit_files
    marker = tmp_path / "MARKER"
    bad = tmp_path / "evil.pt"
    with zipfile.ZipFile(scripted) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith(".py"):  # every code file (Net's is code/__torch__/tests/…)
                data = (f"open({str(marker)!r}, 'w').write('ran')\n").encode() + data
            dst.writestr(item, data)
    info = inspect(bad)
    assert info.details["torchscript"]["n_parameters"] == 7
    assert not marker.exists()
    assert ("dangerous", "open") in {(f.severity, f.global_) for f in scan(bad).findings}


def test_schema_types():
    import ast

    cases = {
        "Optional[Tensor]": "Tensor?",
        "List[int]": "int[]",
        "Tuple[Tensor, int]": "(Tensor, int)",
        "Dict[str, Tensor]": "Dict(str, Tensor)",
    }
    for src, want in cases.items():
        assert schema_type(ast.parse(src, mode="eval").body) == want
    classes = parse_classes(
        "class A(Module):\n  __parameters__ = ['w', ]\n"
        "  __buffers__ = []\n  def forward(self: A, x: Tensor) -> Tensor:\n"
        "    return x\n"
    )
    assert classes["A"].parameters == ["w"] and classes["A"].methods == ["forward"]
    assert parse_classes("def (:") == {}


def test_broken_archive(jit_files, tmp_path):
    scripted, _ = jit_files
    bad = tmp_path / "cut.pt"
    with zipfile.ZipFile(scripted) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = data[: len(data) // 2]
            dst.writestr(item, data)
    with pytest.raises(KeishikiError):
        inspect(bad)
    code, _, err = run_cli("info", bad)
    assert code == 2 and "Traceback" not in err


def test_fuzz_data_pkl_and_code(jit_files, tmp_path, monkeypatch):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scripted, _ = jit_files
    with zipfile.ZipFile(scripted) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    targets = [
        n
        for n in members
        if n.endswith("/data.pkl") or n.endswith("code/__torch__.py") or n.endswith("constants.pkl")
    ]
    monkeypatch.setenv("KEISHIKI_DEBUG", "1")  # any non-keishiki exception fails the test

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(targets), st.data())
    def run(target, data):
        buf = bytearray(members[target])
        for _ in range(data.draw(st.integers(1, 5))):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        path = tmp_path / "fuzz.pt"
        with zipfile.ZipFile(path, "w") as zf:
            for n, v in members.items():
                zf.writestr(n, bytes(buf) if n == target else v)
        try:
            info = inspect(path)
            for lazy in list(info.lazy_tensors())[:3]:
                lazy.load()
        except KeishikiError:
            pass

    run()


def test_custom_ops_are_named(tmp_path):
    torch = pytest.importorskip("torch")
    lib = torch.library.Library("kstest", "DEF")
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x * 2, "CPU")

    class UsesCustomOp(torch.nn.Module):
        def forward(self, x):
            return torch.ops.kstest.twice(x) + 1

    path = tmp_path / "custom.pt"
    torch.jit.save(torch.jit.script(UsesCustomOp()), path)
    d = inspect(path).details["torchscript"]
    assert d["custom_ops"] == ["kstest.twice"]
    report = scan(path)
    assert report.verdict == "unknown"
    assert "torch.ops.kstest.twice" in report.globals_by_severity("unknown")
    assert d["op_namespaces"]["kstest"] == 1
    assert d["custom_classes"] == []
