"""keishiki scan: malicious samples in many disguises are caught, benign look-alikes are not,
findings name where and why, exit codes follow the contract, and nothing ever runs."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import keishiki
from keishiki._scan.allowlist import classify
from tests.conftest import CORPUS, FACTS, corpus_path, run_cli
from tests.scan.samples import long_name_call

# one table of the corpus, with each sample's kind: tests/security/test_no_marker.py
from tests.security.test_no_marker import BENIGN_NAMES as BENIGN  # noqa: E402
from tests.security.test_no_marker import MALICIOUS_TABLE  # noqa: E402

MALICIOUS = sorted(MALICIOUS_TABLE)


def test_sample_lists_match_generator(malicious_samples, benign_samples):
    assert set(malicious_samples) <= set(MALICIOUS)
    assert set(MALICIOUS) - set(malicious_samples) <= {"keras_h5_lambda"}  # needs h5py
    assert sorted(BENIGN) == sorted(benign_samples)


# code a loader runs only by opt-in (trust_remote_code, an unsandboxed template): unknown, by
# design; every other malicious sample is dangerous
OPT_IN = {
    "hf_auto_map_remote_code",
    "hf_tokenizer_auto_map_remote_code",
    "hf_chat_template_ssti",
    "gguf_chat_template_ssti",
}


@pytest.mark.parametrize("name", MALICIOUS)
def test_malicious_is_dangerous_and_never_runs(name, malicious_samples, marker):
    sample = malicious_samples.get(name) or pytest.skip(f"{name} not built here (h5py?)")
    report = keishiki.scan(sample.path)
    expected = "unknown" if name in OPT_IN else "dangerous"
    assert report.verdict == expected, (name, [f.to_dict() for f in report.findings])
    assert report.exit_code() == 1
    bad = [f for f in report.findings if f.severity == expected]
    assert bad and all(f.reason and Path(f.file).is_relative_to(sample.path) for f in bad)
    code, out, err = run_cli("info", "--json", sample.path)  # metadata only, never a load
    assert "Traceback" not in err and "internal error" not in err
    if code == 0:  # info shows what the file holds, and the verdict
        assert json.loads(out)["safety"]["verdict"] == expected
    elif code == 1:  # the path gate: a member or link that leaves the folder
        assert "unsafe:" in err and err.count("\n") == 1
    else:  # a reader refuses a broken (or unrecognised) file, and says what scan thinks of it
        assert code == 2 and "DANGEROUS" in err and err.count("\n") == 1
    assert not marker.exists(), f"{name}: a payload ran"


@pytest.mark.parametrize("name", BENIGN)
def test_benign_lookalikes_are_safe(name, benign_samples):
    report = keishiki.scan(benign_samples[name].path)
    assert report.verdict == "safe", [f.to_dict() for f in report.findings if f.severity != "safe"]
    assert report.exit_code() == 0


def test_findings_say_where(malicious_samples):
    rep = keishiki.scan(malicious_samples["torch_zip_reduce"].path)
    (f,) = [f for f in rep.findings if f.severity == "dangerous"]
    assert f.member.endswith("/data.pkl") and f.global_ == "posix.system"
    assert f.opcode == "GLOBAL" and isinstance(f.offset, int) and f.offset > 0
    nested = keishiki.scan(malicious_samples["nested_zip"].path)
    (g,) = [f for f in nested.findings if f.severity == "dangerous"]
    assert g.member == "model/inner.pt!archive/data.pkl"
    memo = keishiki.scan(malicious_samples["memo_mix_binput_memoize"].path)
    (h,) = [f for f in memo.findings if f.severity == "dangerous"]
    assert (h.global_, h.opcode) == ("os.system", "STACK_GLOBAL")


def test_truncated_payload_is_dangerous_with_an_error(malicious_samples):
    rep = keishiki.scan(malicious_samples["truncated_after_reduce"].path)
    assert rep.verdict == "dangerous" and rep.exit_code() == 1
    assert "truncated" in rep.files[0].errors[0]


def test_concatenated_streams_all_read(malicious_samples):
    rep = keishiki.scan(malicious_samples["benign_then_payload"].path)
    assert len(rep.files[0].scanned) == 2


def test_whole_pickled_module_is_unknown_with_the_classes_named(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)
    rep = keishiki.scan(path)
    assert rep.verdict == "unknown"
    unknown = {f.global_: f.reason for f in rep.findings if f.severity == "unknown"}
    assert "torch.nn.modules.linear.Linear" in unknown
    assert "weights_only=False" in unknown["torch.nn.modules.linear.Linear"]
    assert run_cli("scan", path)[0] == 1
    assert run_cli("scan", "--allow-unknown", path)[0] == 0


def test_torchscript_lists_code_and_is_not_dangerous(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) + 1

    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(Net()), path)
    rep = keishiki.scan(path)
    assert rep.verdict == "safe"  # every call in its code is allowlisted
    (code,) = [f for f in rep.findings if f.opcode == "torchscript"]
    assert "code/__torch__" in code.reason


def test_torchscript_custom_op_and_file_op_are_named():
    from keishiki._scan.torchscript import code_findings

    found = code_findings("code/x.py", "y = ops.my_ext.secret(x)\nz = torch.from_file('/etc/x')")
    assert ("unknown", "torch.ops.my_ext.secret") in [(s, g) for s, g, _ in found]
    assert ("dangerous", "torch.from_file") in [(s, g) for s, g, _ in found]


def _onnx_with_location(folder: Path, location: str) -> Path:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    tensor = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", 1, [2])],
        [helper.make_tensor_value_info("y", 1, [2])],
        [tensor],
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


@pytest.mark.parametrize(
    "location,severity",
    [
        ("weights.bin", "safe"),
        ("../secret.bin", "dangerous"),
        ("/etc/passwd", "dangerous"),
        ("sub/../../x", "dangerous"),
        ("link.bin", "dangerous"),
        ("weights.bin\0../../../etc/passwd", "dangerous"),  # C loaders cut at the NUL
    ],
)
def test_onnx_external_data_locations(tmp_path, location, severity):
    folder = tmp_path / "m"
    path = _onnx_with_location(folder, location)
    (folder / "weights.bin").write_bytes(b"\0" * 8)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 8)
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    rep = keishiki.scan(path)
    (f,) = [f for f in rep.findings if f.opcode == "onnx-external-data"]
    assert (f.severity, f.global_) == (severity, location)


def test_folder_symlink_outside_is_dangerous(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    os.symlink("/etc/hostname", folder / "pytorch_model.bin")
    rep = keishiki.scan(folder)
    assert rep.verdict == "dangerous"
    assert [f.opcode for f in rep.findings if f.severity == "dangerous"] == ["symlink"]


@pytest.mark.timeout(120)  # only a hang reaches it: the bomb is refused from its directory
def test_zip_bomb_is_an_error(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as fh:
            chunk = b"\0" * (1 << 20)
            for _ in range(300):
                fh.write(chunk)
    code, out, err = run_cli("scan", path)
    assert code == 2 and "zip bomb" in err and len(err.strip().splitlines()) == 1


@pytest.mark.timeout(120)  # only a hang reaches it; the work is bounded by opcode counts
@pytest.mark.parametrize(
    "data, code, message",
    [
        (b"\x80\x04" + b"(" * 200_000, 2, "breaks at byte 200002"),  # deep MARK nesting
        (b"\x80\x04" + b"]" * 2_000_000 + b".", 0, ""),  # a huge stack of empty lists: a valid
        # pickle that imports nothing
        (b"\x80\x04X\xff\xff\xff\x7f", 2, "pickle data was truncated"),  # absurd length
        (b"\x80\x04\x8d" + struct.pack("<Q", 1 << 62), 2, "pickle data was truncated"),
        # bytes opcodes the unpickler allocates for before reading: cut short before them
        (b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b"abc.", 2, "breaks at byte 2"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"abc.", 2, "breaks at byte 2"),
        (b"\x80\x04B" + struct.pack("<I", 1 << 31) + b"abc.", 2, "breaks at byte 2"),
        (b"\x00\x01\x02" + bytes(range(256)) * 16, 2, "not a pickle, archive or model file"),
        # torch.load reads a file not starting with a local header as a pickle: so does scan
        (b"PK\x05\x06" + b"\0" * 18, 2, "pickle stream at byte 0 breaks"),
    ],
)
def test_malformed_is_one_line(tmp_path, monkeypatch, data, code, message):
    # the work is bounded by opcode counts, not by the clock: the per-file time budget (8 s of
    # wall time) would make a loaded machine's slow run of the 2-million-opcode pickle an error
    monkeypatch.setattr("keishiki._scan.scanner.FILE_SECONDS", 600.0)
    path = tmp_path / "bad.pt"
    path.write_bytes(data)
    got, _out, err = run_cli("scan", path)
    assert got == code and "Traceback" not in err
    if code == 2:
        assert err.startswith("keishiki: error:") and message in err and err.count("\n") == 1


def test_nested_zips_deeper_than_the_limit(tmp_path):
    blob = b"\x80\x04N."
    for _ in range(8):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("inner.zip", blob)
        blob = buf.getvalue()
    path = tmp_path / "deep.zip"
    path.write_bytes(blob)
    rep = keishiki.scan(path)
    assert rep.verdict == "error" and "nested deeper" in rep.files[0].errors[0]


def test_cli_exit_codes_and_json(tmp_path, malicious_samples, benign_samples):
    import json

    code, out, _ = run_cli(
        "scan",
        "--json",
        malicious_samples["torch_zip_reduce"].path,
        benign_samples["torch_zip_all_dtypes"].path,
    )
    data = json.loads(out)
    assert code == 1 and data["verdict"] == "dangerous" and data["exit_code"] == 1
    assert [f["verdict"] for f in data["files"]] == ["dangerous", "safe"]
    assert run_cli("scan", benign_samples["torch_zip_all_dtypes"].path)[0] == 0
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x01\x02\x03 not a model")
    code, _, err = run_cli("scan", garbage)
    assert code == 2 and "nothing to scan" in err
    assert run_cli("scan", tmp_path / "missing.pt")[0] == 2


def test_info_shows_the_verdict(malicious_samples):
    info = keishiki.inspect(malicious_samples["reduce_os_system_p4"].path)
    assert info.safety["verdict"] == "dangerous"
    assert "posix.system" in info.safety["dangerous"]


@pytest.mark.parametrize("name", ["scan", "convert", "compare"])
def test_public_names_are_plain_functions_after_the_package_import(name):
    import importlib
    import inspect as pyinspect

    importlib.import_module(f"keishiki._{name}.findings" if name == "scan" else f"keishiki._{name}")
    function = getattr(keishiki, name)
    assert pyinspect.isfunction(function) and function.__name__ == name
    assert function.__doc__ and "package" not in function.__doc__.splitlines()[0].lower()


# ---- the real corpus -----------------------------------------------------------------------

PICKLE_GLOBALS = sorted({g for facts in FACTS.values() for g in facts.get("pickle_globals") or []})


@pytest.mark.parametrize("qualname", PICKLE_GLOBALS)
def test_every_corpus_global_is_allowlisted(qualname):
    module, name = qualname.rsplit(".", 1)
    assert classify(module, name)[0] == "safe"


def test_every_corpus_file_is_not_dangerous():
    if not CORPUS.exists():
        pytest.skip("corpus absent")
    rep = keishiki.scan(CORPUS)
    verdicts = {Path(fr.path).relative_to(CORPUS).as_posix(): fr.verdict for fr in rep.files}
    assert "dangerous" not in verdicts.values()
    assert "error" not in verdicts.values()
    unknown = sorted(k for k, v in verdicts.items() if v == "unknown")
    # code only: TorchScript archives, and the one Torch7 file that holds a Lua function
    assert all(k.startswith("torchscript/") or k.endswith("/function.t7") for k in unknown), unknown
    for rel, facts in FACTS.items():
        if facts.get("pickle_globals") and rel in verdicts:
            assert verdicts[rel] == "safe", rel


@pytest.mark.parametrize("rel", sorted(k for k, v in FACTS.items() if v.get("pickle_globals")))
def test_corpus_pickles_scan_safe_with_their_globals(rel):
    path = corpus_path(rel)
    rep = keishiki.scan(path)
    assert rep.verdict == "safe"
    seen = {f.global_ for f in rep.findings}
    assert set(FACTS[rel]["pickle_globals"]) <= seen


def test_hostile_files_stay_under_1_gib(tmp_path):
    """Peak RSS of a scan process on hostile inputs (absurd stack, zip bomb, deep MARKs)."""
    import subprocess
    import sys

    files = []  # (a stack of 1.5M empty lists, stack.pkl, is a valid pickle: safe, no line)
    for name, data in [
        ("stack.pkl", b"\x80\x04" + b"]" * 1_500_000 + b"."),
        ("marks.pkl", b"\x80\x04" + b"(" * 500_000 + b"."),
        ("long.pkl", b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b"x" * 64),
    ]:
        (tmp_path / name).write_bytes(data)
        files.append(str(tmp_path / name))
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data.pkl", b"\x80\x04" + b"\0" * (200 << 20))
    files.append(str(bomb))
    # the scan process reports its own peak as VmHWM (per address space, reset at exec):
    # ru_maxrss, of the child or of RUSAGE_CHILDREN, starts at the pytest worker's own
    # high-water mark, which is ~1 GB once a worker has loaded torch and transformers
    code = (
        "import re, sys; from keishiki.cli.app import run; rc = run(sys.argv[1:]); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); "
        "sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "scan", *files], capture_output=True, text=True, timeout=120
    )  # only a hang
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()  # one line per damaged file
    assert len(lines) == len(files) - 1 and not any("stack.pkl" in line for line in lines)
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


def test_scan_never_unpickles_and_never_imports_torch(
    malicious_samples, benign_samples, monkeypatch
):
    import pickle
    import subprocess
    import sys

    def refuse(*_a, **_k):
        raise AssertionError("scan called a loader")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    for sample in list(malicious_samples.values()) + list(benign_samples.values()):
        keishiki.scan(sample.path)
    code = (
        "import sys, keishiki; r = keishiki.scan(sys.argv[1]); "
        "assert r.verdict == 'dangerous'; "
        "assert not {'torch', 'onnx', 'h5py'} & set(sys.modules), sorted(sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(malicious_samples["torch_zip_reduce"].path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-500:]


def test_torch_export_graph_with_a_custom_op_is_unknown(tmp_path):
    path = tmp_path / "m.pt2"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/archive_format", "pt2")
        zf.writestr(
            "m/models/model.json",
            '{"nodes": [{"target": "torch.ops.aten.linear.default"}, '
            '{"target": "torch.ops.my_ext.secret.default"}]}',
        )
    rep = keishiki.scan(path)
    assert rep.verdict == "unknown"
    assert [f.global_ for f in rep.findings if f.severity == "unknown"] == [
        "torch.ops.my_ext.secret"
    ]


def test_unparseable_data_formats_are_errors_not_safe(tmp_path):
    """A container keishiki cannot parse is 'could not scan' (exit 2), never 'safe'."""
    from tests.conftest import corpus_path, run_cli

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 20) + b'{"a":' + bytes(range(256)) * 4)
    onnx_bytes = corpus_path("onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")  # magic number only
    for path in (bad, cut, legacy):
        code, _, err = run_cli("scan", path)
        assert code == 2 and err.count("\n") == 1, (path, err)
    assert "5 pickles" in run_cli("scan", legacy)[2]
    good = corpus_path("safetensors/safetensors-samples/f.safetensors")
    assert run_cli("scan", good)[0] == 0


def test_shard_index_pointing_outside_the_folder_is_dangerous(tmp_path):
    from tests.conftest import run_cli

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "../../etc/passwd", "b": "/etc/shadow", "c": "model-1.safetensors"}}'
    )
    report = keishiki.scan(folder)
    bad = sorted(f.global_ for f in report.findings if f.severity == "dangerous")
    assert bad == ["../../etc/passwd", "/etc/shadow"]
    assert run_cli("scan", folder)[0] == 1


def test_torch7_lua_function_is_named_not_passed_as_data():
    """Lua's torch.load loads a function's bytecode as code: the one corpus .t7 holding a
    function is `unknown`, with the function's place and size; plain tensors stay safe."""
    if not CORPUS.exists():
        pytest.skip("corpus absent")
    rep = keishiki.scan(corpus_path("torch7_binary/python-torchfile/function.t7"))
    assert rep.verdict == "unknown" and rep.exit_code() == 1
    [finding] = rep.files[0].findings
    assert (finding.opcode, finding.global_, finding.severity) == (
        "lua-function",
        "<root>",
        "unknown",
    )
    assert "218 bytes" in finding.reason
    assert (
        keishiki.scan(corpus_path("torch7_binary/python-torchfile/floattensor.t7")).verdict
        == "safe"
    )


