"""The path gate and the load gate (keishiki.core.gate), and the commands that go through them.

Every escape is built for real on disk (symlinks, ``..`` and absolute index entries, a Hugging
Face cache snapshot); every refusal is checked for its exit code, its one line and that
nothing from outside reached an output.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest

import keishiki
from keishiki.core import gate
from keishiki.core.atomic import output_lock, steps_folder
from keishiki.errors import InvalidRequest, UnsafeFile
from tests.conftest import run_cli

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not really"


def _folder(tmp_path: Path) -> tuple[Path, Path]:
    """A model folder and a secret file beside it (outside it)."""
    model = tmp_path / "model"
    model.mkdir()
    secret = tmp_path / "id_rsa"
    secret.write_bytes(SECRET)
    return model, secret


# ---- escape_reason: one name inside a folder ---------------------------------------------

NAME_CASES = [
    # (name, how the folder is laid out, expected reason fragment or None)
    ("model.safetensors", "plain", None),
    ("sub/model.safetensors", "plain", None),
    ("sub/../model.safetensors", "plain", None),
    ("../id_rsa", "plain", "outside the model's folder"),
    ("/etc/passwd", "plain", "absolute"),
    ("C:\\x", "plain", "absolute"),
    ("", "plain", "absolute or empty"),
    ("a\0b", "plain", "NUL byte"),
    ("link", "symlink out", "outside the model's folder"),
    ("link", "symlink in", None),
    ("loop", "symlink loop", "symlink loop"),
]


@pytest.mark.parametrize("name, layout, expected", NAME_CASES)
def test_escape_reason(tmp_path, name, layout, expected):
    model, secret = _folder(tmp_path)
    (model / "sub").mkdir()
    (model / "model.safetensors").write_bytes(b"x")
    if layout == "symlink out":
        (model / "link").symlink_to(secret)
    elif layout == "symlink in":
        (model / "link").symlink_to(model / "model.safetensors")
    elif layout == "symlink loop":
        (model / "loop").symlink_to(model / "loop")
    reason = gate.escape_reason(model, name)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def _hf_cache(tmp_path: Path) -> tuple[Path, Path]:
    """models--org--tiny/snapshots/<rev>/ whose files link into the repo's blobs/, as
    huggingface_hub lays it out; and another repository's blob."""
    repo = tmp_path / "hub" / "models--org--tiny"
    blobs = repo / "blobs"
    snap = repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    (snap / "onnx").mkdir(parents=True)
    (blobs / "aaa").write_text("{}")
    (snap / "config.json").symlink_to(Path("../../blobs/aaa"))
    (snap / "onnx" / "config.json").symlink_to(Path("../../../blobs/aaa"))
    other = tmp_path / "hub" / "models--evil--x" / "blobs"
    other.mkdir(parents=True)
    (other / "bbb").write_text("secret")
    return snap, other / "bbb"


def test_hf_cache_snapshot_links_into_its_own_blobs_are_sanctioned(tmp_path):
    snap, foreign = _hf_cache(tmp_path)
    assert gate.escape_reason(snap, "config.json") is None
    assert gate.escape_reason(snap / "onnx", "config.json") is None
    assert gate.tree_escapes(snap) == []
    (snap / "stolen.json").symlink_to(foreign)  # another repository's blob: not sanctioned
    assert "outside the model's folder" in gate.escape_reason(snap, "stolen.json")
    assert [name for name, _ in gate.tree_escapes(snap)] == ["stolen.json"]


def test_a_cache_blob_that_is_not_a_regular_file_is_refused(tmp_path):
    """A FIFO put in blobs/ would hang a loader reading the snapshot's link to it."""
    import os

    snap, _foreign = _hf_cache(tmp_path)
    os.mkfifo(snap.parent.parent / "blobs" / "fifo")
    (snap / "model.safetensors").symlink_to(Path("../../blobs/fifo"))
    assert "not a regular file" in gate.escape_reason(snap, "model.safetensors")
    assert [name for name, _ in gate.tree_escapes(snap)] == ["model.safetensors"]


# ---- tree_escapes / check_tree: a whole model folder --------------------------------------


