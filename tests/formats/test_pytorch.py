"""pytorch (torch.save zip and legacy): corpus facts, values equal torch.load, kinds, and
that reading never imports torch, runs code or reads storage bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from keishiki import inspect
from keishiki.core.source import Source
from keishiki.errors import CorruptFile, KeishikiError
from keishiki.formats import identify
from tests.conftest import FACTS, corpus_path, run_cli

CORPUS = sorted(
    k
    for k in FACTS
    if k.startswith(("pytorch_zip/", "pytorch_legacy/")) or k == "hf_dir/tiny-bert-io.pt"
)


def flatten(obj, prefix=""):
    """{dotted name: tensor} the way keishiki names them (torch side, for comparisons)."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix or "tensor", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}.{i}" if prefix else str(i))


def assert_same_values(path: Path, expected: dict | None = None):
    """Every tensor keishiki loads equals torch.load(weights_only=True)'s, bit for bit."""
    import torch

    info = inspect(path)
    if expected is None:
        expected = dict(flatten(torch.load(path, weights_only=True, map_location="cpu")))
    assert sorted(t.name for t in info.tensors) == sorted(expected)
    for lazy in info.lazy_tensors():
        got, want = lazy.load(), expected[lazy.name]
        assert got.flags["C_CONTIGUOUS"]
        assert list(got.shape) == list(want.shape), lazy.name
        assert lazy.info.dtype == str(want.dtype).removeprefix("torch."), lazy.name
        want_np = (
            want.contiguous().view(torch.int16).numpy()
            if want.dtype == torch.bfloat16
            else want.numpy()
        )
        got_np = got.view(np.int16) if want.dtype == torch.bfloat16 else got
        assert np.array_equal(got_np, want_np), lazy.name
    return info


# ---- the real-file corpus ---------------------------------------------------------------------
@pytest.mark.parametrize("rel", CORPUS)
def test_corpus_facts(rel):
    facts = FACTS[rel]
    info = inspect(corpus_path(rel))
    d = info.to_dict()
    assert d["format"] == "pytorch"
    assert d["variant"] == ("legacy" if rel.startswith("pytorch_legacy") else "zip")
    assert d["n_tensors"] == facts["tensor_count"]
    assert d["dtypes"] == facts["dtypes"]
    assert d["n_parameters"] == facts["total_numel"]
    listed = [f"{t.name}:{t.dtype}{list(t.shape)}" for t in info.tensors]
    assert listed[: len(facts["tensors_first"])] == facts["tensors_first"]
    p = d["pytorch"]  # format-specific facts live under the format id
    assert p["globals"] == facts["pickle_globals"]
    assert p["root_type"] == facts["root_type"]
    assert p["n_top_keys"] == facts["n_top_keys"]
    assert p["top_keys"][: len(facts["top_keys_first"])] == facts["top_keys_first"]
    assert p["pickle_protocol"] == facts.get("pickle_protocol", facts.get("data_pkl_protocol"))
    assert p["n_storages"] == facts["n_storages"] if "n_storages" in facts else True
    assert d["total_bytes"] == sum(t.nbytes for t in info.tensors)
    if d["variant"] == "legacy":
        assert p["magic_number"] == facts["magic_number"]
        assert p["protocol_version"] == facts["protocol_version"] == 1001
        assert p["sys_info"] == facts["sys_info"]
        assert p["python2_pickle"] == facts["python2_pickle"]
    else:
        assert p["archive_prefix"] == facts["archive_prefix"]
        assert p["version_record"] == facts["version_record"]
        assert p["has_byteorder"] == facts["has_byteorder"]
        assert p["has_serialization_id"] == facts["has_serialization_id"]
        assert p["n_records"] == facts["n_records"]
    for name in facts.get("non_contiguous", []):
        assert info.tensor(name).extra.get("contiguous") is False


@pytest.mark.parametrize("rel", CORPUS)
def test_corpus_values_equal_torch_load(rel):
    pytest.importorskip("torch")
    assert_same_values(corpus_path(rel))