def test_torch7_is_code_bearing_for_info_and_convert(tmp_path):
    """Torch7 can carry Lua functions, so it is gated like the other code-bearing formats:
    ``info`` shows the scan's verdict, and convert refuses the function's file untrusted
    (reads it with keishiki's own parser when trusted), while plain tensors convert."""
    from keishiki.errors import UnsafeFile

    if not CORPUS.exists():
        pytest.skip("corpus absent")
    function = corpus_path("torch7_binary/python-torchfile/function.t7")
    assert keishiki.inspect(function).safety["verdict"] == "unknown"
    with pytest.raises(UnsafeFile, match="Lua bytecode"):
        keishiki.convert(function, tmp_path / "f.safetensors", to="safetensors", quiet=True)
    plain = corpus_path("torch7_binary/python-torchfile/floattensor.t7")
    assert keishiki.inspect(plain).safety["verdict"] == "safe"
    report = keishiki.convert(plain, tmp_path / "t.safetensors", to="safetensors", quiet=True)
    assert report.passed and report.source_scan is None


def test_zip_end_record_spanning_disks_does_not_hide_the_pickle(tmp_path):
    """zipfile.is_zipfile raises (not returns False) for a zip64 locator naming two disks;
    the pickle in front of such a trailer is still read and its payload still named."""
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 2)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0)
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R." + locator + end)
    rep = keishiki.scan(path)
    assert rep.verdict == "dangerous"
    assert "os.system" in {f.global_ for f in rep.findings}


