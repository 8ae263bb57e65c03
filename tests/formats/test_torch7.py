"""torch7: corpus facts (torchfile's readings), a Sequential written byte by byte, bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from keishiki import inspect
from keishiki.core.source import Source
from keishiki.errors import CorruptFile
from keishiki.formats import Match, identify, torch7
from tests.conftest import FACTS, corpus_path, facts_where, run_cli

CASES = facts_where(lambda f: str(f.get("format", "")).startswith("torch7"))


@pytest.mark.parametrize("rel", CASES)
def test_corpus_facts(rel):
    facts = FACTS[rel]
    info = inspect(corpus_path(rel))
    assert (info.format, info.variant) == ("torch7", "ascii" if "ascii" in rel else "binary")
    details = info.details["torch7"]
    for key in ("root_type", "root_type_code", "torch_class", "version", "n_keys", "len"):
        if key in facts:
            assert details[key] == facts[key], key
    if "shape" in facts:  # a tensor at the root
        root = info.tensor("tensor")
        assert list(root.shape) == facts["shape"]
        assert root.dtype == (facts.get("dtype") or "float64")
        if "sum" in facts:
            assert float(info.tensor_loader(root).sum()) == pytest.approx(facts["sum"], rel=1e-6)


def test_ascii_net_tree_and_values():
    info = inspect(corpus_path("torch7_ascii/opencv-testdata/net_softmax_net.txt"))
    assert info.details["torch7"]["modules"] == {"": "nn.Sequential", "0": "nn.SoftMax"}
    tree = info.details["torch7"]["module_tree"]
    assert tree["class"] == "nn.Sequential"
    assert [c["class"] for c in tree["children"]] == ["nn.SoftMax"]
    out = info.tensor_loader(info.tensor("0.output"))
    assert out.shape == (1, 5, 1, 1) and out.sum() == pytest.approx(1.0)  # a softmax output
    nested = inspect(corpus_path("torch7_ascii/opencv-testdata/net_cadd_table_net.txt"))
    children = nested.details["torch7"]["module_tree"]["children"]
    assert [c["class"] for c in children] == ["nn.ConcatTable", "nn.CAddTable"]
    assert [c["name"] for c in children[0]["children"]] == ["0.0", "0.1"]


def test_function_is_recorded_not_run():
    info = inspect(corpus_path("torch7_binary/python-torchfile/function.t7"))
    assert info.details["torch7"]["bytecode_bytes"] == 218
    assert any("Lua functions" in w for w in info.warnings)


# ---- a Sequential(Linear(3, 4), ReLU, Linear(4, 2)) written the way torch.save does -------


class _Writer:
    """Writes Torch7 values in binary (with 8- or 4-byte longs) or ascii mode."""

    def __init__(self, ascii: bool = False, long_size: int = 8):
        self.ascii, self.long_size = ascii, long_size
        self.out = bytearray()
        self.next_index = 1

    def _ints(self, values, fmt):
        if self.ascii:
            self.out += (
                " ".join(repr(v) if isinstance(v, float) else str(v) for v in values) + "\n"
            ).encode()
        else:
            self.out += struct.pack(f"<{len(values)}{fmt}", *values)

    def int(self, v):
        self._ints([v], "i")

    def longs(self, values):
        if values or not self.ascii:
            self._ints(list(values), "q" if self.long_size == 8 else "i")

    def double(self, v):
        self._ints([float(v)], "d")

    def chars(self, raw: bytes):
        self.out += raw + (b"\n" if self.ascii else b"")

    def string(self, s: str):
        self.int(2)
        self.int(len(s))
        self.chars(s.encode())

    def key(self, k):
        if isinstance(k, str):
            self.string(k)
        else:
            self.int(1)
            self.double(k)

    def _index(self):
        self.next_index += 1
        return self.next_index - 1

    def table(self, items):
        self.int(3)
        self.int(self._index())
        self.int(len(items))
        for k, v in items:
            self.key(k)
            self.value(v)

    def value(self, v):
        if callable(v):
            v(self)
        elif isinstance(v, bool):
            self.int(5)
            self.int(int(v))
        else:
            self.key(v)

    def header(self, class_name):
        self.int(4)
        self.int(self._index())
        for s in ("V 1", class_name):
            self.int(len(s))
            self.chars(s.encode())

    def storage(self, values: np.ndarray, class_name="torch.FloatStorage"):
        self.header(class_name)
        self.longs([values.size])
        if self.ascii:
            self._ints([float(v) for v in values], "f")
        else:
            self.out += values.astype("<f4").tobytes()

    def tensor(self, shape, stride, offset, storage_values):
        self.header("torch.FloatTensor")
        self.int(len(shape))
        self.longs(shape)
        self.longs(stride)
        self.longs([offset + 1])
        if storage_values is None:
            self.int(0)
        else:
            self.storage(storage_values)

    def module(self, class_name, fields):
        self.header(class_name)
        self.table(fields)


RNG = np.random.default_rng(0)
W1, B1 = RNG.standard_normal((4, 3)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
W2, B2 = RNG.standard_normal((2, 4)).astype(np.float32), RNG.standard_normal(2).astype(np.float32)


def _contiguous(arr):
    return lambda w: w.tensor(
        arr.shape, [int(np.prod(arr.shape[i + 1 :])) for i in range(arr.ndim)], 0, arr.reshape(-1)
    )


def _empty(w):
    w.tensor([], [], 0, None)


def write_sequential(ascii=False, long_size=8) -> bytes:
    w = _Writer(ascii, long_size)
    # layer 2's weight is a transposed view (strides 1, 2) of a (4, 2) storage, and its bias
    # sits at offset 3 of a shared 5-element storage: both must come out as PyTorch sees them
    w2_storage = np.ascontiguousarray(W2.T).reshape(-1)
    b2_storage = np.concatenate([np.zeros(3, np.float32), B2])
    linear1 = lambda w: w.module(
        "nn.Linear",
        [  # noqa: E731
            ("weight", _contiguous(W1)),
            ("bias", _contiguous(B1)),
            ("gradWeight", _empty),
            ("train", True),
        ],
    )
    relu = lambda w: w.module("nn.ReLU", [("inplace", False)])  # noqa: E731
    linear2 = lambda w: w.module(
        "nn.Linear",
        [  # noqa: E731
            ("weight", lambda w: w.tensor((2, 4), (1, 2), 0, w2_storage)),
            ("bias", lambda w: w.tensor((2,), (1,), 3, b2_storage)),
        ],
    )
    w.module(
        "nn.Sequential",
        [
            ("modules", lambda w: w.table([(1.0, linear1), (2.0, relu), (3.0, linear2)])),
            ("output", _empty),
            ("_type", "torch.FloatTensor"),
        ],
    )
    return bytes(w.out)


@pytest.fixture(
    params=[("binary", 8), ("binary", 4), ("ascii", 8)], ids=["long8", "long4", "ascii"]
)
def sequential_file(request, tmp_path):
    variant, long_size = request.param
    path = tmp_path / "net.t7"
    path.write_bytes(write_sequential(variant == "ascii", long_size))
    return path, variant, long_size


def test_sequential_names_values_and_tree(sequential_file):
    path, variant, long_size = sequential_file
    assert identify(path).variant == variant
    info = inspect(path)
    assert [t.name for t in info.tensors] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [t.shape for t in info.tensors] == [(4, 3), (4,), (2, 4), (2,)]
    assert info.dtypes == {"float32": 4} and info.n_parameters == 12 + 4 + 8 + 2
    expected = {"0.weight": W1, "0.bias": B1, "2.weight": W2, "2.bias": B2}
    for lazy in info.lazy_tensors():
        np.testing.assert_array_equal(lazy.load(), expected[lazy.name])
    details = info.details["torch7"]
    assert details["torch_class"] == "nn.Sequential" and details["version"] == "V 1"
    assert details["modules"] == {
        "": "nn.Sequential",
        "0": "nn.Linear",
        "1": "nn.ReLU",
        "2": "nn.Linear",
    }
    assert details["n_empty_tensors"] == 2
    if variant == "binary":
        assert details["long_size"] == long_size
        assert info.tensor("0.weight").data_offset is not None  # contiguous: offset known
        assert info.tensor("2.weight").data_offset is None  # a transposed view


def write_trained_sequential() -> bytes:
    """The Sequential as Lua nn keeps it after a training step: every module also holds its
    gradients (gradWeight, gradBias), its last output and gradInput (non-empty)."""
    w = _Writer(False, 8)
    state = (
        lambda *shape: (
            lambda w: w.tensor(  # noqa: E731
                shape,
                tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape))),
                0,
                np.ones(int(np.prod(shape)), np.float32),
            )
        )
    )
    linear1 = lambda w: w.module(
        "nn.Linear",
        [  # noqa: E731
            ("weight", _contiguous(W1)),
            ("bias", _contiguous(B1)),
            ("gradWeight", state(4, 3)),
            ("gradBias", state(4)),
            ("output", state(1, 4)),
            ("gradInput", state(1, 3)),
        ],
    )
    relu = lambda w: w.module("nn.ReLU", [("output", state(1, 4))])  # noqa: E731
    linear2 = lambda w: w.module(
        "nn.Linear",
        [  # noqa: E731
            ("weight", _contiguous(W2)),
            ("bias", _contiguous(B2)),
            ("gradWeight", state(2, 4)),
            ("gradBias", state(2)),
        ],
    )
    w.module(
        "nn.Sequential",
        [
            ("modules", lambda w: w.table([(1.0, linear1), (2.0, relu), (3.0, linear2)])),
            ("output", state(1, 2)),
            ("gradInput", state(1, 3)),
        ],
    )
    return bytes(w.out)


TRANSIENT = [
    "0.gradWeight",
    "0.gradBias",
    "0.output",
    "0.gradInput",
    "1.output",
    "2.gradWeight",
    "2.gradBias",
    "output",
    "gradInput",
]


def test_trained_module_state_is_listed_but_not_counted(tmp_path):
    path = tmp_path / "trained.t7"
    path.write_bytes(write_trained_sequential())
    info = inspect(path)
    assert sorted(t.name for t in info.tensors if t.extra.get("transient")) == sorted(TRANSIENT)
    assert info.n_parameters == 12 + 4 + 8 + 2  # the model's, not its gradients' too


def test_trained_module_to_pytorch_loads_strictly(tmp_path):
    """torch7 -> pytorch writes what the PyTorch module holds (strict load_state_dict works)
    and names what it left out, in --json too."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "trained.t7"
    path.write_bytes(write_trained_sequential())
    out = tmp_path / "net.pt"
    code, stdout, err = run_cli("convert", path, out, "--to", "pytorch", "--json", "-q")
    assert code == 0, err
    step = json.loads(stdout)["steps"][0]
    assert sorted(step["details"]["dropped"]) == sorted(TRANSIENT)
    assert any("left out 9 tensors" in w for w in step["warnings"])
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    np.testing.assert_array_equal(net[0].weight.detach().numpy(), W1)
    np.testing.assert_array_equal(net[2].bias.detach().numpy(), B2)


