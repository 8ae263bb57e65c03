"""Verification made cheaper (issue 12) still catches what it caught, and every long step
shows progress (issue 14).

Each check restructured for speed has a test here that corrupts the output between the
write and the read-back and sees verification fail, naming what differs:

- GGUF tensors are compared by the digest (BLAKE3) of the bytes written and read back (no source
  reload for F32/F16/BF16 and integers), through a GGUFReader over a plain ndarray view;
- safetensors read-back compares with the source tensor loaded one ahead on a thread;
- the HF -> GGUF tokenizer check encodes both sides in a child process.
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import keishiki
from keishiki.errors import Mismatch
from tests.conftest import run_cli

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")


def _flip_tensor_byte(path: Path, name: str, reader_cls=None) -> None:
    """Flip one byte in the middle of tensor ``name``'s data in a written GGUF."""
    reader = (reader_cls or gguf.GGUFReader)(str(path))
    t = next(t for t in reader.tensors if t.name == name)
    at = int(t.data_offset) + t.n_bytes // 2
    del reader, t
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x40]))


def _corrupting(module, name: str, corrupt):
    """``module.name`` wrapped so that ``corrupt(result, *args)`` runs after the real call."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        corrupt(result, *args)
        return result

    return wrapper


@pytest.mark.parametrize(
    "quant, tensor",
    [
        ("f16", "blk.0.attn_q.weight"),  # cast and permuted: the digest of the encoding
        ("f32", "blk.1.ffn_down.weight"),  # the source's bytes as they are
        ("bf16", "token_embd.weight"),
        ("f32", "blk.0.attn_norm.weight"),  # 1-D, kept in f32
    ],
)
def test_gguf_byte_flipped_after_the_write_fails_verification(
    tiny_llama, tmp_path, monkeypatch, quant, tensor
):
    from keishiki._convert import gguf_edges

    monkeypatch.setattr(
        gguf_edges,
        "write_gguf",
        _corrupting(
            gguf_edges, "write_gguf", lambda files, *a: _flip_tensor_byte(files[0], tensor)
        ),
    )
    with pytest.raises(Mismatch) as caught:
        keishiki.convert(tiny_llama, tmp_path / "m.gguf", to="gguf", quant=quant, quiet=True)
    verify = caught.value.report["steps"][-1]["verify"]
    assert verify["passed"] is False and verify["n_mismatched"] == 1
    assert f"{tensor}: differs (max abs diff" in verify["reason"]
    assert verify["max_abs_diff"] > 0
    assert verify["n_compared"] == verify["n_bit_exact"] + 1


def test_gguf_q8_0_byte_flipped_fails_verification(tiny_llama, tmp_path, monkeypatch):
    """Q8_0 is still compared value by value with the source (within half a step)."""
    from keishiki._convert import gguf_edges

    name = "blk.0.ffn_up.weight"
    monkeypatch.setattr(
        gguf_edges,
        "write_gguf",
        _corrupting(gguf_edges, "write_gguf", lambda files, *a: _flip_tensor_byte(files[0], name)),
    )
    with pytest.raises(Mismatch) as caught:
        keishiki.convert(tiny_llama, tmp_path / "m.gguf", to="gguf", quant="q8_0", quiet=True)
    assert f"{name}: differs" in caught.value.report["steps"][-1]["verify"]["reason"]


def test_gguf_type_written_other_than_planned_fails(tiny_llama, tmp_path, monkeypatch):
    """A tensor whose GGML type is not the planned one fails (F16 planned, BF16 in the
    file: same size, so only the type check can see it before the values)."""
    from keishiki._convert import gguf_edges

    real = gguf_edges._encoded_size

    def lying(info, qtype):
        shape, np_dtype, nbytes, raw = real(info, qtype)
        if qtype == "F16" and info.name == "model.layers.0.mlp.up_proj.weight":
            # BF16 by its byte shape, as the writer takes raw types: 2 bytes per value
            byte_shape = (*shape[:-1], shape[-1] * 2)
            return byte_shape, np.dtype(np.uint8), nbytes, gguf.GGMLQuantizationType.BF16
        return shape, np_dtype, nbytes, raw

    monkeypatch.setattr(gguf_edges, "_encoded_size", lying)
    with pytest.raises(Mismatch) as caught:
        keishiki.convert(tiny_llama, tmp_path / "m.gguf", to="gguf", quant="f16", quiet=True)
    assert (
        "blk.0.ffn_up.weight: type BF16, wrote F16"
        in caught.value.report["steps"][-1]["verify"]["reason"]
    )


def test_reference_reader_reads_what_gguf_reader_reads(tiny_llama, tmp_path):
    from keishiki._convert.gguf_edges import read_kv, reference_reader

    out = tmp_path / "m.gguf"
    keishiki.convert(tiny_llama, out, to="gguf", quant="f16", quiet=True, verify=False)
    plain, real = reference_reader(out), gguf.GGUFReader(str(out))
    assert read_kv(plain) == read_kv(real) and len(read_kv(plain)["tokenizer.ggml.tokens"]) > 100
    assert [(t.name, t.tensor_type, list(t.shape)) for t in plain.tensors] == [
        (t.name, t.tensor_type, list(t.shape)) for t in real.tensors
    ]
    for a, b in zip(plain.tensors, real.tensors):
        assert type(a.data) is np.ndarray and np.array_equal(a.data, b.data)


def _odd_gguf(path: Path, endian) -> Path:
    """Every kind of array GGUFReader parses: strings (empty ones too), each scalar type, an
    empty array and a nested one, in ``endian`` byte order."""
    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    w.add_array("t.strings", ["a", "", "ünï", "<0x0A>"] * 50)
    w.add_array("t.floats", [0.5, -1.25, float("inf")] * 30)
    w.add_array("t.ints", list(range(-50, 50)))
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.empty", [])
    w.add_array("t.nested", [[1, 2], [3, 4]])
    w.add_string("t.text", "x")
    w.add_tensor("w", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _fields(reader) -> list:
    return [
        (
            f.offset,
            f.name,
            f.data,
            f.types,
            [(a.dtype.str, a.shape, a.tobytes()) for a in f.parts],
        )
        for f in reader.fields.values()
    ]


@pytest.mark.parametrize(
    "source",
    ["corpus", "little-endian", "big-endian", "truncated"],
)
def test_reference_reader_parts_are_gguf_readers(source, tmp_path):
    """The reference reader parses arrays in a loop of its own: every field's parts (dtype,
    shape, bytes), indices and types equal GGUFReader's; a file cut short fails alike."""
    from keishiki._convert.gguf_edges import reference_reader
    from tests.conftest import CORPUS

    if source == "corpus":
        files = sorted((CORPUS / "gguf").rglob("*.gguf"))
        assert len(files) >= 5
    else:
        big = source == "big-endian"
        endian = gguf.GGUFEndian.BIG if big else gguf.GGUFEndian.LITTLE
        files = [_odd_gguf(tmp_path / "odd.gguf", endian)]
    if source == "truncated":  # cut inside the string array, then inside the float array
        whole = files[0].read_bytes()
        files = []
        for marker in (b"\x05\x00\x00\x00\x00\x00\x00\x00\xc3\xbc", b"\x00\x00\xa0\xbf"):
            cut = tmp_path / f"cut{len(files)}.gguf"
            cut.write_bytes(whole[: whole.index(marker) + 2])
            files.append(cut)
    for path in files:
        try:
            expected = _fields(gguf.GGUFReader(str(path)))
        except Exception as exc:  # noqa: BLE001 - whatever gguf-py raises, ours must too
            with pytest.raises(type(exc)):
                reference_reader(path)
            continue
        assert _fields(reference_reader(path)) == expected, path.name
    if source == "big-endian":
        assert reference_reader(files[0]).fields["t.ints"].contents()[:3] == [-50, -49, -48]