def _index(folder: Path, shards: list[str], name: str = "model.safetensors.index.json") -> None:
    weight_map = {f"t{i}": s for i, s in enumerate(shards)}
    (folder / name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


TREE_CASES = [
    # (how the folder escapes, name reported, reason fragment)
    ("symlinked shard", "model.safetensors", "symlink"),
    ("symlinked index", "model.safetensors.index.json", "symlink"),
    ("symlinked tokenizer", "tokenizer.json", "symlink"),
    ("symlinked subfolder", "onnx", "symlink"),
    ("index names ../", "model.safetensors.index.json", "climbs out with '..'"),
    ("index names an absolute path", "model.safetensors.index.json", "absolute"),
    ("index names a NUL", "model.safetensors.index.json", "NUL byte"),
    ("index in a subfolder names ../../", "sub/model.safetensors.index.json", "'..'"),
]


def _escaping_folder(tmp_path: Path, case: str) -> Path:
    model, secret = _folder(tmp_path)
    (model / "config.json").write_text("{}")
    if case == "symlinked shard":
        (model / "model.safetensors").symlink_to(secret)
    elif case == "symlinked index":
        _index(tmp_path, ["model-00001-of-00001.safetensors"])
        (model / "model.safetensors.index.json").symlink_to(
            tmp_path / "model.safetensors.index.json"
        )
    elif case == "symlinked tokenizer":
        (model / "tokenizer.json").symlink_to(secret)
    elif case == "symlinked subfolder":
        (model / "onnx").symlink_to(tmp_path)
    elif case == "index names ../":
        _index(model, ["../id_rsa"])
    elif case == "index names an absolute path":
        _index(model, [str(secret)])
    elif case == "index names a NUL":
        _index(model, ["model.safetensors\0.txt"])
    elif case == "index in a subfolder names ../../":
        (model / "sub").mkdir()
        _index(model / "sub", ["../../id_rsa"])
    return model


@pytest.mark.parametrize("case, name, fragment", TREE_CASES)
def test_tree_escapes(tmp_path, case, name, fragment):
    model = _escaping_folder(tmp_path, case)
    escapes = gate.tree_escapes(model)
    assert [n for n, _ in escapes] == [name]
    assert fragment in escapes[0][1]
    with pytest.raises(UnsafeFile, match="a loader would read that file"):
        gate.check_tree(model)
    # trusting a model's code is no permission to read outside it
    with pytest.raises(UnsafeFile):
        gate.admit(model, trust=True)


def test_a_clean_folder_passes_both_gates(tiny_llama):
    assert gate.tree_escapes(tiny_llama) == []
    report = gate.admit(tiny_llama)
    assert report is not None and report.verdict == "safe"


# ---- every command refuses an escaping folder ---------------------------------------------

ESCAPES_FOR_COMMANDS = ["symlinked shard", "index names ../", "symlinked tokenizer"]


def _real_model_with_escape(tmp_path: Path, tiny_llama: Path, case: str) -> Path:
    """The tiny Llama's folder, copied, with one escape added."""
    model, secret = _folder(tmp_path)
    for f in tiny_llama.iterdir():
        if f.name != "model.safetensors":
            (model / f.name).write_bytes(f.read_bytes())
    if case == "symlinked shard":
        (model / "model.safetensors").symlink_to(secret)
    elif case == "index names ../":
        (tmp_path / "w.safetensors").write_bytes((tiny_llama / "model.safetensors").read_bytes())
        _index(model, ["../w.safetensors"])
    elif case == "symlinked tokenizer":
        (model / "model.safetensors").write_bytes((tiny_llama / "model.safetensors").read_bytes())
        (model / "tokenizer.json").unlink()
        (model / "tokenizer.json").symlink_to(secret)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("case", ESCAPES_FOR_COMMANDS)
def test_convert_and_run_refuse_an_escaping_folder(tmp_path, tiny_llama, case):
    model = _real_model_with_escape(tmp_path, tiny_llama, case)
    out = tmp_path / "out"
    for args in (
        ["convert", model, out, "--to", "safetensors", "-q"],
        ["convert", model, out, "--to", "gguf", "-q"],
        ["run", model, "-p", "hi", "--max-tokens", "1"],
    ):
        code, stdout, err = run_cli(*args)
        assert code != 0, args
        assert err.startswith("keishiki: error: ") and err.count("\n") == 1, err
        assert "internal error" not in err
        assert SECRET.decode() not in stdout + err
    assert not out.exists()
    assert not any(
        SECRET in p.read_bytes()
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.is_symlink() and p.name != "id_rsa"
    )
    with pytest.raises(UnsafeFile):
        keishiki.LLM(model=model)


# ---- the load gate: dangerous and unknown are refused alike --------------------------------


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture()
def dangerous_bin(tmp_path, tiny_llama_state_dict) -> Path:
    """A torch.save state_dict with a payload entry: its weights are readable by keishiki's
    reader (which runs nothing), and the scanner calls it dangerous."""
    import torch

    state = dict(tiny_llama_state_dict)
    path = tmp_path / "evil" / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save({**state, "extra": _Payload()}, path, pickle_module=pickle)
    return path


def test_admit_names_the_finding(dangerous_bin):
    with pytest.raises(UnsafeFile) as info:
        gate.admit(dangerous_bin, purpose="run")
    message = str(info.value)
    assert "not loaded to run: dangerous" in message and "system" in message
    assert "trust_remote_code=True" in message
    assert gate.admit(dangerous_bin, trust=True) is None


def test_convert_refuses_a_dangerous_pickle_then_takes_its_weights_when_trusted(
    dangerous_bin, tmp_path
):
    out = tmp_path / "w.safetensors"
    code, _, err = run_cli("convert", dangerous_bin, out, "--to", "safetensors", "-q")
    assert code == 1 and "dangerous" in err and "system" in err and err.count("\n") == 1
    assert "keishiki's own reader, which runs nothing" in err and not out.exists()
    code, stdout, err = run_cli(
        "convert", dangerous_bin, out, "--to", "safetensors", "--json", "-q", "--trust-remote-code"
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["source_scan"]["verdict"] == "dangerous"
    assert "system" in report["source_scan"]["reason"]
    assert report["source_scan"]["read_by"].startswith("keishiki's own reader")
    code, stdout, err = run_cli(
        "convert",
        dangerous_bin,
        tmp_path / "w2.safetensors",
        "--to",
        "safetensors",
        "-q",
        "--trust-remote-code",
    )
    assert code == 0 and "note: the source scans dangerous" in stdout


def test_a_loader_edge_refuses_a_dangerous_source(dangerous_bin, tiny_llama, tmp_path):
    """hf-model -> onnx hands the folder to transformers: the gate refuses before it."""
    folder = dangerous_bin.parent
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_llama / name).exists():
            (folder / name).write_bytes((tiny_llama / name).read_bytes())
    code, _, err = run_cli("convert", folder, tmp_path / "o", "--to", "onnx", "-q")
    assert code == 1 and "not loaded to convert (hf-model -> onnx" in err
    assert "dangerous" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    with pytest.raises(UnsafeFile):
        keishiki.convert(folder, tmp_path / "o", to="onnx")


# ---- bounds: a config.json that does not state the model's size ----------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "llama"},
        {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2},
        {"model_type": "llama", "text_config": {"hidden_size": 64}},
    ],
)
def test_run_refuses_a_config_without_sizes(tmp_path, tiny_llama, config):
    model = tmp_path / "m"
    model.mkdir()
    for f in tiny_llama.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (model / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli("run", model, "-p", "hi", "--max-tokens", "1")
    assert code == 2 and "config.json does not give the model's" in err
    assert "would build its default" in err


# ---- writing: a lock per output, leftovers of killed runs removed --------------------------


def test_a_second_writer_of_the_same_output_fails_in_one_line(tmp_path):
    out = tmp_path / "o.safetensors"
    with output_lock(out):
        with pytest.raises(InvalidRequest, match="another keishiki process is writing it"):
            with output_lock(out):
                pass
    with output_lock(out):  # released: free again, and the lock file is gone after
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_leftover_steps_of_a_killed_run_are_removed(tmp_path, tiny_llama):
    out = tmp_path / "o.gguf"
    dead = steps_folder(out).with_name(f".o.gguf.keishiki-steps-{2**22 + 12345}")
    dead.mkdir()
    (dead / "step0-safetensors.safetensors").write_bytes(b"half")
    assert run_cli("convert", tiny_llama, out, "--to", "gguf", "-q")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]


