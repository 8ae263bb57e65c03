"""TorchScript code is judged by allowlist: real exports (scripted and traced, built here with
real torch) come out safe; file I/O, code loading, dunder walks, computed getattr and
unparseable code are dangerous; custom ops/classes and unlisted ops are unknown.  Payloads
are harmless (they only write a marker file) and the cheap ones are proven live."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

import keishiki
from keishiki._scan import torchscript as ts

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore")  # torch.jit deprecation, tracer notes
nn = torch.nn


# ---- real exports, built once per session -------------------------------------------------


class _Block(nn.Module):
    """A torchvision-style residual block."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class _ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 4, 7, 2, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        self.layer = _Block(4)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer(self.stem(x))), 1))


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)
        self.gru = nn.GRU(4, 4, batch_first=True)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.gru(y)[0]


class _Logits(nn.Module):
    """HF models trace through a wrapper returning the logits (FIELD-NOTES)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids, use_cache=False, return_dict=False)[0]


def _exports() -> dict[str, tuple]:
    """name → (module, example inputs, script?, trace?)."""
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1, enable_nested_tensor=False
    )
    quant = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), {nn.Linear}, dtype=torch.qint8
    )
    plain = nn.Sequential(
        nn.Linear(4, 8),
        nn.GELU(),
        nn.LayerNorm(8),
        nn.Dropout(0.1),
        nn.Linear(8, 2),
        nn.Softmax(-1),
    )
    img, seq = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 4)
    return {
        "resnet": (_ResNet(), (img,)),
        "recurrent": (_Recurrent(), (seq,)),
        "transformer_encoder": (enc, (torch.randn(1, 3, 8),)),
        "quantized_dynamic_linear": (quant, (torch.randn(2, 4),)),
        "plain_mlp": (plain, (torch.randn(2, 4),)),
    }


@pytest.fixture(scope="session")
def real_exports(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("ts_exports")
    paths: dict[str, Path] = {}
    for name, (module, example) in _exports().items():
        module.eval()
        for how, make in (
            ("script", lambda m, e: torch.jit.script(m)),
            ("trace", lambda m, e: torch.jit.trace(m, e, check_trace=False)),
        ):
            paths[f"{name}_{how}"] = out / f"{name}_{how}.pt"
            torch.jit.save(make(module, example), str(paths[f"{name}_{how}"]))
    transformers = pytest.importorskip("transformers")
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
            max_position_embeddings=32,
        )
    ).eval()
    bert = transformers.BertModel(
        transformers.BertConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=64,
            max_position_embeddings=32,
        )
    ).eval()
    ids = torch.tensor([[1, 2, 3]])
    for name, model in (("hf_llama_trace", llama), ("hf_bert_trace", bert)):
        paths[name] = out / f"{name}.pt"
        torch.jit.save(torch.jit.trace(_Logits(model), (ids,), check_trace=False), str(paths[name]))
    return paths


EXPORTS = [
    f"{n}_{h}"
    for n in ("resnet", "recurrent", "transformer_encoder", "quantized_dynamic_linear", "plain_mlp")
    for h in ("script", "trace")
] + ["hf_llama_trace", "hf_bert_trace"]


@pytest.mark.parametrize("name", EXPORTS)
def test_real_exports_are_safe(real_exports, name):
    rep = keishiki.scan(real_exports[name])
    assert rep.verdict == "safe", [
        (f.severity, f.global_, f.reason) for f in rep.findings if f.severity != "safe"
    ]
    (summary,) = [f for f in rep.findings if f.opcode == "torchscript"]
    assert summary.severity == "safe"
    assert "every call allowlisted" in summary.reason and "code/__torch__" in summary.reason


def test_a_real_export_nested_in_a_zip_is_judged_too(real_exports, tmp_path):
    outer = tmp_path / "bundle.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(real_exports["resnet_script"], "models/resnet.pt")
    rep = keishiki.scan(outer)
    assert rep.verdict == "safe"
    (summary,) = [f for f in rep.findings if f.opcode == "torchscript"]
    assert summary.member == "models/resnet.pt" and "every call allowlisted" in summary.reason


# ---- hostile code: a scripted template with its forward / __setstate__ rewritten -----------


class _Template(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.ones(2)

    def forward(self, x):
        return x + self.w

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        self.w = state[0]
        self.training = state[1]


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts_template") / "template.pt"
    torch.jit.save(torch.jit.script(_Template()), str(path))
    return path


def _rewrite(
    template: Path, out: Path, forward: str = "", setstate: str = "", raw: bytes | None = None
) -> Path:
    """``template`` with lines added at the top of forward / __setstate__ (or the code file
    replaced by ``raw``)."""
    with zipfile.ZipFile(template) as zf:
        (code,) = [n for n in zf.namelist() if n.endswith(".py")]
        text = zf.read(code).decode()
        text = text.replace("    x: Tensor) -> Tensor:\n", "    x: Tensor) -> Tensor:\n" + forward)
        text = text.replace(
            "    state: Tuple[Tensor, bool]) -> NoneType:\n",
            "    state: Tuple[Tensor, bool]) -> NoneType:\n" + setstate,
        )
        with zipfile.ZipFile(out, "w") as zo:
            for n in zf.namelist():
                if not n.endswith(".debug_pkl"):  # line maps of the old text
                    zo.writestr(
                        n, (raw if raw is not None else text.encode()) if n == code else zf.read(n)
                    )
    return out


# (case, forward lines, __setstate__ lines, severity, subject, torch compiles it)
HOSTILE = [
    (
        "from_file",
        '    _9 = torch.from_file("/etc/hostname", False, 1, dtype=6)\n',
        "",
        "dangerous",
        "torch.from_file",
        True,
    ),
    (
        "aten_from_file",
        '    _9 = ops.aten.from_file("/etc/hostname", False, 1)\n',
        "",
        "dangerous",
        "torch.ops.aten.from_file",
        True,
    ),
    ("save_in_forward", '    torch.save(x, "/tmp/x")\n', "", "dangerous", "torch.save", True),
    ("save_in_setstate", "", '    torch.save(self.w, "/tmp/x")\n', "dangerous", "torch.save", True),
    ("load", '    _9 = torch.load("/tmp/x")\n', "", "dangerous", "torch.load", False),
    (
        "load_library",
        '    ops.load_library("/tmp/x.so")\n',
        "",
        "dangerous",
        "torch.ops.load_library",
        False,
    ),
    (
        "getattr_constant_io",
        '    _9 = getattr(ops.aten, "from_file")\n',
        "",
        "dangerous",
        "torch.ops.aten.from_file",
        False,
    ),
    (
        "getattr_computed",
        '    f = getattr(torch, "sa" + "ve")\n',
        "",
        "dangerous",
        "getattr(<computed>)",
        False,
    ),
    ("dunder_class", "    g = self.__class__\n", "", "dangerous", "__class__", False),
    ("dunder_globals", "    g = self.forward.__globals__\n", "", "dangerous", "__globals__", False),
    ("import", '    m = __import__("os")\n', "", "dangerous", "__import__", False),
    ("eval", '    _9 = eval("1")\n', "", "dangerous", "eval", False),
    ("open", '    _9 = open("/etc/passwd")\n', "", "dangerous", "open", False),
    ("os_system", '    _9 = os.system("id")\n', "", "dangerous", "os.system", False),
    (
        "torch_C",
        "    _9 = torch._C._get_tracing_state()\n",
        "",
        "dangerous",
        "torch._C._get_tracing_state",
        False,
    ),
    ("hub", '    _9 = torch.hub.load("a", "b")\n', "", "dangerous", "torch.hub.load", False),
    (
        "method_from_file",
        '    _9 = (x).from_file("/etc/hostname")\n',
        "",
        "dangerous",
        "from_file",
        False,
    ),
    (
        "custom_op",
        "    _9 = ops.my_ext.secret(x)\n",
        "",
        "unknown",
        "torch.ops.my_ext.secret",
        False,
    ),
    (
        "custom_class",
        "    _9 = __torch__.torch.classes.my_ext.Thing.__new__("
        "__torch__.torch.classes.my_ext.Thing)\n",
        "",
        "unknown",
        "__torch__.torch.classes.my_ext.Thing",
        False,
    ),
    (
        "unlisted_op",
        "    _9 = torch.as_strided(x, [1], [1])\n",
        "",
        "unknown",
        "torch.as_strided",
        True,
    ),
    (
        "unlisted_op_in_setstate",
        "",
        "    _9 = torch.as_strided(self.w, [1], [1])\n",
        "dangerous",
        "torch.as_strided",
        True,
    ),
    (
        "undefined_class",
        "    _9 = __torch__.elsewhere.f(x)\n",
        "",
        "unknown",
        "__torch__.elsewhere.f",
        False,
    ),
    ("unknown_builtin", "    _9 = frobnicate(x)\n", "", "unknown", "frobnicate", False),
    (
        "aliased_namespace",
        "    t = ops\n    _9 = t.my_ext.linear(x)\n",
        "",
        "unknown",
        "ops",
        False,
    ),
]


@pytest.mark.parametrize(
    "case,forward,setstate,severity,subject,compiles", HOSTILE, ids=[c[0] for c in HOSTILE]
)
def test_hostile_code_is_named(
    template, tmp_path, case, forward, setstate, severity, subject, compiles
):
    path = _rewrite(template, tmp_path / f"{case}.pt", forward, setstate)
    rep = keishiki.scan(path)
    found = {(f.severity, f.global_) for f in rep.findings}
    assert (severity, subject) in found, found
    assert rep.verdict == severity
    assert not any(f.opcode == "torchscript" and f.severity == "safe" for f in rep.findings)
    if compiles and "save" not in case:  # torch reads it as we do: the call is real
        torch.jit.load(str(path))


@pytest.mark.parametrize(
    "raw,why",
    [
        (b"class Net(Module):\n  def forward(self, x):\n\treturn x\n", "TabError"),
        (b"def f(x):\n  return x\0\n", "null bytes"),
        (b"def f(x):\n  y = " + b"(" * 300 + b"x" + b")" * 300 + b"\n", "nesting"),
    ],
)
def test_code_python_cannot_parse_is_dangerous(template, tmp_path, raw, why):
    rep = keishiki.scan(_rewrite(template, tmp_path / "bad.pt", raw=raw))
    assert rep.verdict == "dangerous"
    assert any(f.global_ == "unparseable-code" for f in rep.findings), why


def test_saving_payloads_run_live_and_are_dangerous(template, tmp_path):
    """The marker appears when torch loads (``__setstate__``) or calls (``forward``) them."""
    made = {}
    for where in ("forward", "setstate"):
        marker = tmp_path / f"PWNED_{where}"
        line = f"    torch.save(torch.ones(1), {str(marker)!r})\n"
        path = _rewrite(template, tmp_path / f"{where}.pt", **{where: line})
        assert keishiki.scan(path).verdict == "dangerous"
        made[where] = (path, marker)
    code = (
        "import sys, torch; m = torch.jit.load(sys.argv[1]); "
        "m(torch.ones(2)) if sys.argv[2] == 'forward' else None"
    )
    for where, (path, marker) in made.items():
        subprocess.run(
            [sys.executable, "-c", code, str(path), where],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert marker.exists(), where


@pytest.mark.parametrize(
    "forward",
    [
        "    # torch.load(x) in a comment calls nothing\n",
        "    _9 = \"torch.from_file('/etc/passwd')\"\n",
        '    _9 = getattr(self, "w")\n',
        "    _9 = annotate(List[Tensor], [x])\n",
        "    _9 = uninitialized(Tensor)\n",
        "    _9 = ops.prim.device(x)\n",
        "    _9 = torch.len(annotate(List[int], [1, 2]))\n",
    ],
)
def test_allowlisted_constructs_stay_safe(template, tmp_path, forward):
    path = _rewrite(template, tmp_path / "ok.pt", forward)
    torch.jit.load(str(path))  # all of it is TorchScript torch accepts
    rep = keishiki.scan(path)
    assert rep.verdict == "safe", [(f.global_, f.reason) for f in rep.findings]


def test_calls_resolve_against_what_the_archive_defines():
    files = {
        "a/code/__torch__.py": (
            "class Net(Module):\n  def forward(self: __torch__.Net, x: Tensor)"
            " -> Tensor:\n    p = __torch__.helpers.Pair.__new__("
            "__torch__.helpers.Pair)\n    _0 = (p).__init__(1, )\n"
            "    return __torch__.helpers.scale(x, (p).total())\n"
        ),
        "a/code/__torch__/helpers.py": (
            "class Pair:\n  a : int\n  def __init__(self: "
            "__torch__.helpers.Pair, a: int) -> NoneType:\n"
            "    self.a = a\n    return None\n  def total(self: "
            "__torch__.helpers.Pair) -> int:\n    return self.a\n"
            "def scale(x: Tensor, k: int) -> Tensor:\n"
            "    return torch.mul(x, k)\n"
        ),
    }
    assert ts.archive_findings(files) == []
    del files["a/code/__torch__/helpers.py"]
    subjects = {(s, g) for _, s, g, _ in ts.archive_findings(files)}
    assert ("unknown", "__torch__.helpers.scale") in subjects
    assert ("unknown", ".total") in subjects


def test_upper_case_code_members_are_code():
    assert ts.is_code_member("a/CODE/__torch__/x.PY") and ts.is_torchscript(["a/Code/__torch__.py"])
    assert not ts.is_code_member("a/code/__torch__.py.debug_pkl")
    assert (
        ts.module_of("a/code/__torch__/torch/nn/functional.py") == "__torch__.torch.nn.functional"
    )


def test_mobile_bytecode_is_unknown(tmp_path):
    path = tmp_path / "mobile.ptl"
    torch.jit.script(nn.Linear(2, 2))._save_for_lite_interpreter(str(path))
    rep = keishiki.scan(path)
    assert rep.verdict == "unknown"
    assert any(f.global_ == "mobile-bytecode" for f in rep.findings)


def test_the_allowlist_is_data_without_io():
    raw = json.loads(
        resources.files("keishiki").joinpath("data/torchscript_allowlist.json").read_text()
    )
    assert "derived" in raw["_about"]
    names = {n for k, v in raw.items() if isinstance(v, list) for n in v}
    assert not names & {
        "from_file",
        "save",
        "load",
        "load_library",
        "_load_for_mobile",
        "__import__",
        "eval",
        "exec",
        "open",
        "compile",
    }
    assert {"linear", "conv2d", "lstm", "scaled_dot_product_attention"} <= set(raw["aten"])
    assert "quantized.linear_dynamic" in raw["ops"] and "prim.RaiseException" in raw["ops"]


def test_torch_export_graph_keeps_custom_namespaces_unknown():
    graph = '{"target": "torch.ops.aten.add.Tensor"}, {"target": "torch.ops.mylib.op.default"}'
    found = ts.code_findings("models/model.json", graph)
    assert [(s, g) for s, g, _ in found] == [("unknown", "torch.ops.mylib.op")]


def test_too_much_code_or_no_time_left_is_unknown():
    import time

    huge = ts.archive_findings([("a/code/__torch__.py", "x = 1\n" * (ts.MAX_CODE_CHARS // 5))])
    late = ts.archive_findings([("a/code/__torch__.py", "x = 1\n")], time.monotonic() - 1)
    for found in (huge, late):
        assert [(s, g) for _, s, g, _ in found] == [("unknown", "torchscript-code")]


@pytest.mark.parametrize(
    "target, severity",
    [
        # what torch.export's serializer writes
        ("torch.ops.aten.linear.default", None),
        ("torch.ops.aten.sym_size.int", None),
        ("torch.ops.higher_order.cond", None),
        ("_operator.mul", None),
        ("_operator.getitem", None),
        ("math.sqrt", None),
        ("torch.sym_max", None),
        # torch's deserializer walks attributes from the torch module: any alias reaches ops
        ("torch._decomp.decompositions.aten.from_file.default", "dangerous"),
        ("torch.nn.functional.torch.ops.aten.save", "dangerous"),
        ("torch._refs.aten.linear.default", "unknown"),
        ("torch.os.system", "unknown"),
        ("_operator.call", "unknown"),
        ("_operator.methodcaller", "unknown"),
        ("builtins.exec", "unknown"),
    ],
)
def test_export_graph_targets_are_judged_as_torch_resolves_them(target, severity):
    from keishiki._scan.torchscript import _judge_target

    judged = _judge_target("model.json", target)
    assert (judged[0] if judged else None) == severity


@pytest.mark.parametrize(
    "char, parses", [("\n", True), ("\t", True), ("\r", False), ("\f", False), ("\x0b", False)]
)
def test_code_with_characters_the_two_lexers_read_apart_is_not_judged(char, parses):
    """A lone CR ends a comment for Python but not for TorchScript (a blank to its lexer)."""
    from keishiki._scan.torchscript import parse

    code = f"def f(x: Tensor) -> Tensor:\n  y = x  # note{char}  return y\n  return x\n"
    tree, why = parse("a/code/__torch__.py", code)
    assert (tree is not None) is parses
    assert parses or "control character" in why