def test_safetensors_byte_flipped_after_the_write_fails_verification(
    pt_files, tmp_path, monkeypatch
):
    from keishiki._convert import weights

    def flip(_size, path, *args):
        data = bytearray(path.read_bytes())
        header = 8 + int.from_bytes(data[:8], "little")
        offsets = json.loads(data[8:header])["emb.weight"]["data_offsets"]
        data[header + offsets[0] + 5] ^= 0x01
        path.write_bytes(bytes(data))

    monkeypatch.setattr(
        weights, "write_safetensors", _corrupting(weights, "write_safetensors", flip)
    )
    with pytest.raises(Mismatch) as caught:
        keishiki.convert(pt_files["zip"], tmp_path / "o.safetensors", to="safetensors", quiet=True)
    verify = caught.value.report["steps"][-1]["verify"]
    assert verify["n_mismatched"] == 1 and "emb.weight: differs" in verify["reason"]


def test_prefetched_keeps_order_and_raises_where_the_load_did():
    from keishiki._convert.verify import prefetched

    assert list(prefetched([lambda i=i: i * i for i in range(5)])) == [0, 1, 4, 9, 16]
    assert list(prefetched([])) == []

    def bad():
        raise ValueError("short read")

    got = prefetched([lambda: 1, bad, lambda: 3])
    assert next(got) == 1
    with pytest.raises(ValueError, match="short read"):
        next(got)


