"""``keishiki info hf://...`` / ``tensors hf://...``: a Hub model described from range reads of
its config and weight headers, with the requests and bytes it took, checked against the fake
Hub's own log and against ``inspect`` of the same files on disk."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from keishiki.hub.headers import safetensors_first_read
from tests.conftest import REPO, run_cli

from .conftest import BOTH, EVIL, GATED, GGUF, TINY
from .fakehub import Repo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _log(hub) -> list[tuple[str, str, str | None]]:
    """(method, path with the commit as <c>, range) of every request, sorted."""
    commits = {r.commit: "<c>" for r in hub.repos.values()}
    out = []
    for r in hub.log:
        path = r.path
        for commit, tag in commits.items():
            path = path.replace(commit, tag)
        out.append((r.method, path, r.range))
    return sorted(out, key=lambda t: (t[0], t[1], t[2] or ""))


def test_info_reads_headers_only(hub, hub_env, tiny_llama):
    import keishiki

    remote = keishiki.inspect(f"hf://{TINY}")
    local = keishiki.inspect(tiny_llama)
    weights = hub.repos[TINY].files["model.safetensors"]
    (n,) = struct.unpack("<Q", weights[:8])
    base = f"/{TINY}/resolve/<c>"
    first = safetensors_first_read(len(weights))
    assert 8 + n <= first  # the length and the whole header in one request
    assert _log(hub) == sorted(
        [
            ("GET", f"/api/models/{TINY}", None),  # commit, files, sizes
            (
                "GET",
                f"{base}/config.json",
                f"bytes=0-{len(hub.repos[TINY].files['config.json']) - 1}",
            ),
            ("GET", f"{base}/model.safetensors", f"bytes=0-{first - 1}"),
            (
                "GET",
                f"{base}/tokenizer_config.json",
                f"bytes=0-{len(hub.repos[TINY].files['tokenizer_config.json']) - 1}",
            ),
        ],
        key=lambda t: (t[0], t[1], t[2] or ""),
    )
    cost = remote.details["remote"]
    content = sum(r.sent for r in hub.log if "/resolve/" in r.path)
    assert (cost["requests"], cost["response_bytes"], cost["bytes_read"]) == (
        len(hub.log),
        hub.bytes_sent,
        content,
    )
    assert cost["bytes_read"] < 0.10 * len(weights)
    assert (cost["commit"], cost["weight_bytes"]) == (hub.repos[TINY].commit, len(weights))
    # the same model as the folder on disk
    assert remote.n_parameters == local.n_parameters == 123_200
    assert [t.to_dict() for t in remote.tensors] == [t.to_dict() for t in local.tensors]
    same = set(local.details["hf"]) - {"weights", "generation_defaults"}
    assert {k: remote.details["hf"][k] for k in same} == {k: local.details["hf"][k] for k in same}
    assert remote.details["hf"]["memory_bytes"]["fp16"] == 2 * 123_200
    assert remote.details["hf"]["vllm_supported"] is True
    assert remote.warnings == [] and remote.format == "hf-model"


def test_info_through_a_cdn_redirect(hub, hub_env, tiny_llama):
    """Range reads of an LFS file follow the Hub's 302 to its CDN (two requests each: both
    counted, the Range kept across the redirect)."""
    import keishiki

    hub.cdn = True
    remote = keishiki.inspect(f"hf://{TINY}")
    assert [t.to_dict() for t in remote.tensors] == [
        t.to_dict() for t in keishiki.inspect(tiny_llama).tensors
    ]
    first = safetensors_first_read(len(hub.repos[TINY].files["model.safetensors"]))
    assert [r.range for r in hub.log if r.path.startswith("/cdn/")] == [f"bytes=0-{first - 1}"]
    assert remote.details["remote"]["requests"] == len(hub.log) == 5
    assert remote.details["remote"]["bytes_read"] == sum(
        r.sent
        for r in hub.log
        if r.path.startswith("/cdn/") or ("/resolve/" in r.path and r.path.endswith(".json"))
    )


@pytest.mark.parametrize("suffix", ["", "@main", "@{commit}"])
def test_info_json_revisions(hub, hub_env, suffix):
    commit = hub.repos[TINY].commit
    code, out, err = run_cli("info", f"hf://{TINY}{suffix.format(commit=commit)}", "--json")
    data = json.loads(out)
    assert (code, err) == (0, "")
    assert (data["n_parameters"], data["remote"]["commit"]) == (123_200, commit)
    assert data["remote"]["requests"] == len(hub.log) == 4
    assert data["hf"]["num_hidden_layers"] == 2 and data["hf"]["hidden_size"] == 64


def test_info_human_view(hub, hub_env):
    code, out, err = run_cli("info", f"hf://{TINY}")
    assert (code, err) == (0, "")
    assert f"hf://{TINY}" in out and "123.20K (123,200)" in out and "float32×21" in out
    assert "remote" in out and hub.repos[TINY].commit in out


def test_tensors_hf_path_matches_the_folder(hub, hub_env, tiny_llama):
    code, out, _ = run_cli("tensors", f"hf://{TINY}", "--json")
    code_local, out_local, _ = run_cli("tensors", tiny_llama, "--json")
    assert code == code_local == 0
    remote, local = json.loads(out), json.loads(out_local)
    assert (remote["schema"], remote["path"], remote["n_tensors"]) == (
        "keishiki.tensors/1",
        f"hf://{TINY}",
        21,
    )
    assert remote["tensors"] == local["tensors"]
    assert not any("/resolve/" in r.path and r.range is None for r in hub.log)


def test_sharded_repo_reads_every_shard_header(hub, hub_env, tiny_llama, tmp_path):
    import keishiki

    folder = tmp_path / "sharded"
    code, _out, err = run_cli(
        "convert", tiny_llama, folder, "--to", "hf-model", "--shard-size", "200KB"
    )
    assert code == 0, err
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) == 3
    hub.add(Repo.from_folder("keishiki-test/sharded", folder))
    hub.reset()
    remote = keishiki.inspect("hf://keishiki-test/sharded")
    local = keishiki.inspect(folder)
    assert [t.to_dict() for t in remote.tensors] == [t.to_dict() for t in local.tensors]
    assert remote.details["hf"]["weights"]["files"] == shards
    ranges = {}
    for r in hub.log:
        if r.path.endswith(".safetensors"):
            ranges.setdefault(r.path.rsplit("/", 1)[1], []).append(r.range.split("-")[0])
    # per shard: one request, its length and header (1% of a 200 KB shard holds it)
    assert {k: sorted(v) for k, v in ranges.items()} == {s: ["bytes=0"] for s in shards}
    # model_info, then config, index, tokenizer_config (in parallel), 1 per shard
    assert remote.details["remote"]["requests"] == len(hub.log) == 4 + len(shards)
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert remote.details["remote"]["bytes_read"] < 0.05 * weights


def test_one_safetensors_file(hub, hub_env, tiny_llama):
    import keishiki

    remote = keishiki.inspect(f"hf://{TINY}/model.safetensors")
    local = keishiki.inspect(tiny_llama / "model.safetensors")
    assert remote.format == local.format == "safetensors"
    assert [t.to_dict() for t in remote.tensors] == [t.to_dict() for t in local.tensors]
    first = safetensors_first_read(len(hub.repos[TINY].files["model.safetensors"]))
    assert [r.range for r in hub.log if "/resolve/" in r.path] == [f"bytes=0-{first - 1}"]


def test_a_header_longer_than_the_first_read(hub, hub_env, tmp_path):
    """2,000 one-element tensors: a 100 KB header over 8 KB of data. The first request's
    1% is not enough: the second asks for exactly the rest of the header."""
    import numpy as np
    from safetensors.numpy import save

    import keishiki

    data = save({f"t{i:04d}": np.zeros(1, dtype=np.float32) for i in range(2000)})
    (n,) = struct.unpack("<Q", data[:8])
    first = safetensors_first_read(len(data))
    assert first < 8 + n
    hub.add(Repo("keishiki-test/long-header", {"model.safetensors": data}))
    info = keishiki.inspect("hf://keishiki-test/long-header/model.safetensors")
    assert info.n_tensors == 2000 and info.n_parameters == 2000
    assert [r.range for r in hub.log if "/resolve/" in r.path] == [
        f"bytes=0-{first - 1}",
        f"bytes={first}-{7 + n}",
    ]


@pytest.mark.parametrize(
    "files,outcome",
    [
        (
            {"a-q4.gguf": "gguf", "a-q8.gguf": "gguf"},
            "error: hf://keishiki-test/many: no config.json and 2 GGUF models; name one: "
            "hf://keishiki-test/many/a-q4.gguf",
        ),
        (
            {"adapter_config.json": "config", "adapter_model.safetensors": "weights"},
            "error: hf://keishiki-test/many: no config.json and no GGUF models; name one: "
            "hf://keishiki-test/many/adapter_model.safetensors",
        ),
        (
            {"config.json": "config", "a-q4.gguf": "gguf"},
            "warning: no safetensors weights: GGUF files (a-q4.gguf): name one to read its header, "
            "hf://keishiki-test/many/a-q4.gguf; sizes below come from config.json",
        ),
        (
            {"config.json": "config", "onnx/model.onnx": b"\x08\x07"},
            "warning: no safetensors weights: onnx/model.onnx: name one to read it by range, "
            "hf://keishiki-test/many/onnx/model.onnx; sizes below come from config.json",
        ),
    ],
)
def test_repos_without_safetensors(hub, hub_env, repo_files, files, outcome):
    content = {
        "gguf": repo_files[GGUF]["tiny.gguf"],
        "config": repo_files[TINY]["config.json"],
        "weights": repo_files[TINY]["model.safetensors"],
    }
    hub.add(Repo("keishiki-test/many", {k: content.get(v, v) for k, v in files.items()}))
    code, out, err = run_cli("info", "hf://keishiki-test/many", "--json")
    if outcome.startswith("error: "):
        assert (code, out, err) == (2, "", f"keishiki: {outcome}\n")
        return
    data = json.loads(out)
    assert (code, data["warnings"], data["n_parameters"]) == (0, [outcome[9:]], 0)
    # the size comes from config.json alone
    assert data["hf"]["parameters_from_config"]["total"] == 123_200
    assert data["hf"]["memory_bytes"]["fp32"] == 4 * 123_200


def test_sizes_missing_from_model_info(hub, hub_env, tiny_llama):
    """A mirror whose model_info lacks sizes: the folder listing HfFileSystem makes anyway
    gives them, at no extra request."""
    import keishiki

    hub.sizes_in_info = False
    remote = keishiki.inspect(f"hf://{TINY}")
    assert remote.n_parameters == keishiki.inspect(tiny_llama).n_parameters
    assert remote.details["remote"]["requests"] == len(hub.log) == 7


def test_corrupt_header_is_one_line(hub, hub_env, repo_files):
    bad = struct.pack("<Q", 10**12) + b"{}"
    hub.add(
        Repo(
            "keishiki-test/corrupt",
            {"config.json": repo_files[TINY]["config.json"], "model.safetensors": bad},
        )
    )
    code, out, err = run_cli("info", "hf://keishiki-test/corrupt")
    short = hub.repos["keishiki-test/corrupt"].commit[:12]
    assert (code, out) == (2, "")
    assert err == (
        f"keishiki: error: hf://keishiki-test/corrupt@{short}/model.safetensors: "
        f"corrupt or truncated at byte 0: header length 1000000000000 exceeds the "
        f"file size 10 (or the 100000000-byte limit)\n"
    )


def _gguf_bytes(tmp_path, tokens: int, width: int) -> bytes:
    import gguf
    import numpy as np

    path = tmp_path / "big-vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"token-{i:06d}" for i in range(tokens)])
    writer.add_tensor("token_embd.weight", np.zeros((tokens, width), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize(
    "tokens,width,ranges",
    [
        (1_000, 1024, ["bytes=0-65535"]),  # a 20 KB header: one read
        (10_000, 256, ["bytes=0-65535", "bytes=65536-262143"]),  # a 200 KB header: grows ×4
    ],
)
def test_gguf_header_by_growing_prefix(hub, hub_env, tmp_path, tokens, width, ranges):
    import keishiki

    pytest.importorskip("gguf")
    data = _gguf_bytes(tmp_path, tokens, width)
    repo = hub.add(Repo("keishiki-test/vocab", {"model.gguf": data}))
    (tmp_path / "local.gguf").write_bytes(data)
    local = keishiki.inspect(tmp_path / "local.gguf")
    for path in ("hf://keishiki-test/vocab", "hf://keishiki-test/vocab/model.gguf"):
        hub.reset()
        remote = keishiki.inspect(path)
        assert [r.range for r in hub.log if "/resolve/" in r.path] == ranges
        assert remote.gguf["n_vocab_tokens"] == tokens
        assert remote.details["remote"]["bytes_read"] < 0.10 * len(data)
        assert [(t.name, t.dtype, t.shape, t.nbytes, t.data_offset) for t in remote.tensors] == [
            (t.name, t.dtype, t.shape, t.nbytes, t.data_offset) for t in local.tensors
        ]
        assert remote.details["remote"]["commit"] == repo.commit


def test_gguf_repo_info(hub, hub_env):
    code, out, _ = run_cli("info", f"hf://{GGUF}", "--json")
    data = json.loads(out)
    assert (code, data["format"], data["n_tensors"]) == (0, "gguf", 2)
    assert data["gguf"]["n_vocab_tokens"] == 1000
    assert data["remote"]["bytes_read"] < 0.10 * data["remote"]["weight_bytes"]


@pytest.mark.parametrize(
    "path,message",
    [
        (
            "hf://keishiki-test/absent",
            "keishiki-test/absent on {endpoint}: repository not found "
            "(or private: log in with `hf auth login` or HF_TOKEN)",
        ),
        (
            f"hf://{TINY}@nope",
            f"{TINY}@nope on {{endpoint}}: revision 'nope' not found (a branch, tag or commit)",
        ),
        (
            f"hf://{GATED}",
            f"{GATED} on {{endpoint}}: gated repository: accept its terms at "
            f"{{endpoint}}/{GATED} and log in (`hf auth login` or HF_TOKEN)",
        ),
        (
            f"hf://{TINY}/absent.safetensors",
            f"hf://{TINY}@{{short}}/absent.safetensors: no such file in the repository",
        ),
        (
            f"hf://{TINY}/config.json",
            f"hf://{TINY}@{{short}}/config.json: keishiki reads "
            f".safetensors, .gguf, .onnx and torch checkpoint headers remotely; `keishiki pull` "
            f"the repository to inspect other files",
        ),
        (
            "hf://datasets/org/data",
            "hf://datasets/org/data: a dataset repository; keishiki reads "
            "model repositories (hf://ORG/NAME)",
        ),
    ],
)
@pytest.mark.parametrize("command", ["info", "tensors"])
def test_errors_are_one_line(hub, hub_env, path, message, command):
    code, out, err = run_cli(command, path)
    expected = message.format(endpoint=hub.endpoint, short=hub.repos[TINY].commit[:12])
    assert (code, out, err) == (2, "", f"keishiki: error: {expected}\n")


def test_offline_info_is_one_line(hub, hub_env, go_offline):
    go_offline()
    code, out, err = run_cli("info", f"hf://{TINY}")
    assert (code, out, hub.log) == (2, "", [])
    assert err == (
        f"keishiki: error: hf://{TINY}: HF_HUB_OFFLINE=1 forbids reading the Hub; "
        f"inspect the snapshot folder `keishiki pull` left in the cache instead\n"
    )


def test_import_keishiki_stays_light(tiny_llama):
    """huggingface_hub is imported for hf:// paths and pull only."""
    code = (
        "import sys, keishiki; keishiki.inspect(sys.argv[1]); keishiki.pull; "
        "import keishiki.hub.remote; print('huggingface_hub' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_llama)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr


def test_fresh_process_configured_by_env_loads_nothing_heavy(hub, hub_env):
    """HF_ENDPOINT alone points a fresh interpreter at the Hub; the look imports neither
    torch, transformers nor gguf-py."""
    code = (
        "from tests.hub import loopback; loopback.install()\n"
        "import sys, keishiki\n"
        "info = keishiki.inspect(sys.argv[1])\n"
        "heavy = ['torch', 'transformers', 'tokenizers', 'gguf', 'onnx', 'safetensors']\n"
        "print(info.n_parameters, [m for m in heavy if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, f"hf://{TINY}"],
        env=hub_env.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "123200 []\n"), done.stderr
    assert len(hub.log) == 4


# ---- pickled checkpoints and ONNX, read by keishiki's local readers over a sparse copy -------


@pytest.mark.parametrize("repo_id,verdict", [(BOTH, "safe"), (EVIL, "dangerous")])
def test_pickle_only_repository_tensors_from_data_pkl(
    hub, hub_env, repo_files, tiny_llama, marker, repo_id, verdict
):
    """No safetensors: the tensors come from ``pytorch_model.bin``'s data.pkl (fetched by
    range from the zip's central directory), with the scan verdict of what was read."""
    import keishiki

    files = {
        k: v
        for k, v in repo_files[repo_id].items()
        if not k.endswith(".safetensors") and not k.startswith("onnx/")
    }
    hub.add(Repo("keishiki-test/pickled", files))
    if repo_id == EVIL:
        code, out, err = run_cli("info", "hf://keishiki-test/pickled", "--json")
        data = json.loads(out)
        assert (code, data["safety"]["verdict"]) == (0, verdict), err
        assert not marker.exists()
        return
    info = keishiki.inspect("hf://keishiki-test/pickled")
    local = keishiki.inspect(tiny_llama)
    assert info.n_parameters == local.n_parameters == 123_200
    assert sorted((t.name, t.dtype, t.shape) for t in info.tensors) == sorted(
        (t.name, t.dtype, t.shape) for t in local.tensors
    )
    assert {t.file for t in info.tensors} == {"pytorch_model.bin"}
    assert info.safety["verdict"] == verdict and info.warnings == []
    assert info.details["hf"]["weights"]["format"] == "pytorch"
    remote = info.details["remote"]
    weights = len(files["pytorch_model.bin"])
    # the pickle and zip records, never the storages: a few KB of a 0.5 MB checkpoint
    assert remote["bytes_read"] < weights // 20, remote
    assert info.tensor_loader is None


def test_one_pickle_file_and_its_verdict(hub, hub_env, tiny_llama):
    code, out, err = run_cli("tensors", f"hf://{BOTH}/onnx/pytorch_model.bin", "--json")
    assert code == 0, err
    local = run_cli("tensors", tiny_llama, "--json")[1]
    key = lambda rows: sorted((r["name"], r["dtype"], r["shape"]) for r in rows)  # noqa: E731
    assert key(json.loads(out)["tensors"]) == key(json.loads(local)["tensors"])
    code, out, err = run_cli("info", f"hf://{BOTH}/onnx/pytorch_model.bin", "--json")
    data = json.loads(out)
    assert (code, data["format"], data["safety"]["verdict"]) == (0, "pytorch", "safe")
    assert data["path"] == f"hf://{BOTH}/onnx/pytorch_model.bin"


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, bytes]:
    """An ONNX model with 1 MB of external data and one with 1 MB embedded (onnx.helper)."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    out = {}
    for kind in ("external", "embedded"):
        folder = tmp_path_factory.mktemp(kind)
        w = numpy_helper.from_array(np.arange(512 * 512, dtype=np.float32).reshape(512, 512), "w")
        b = numpy_helper.from_array(np.ones(512, dtype=np.float32), "b")
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w"], ["y0"]),
                helper.make_node("Add", ["y0", "b"], ["y"]),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])],
            [w, b],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        if kind == "external":
            onnx.save_model(
                model,
                folder / "model.onnx",
                save_as_external_data=True,
                location="model.onnx_data",
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, folder / "model.onnx")
        out.update({f"{kind}/{p.name}": p.read_bytes() for p in folder.iterdir()})
    return out


@pytest.mark.parametrize("kind,variant", [("external", "external-data"), ("embedded", "embedded")])
def test_onnx_file_graph_by_range(hub, hub_env, onnx_files, tmp_path, kind, variant):
    import keishiki

    hub.add(Repo("keishiki-test/onnx", dict(onnx_files)))
    local_dir = tmp_path / kind
    local_dir.mkdir()
    for name, data in onnx_files.items():
        if name.startswith(kind + "/"):
            (local_dir / name.split("/", 1)[1]).write_bytes(data)
    remote = keishiki.inspect(f"hf://keishiki-test/onnx/{kind}/model.onnx")
    local = keishiki.inspect(local_dir / "model.onnx")
    assert (remote.format, remote.variant) == ("onnx", variant)
    assert [(t.name, t.dtype, t.shape) for t in remote.tensors] == [
        (t.name, t.dtype, t.shape) for t in local.tensors
    ]
    assert remote.graph["n_nodes"] == local.graph["n_nodes"] == 2
    assert remote.graph["op_types"] == local.graph["op_types"]
    assert remote.graph["external_data_files"] == local.graph["external_data_files"]
    assert remote.graph["missing_external_data_files"] == []
    # the 1 MB payload is skipped: a 64 KiB block or two of the graph, never the weights
    assert remote.details["remote"]["bytes_read"] < 200 * 1024
    served = [r for r in hub.log if r.path.endswith("model.onnx_data")]
    assert [r.method for r in served if r.method == "GET"] == []