def test_nul_in_external_data_or_shard_name_is_refused_everywhere(tmp_path):
    """A NUL byte in a path read from the file: scan calls it dangerous, info and convert
    refuse it in one line (pathlib's resolve() raised ValueError on it: a fuzz find)."""
    folder = tmp_path / "m"
    path = _onnx_with_location(folder, "weights.bin\0x")
    (folder / "weights.bin").write_bytes(b"\0" * 8)
    code, _out, err = run_cli("info", path)  # the path gate: a finding, exit 1
    assert code == 1 and "NUL byte" in err and err.count("\n") == 1
    code, _out, err = run_cli(
        "convert", path, tmp_path / "o.onnx", "--to", "onnx", "--no-external-data"
    )
    assert code == 1 and "NUL byte" in err and err.count("\n") == 1
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-1.safetensors\u0000../../x"}})
    )
    rep = keishiki.scan(hf)
    assert rep.verdict == "dangerous" and "NUL" in rep.findings[0].reason


def test_scan_into_a_closed_pipe_keeps_the_verdicts_exit_code(malicious_samples):
    """`keishiki scan evil.pkl | head -1` must still exit 1: a reader that stops early is
    no reason to report a dangerous file as clean (other commands exit 0 on EPIPE)."""
    import subprocess
    import sys

    sample = next(s for s in malicious_samples.values() if s.path.suffix == ".pkl")
    for extra in ([], ["--json"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "keishiki", "scan", str(sample.path), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        proc.stdout.close()  # the reader is gone before the first byte is written
        assert proc.wait(timeout=60) == 1, extra


# every opcode of the fast lane, alone and followed by what could name a global
_OPENS_BROKEN = [
    bytes([op]) + tail for op in b"012abdelorstuR." for tail in (b"", b"cos\nsystem\n")
]


@pytest.mark.parametrize("blob", [b"1", b"little", b"big", b"0123456789012345678", *_OPENS_BROKEN])
@pytest.mark.parametrize("torch_member", [False, True])
def test_a_maybe_pickle_that_breaks_at_once_reads_as_before(blob, torch_member, monkeypatch):
    """A member tried as a pickle only because it might be one (torch's text records: "1",
    "little", digit serial numbers) is not read when its first opcode takes from an empty
    stack or needs a MARK: the report is exactly what reading it gives (the attempt undone)."""
    from keishiki._scan import scanner
    from keishiki._scan.findings import FileReport

    def attempt():
        ctx = scanner._Ctx(FileReport(path="m.pt"))
        kept = scanner._pickle(ctx, blob, "archive/byteorder", False, False, torch_member)
        return kept, ctx.report.findings, ctx.report.errors, ctx.report.scanned

    fast = attempt()
    monkeypatch.setattr(scanner, "BREAKS_AT_START", frozenset())
    assert attempt() == fast == (False, [], [], [])


@pytest.mark.parametrize(
    "blob, kept",
    [
        # what the loader runs before it fails has run: a dangerous name, even cut short
        (long_name_call("true", b"\xff"), True),
        # the scan's own memo limit stops the reading: the loader reads on to STOP
        (long_name_call("true", b"r" + struct.pack("<I", 5_000_000) + b"."), True),
        # text whose first line reads as GLOBAL: names that are no identifiers, undone
        (b"c" + b"some words " * 60 + b"\n" + b"more words " * 60 + b"\n\xff", False),
        # a msgpack map opens with an EXT opcode no process registers: undone
        (b"\x83\xa5hello\xa5world", False),
        # a memo write at the first byte breaks every unpickler, whatever its index
        (b"r\xff\xff\xff\x7f.", False),
    ],
)
def test_a_maybe_pickle_is_undone_only_when_the_loader_would_run_nothing(blob, kept):
    from keishiki._scan import scanner
    from keishiki._scan.findings import FileReport

    ctx = scanner._Ctx(FileReport(path="m.bin"))
    assert scanner._pickle(ctx, blob, "", False) is kept
    assert bool(ctx.report.findings or ctx.report.errors) is kept
    if kept:
        assert ctx.report.verdict == "dangerous"


@pytest.mark.parametrize(
    "name, shaped",
    [
        ("os.system", True),
        ("os....path.os.path.os.pa...", True),  # cut for the report at both ends
        ("os....path.os....", True),
        ("some words .more words ", False),
        ("os", False),
        ("...", False),
    ],
)
def test_names_a_global(name, shaped):
    from keishiki._scan.scanner import _names_a_global

    assert _names_a_global(name) is shaped


@pytest.mark.parametrize("command", ["scan", "info", "tensors"])
def test_a_bytearray_past_the_end_says_one_line(tmp_path, command):
    """CPython's unpickler allocates a BYTEARRAY8's claimed size before reading it, and prints
    a SystemError of its own (not through sys.stderr) on the way to MemoryError: the stream is
    served only up to that opcode, so the process says one line."""
    path = tmp_path / "m.pkl"
    path.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b"abc.")
    proc = subprocess.run(
        [sys.executable, "-m", "keishiki", command, str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
