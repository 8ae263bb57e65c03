"""``keishiki scan hf://...``: a safety verdict from range reads of the files a loader would
unpickle or run, checked against ``keishiki.scan`` of the same files on disk and against the
fake Hub's own log (what was and was not fetched)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from tests.conftest import run_cli

from .conftest import BOTH, EVIL, GGUF, TINY
from .fakehub import Repo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ZIP_OK = "keishiki-test/torch-zip"
ZIP_EVIL = "keishiki-test/torch-zip-evil"
AUTO_MAP = "keishiki-test/auto-map"
JIT = "keishiki-test/torchscript"
LEGACY = "keishiki-test/legacy-pickle"
STORAGE_FLOATS = 256 * 1024  # 1 MiB of float32 storages


@pytest.fixture(scope="module")
def scan_repos(repo_files, marker, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    torch = pytest.importorskip("torch")
    from tests.scan.samples import _payload_pickles

    path = tmp_path_factory.mktemp("torchzip") / "pytorch_model.bin"
    torch.save(
        {
            "embed.weight": torch.arange(STORAGE_FLOATS, dtype=torch.float32),
            "norm.weight": torch.ones(64),
        },
        path,
    )
    benign = path.read_bytes()
    evil_pickle = _payload_pickles(marker)["reduce_os_system_p4"][1]
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(benign)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst,
    ):
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = evil_pickle
            dst.writestr(info.filename, data)
    jit = tmp_path_factory.mktemp("jit") / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(64, 64)), str(jit))
    legacy = tmp_path_factory.mktemp("legacy") / "pytorch_model.bin"
    torch.save({"w": torch.ones(1024)}, legacy, _use_new_zipfile_serialization=False)
    config = repo_files[TINY]["config.json"]
    auto = dict(json.loads(config), auto_map={"AutoModelForCausalLM": "modeling_x.XModel"})
    return {
        ZIP_OK: {"config.json": config, "pytorch_model.bin": benign},
        ZIP_EVIL: {"config.json": config, "pytorch_model.bin": out.getvalue()},
        JIT: {"model.pt": jit.read_bytes()},
        LEGACY: {"config.json": config, "pytorch_model.bin": legacy.read_bytes()},
        AUTO_MAP: {
            "config.json": json.dumps(auto).encode(),
            "modeling_x.py": b"class XModel:\n    pass\n",
            "model.safetensors": repo_files[TINY]["model.safetensors"],
        },
    }


@pytest.fixture
def hub_scan(hub, hub_env, scan_repos):
    for repo_id, files in scan_repos.items():
        hub.add(Repo(repo_id, dict(files)))
    return hub


def _weights(hub, repo_id: str) -> int:
    return sum(
        len(b) for n, b in hub.repos[repo_id].files.items() if n.endswith((".bin", ".safetensors"))
    )


def _local(hub, repo_id: str, tmp_path):
    """``keishiki.scan`` of the repository's files written to a folder."""
    import keishiki

    folder = tmp_path / repo_id.replace("/", "--")
    for name, data in hub.repos[repo_id].files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return keishiki.scan(folder), folder


def _shape(report, root: str):
    """(verdict, sorted (file, member, global, severity)) with paths relative to ``root``."""

    def rel(p: str) -> str:
        return p.split(root, 1)[-1].lstrip("/")

    files = [fr for fr in report.files if not fr.skipped]
    return (
        {rel(fr.path): fr.verdict for fr in files},
        sorted((rel(f.file), f.member, f.global_, f.severity) for f in report.findings),
    )


CASES = [  # repo, verdict, exit code
    (ZIP_OK, "safe", 0),
    (ZIP_EVIL, "dangerous", 1),
    (EVIL, "dangerous", 1),  # a raw (non-zip) pickle: fetched whole (it is small)
    (AUTO_MAP, "unknown", 1),
    (TINY, "safe", 0),
    (BOTH, "safe", 0),  # two torch zips (one in a subfolder) beside safetensors
    (GGUF, "safe", 0),  # a GGUF header only
    (JIT, "safe", 0),  # TorchScript: code/ members fetched and judged
    (LEGACY, "safe", 0),  # a pre-1.6 torch pickle (not a zip): fetched whole
]


@pytest.mark.parametrize("repo_id,verdict,code", CASES, ids=[c[0].split("/")[1] for c in CASES])
def test_remote_scan_equals_local_scan(hub_scan, marker, tmp_path, repo_id, verdict, code):
    import keishiki

    remote = keishiki.scan(f"hf://{repo_id}")
    commit = hub_scan.repos[repo_id].commit
    local, folder = _local(hub_scan, repo_id, tmp_path)
    assert (remote.verdict, remote.exit_code()) == (verdict, code)
    assert local.verdict == verdict
    assert _shape(remote, f"hf://{repo_id}@{commit[:12]}") == _shape(local, str(folder))
    assert remote.remote["commit"] == commit
    assert remote.remote["bytes_read"] == sum(r.sent for r in hub_scan.log if "/resolve/" in r.path)
    assert not marker.exists()