def test_cli_tensors_json(sequential_file):
    path, _, _ = sequential_file
    code, out, err = run_cli("tensors", path, "--json")
    assert code == 0, err
    assert [(t["name"], t["shape"]) for t in json.loads(out)["tensors"]][:2] == [
        ("0.weight", [4, 3]),
        ("0.bias", [4]),
    ]


def test_legacy_unversioned_class_and_cycle(tmp_path):
    # pre-versioning files write the class name where "V 1" would be; a table holding itself
    raw = (
        struct.pack("<ii", 4, 1)
        + struct.pack("<i", 7)
        + b"nn.ReLU"
        + struct.pack("<iii", 3, 2, 1)
        + struct.pack("<ii", 2, 4)
        + b"self"
        + struct.pack("<ii", 3, 2)
    )
    p = tmp_path / "legacy.t7"
    p.write_bytes(raw)
    info = inspect(p)
    assert info.details["torch7"]["torch_class"] == "nn.ReLU"
    assert "version" not in info.details["torch7"] and info.n_tensors == 0


def test_recursive_table_from_corpus_terminates():
    info = inspect(corpus_path("torch7_binary/python-torchfile/recursive_kv_table.t7"))
    assert info.details["torch7"]["n_keys"] == 1


def test_truncations_are_one_line_errors(tmp_path):
    raw = write_sequential()
    for cut in (12, 40, 97, len(raw) // 2, len(raw) - 3):
        p = tmp_path / f"cut{cut}.t7"
        p.write_bytes(raw[:cut])
        code, out, err = run_cli("info", p)
        assert code == 2, (cut, out)
        assert "Traceback" not in err and err.count("\n") == 1, err
        # 12 bytes (three ints) are too few to tell Torch7 from other bytes; past that it is
        # recognised as Torch7 and the reader says where it broke
        if cut == 12:
            assert "not a model file keishiki recognises" in err, err
        else:
            assert "corrupt or truncated at byte" in err, err


@pytest.mark.parametrize(
    "payload,reason",
    [
        (struct.pack("<iii", 3, 1, 2**31 - 1), "does not fit"),  # table size
        (
            struct.pack("<ii", 4, 1)
            + struct.pack("<i", 3)
            + b"V 1"
            + struct.pack("<i", 17)
            + b"torch.FloatTensor"
            + struct.pack("<i", 1000),
            "dimensions",
        ),  # ndim
        (
            struct.pack("<ii", 4, 1)
            + struct.pack("<i", 3)
            + b"V 1"
            + struct.pack("<i", 18)
            + b"torch.FloatStorage"
            + struct.pack("<q", 2**62)
            + b"\0" * 64,
            "does not fit",
        ),
    ],
)
def test_absurd_sizes(tmp_path, payload, reason):
    p = tmp_path / "absurd.t7"
    p.write_bytes(payload + b"\0" * 40)
    code, _, err = run_cli("info", p)  # the sniffer already refuses it
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    with pytest.raises(CorruptFile, match=reason), Source(p) as src:  # the reader says why
        torch7.read(src, Match("torch7", "binary", "torch7"))


def test_strided_view_outside_storage_is_corrupt(tmp_path):
    w = _Writer()
    w.tensor((4,), (2,), 0, np.zeros(5, np.float32))  # reaches element 6 of 5
    p = tmp_path / "view.t7"
    p.write_bytes(bytes(w.out))
    with pytest.raises(CorruptFile, match="outside its storage"), Source(p) as src:
        torch7.read(src, Match("torch7", "binary", "torch7"))


@pytest.mark.parametrize(
    "data",
    [
        b"\x03\x00\x00\x00\x02\x00\x00\x00" + b"\0" * 20,
        b"4\n1\n3\nX 1\n" * 3,
        b"\x04\x00\x00\x00" * 50,
        bytes(range(256)),
    ],
)
def test_garbage_is_not_torch7(tmp_path, data):
    p = tmp_path / "garbage.bin"
    p.write_bytes(data)
    code, _, err = run_cli("info", p)
    assert code == 2 and "not a model file" in err and "Traceback" not in err


def test_inspect_does_not_import_torch():
    path = corpus_path("torch7_binary/python-torchfile/floattensor.t7")
    script = f"import sys, keishiki; keishiki.inspect({str(path)!r}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_module_named_by_its_place_in_modules_not_first_field(tmp_path):
    # nngraph's gModule keeps each module in its graph nodes *and* in `modules`; the file
    # may list the nodes first. PyTorch-style names must still come from `modules`.
    w = _Writer()
    seen = {}

    def linear(w):
        seen["index"] = w.next_index
        w.module("nn.Linear", [("weight", _contiguous(W1))])

    def again(w):  # a memo reference to the Linear written above
        w.int(4)
        w.int(seen["index"])

    w.module(
        "nn.gModule",
        [
            (
                "forwardnodes",
                lambda w: w.table(
                    [
                        (
                            1.0,
                            lambda w: w.module(
                                "nngraph.Node", [("data", lambda w: w.table([("module", linear)]))]
                            ),
                        )
                    ]
                ),
            ),
            ("modules", lambda w: w.table([(1.0, again)])),
        ],
    )
    p = tmp_path / "gmodule.t7"
    p.write_bytes(bytes(w.out))
    info = inspect(p)
    assert [t.name for t in info.tensors] == ["0.weight"]
    assert info.details["torch7"]["modules"]["0"] == "nn.Linear"
    np.testing.assert_array_equal(info.tensor_loader(info.tensors[0]), W1)


def test_ascii_empty_storage_and_strings(tmp_path):
    # an empty storage writes no value line at all; the next value must not be swallowed
    text = ("3\n1\n2\n2\n1\na\n4\n2\n3\nV 1\n18\ntorch.FloatStorage\n0\n2\n1\nb\n2\n0\n") + "\n"
    p = tmp_path / "empty.t7"
    p.write_text(text)
    info = inspect(p)
    assert info.variant == "ascii" and info.details["torch7"]["n_keys"] == 2
    assert [(t.name, t.shape) for t in info.tensors] == [("a", (0,))]


def test_tds_hash_counts_keys(tmp_path):
    w = _Writer()
    w.header("tds.Hash")
    w.int(2)  # element count
    w.int(0)  # the (nil) metatable slot tds writes first
    for key, value in (("a", 1.0), (1.0, 2.0)):
        w.key(key)
        w.value(value)
    p = tmp_path / "hash.t7"
    p.write_bytes(bytes(w.out))
    details = inspect(p).details["torch7"]
    assert details["torch_class"] == "tds.Hash" and details["n_keys"] == 2
    assert "len" not in details