def test_child_encodes_as_the_tokenizers_here(tiny_llama, tmp_path):
    """Both sides of the tokenizer check, encoded in the child, equal the in-process calls."""
    import transformers

    from keishiki._convert.encodings import TokenizerChild, samples
    from keishiki._convert.gguf_edges import _tokenizer_flags, reference_reader
    from keishiki._convert.gguf_vocab import load_gguf_tokenizer

    out = tmp_path / "m.gguf"
    keishiki.convert(tiny_llama, out, to="gguf", quiet=True, verify=False)
    flags = _tokenizer_flags(reference_reader(out))
    here = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    gguf_here = load_gguf_tokenizer(out, flags)
    for torch_free in (False, True):
        child = TokenizerChild(tiny_llama, torch_free=torch_free)
        child.send_gguf(out)
        assert not child.failed()
        for text, special in samples():
            assert child.expected().encode(text, special) == here.encode(
                text, add_special_tokens=special
            )
            assert child.got().encode(text, special) == gguf_here.encode(
                text, add_special_tokens=special
            )


def test_torch_free_child_that_fails_is_redone_here(tiny_llama, tmp_path, monkeypatch):
    """Should the torch-free child fail on either side, the tokenizer is checked in this
    process the usual way (transformers with torch), not left unchecked."""
    from keishiki._convert import gguf_vocab
    from keishiki._convert.encodings import TokenizerChild

    here = []
    real = gguf_vocab.load_gguf_tokenizer

    def spy(path, kv, generic=False):
        here.append(generic)
        return real(path, kv, generic)

    monkeypatch.setattr(TokenizerChild, "failed", lambda self: True)
    monkeypatch.setattr(gguf_vocab, "load_gguf_tokenizer", spy)
    report = keishiki.convert(tiny_llama, tmp_path / "m.gguf", to="gguf", quiet=True)
    assert here == [False]
    assert report.steps[0].verify["tokenizer"]["passed"] is True
    assert report.verified and report.passed


def test_child_that_cannot_load_a_tokenizer_says_why(tmp_path):
    from keishiki._convert.encodings import ChildError, TokenizerChild

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    (broken / "tokenizer_config.json").write_text("{}")
    child = TokenizerChild(broken)
    with pytest.raises(ChildError) as caught:
        child.expected()
    assert caught.value.kind and str(caught.value)
    with pytest.raises(ChildError):  # the GGUF side was never asked for
        child.got()


# ---- progress (issue 14) ----------------------------------------------------------------------


class Recorder:
    """Stands in for ``core.progress.progress``: records each bar and what advanced it."""

    def __init__(self):
        self.bars: list[dict] = []

    @contextmanager
    def __call__(self, total, description, quiet=False, unit_bytes=False):
        bar = {"total": total, "description": description, "steps": [], "done": 0.0}
        self.bars.append(bar)

        def advance(n=1, description=None):
            bar["done"] += n
            if description is not None:
                bar["steps"].append(description)

        yield advance

    def named(self, description: str) -> dict:
        return next(b for b in self.bars if b["description"] == description)


def test_gguf_verification_shows_progress(tiny_llama, tmp_path, monkeypatch):
    from keishiki._convert import gguf_edges

    bars = Recorder()
    monkeypatch.setattr(gguf_edges, "progress", bars)
    keishiki.convert(tiny_llama, tmp_path / "m.gguf", to="gguf", quant="f16")
    assert [b["description"] for b in bars.bars] == [
        "-> gguf",
        "verifying",
        "verifying the tokenizer",
    ]
    verifying = bars.named("verifying")
    assert verifying["done"] == verifying["total"] > 0  # every tensor's bytes counted