@pytest.mark.parametrize(
    "err_no, words",
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_disk_errors_are_one_line_and_leave_nothing(
    tmp_path, tiny_llama, monkeypatch, err_no, words
):
    import keishiki.core.atomic as atomic

    def fail(path):
        raise OSError(err_no, os.strerror(err_no), str(path))

    monkeypatch.setattr(atomic, "_fsync_tree", fail)
    out = tmp_path / "o.safetensors"
    code, _, err = run_cli(
        "convert", tiny_llama / "model.safetensors", out, "--to", "safetensors", "-q"
    )
    assert code == 2 and words in err and err.count("\n") == 1 and "internal error" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_index_naming_too_many_shards_is_refused_before_they_are_resolved(tmp_path, monkeypatch):
    """Each shard an index names is resolved on disk by every reader of the folder: an index
    naming 100,000 distinct files took ~12 s of `info`; more than MAX_SHARDS is refused."""
    model, _ = _folder(tmp_path)
    weight_map = {f"w{i}": f"model-{i:05d}-of-00005.safetensors" for i in range(5)}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert gate.index_escapes(model, model / "model.safetensors.index.json") == []
    monkeypatch.setattr(gate, "MAX_SHARDS", 4)
    found = gate.index_escapes(model, model / "model.safetensors.index.json")
    assert found == [("", "shard index names 5 shard files (at most 4)")]


def test_a_long_list_of_missing_shards_is_one_short_warning(tmp_path, tiny_llama):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    weight_map = {f"w{i}": f"model-{i:05d}-of-00020.safetensors" for i in range(20)}
    (model / "model.safetensors").unlink()
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    warning = next(w for w in keishiki.inspect(model).warnings if "missing" in w)
    assert "model-00007-of-00020" in warning and "model-00008" not in warning
    assert "and 12 more" in warning