def test_torch_zip_fetches_a_fraction(hub_scan, marker):
    import keishiki

    for repo_id in (ZIP_OK, ZIP_EVIL):
        hub_scan.log.clear()
        report = keishiki.scan(f"hf://{repo_id}")
        weights = _weights(hub_scan, repo_id)
        assert weights > 4 * STORAGE_FLOATS
        cost = report.remote
        assert cost["bytes_read"] < 0.10 * weights, cost
        assert (cost["requests"], cost["response_bytes"]) == (
            len(hub_scan.log),
            hub_scan.bytes_sent,
        )
        # no request asked for the whole weights file
        ranges = [r.range for r in hub_scan.log if r.path.endswith("/pytorch_model.bin")]
        assert ranges and all(r and r.startswith("bytes=") for r in ranges)
    assert not marker.exists()


def test_dangerous_finding_names_the_member(hub_scan, marker):
    import keishiki

    report = keishiki.scan(f"hf://{ZIP_EVIL}")
    bad = [f for f in report.findings if f.severity == "dangerous"]
    assert bad and all(f.member.endswith("data.pkl") for f in bad)
    assert any("system" in f.global_ for f in bad)
    assert all(f.file.startswith(f"hf://{ZIP_EVIL}@") for f in report.findings)
    assert not marker.exists()


@pytest.mark.parametrize(
    "repo_id,verdict,code", CASES[:4], ids=[c[0].split("/")[1] for c in CASES[:4]]
)
def test_cli_scan_hf(hub_scan, marker, repo_id, verdict, code):
    got, out, err = run_cli("scan", f"hf://{repo_id}", "--json")
    assert got == code, err
    data = json.loads(out)
    assert (data["verdict"], data["exit_code"]) == (verdict, code)
    assert data["remote"]["requests"] > 0 and data["remote"]["bytes_read"] > 0
    got, out, _err = run_cli("scan", f"hf://{repo_id}")
    assert got == code and f"verdict: {verdict}" in out
    assert not marker.exists()


def test_a_file_it_cannot_judge_is_an_error(hub_scan, monkeypatch):
    """A non-zip pickle beyond the whole-read limit is an error for that file, never safe."""
    import keishiki
    from keishiki.hub import remote_scan

    monkeypatch.setattr(remote_scan, "WHOLE_LIMIT", 16)
    report = keishiki.scan(f"hf://{EVIL}")
    assert (report.verdict, report.exit_code()) == ("error", 2)
    assert "pull it to scan it" in report.files[0].errors[0]


def test_a_damaged_directory_is_an_error(hub_scan, scan_repos):
    """A zip whose directory points at no local header: an error for the file (exit 2)."""
    import keishiki

    data = bytearray(scan_repos[ZIP_OK]["pytorch_model.bin"])
    at = data.rfind(b"PK\x05\x06")
    cd = int.from_bytes(data[at + 16 : at + 20], "little")
    data[cd + 42 : cd + 46] = (7).to_bytes(4, "little")  # first member's local header offset
    hub_scan.add(Repo("keishiki-test/broken-zip", {"pytorch_model.bin": bytes(data)}))
    report = keishiki.scan("hf://keishiki-test/broken-zip")
    assert report.verdict in ("error", "dangerous") and report.exit_code() in (1, 2)
    assert report.verdict != "safe"


def test_one_file_of_a_repository(hub_scan):
    import keishiki

    report = keishiki.scan(f"hf://{ZIP_EVIL}/pytorch_model.bin")
    assert [fr.path.rsplit("/", 1)[-1] for fr in report.files] == ["pytorch_model.bin"]
    assert report.verdict == "dangerous"


def test_missing_repository_is_one_line_exit_2(hub_scan):
    got, out, err = run_cli("scan", "hf://keishiki-test/no-such-repo")
    assert got == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err


def test_nothing_enters_the_cache(hub_scan, hub_env):
    import keishiki

    keishiki.scan(f"hf://{ZIP_OK}")
    assert not hub_env.cache.exists() or not any(hub_env.cache.rglob("*.bin"))


@pytest.mark.parametrize("fill", [b"\xaa", b"c", b"\x80"], ids=["aa", "GLOBAL", "PROTO"])
@pytest.mark.parametrize("repo_id", [ZIP_OK, ZIP_EVIL, BOTH, JIT])
def test_the_holes_are_never_read(hub_scan, monkeypatch, marker, repo_id, fill):
    """The scanner reads only what was fetched: holes filled with other bytes (pickle
    opcodes included) give the same report as holes of zeros."""
    import keishiki
    from keishiki.hub import remote_scan

    zeros = keishiki.scan(f"hf://{repo_id}")
    original = remote_scan._Sparse.__init__

    def filled(self, repo, name, path):
        original(self, repo, name, path)
        with open(path, "r+b") as fh:
            fh.write(fill * self.size)

    monkeypatch.setattr(remote_scan._Sparse, "__init__", filled)
    other = keishiki.scan(f"hf://{repo_id}")
    assert [fr.to_dict() for fr in other.files] == [fr.to_dict() for fr in zeros.files]
    assert not marker.exists()
