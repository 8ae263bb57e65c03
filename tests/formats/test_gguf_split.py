"""Split GGUF models (``NAME-00001-of-0000N.gguf``...): read as one model from any split or
the folder, refused in one line when a split is missing or disagrees, and written by
``convert --split-max-size / --split-max-tensors`` the way gguf-py writes them.

Splits are made on the spot with gguf-py's ``GGUFWriter(split_max_tensors=)``, the writer
llama.cpp's ``convert_hf_to_gguf.py --split-max-tensors`` uses; values are checked against
``gguf.GGUFReader`` of each split.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import keishiki
from keishiki import inspect
from keishiki.errors import CorruptFile, InvalidRequest, UnsafeFile
from keishiki.formats import identify
from tests.conftest import run_cli

gguf = pytest.importorskip("gguf")

NAMES = [f"m-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "tok_embd.weight": rng.standard_normal((8, 32)).astype(np.float32),
        "blk.0.attn_q.weight": rng.standard_normal((32, 32)).astype(np.float16),
        "blk.0.q8": rng.standard_normal((2, 64)).astype(np.float32),  # stored as Q8_0
        "blk.0.ids": np.arange(6, dtype=np.int32).reshape(2, 3),
        "output_norm.weight": rng.standard_normal(32).astype(np.float32),
    }


def _write(path: Path, arrays: dict[str, np.ndarray], **split) -> None:
    """``arrays`` through GGUFWriter (``blk.0.q8`` quantized to Q8_0), split as asked."""
    # an architecture keishiki has no HF names for: conversions keep these names
    w = gguf.GGUFWriter(str(path), "tiny", **split)
    w.add_name("tiny")
    w.add_uint32("tiny.block_count", 1)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(20)])
    for name, arr in arrays.items():
        if name == "blk.0.q8":
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """The five tensors in three splits (2 + 2 + 1), as gguf-py names them."""
    folder = tmp_path_factory.mktemp("split") / "model"
    folder.mkdir()
    _write(folder / "m.gguf", _arrays(), split_max_tensors=2)
    assert sorted(p.name for p in folder.iterdir()) == NAMES
    return folder


@pytest.fixture
def split_copy(split_dir, tmp_path) -> Path:
    """A copy of the split folder a test may break."""
    return Path(shutil.copytree(split_dir, tmp_path / "model"))


def _reference(folder: Path, names: list[str]) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (file, raw data) from gguf.GGUFReader of each split."""
    return {
        t.name: (name, np.asarray(t.data))
        for name in names
        for t in gguf.GGUFReader(str(folder / name)).tensors
    }


@pytest.mark.parametrize("target", [NAMES[0], NAMES[1], NAMES[2], "."])
def test_any_split_or_the_folder_reads_the_whole_model(split_dir, target):
    info = inspect(split_dir / target)
    ref = _reference(split_dir, NAMES)
    assert info.format == "gguf" and info.variant == "split"
    assert [t.name for t in info.tensors] == list(_arrays()) == list(ref)
    assert info.gguf["tensor_count"] == info.n_tensors == 5
    assert info.gguf["splits"] == {
        "count": 3,
        "files": NAMES,
        "n_tensors": [2, 2, 1],
        "bytes": sum((split_dir / n).stat().st_size for n in NAMES),
    }
    assert info.gguf["kv"]["general.name"] == "tiny"  # the first split's metadata
    assert info.gguf["ggml_types"] == {"F32": 2, "F16": 1, "Q8_0": 1, "I32": 1}
    for t in info.tensors:
        file, data = ref[t.name]
        assert t.file == file
        got = info.load_tensor(t)
        assert got.dtype == data.dtype and got.shape == data.shape
        np.testing.assert_array_equal(got, data)


