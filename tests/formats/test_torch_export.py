"""torch-export (.pt2): listed from the archive's JSON without torch, values equal
torch.export.load's state_dict and constants."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from keishiki import inspect
from keishiki.errors import KeishikiError
from keishiki.formats import identify
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def pt2(tmp_path_factory):
    torch = pytest.importorskip("torch")

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)
            self.bn = torch.nn.BatchNorm1d(4)
            self.register_buffer("scale", torch.ones(4), persistent=False)
            self.emb = torch.nn.Parameter(torch.randn(4, 2).bfloat16())
            self.const = torch.arange(4.0)

        def forward(self, x):
            return self.bn(self.fc(x)) * self.scale + self.const + self.emb.float().sum()

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2") / "m.pt2"
    torch.export.save(torch.export.export(M(), (torch.randn(2, 3),)), path)
    return path


def test_identified_and_listed(pt2):
    assert identify(pt2).format == "torch-export"
    info = inspect(pt2)
    d = info.details["torch-export"]
    roles = {t.name: t.extra["role"] for t in info.tensors}
    assert roles == {
        "fc.weight": "parameter",
        "fc.bias": "parameter",
        "bn.weight": "parameter",
        "bn.bias": "parameter",
        "emb": "parameter",
        "scale": "buffer",
        "bn.running_mean": "buffer",
        "bn.running_var": "buffer",
        "bn.num_batches_tracked": "buffer",
        "const": "constant",
    }
    assert info.tensor("emb").dtype == "bfloat16" and info.tensor("fc.weight").shape == (4, 3)
    assert d["n_parameters"] == 5 and d["n_buffers"] == 4
    assert d["user_inputs"] == ["x"] and d["forward_arg_names"] == ["x"]
    assert d["op_counts"]["torch.ops.aten.linear.default"] == 1
    assert d["n_nodes"] == sum(d["op_counts"].values())
    assert {"kind": "buffer", "arg": "b_scale", "target": "scale", "persistent": False} in d[
        "inputs"
    ]
    assert d["torch_version"].startswith("2.")


def test_values_equal_torch_export_load(pt2):
    torch = pytest.importorskip("torch")
    ep = torch.export.load(pt2)
    expected = {**ep.state_dict, **ep.constants}
    info = inspect(pt2)
    assert {t.name for t in info.tensors} == set(expected)
    for lazy in info.lazy_tensors():
        want = expected[lazy.name].detach()
        got = lazy.load()
        if want.dtype == torch.bfloat16:
            assert np.array_equal(got.view(np.int16), want.view(torch.int16).numpy())
        else:
            assert np.array_equal(got, want.numpy()), lazy.name


def test_no_torch_import(pt2):
    code = (
        f"import sys, keishiki; i = keishiki.inspect({str(pt2)!r}); "
        f"assert i.n_tensors == 10; assert 'torch' not in sys.modules; print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_broken_json(pt2, tmp_path):
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(pt2) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("models/model.json"):
                data = data[:100]
            dst.writestr(item, data)
    with pytest.raises(KeishikiError, match="invalid JSON"):
        inspect(bad)
    code, _, err = run_cli("info", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_fuzz_json_values(pt2, tmp_path, monkeypatch):
    """Values of the wrong type anywhere in the JSON give CorruptFile, never a traceback."""
    import json

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    with zipfile.ZipFile(pt2) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    targets = [n for n in members if n.endswith(".json")]
    monkeypatch.setenv("KEISHIKI_DEBUG", "1")
    junk = st.one_of(
        st.none(),
        st.integers(-3, 3),
        st.text(max_size=3),
        st.lists(st.none()),
        st.dictionaries(st.text(max_size=2), st.none(), max_size=2),
    )

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, prefix + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node[:3]):
                yield from paths(v, prefix + (i,))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(targets), st.data(), junk)
    def run(target, data, value):
        doc = json.loads(members[target])
        where = data.draw(st.sampled_from(list(paths(doc))[1:]))
        node = doc
        for part in where[:-1]:
            node = node[part]
        node[where[-1]] = value
        path = tmp_path / "fuzz.pt2"
        with zipfile.ZipFile(path, "w") as zf:
            for n, v in members.items():
                zf.writestr(n, json.dumps(doc).encode() if n == target else v)
        try:
            info = inspect(path)
            for lazy in list(info.lazy_tensors())[:3]:
                try:
                    lazy.load()
                except KeishikiError:
                    pass
        except KeishikiError:
            pass

    run()
