import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from keishiki.core.atomic import atomic_output, check_output
from keishiki.core.source import Source
from keishiki.errors import CorruptFile, InvalidRequest, KeishikiError, UnsafeFile


def test_child_refuses_escape(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", tmp_path / "m" / "link")
    src = Source(tmp_path / "m")
    for bad in ["../secret", "/etc/passwd", "link", "C:\\x", ""]:
        with pytest.raises(UnsafeFile):
            src.child(bad)
    assert src.child("a/b.bin") == tmp_path / "m" / "a" / "b.bin"


def test_read_at_bounds(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abcdef")
    src = Source(p)
    assert src.read_at(2, 3) == b"cde"
    with pytest.raises(CorruptFile, match="needs 10 bytes at offset 2"):
        src.read_at(2, 10)


def test_missing_path():
    with pytest.raises(KeishikiError, match="no such file"):
        Source("/definitely/not/here")


def test_zip_member_bomb_limit(tmp_path):
    import zipfile

    p = tmp_path / "z.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big", b"\0" * 5_000_000)
    with pytest.raises(CorruptFile, match="expands to 5000000 bytes"):
        Source(p).read_member("big", limit=1_000_000)


def test_atomic_output_success_and_failure(tmp_path):
    out = tmp_path / "out.npy"
    buf = io.BytesIO()
    np.save(buf, np.arange(3))  # a model file: --force may replace it
    done = buf.getvalue()
    with atomic_output(out) as tmp:
        tmp.write_bytes(done)
        assert not out.exists()
    assert out.read_bytes() == done
    with pytest.raises(InvalidRequest, match="already exists"):
        with atomic_output(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output(out, force=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert out.read_bytes() == done
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def test_check_output_refuses_input(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"x")
    with pytest.raises(InvalidRequest, match="over the input"):
        check_output(src, [src], force=True)
    with pytest.raises(InvalidRequest, match="over the input"):
        check_output(tmp_path, [src], force=True)


def test_zip_with_unknown_extract_version_is_corrupt_not_a_crash(tmp_path):
    """One flipped byte in the central directory makes zipfile raise NotImplementedError
    ("zip file version 6.4"); that is a broken file, for info (CorruptFile) and scan alike."""
    import zipfile

    import keishiki
    from keishiki import inspect

    path = tmp_path / "m.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    blob = bytearray(path.read_bytes())
    central = blob.rindex(b"PK\x01\x02")
    blob[central + 6] = 64  # "version needed to extract": 6.4, beyond zipfile's 6.3
    path.write_bytes(bytes(blob))
    with pytest.raises(NotImplementedError):
        zipfile.ZipFile(path)  # the premise: zipfile's own answer is not BadZipFile
    with pytest.raises(CorruptFile, match="broken zip archive: zip file version 6.4"):
        inspect(path)
    # torch.load's zip reader ignores "version needed", so scan reads the pickle as torch
    # would (an empty dict) instead of stopping where zipfile does
    assert keishiki.scan(path).verdict == "safe"


def test_start_writeback_is_a_hint_that_never_fails(tmp_path):
    """The early-writeback hint changes no byte and raises nothing, even on a bad fd or an
    empty range (the fsync before the rename is what reports disk errors)."""
    from keishiki.core.atomic import start_writeback

    path = tmp_path / "w.bin"
    with open(path, "wb", buffering=0) as fh:
        fh.write(b"x" * 10_000)
        start_writeback(fh.fileno(), 0, 10_000)
        start_writeback(fh.fileno(), 0, 0)
        os.fsync(fh.fileno())
    start_writeback(-1, 0, 10)
    assert path.read_bytes() == b"x" * 10_000


def test_force_never_writes_over_a_file_of_an_input_folder(tmp_path):
    """`convert src src/model.safetensors --force` replaced the weights it read from."""
    from keishiki.core.atomic import check_output
    from keishiki.errors import InvalidRequest

    src = tmp_path / "src"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(InvalidRequest, match="part of that folder"):
        check_output(src / "model.safetensors", [src], force=True, folder=False)
    check_output(src / "model-bf16.safetensors", [src], force=True, folder=False)  # new: fine


@pytest.mark.parametrize(
    "names, refused",
    [
        (["model.safetensors", "config.json", "tokenizer.json"], None),
        (["model.safetensors", "optimizer.pt"], "optimizer.pt"),  # the user's, not keishiki's
        (["model.safetensors", "training_args.bin"], "training_args.bin"),
        (["model.safetensors", "results.index.json"], "results.index.json"),
        (["model.onnx", "config.json", "LICENSE"], None),  # the licence travels with it
        (["model.onnx", "config.json", "notes.txt"], "notes.txt"),  # not data the graph names
        (["model.onnx", "NOTES"], "NOTES"),
    ],
)
def test_force_replaces_only_the_names_keishiki_writes(tmp_path, names, refused):
    import shutil

    from keishiki.core.atomic import replace_refusal
    from tests.conftest import corpus_path

    out = tmp_path / "out"
    out.mkdir()
    for name in names:
        if name == "model.onnx":
            shutil.copy(
                corpus_path("onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx"), out / name
            )
        elif name == "model.safetensors":
            shutil.copy(
                corpus_path("safetensors/safetensors-samples/overall.safetensors"), out / name
            )
        else:
            (out / name).write_text('{"model_type": "llama"}' if name == "config.json" else "{}")
    why = replace_refusal(out, True)
    assert (why is None) if refused is None else (refused in why)


def test_a_dangling_link_at_the_output_is_refused_before_any_work(tmp_path):
    from keishiki.core.atomic import check_output
    from keishiki.errors import InvalidRequest

    out = tmp_path / "out.safetensors"
    out.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidRequest, match="already exists"):
        check_output(out, [], force=False, folder=False)


def test_force_asks_again_before_replacing(tmp_path):
    """What is at OUT may change while keishiki writes: a file the user puts into the old
    output folder meanwhile is theirs, and the folder is then left as it is."""
    import shutil

    from tests.conftest import corpus_path

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(
        corpus_path("safetensors/safetensors-samples/overall.safetensors"),
        out / "model.safetensors",
    )
    (out / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(InvalidRequest, match="changed meanwhile"):
        with atomic_output(out, force=True, folder=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"new")
            (out / "thesis.tex").write_text("mine")  # the user, while keishiki writes
    assert (out / "thesis.tex").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old copy left


def test_force_replaces_a_file_in_one_rename(tmp_path, monkeypatch):
    """A file is replaced by one rename over it: no moment without OUT, no old copy aside."""
    import shutil

    from tests.conftest import corpus_path

    sample = corpus_path("safetensors/safetensors-samples/overall.safetensors")
    out = tmp_path / "m.safetensors"
    shutil.copy(sample, out)
    renames = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: renames.append((a, b)) or real(a, b))
    with atomic_output(out, force=True) as tmp:
        tmp.write_bytes(sample.read_bytes()[::-1])
    assert [Path(b).name for _, b in renames] == ["m.safetensors"]
    assert out.read_bytes() == sample.read_bytes()[::-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"vocab_size": ' + b"9" * 4301 + b"}", "Exceeds the limit (4300 digits)"),  # ValueError
        (b'{"a": "\xff"}', "invalid JSON"),  # not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),  # RecursionError
        (b'{"a": 1,}', "invalid JSON"),
    ],
)
def test_a_config_that_is_no_json_is_a_corrupt_file(tmp_path, raw, words):
    """Every way json.loads refuses is one CorruptFile (an int past 4300 digits raised a
    plain ValueError: "internal error")."""
    from keishiki.core.source import Source
    from keishiki.errors import CorruptFile

    (tmp_path / "config.json").write_bytes(raw)
    with Source(tmp_path) as src, pytest.raises(CorruptFile, match=re.escape(words)):
        src.read_json("config.json")