def test_cli_info_and_tensors_show_every_split(split_dir):
    code, out, err = run_cli("info", split_dir / NAMES[1], "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["n_tensors"] == 5 and data["gguf"]["splits"]["count"] == 3
    # the size is the model's, every split's bytes, not the named file's
    assert (
        data["file_size"]
        == sum((split_dir / n).stat().st_size for n in NAMES)
        == data["gguf"]["splits"]["bytes"]
    )
    code, out, err = run_cli("tensors", split_dir / NAMES[2], "--json")
    assert code == 0, err
    files = [t["file"] for t in json.loads(out)["tensors"]]
    assert files == [NAMES[0]] * 2 + [NAMES[1]] * 2 + [NAMES[2]]
    code, out, err = run_cli("info", split_dir)
    assert code == 0 and "splits" in out and "count=3" in out, err


def test_an_unsplit_file_is_read_alone(tmp_path):
    _write(tmp_path / "whole.gguf", _arrays())
    info = inspect(tmp_path / "whole.gguf")
    assert info.variant is None and "splits" not in info.gguf and info.n_tensors == 5
    assert all(t.file is None for t in info.tensors)
    shutil.copy(tmp_path / "whole.gguf", tmp_path / "x-00002-of-00003.gguf")
    info = inspect(tmp_path / "x-00002-of-00003.gguf")  # a plain file with a split's name
    assert info.n_tensors == 5 and "no split.* keys" in info.warnings[-1]


def _write_split(
    path: Path, no: int, count: int, total: int, arrays: dict[str, np.ndarray]
) -> None:
    """One split file written by hand, with whatever split.* keys the test wants."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint16("split.no", no)
    w.add_uint16("split.count", count)
    w.add_int32("split.tensors.count", total)
    for name, arr in arrays.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _missing(folder: Path) -> str:
    (folder / NAMES[1]).unlink()
    return NAMES[1]


def _swapped(folder: Path) -> str:
    (folder / NAMES[1]).rename(folder / "tmp")
    (folder / NAMES[2]).rename(folder / NAMES[1])
    (folder / "tmp").rename(folder / NAMES[2])
    return NAMES[1]


def _recounted(folder: Path) -> str:
    for name in NAMES:  # the names say 4 splits, the keys 3
        (folder / name).rename(folder / name.replace("-of-00003", "-of-00004"))
    return "m-00001-of-00004.gguf"


def _tensor_count(folder: Path) -> str:
    one = {"a": np.zeros(4, np.float32)}
    for i, name in enumerate(NAMES):
        _write_split(folder / name, i, 3, 4, {f"{k}{i}": v for k, v in one.items()})
    return NAMES[0]


def _duplicate(folder: Path) -> str:
    for i, name in enumerate(NAMES):
        _write_split(folder / name, i, 3, 3, {"same": np.zeros(4, np.float32)})
    return NAMES[1]


def _escape(folder: Path) -> str:
    outside = folder.parent / "elsewhere.gguf"
    (folder / NAMES[2]).rename(outside)
    (folder / NAMES[2]).symlink_to(outside)
    return NAMES[2]


# (how the set is broken, error type, what the one line says, exit code: a split that leads
# outside the folder is a finding of the path gate, 1)
BROKEN = [
    (_missing, InvalidRequest, "split 2 of 3 is missing", 2),
    (_swapped, CorruptFile, "its name makes it split 2 of 3", 2),
    (_recounted, CorruptFile, "make it split 1 of 3, but its name is not", 2),
    (_tensor_count, CorruptFile, "split.tensors.count says 4 tensors, but the 3 splits hold 3", 2),
    (_duplicate, CorruptFile, "tensor 'same' is also in m-00001-of-00003.gguf", 2),
    (_escape, UnsafeFile, "outside the model's folder", 1),
]


@pytest.mark.parametrize(
    "breaker, error, message, exit_code", BROKEN, ids=[b[0].__name__.strip("_") for b in BROKEN]
)
def test_a_broken_set_is_refused_in_one_line(
    split_copy, tmp_path, breaker, error, message, exit_code
):
    named = breaker(split_copy)
    first = sorted(p.name for p in split_copy.glob("*.gguf"))[0]
    with pytest.raises(error, match=message) as exc:
        inspect(split_copy / first)
    assert named in str(exc.value)
    for argv in (
        ["info", split_copy / first],
        ["convert", split_copy / first, tmp_path / "o.safetensors", "--to", "safetensors"],
    ):
        code, _out, err = run_cli(*argv)
        assert code == exit_code, err
        assert err.count("\n") == 1 and message in err and named in err
    assert not (tmp_path / "o.safetensors").exists()


def test_an_hf_folder_lists_a_split_model_once(split_copy):
    (split_copy / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    info = inspect(split_copy)
    assert info.format == "hf-model" and [t.name for t in info.tensors] == list(_arrays())


def test_a_folder_with_two_models_asks_for_one(split_copy):
    _write(split_copy / "other.gguf", _arrays())
    assert identify(split_copy).format == "gguf"
    with pytest.raises(
        InvalidRequest,
        match=r"holds 2 GGUF models \(m-00001-of-00003.gguf, "
        r"other.gguf\); name the file",
    ):
        inspect(split_copy)


def test_a_later_split_alone_names_the_first_as_missing(split_copy):
    (split_copy / NAMES[0]).unlink()
    with pytest.raises(InvalidRequest, match="m-00001-of-00003.gguf: split 1 of 3 is missing"):
        inspect(split_copy)


@pytest.mark.parametrize("target", [NAMES[0], NAMES[2], "."])
def test_convert_a_split_model_to_safetensors_writes_every_tensor(split_dir, tmp_path, target):
    from safetensors.numpy import load_file

    out = tmp_path / "all.safetensors"
    report = keishiki.convert(split_dir / target, out, to="safetensors", quiet=True)
    assert report.passed and report.steps[0].n_tensors == 5
    got = load_file(out)
    assert list(got) == list(_arrays())
    for name, (_file, data) in _reference(split_dir, NAMES).items():
        t = next(t for t in gguf.GGUFReader(str(split_dir / _file)).tensors if t.name == name)
        if name == "blk.0.q8":
            data = gguf.quants.dequantize(data, t.tensor_type)
        np.testing.assert_array_equal(got[name], data)


def test_compare_a_split_model_with_its_unsplit_twin(split_dir, tmp_path):
    _write(tmp_path / "whole.gguf", _arrays())
    report = keishiki.compare(split_dir / NAMES[1], tmp_path / "whole.gguf")
    assert report.verdict == "identical" and len(report.tensors) == 5, report


# ---- writing splits ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Six float32 tensors of 4 KB each (and a small one) in a safetensors file."""
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("st") / "w.safetensors"
    rng = np.random.default_rng(2)
    save_file(
        {f"layer{i}.weight": rng.standard_normal((16, 64)).astype(np.float32) for i in range(6)}
        | {"bias": np.ones(3, np.float32)},
        str(path),
    )
    return path


def _split_names(stem: str, count: int) -> list[str]:
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _check_written(folder: Path, names: list[str], weights: Path) -> None:
    """Each split read by GGUFReader: split keys, the first's metadata, every value."""
    from safetensors.numpy import load_file

    source = load_file(weights)
    got = {}
    for i, name in enumerate(names):
        reader = gguf.GGUFReader(str(folder / name))
        fields = {k: f.contents() for k, f in reader.fields.items()}
        assert (fields["split.no"], fields["split.count"], fields["split.tensors.count"]) == (
            i,
            len(names),
            len(source),
        )
        assert ("general.architecture" in fields) == (i == 0)
        got.update({t.name: np.asarray(t.data) for t in reader.tensors})
    assert sorted(got) == sorted(source)
    for name, arr in source.items():
        np.testing.assert_array_equal(got[name].reshape(arr.shape), arr)
    assert [t.name for t in inspect(folder / names[-1]).tensors] == list(got)


@pytest.mark.parametrize(
    "flags, count",
    [
        (["--split-max-tensors", "3"], 3),  # 7 tensors: 3 + 3 + 1
        (["--split-max-size", "9K"], 3),  # 12 + 4096 + 4096 bytes, then two per split
        (["--split-max-size", "1M"], 1),  # fits: written unsplit, as gguf-py does
    ],
)
def test_cli_writes_splits_named_after_out(weights, tmp_path, flags, count):
    out = tmp_path / "out.gguf"
    code, stdout, err = run_cli("convert", weights, out, "--to", "gguf", "--quiet", *flags)
    assert code == 0, err
    written = sorted(p.name for p in tmp_path.iterdir())
    if count == 1:
        assert written == ["out.gguf"] and "written unsplit" in stdout
        return
    assert written == _split_names("out", count)  # out.gguf itself is not written
    assert f"wrote {count} splits" in stdout
    _check_written(tmp_path, written, weights)


def test_splits_into_a_folder_output(tiny_llama, tmp_path):
    out = tmp_path / "gguf-out"  # no suffix, folder source: a folder output
    report = keishiki.convert(tiny_llama, out, to="gguf", quiet=True, split_max_tensors=10)
    assert report.passed, report.to_dict()
    assert sorted(p.name for p in out.iterdir()) == _split_names("gguf-out", 3)
    assert inspect(out).n_tensors == 21


def test_force_replaces_a_previous_set_and_nothing_else(weights, tmp_path):
    out = tmp_path / "out.gguf"
    assert keishiki.convert(weights, out, to="gguf", quiet=True, split_max_tensors=2).passed
    assert sorted(p.name for p in tmp_path.iterdir()) == _split_names("out", 4)
    code, _out, err = run_cli("convert", weights, out, "--to", "gguf", "--split-max-tensors", "3")
    assert code == 2 and "out-00001-of-00004.gguf: already exists (pass --force" in err
    code, _out, err = run_cli(
        "convert", weights, out, "--to", "gguf", "--split-max-tensors", "3", "--force", "--quiet"
    )
    assert code == 0, err
    # the old four are gone, not mixed with the new three; no temporaries left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == _split_names("out", 3)
    _check_written(tmp_path, _split_names("out", 3), weights)
    (tmp_path / "out-00002-of-00003.gguf").write_text("my notes")
    code, _out, err = run_cli(
        "convert", weights, out, "--to", "gguf", "--split-max-tensors", "3", "--force"
    )
    assert code == 2 and "not a model file" in err and err.count("\n") == 1
    assert (tmp_path / "out-00002-of-00003.gguf").read_text() == "my notes"


def test_never_writes_over_the_input(weights, tmp_path):
    link = tmp_path / "out-00001-of-00002.gguf"
    link.symlink_to(weights)
    code, _out, err = run_cli(
        "convert",
        weights,
        tmp_path / "out.gguf",
        "--to",
        "gguf",
        "--split-max-tensors",
        "4",
        "--force",
    )
    assert code == 2 and "refusing to write over the input" in err
    assert link.is_symlink() and os.readlink(link) == str(weights)


def test_failed_verification_keeps_the_splits_together(weights, tmp_path, monkeypatch):
    from keishiki._convert import gguf_edges

    real = gguf_edges.verify_gguf

    def failing(*args, **kwargs):
        result = real(*args, **kwargs)
        return {**result, "passed": False, "reason": "simulated"}

    monkeypatch.setattr(gguf_edges, "verify_gguf", failing)
    code, _out, err = run_cli(
        "convert",
        weights,
        tmp_path / "out.gguf",
        "--to",
        "gguf",
        "--split-max-tensors",
        "4",
        "--quiet",
    )
    assert code == 1 and "simulated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf.unverified"]
    assert sorted(p.name for p in (tmp_path / "out.gguf.unverified").iterdir()) == _split_names(
        "out", 2
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--to", "safetensors", "--split-max-size", "2G"],
            "--split-max-size applies to --to gguf",
        ),
        (
            ["--to", "hf-model", "--split-max-tensors", "2"],
            "--split-max-tensors applies to --to gguf",
        ),
        (["--to", "gguf", "--split-max-size", "0"], "write it like 5GB"),
        (["--to", "gguf", "--split-max-size", "lots"], "write it like 5GB"),
        (["--to", "gguf", "--split-max-tensors", "0"], "--split-max-tensors must be positive"),
    ],
)
def test_bad_split_options_are_refused(weights, tmp_path, argv, message):
    code, _out, err = run_cli("convert", weights, tmp_path / "o.gguf", *argv)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "text, size",
    [
        ("2G", 2 * 10**9),
        ("500M", 5 * 10**8),
        ("9K", 9000),
        ("2GB", 2 * 10**9),
        ("2GiB", 2**31),
        ("1024", 1024),
        (4096, 4096),
    ],
)
def test_split_sizes_read_like_gguf_split(text, size):
    from keishiki._convert.gguf_split import parse_split_size

    assert parse_split_size(text) == size


def test_hf_to_split_gguf_and_what_transformers_makes_of_it(tiny_llama, tmp_path):
    """keishiki's split output is what gguf-py writes; transformers 5 reads one GGUF file
    only (``gguf_file=`` the first split): the other splits' weights come up missing."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "tiny.gguf"
    report = keishiki.convert(
        tiny_llama, out, to="gguf", quant="f32", quiet=True, split_max_tensors=8
    )
    assert report.passed and report.steps[0].verify["n_files"] == 3, report.to_dict()
    names = _split_names("tiny", 3)
    assert report.steps[0].details["split_files"] == names
    info = inspect(tmp_path / names[1])
    ref = _reference(tmp_path, names)
    assert [t.name for t in info.tensors] == list(ref) and len(ref) == 21
    for t in info.tensors:
        np.testing.assert_array_equal(info.load_tensor(t), ref[t.name][1])
    model, loading = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=names[0], output_loading_info=True, dtype=torch.float32
    )
    in_first = len(gguf.GGUFReader(str(tmp_path / names[0])).tensors)
    assert len(loading["missing_keys"]) >= 21 - in_first - 1  # lm_head is tied