def test_safetensors_verification_shows_progress(pt_files, tmp_path, monkeypatch):
    from keishiki._convert import weights

    bars = Recorder()
    monkeypatch.setattr(weights, "progress", bars)
    keishiki.convert(pt_files["zip"], tmp_path / "o.safetensors", to="safetensors")
    assert [b["description"] for b in bars.bars] == ["-> safetensors", "verifying"]
    assert bars.named("verifying")["done"] == bars.named("verifying")["total"] > 0


@pytest.mark.slow
def test_onnx_export_and_run_both_show_each_step(tiny_llama, tmp_path, monkeypatch):
    from keishiki._convert import graph_edges, onnx_export, run_verify

    bars = Recorder()
    monkeypatch.setattr(graph_edges, "progress", bars)
    keishiki.convert(tiny_llama, tmp_path / "onnx", to="onnx")
    export, verifying = bars.named("-> onnx"), bars.named("verifying")
    assert export["steps"] == [
        "loading the model",
        "exporting (torchscript)",
        "naming the weights",
        "saving",
        "onnx.checker",
    ]
    assert export["total"] == onnx_export.EXPORT_STEPS == len(export["steps"])
    assert verifying["steps"] == [
        "loading the source",
        "running the source (PyTorch)",
        "running the result (onnxruntime)",
    ]
    assert verifying["total"] == run_verify.RUN_BOTH_STEPS


@pytest.mark.slow
def test_torchscript_export_and_run_both_show_progress(tiny_llama, tmp_path, monkeypatch):
    from keishiki._convert import graph_edges

    bars = Recorder()
    monkeypatch.setattr(graph_edges, "progress", bars)
    keishiki.convert(tiny_llama, tmp_path / "m.pt", to="torchscript")
    assert [b["description"] for b in bars.bars] == ["-> torchscript", "verifying"]
    assert bars.named("verifying")["steps"][-1] == "running the result (TorchScript)"


class _Terminal(io.StringIO):
    """A captured stream that says it is a terminal (so progress bars would draw on it)."""

    def isatty(self) -> bool:
        return True


def test_json_output_stays_clean_with_a_terminal_on_stderr(tiny_llama, tmp_path, monkeypatch):
    """Bars go to stderr only: with --json, stdout is the report and nothing else, even when
    stderr is a terminal; piped (not a terminal) stderr gets no bar at all."""
    import sys

    from keishiki.cli.app import run

    err, out = _Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", out)
    code = run(["convert", str(tiny_llama), str(tmp_path / "m.gguf"), "--to", "gguf", "--json"])
    monkeypatch.undo()
    assert code == 0 and json.loads(out.getvalue())["passed"] is True
    assert "verifying" in err.getvalue()  # the bars were drawn, on stderr
    code, stdout, stderr = run_cli(
        "convert", tiny_llama, tmp_path / "n.gguf", "--to", "gguf", "--json"
    )
    assert code == 0 and json.loads(stdout)["passed"] is True
    assert "verifying" not in stderr and "\x1b[" not in stderr


@pytest.mark.slow
def test_torchscript_with_a_changed_weight_fails_the_one_pass_check(
    tiny_llama, tmp_path, monkeypatch
):
    """Teacher forcing without a cache runs one causal pass: a weight changed in the archive
    after the export still fails the run-both check."""
    from keishiki._convert import torchscript_export

    real = torchscript_export.export_to

    def export_then_change(src, pt_path, **kwargs):
        facts, module = real(src, pt_path, **kwargs)
        extra = {torchscript_export.META_NAME: ""}
        archive = torch.jit.load(str(pt_path), map_location="cpu", _extra_files=extra)
        with torch.no_grad():
            weight = dict(archive.named_parameters())["lm.lm_head.weight"]
            weight[3] += 0.5  # one vocabulary row: that token's logits move
        torch.jit.save(archive, str(pt_path), _extra_files=extra)
        return facts, module

    monkeypatch.setattr(torchscript_export, "export_to", export_then_change)
    with pytest.raises(Mismatch) as caught:
        keishiki.convert(tiny_llama, tmp_path / "m.pt", to="torchscript", quiet=True)
    verify = caught.value.report["steps"][-1]["verify"]
    assert verify["passed"] is False and verify["max_abs_diff"] > 1e-2