def test_corpus_kinds():
    assert (
        inspect(corpus_path("pytorch_zip/candle/test_with_key.pt")).details["pytorch"]["kind"]
        == "checkpoint"
    )
    info = inspect(corpus_path("pytorch_zip/torch-1.13.1-debian/mixed_dtypes_views_zip.pt"))
    d = info.details["pytorch"]
    assert d["kind"] == "state_dict"
    assert d["shared_storages"] == [
        {"storage_key": "8", "tensors": ["view_a", "view_b", "transposed"]}
    ]
    view_b = info.tensor("view_b")
    assert view_b.extra["storage_offset"] == 6 and view_b.extra["stride"] == [2, 1]
    assert view_b.data_offset == info.tensor("view_a").data_offset + 6 * 4


# ---- tiny files written here ------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A dict of awkward tensors saved as zip and as legacy, plus the tensors themselves."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "f64": torch.randn(2).double(),
        "i64": torch.arange(7),
        "i32": torch.tensor([1, -2], dtype=torch.int32),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "u8": torch.tensor([250, 3], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "base": base,
        "row": base[1],  # view with storage offset
        "col": base[:, 2],  # strided view
        "t": base.t(),  # transposed, non-contiguous
        "slice": base[1:3, ::2],  # offset + step
        "tied": None,
    }
    tensors["tied"] = tensors["f32"]  # the same tensor under two names
    out = tmp_path_factory.mktemp("pt")
    zip_path, legacy_path = out / "mixed.pt", out / "mixed_legacy.pt"
    torch.save(tensors, zip_path)
    torch.save(tensors, legacy_path, _use_new_zipfile_serialization=False)
    return zip_path, legacy_path, tensors


@pytest.mark.parametrize("variant", ["zip", "legacy"])
def test_saved_values(saved, variant):
    path = saved[0] if variant == "zip" else saved[1]
    assert identify(path).variant == variant
    info = assert_same_values(path, saved[2])
    d = info.details["pytorch"]
    assert d["kind"] == "state_dict" and d["root_type"] == "builtins.dict"
    shared = {s["storage_key"]: s["tensors"] for s in d["shared_storages"]}
    assert ["base", "row", "col", "t", "slice"] in shared.values()
    assert ["f32", "tied"] in shared.values()
    assert info.tensor("t").extra["contiguous"] is False
    assert info.tensor("slice").nbytes == 2 * 3 * 4
    assert info.tensor("scalar").shape == () and info.tensor("empty").shape == (0, 3)


def test_saved_zip_offsets_point_at_the_bytes(saved):
    zip_path, _, tensors = saved
    info = inspect(zip_path)
    raw = zip_path.read_bytes()
    f32 = info.tensor("f32")
    assert raw[f32.data_offset : f32.data_offset + f32.nbytes] == tensors["f32"].numpy().tobytes()
    # torch.save names the archive's root folder after the file: mixed.pt -> mixed/
    assert f32.file == "mixed/data/" + f32.extra["storage_key"]