def _swap_pieces(path: Path, sample: str, tokenizer) -> None:
    """Swap, in the GGUF ``path``, the text of the first piece ``tokenizer`` gives for
    ``sample`` with that of another piece as long (the vocabulary still loads, merges and
    all, but the sample encodes to other ids)."""
    from keishiki._convert.gguf_edges import reference_reader

    reader = reference_reader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    used = set(tokenizer.encode(sample, add_special_tokens=False))
    first = tokenizer.encode(sample, add_special_tokens=False)[0]
    pieces = [tokens.parts[i] for i in tokens.data]
    other = next(
        n
        for n, piece in enumerate(pieces)
        if n not in used and len(piece) == len(pieces[first]) and bytes(piece).isalpha()
    )
    base = reader.data.__array_interface__["data"][0]
    spots = [pieces[n].__array_interface__["data"][0] - base for n in (first, other)]
    texts = [bytes(pieces[n]) for n in (first, other)]
    del reader, tokens, pieces
    with open(path, "r+b") as fh:
        for at, text in zip(spots, reversed(texts)):
            fh.seek(at)
            fh.write(text)


def test_gguf_tokenizer_changed_after_the_child_read_it_fails(tiny_llama, tmp_path, monkeypatch):
    """The torch-free child reads the GGUF's tokenizer while the tensors are still being
    written: a vocabulary byte changed after that (between the write and the read-back) is
    seen, because the finished file's first bytes are compared with those the child read,
    and the check then runs here on the finished file."""
    import transformers

    from keishiki._convert import encodings, gguf_edges
    from keishiki._convert.gguf_vocab import STRICT_SAMPLES

    folder_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    sent = []
    real_send = encodings.TokenizerChild.send_gguf

    def send(self, path, metadata_only=False):
        sent.append(metadata_only)
        real_send(self, path, metadata_only)
        self._wait()  # the child has read the metadata before the write goes on

    def corrupt(files, *args):
        _swap_pieces(files[0], STRICT_SAMPLES[0], folder_tokenizer)

    monkeypatch.setattr(encodings.TokenizerChild, "send_gguf", send)
    monkeypatch.setattr(gguf_edges, "write_gguf", _corrupting(gguf_edges, "write_gguf", corrupt))
    with pytest.raises(Mismatch) as caught:
        keishiki.convert(tiny_llama, tmp_path / "m.gguf", to="gguf", quant="f16", quiet=True)
    assert sent == [True]  # the child was handed the file before its tensors were written
    verify = caught.value.report["steps"][-1]["verify"]
    assert verify["tokenizer"]["passed"] is False and verify["n_mismatched"] == 0


def test_metadata_reader_reads_an_unfinished_gguf(tiny_llama, tmp_path):
    """The child's reader of a GGUF whose tensors are not written yet: the fields and tensor
    names of the finished file, and where the tensor infos end."""
    from keishiki._convert.gguf_edges import metadata_reader, read_kv, reference_reader

    out = tmp_path / "m.gguf"
    keishiki.convert(tiny_llama, out, to="gguf", quant="f16", quiet=True, verify=False)
    whole = reference_reader(out)
    early = metadata_reader(out)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(out.read_bytes()[: early.metadata_end])  # no tensor data at all
    partial = metadata_reader(cut)
    assert partial.metadata_end == early.metadata_end < whole.data_offset
    assert read_kv(partial) == read_kv(whole)
    assert [t.name for t in partial.tensors] == [t.name for t in whole.tensors]
    with pytest.raises(ValueError):  # the whole reader needs the data
        reference_reader(cut)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float16).reshape(3, 4),
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous: C order's bytes
        np.zeros(0, dtype=np.int8),
        np.frombuffer(b"\x01\x02\x03\x04\x05\x06", dtype=np.uint8)[1:],  # a view
    ],
)
def test_gguf_digest_is_blake3_else_sha256(array, monkeypatch):
    """The read-back's digest: BLAKE3 of the C-order bytes, sha256 without the package."""
    import hashlib

    from keishiki._convert.gguf_edges import _digest

    raw = np.ascontiguousarray(array).tobytes()
    blake3 = pytest.importorskip("blake3")
    assert _digest(array) == "blake3:" + blake3.blake3(raw).hexdigest()
    monkeypatch.setitem(sys.modules, "blake3", None)  # not installed
    assert _digest(array) == "sha256:" + hashlib.sha256(raw).hexdigest()