def test_checkpoint_with_optimizer(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    ckpt = {
        "epoch": 3,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "nested": {"ema": {"w": torch.ones(2)}},
    }
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    info = assert_same_values(path)
    d = info.details["pytorch"]
    assert d["kind"] == "checkpoint"
    assert set(d["checkpoint_keys"]) == {"epoch", "model_state_dict", "optimizer_state_dict"}
    names = {t.name for t in info.tensors}
    assert {
        "model_state_dict.0.weight",
        "model_state_dict.2.bias",
        "optimizer_state_dict.state.0.exp_avg",
        "optimizer_state_dict.state.3.exp_avg_sq",
        "nested.ema.w",
    } <= names


def test_single_tensor_and_parameter(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.arange(6).reshape(2, 3), tmp_path / "t.pt")
    info = inspect(tmp_path / "t.pt")
    assert info.details["pytorch"]["kind"] == "tensor"
    assert [(t.name, t.shape) for t in info.tensors] == [("tensor", (2, 3))]
    assert np.array_equal(next(info.lazy_tensors()).load(), np.arange(6).reshape(2, 3))
    torch.save({"p": torch.nn.Parameter(torch.ones(2))}, tmp_path / "p.pt")
    info = inspect(tmp_path / "p.pt")
    assert info.tensor("p").extra["tensor_kind"] == "parameter"
    assert "torch._utils._rebuild_parameter" in info.details["pytorch"]["globals"]


MODULE_SRC = textwrap.dedent("""
    import pathlib
    import torch

    MARKER = pathlib.Path(__file__).with_name("MARKER")

    class TinyNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            self.register_buffer("steps", torch.zeros(1, dtype=torch.int64))

        def __setstate__(self, state):  # would run on torch.load(weights_only=False)
            MARKER.write_text("code ran")
            super().__setstate__(state)
""")


@pytest.mark.parametrize("legacy", [False, True])
def test_whole_pickled_module(tmp_path, monkeypatch, legacy):
    torch = pytest.importorskip("torch")
    (tmp_path / "tinynet_mod.py").write_text(MODULE_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("tinynet_mod")
    path = tmp_path / "whole.pt"
    torch.save(mod.TinyNet(), path, _use_new_zipfile_serialization=not legacy)
    sys.modules.pop("tinynet_mod")
    info = inspect(path)
    d = info.details["pytorch"]
    assert d["kind"] == "module"
    assert d["module_classes"] == ["tinynet_mod.TinyNet", "torch.nn.modules.linear.Linear"]
    assert "weights_only=False" in d["loading"] and "nn.Module" in d["loading"]
    # pickle order: the module's _buffers are pickled before its _modules
    assert [t.name for t in info.tensors] == ["steps", "fc.weight", "fc.bias"]
    assert any("nn.Module" in w for w in info.warnings)
    assert not (tmp_path / "MARKER").exists()
    assert "tinynet_mod" not in sys.modules
    code, out, _ = run_cli("info", path, "--json")
    # info describes (exit 0) even when its safety section says unknown/dangerous; scan judges
    assert code == 0 and json.loads(out)["pytorch"]["kind"] == "module"


def test_info_reads_no_storage_bytes(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(4_000_000)}, path)  # 16 MB storage
    members: list[str] = []
    original = Source.read_member

    def spy(self, name, limit=256 * 1024 * 1024):
        members.append(name)
        return original(self, name, limit)

    monkeypatch.setattr(Source, "read_member", spy)
    info = inspect(path)
    assert info.tensor("w").nbytes == 16_000_000
    assert not [m for m in members if "/data/" in m]


def test_import_light_subprocess(saved):
    zip_path, legacy_path, _ = saved
    scripted = corpus_path("torchscript/torch-1.13.1-debian/tinynet_scripted.pt")
    code = textwrap.dedent(f"""
        import sys, keishiki
        for p in {[str(zip_path), str(legacy_path), str(scripted)]!r}:
            info = keishiki.inspect(p)
            assert info.n_tensors > 0, p
        assert 'torch' not in sys.modules, 'torch was imported'
        print('ok')
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


# ---- bad input ----------------------------------------------------------------------------------
def test_truncated_legacy(saved, tmp_path):
    _, legacy_path, _ = saved
    raw = legacy_path.read_bytes()
    for cut in (20, 100, 400, len(raw) - 10):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(raw[:cut])
        with pytest.raises(CorruptFile):
            inspect(bad)
        code, out, err = run_cli("info", bad)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_broken_zip_members(saved, tmp_path):
    zip_path, _, _ = saved
    with zipfile.ZipFile(zip_path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    cases = {
        "truncated_pkl": {**members, pkl: members[pkl][: len(members[pkl]) // 2]},
        "missing_storage": {n: v for n, v in members.items() if not n.endswith("/data/0")},
        "short_storage": {**members, next(n for n in members if n.endswith("/data/0")): b"\0"},
    }
    for label, content in cases.items():
        bad = tmp_path / f"{label}.pt"
        with zipfile.ZipFile(bad, "w") as zf:
            for n, v in content.items():
                zf.writestr(n, v)
        with pytest.raises(KeishikiError):
            inspect(bad)
        code, _, err = run_cli("tensors", bad)
        assert code == 2 and "Traceback" not in err, label


def test_hostile_view_and_storage_numbers(tmp_path):
    # a data.pkl whose tensor claims a 2^40-element view of a 1-element storage

    pkl = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
        b"X\x03\x00\x00\x00cpuK\x01tQ"
        b"K\x00\x8a\x06\x00\x00\x00\x00\x00\x01\x85K\x01\x85\x89NtR."
    )
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", b"\0\0\0\0")
    with pytest.raises(CorruptFile, match="overruns"):
        inspect(bad)


def test_legacy_sniff_is_strict(tmp_path):
    import pickle

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert identify(plain).format == "pickle"
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little"))
    with pytest.raises(KeishikiError):
        inspect(fake)


# ---- fuzz: only keishiki's own errors may escape the readers ------------------------------------
def _fuzz_one(tmp_dir: Path, name: str, data: bytes, monkeypatch) -> None:
    path = tmp_dir / name
    path.write_bytes(data)
    monkeypatch.setenv("KEISHIKI_DEBUG", "1")  # let any non-keishiki exception through
    try:
        info = inspect(path)
        for lazy in list(info.lazy_tensors())[:3] if info.tensor_loader else []:
            lazy.load()
    except KeishikiError:
        pass


@pytest.fixture(scope="module")
def fuzz_seeds(saved, tmp_path_factory):
    zip_path, legacy_path, _ = saved
    with zipfile.ZipFile(zip_path) as zf:
        pkl_name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        members = {n: zf.read(n) for n in zf.namelist()}
    return legacy_path.read_bytes(), members, pkl_name, tmp_path_factory.mktemp("fuzz")


def test_fuzz_legacy_bytes(fuzz_seeds, monkeypatch):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    legacy, _, _, tmp_dir = fuzz_seeds

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        buf = bytearray(legacy[:2000])  # the pickles and the first storages
        for _ in range(data.draw(st.integers(1, 5))):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        _fuzz_one(tmp_dir, "legacy.pt", bytes(buf) + legacy[2000:], monkeypatch)

    run()


def test_fuzz_zip_data_pkl(fuzz_seeds, monkeypatch):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, members, pkl_name, tmp_dir = fuzz_seeds

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        pkl = bytearray(members[pkl_name])
        for _ in range(data.draw(st.integers(1, 5))):
            pkl[data.draw(st.integers(0, len(pkl) - 1))] = data.draw(st.integers(0, 255))
        path = tmp_dir / "fuzz.pt"
        with zipfile.ZipFile(path, "w") as zf:
            for n, v in members.items():
                zf.writestr(n, bytes(pkl) if n == pkl_name else v)
        _fuzz_one(tmp_dir, "fuzz.pt", path.read_bytes(), monkeypatch)

    run()


def test_big_endian_zip(saved, tmp_path):
    """A checkpoint written on a big-endian machine (byteorder record 'big') loads right."""
    zip_path, _, tensors = saved
    info = inspect(zip_path)
    itemsize = {
        t.extra["storage_key"]: np.dtype(t.dtype if t.dtype != "bfloat16" else "int16").itemsize
        for t in info.tensors
    }
    bad = tmp_path / "big_endian.pt"
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            key = item.filename.rsplit("/data/", 1)[-1] if "/data/" in item.filename else None
            if item.filename.endswith("/byteorder"):
                data = b"big"
            elif key in itemsize and itemsize[key] > 1:
                data = np.frombuffer(data, f"u{itemsize[key]}").byteswap().tobytes()
            dst.writestr(item, data)
    got = inspect(bad)
    assert got.details["pytorch"]["byteorder"] == "big"
    assert_same_values(bad, {k: v for k, v in tensors.items()})


def test_quantized_and_meta(tmp_path):
    torch = pytest.importorskip("torch")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.tensor([0.5, -1.0, 2.0]), 0.5, 1, torch.qint8)
    torch.save({"q": q, "m": torch.empty(2, 3, device="meta")}, tmp_path / "qm.pt")
    info = inspect(tmp_path / "qm.pt")
    tq, tm = info.tensor("q"), info.tensor("m")
    assert tq.dtype == "qint8" and tq.extra["quantizer"] == ["torch.per_tensor_affine", 0.5, 1]
    loaded = {lt.name: lt for lt in info.lazy_tensors()}
    assert loaded["q"].load().tolist() == q.int_repr().tolist()
    assert tm.extra["device"] == "meta" and tm.shape == (2, 3)
    with pytest.raises(KeishikiError, match="meta"):
        loaded["m"].load()


def test_list_root_is_other(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save([torch.ones(2), {"x": torch.zeros(1)}], tmp_path / "l.pt")
    info = inspect(tmp_path / "l.pt")
    assert info.details["pytorch"]["kind"] == "other"
    assert [t.name for t in info.tensors] == ["0", "1.x"]
    assert info.details["pytorch"]["root_type"] == "builtins.list"


def test_recompressed_zip_still_loads(saved, tmp_path):
    """Archives re-zipped with deflate (not what torch writes) have no data_offset but load."""
    zip_path, _, tensors = saved
    deflated = tmp_path / "deflated.pt"
    with (
        zipfile.ZipFile(zip_path) as src,
        zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    info = assert_same_values(deflated, tensors)
    assert all(t.data_offset is None for t in info.tensors)


def test_expanded_views(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(3.0)
    tensors = {"row": base.expand(4, 3), "scalar_bcast": torch.tensor(7.0).expand(5)}
    torch.save(tensors, tmp_path / "expand.pt")
    assert_same_values(tmp_path / "expand.pt", tensors)


def _flagged_and_v3_tensors():
    """Tensors torch saves with a lazy neg/conj bit (``metadata``) or through
    ``_rebuild_tensor_v3`` (an untyped byte storage and the dtype apart)."""
    import torch

    g = torch.Generator().manual_seed(7)
    z, z2 = (torch.randn(2, 3, dtype=torch.complex64, generator=g) for _ in range(2))
    x = torch.randn(2, 3, generator=g)
    neg = z.conj().imag  # float32, stored un-negated with {"neg": True}
    return {
        "plain_imag": z.imag,  # the same storage, offset, shape and stride, no neg bit
        "neg_view": neg,
        "neg_t": neg.t(),  # and a strided view of it
        "conj_view": z2.conj(),  # complex64, stored un-conjugated with {"conj": True}
        "f8": x.to(torch.float8_e4m3fn),
        "f8_t": x.to(torch.float8_e5m2).t(),
        "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
        "u32": torch.tensor([0, 7, 2**32 - 1], dtype=torch.uint32),
        "u64": torch.tensor([0, 9, 2**63], dtype=torch.uint64),
        "plain": x,
    }


@pytest.mark.parametrize("legacy", [False, True])
def test_neg_conj_bits_and_untyped_storages_read_as_torch_loads_them(tmp_path, legacy):
    """``torch.load`` applies a tensor's neg/conj bits (copying the stored bytes flipped
    signs: a verified conversion wrote negated weights) and reads float8/uint16+ tensors of
    ``_rebuild_tensor_v3`` (refused as "unknown storage type UntypedStorage"): keishiki's
    loader and a converted safetensors file give the same bits."""
    import torch
    from safetensors.torch import load_file

    import keishiki

    tensors = _flagged_and_v3_tensors()
    path = tmp_path / "flags.pt"
    torch.save(tensors, path, _use_new_zipfile_serialization=not legacy)
    info = inspect(path)
    assert info.tensor("neg_view").extra["torch_flags"] == ["neg"]
    assert info.tensor("conj_view").extra["torch_flags"] == ["conj"]
    assert "torch_flags" not in info.tensor("plain").extra
    out = tmp_path / "flags.safetensors"
    report = keishiki.convert(path, out, to="safetensors")
    assert report.passed and report.verified
    converted = load_file(out)
    for lazy in info.lazy_tensors():
        want = tensors[lazy.name].resolve_neg().resolve_conj().contiguous()
        assert lazy.info.dtype == str(want.dtype).removeprefix("torch."), lazy.name
        want_bytes = want.view(torch.uint8).numpy().tobytes()
        assert lazy.load().tobytes() == want_bytes, lazy.name
        got = converted[lazy.name].contiguous()
        assert got.view(torch.uint8).numpy().tobytes() == want_bytes, lazy.name


def test_an_unknown_value_flag_is_refused_on_load(tmp_path):
    from keishiki.formats._torch_pickle import apply_flags

    arr = np.arange(3, dtype=np.float32)
    assert apply_flags(arr, ("neg",), "t").tolist() == [0.0, -1.0, -2.0]
    with pytest.raises(KeishikiError, match="torch metadata 'zeroed' changes its values"):
        apply_flags(arr, ("zeroed",), "t")
