"""``keishiki pull`` / ``keishiki.pull`` against the loopback fake Hub: the cache layout
huggingface_hub writes, byte-equal files, pinned revisions, ``--include``/``--exclude``,
``--prefer-safetensors`` (the skipped file is never requested), offline mode, the scan
verdict, and one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from keishiki.errors import HubError
from tests.conftest import run_cli

from .conftest import BOTH, EVIL, GATED, TINY, run_keishiki

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _resolved(hub, repo_id: str) -> dict[str, list[str]]:
    """{file: [methods]} of the resolve requests the fake Hub saw for ``repo_id``."""
    out: dict[str, list[str]] = {}
    prefix = f"/{repo_id}/resolve/{hub.repos[repo_id].commit}/"
    for r in hub.log:
        if r.path.startswith(prefix):
            out.setdefault(r.path[len(prefix) :], []).append(r.method)
    return out


def test_pull_writes_the_standard_cache_layout(hub, hub_env):
    import keishiki

    report = keishiki.pull(TINY, quiet=True)
    repo = hub.repos[TINY]
    storage = hub_env.cache / "models--keishiki-test--tiny-llama"
    assert report.folder == storage / "snapshots" / repo.commit
    assert report.commit == repo.commit
    assert (storage / "refs" / "main").read_text() == repo.commit
    assert sorted(p.name for p in storage.iterdir()) == ["blobs", "refs", "snapshots", "trees"]
    assert report.files == sorted(repo.files)
    assert report.nbytes == sum(len(b) for b in repo.files.values())
    for name, data in repo.files.items():
        link = report.folder / name
        assert link.is_symlink() and os.readlink(link).startswith("../../blobs/")
        assert link.resolve().parent == storage / "blobs"
        assert link.read_bytes() == data
    assert len(list((storage / "blobs").iterdir())) == len(repo.files)
    assert (report.verdict, report.exit_code(), report.skipped, report.offline) == (
        "safe",
        0,
        [],
        False,
    )
    # each file once: HEAD for its ETag, GET for its bytes; no range requests
    assert _resolved(hub, TINY) == {name: ["HEAD", "GET"] for name in repo.files}
    assert [r.range for r in hub.log] == [None] * len(hub.log)


def test_pull_to_local_dir_copies_real_files(hub, hub_env, tmp_path):
    import keishiki

    out = tmp_path / "model"
    report = keishiki.pull(TINY, local_dir=out, quiet=True)
    assert (report.folder, report.commit) == (out.resolve(), hub.repos[TINY].commit)
    for name, data in hub.repos[TINY].files.items():
        assert not (out / name).is_symlink() and (out / name).read_bytes() == data
    assert report.files == sorted(hub.repos[TINY].files)
    assert (report.verdict, report.exit_code()) == ("safe", 0)  # .cache/huggingface/ too


def test_hf_prefix_is_the_same_repository(hub, hub_env):
    import keishiki

    plain, prefixed = (
        keishiki.pull(TINY, quiet=True),
        keishiki.pull(f"hf://{TINY}@main", quiet=True),
    )
    assert (prefixed.repo_id, prefixed.folder) == (plain.repo_id, plain.folder)


@pytest.mark.parametrize(
    "how,ref", [("commit", None), ("branch", "main"), ("argument", None), ("pr", "refs/pr/1")]
)
def test_pinned_revisions(hub, hub_env, how, ref):
    import keishiki

    repo = hub.repos[TINY]
    repo.branches = ("main", "refs/pr/1")
    spec, revision = {
        "commit": (f"{TINY}@{repo.commit}", None),
        "branch": (f"{TINY}@main", None),
        "argument": (TINY, repo.commit),
        "pr": (f"{TINY}@refs/pr/1", None),
    }[how]
    report = keishiki.pull(spec, revision=revision, quiet=True)
    assert report.commit == repo.commit and report.folder.name == repo.commit
    refs = hub_env.cache / "models--keishiki-test--tiny-llama" / "refs"
    # a commit needs no ref (huggingface_hub writes refs for branch, tag and PR names only)
    written = (
        sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())
        if refs.exists()
        else []
    )
    assert written == ([ref] if ref else [])
    # a commit is not resolved again: no revision call
    assert [r.path for r in hub.log if "/revision/" in r.path or r.path.endswith(TINY)] == (
        [f"/api/models/{TINY}/revision/{ref}"] if ref else []
    )


def test_two_revisions_refused(hub, hub_env):
    import keishiki
    from keishiki.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="two revisions"):
        keishiki.pull(f"{TINY}@main", revision="other")


@pytest.mark.parametrize(
    "include,exclude,expected",
    [
        (
            ["*.json"],
            None,
            ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"],
        ),
        (None, ["*.json", "*.jinja"], ["model.safetensors"]),
        (["config.json", "model.*"], ["*.safetensors"], ["config.json"]),
    ],
)
def test_include_exclude(hub, hub_env, include, exclude, expected):
    import keishiki

    report = keishiki.pull(TINY, include=include, exclude=exclude, quiet=True)
    assert report.files == expected
    assert sorted(p.name for p in report.folder.iterdir()) == expected
    assert sorted(_resolved(hub, TINY)) == expected  # nothing else was even asked for


@pytest.mark.parametrize(
    "args,patterns",
    [
        (["--include", "*.nothing"], "--include '*.nothing'"),
        (["--exclude", "*"], "--exclude '*'"),
        (["--include", "*.bin", "--exclude", "*.json"], "--include '*.bin' --exclude '*.json'"),
    ],
)
def test_nothing_matches_is_one_line(hub, hub_env, args, patterns):
    code, out, err = run_cli("pull", TINY, "--quiet", *args)
    assert (code, out) == (2, "")
    assert err == (
        f"keishiki: error: {TINY}: no file of the repository matches {patterns}: "
        f"nothing was pulled\n"
    )
    assert [r for r in hub.log if "/resolve/" in r.path] == []


@pytest.mark.parametrize(
    "prefer,skipped,fetched_bins",
    [
        (True, ["pytorch_model.bin"], ["onnx/pytorch_model.bin"]),
        (False, [], ["onnx/pytorch_model.bin", "pytorch_model.bin"]),
    ],
)
def test_prefer_safetensors(hub, hub_env, prefer, skipped, fetched_bins):
    import keishiki

    report = keishiki.pull(BOTH, prefer_safetensors=prefer, quiet=True)
    assert report.skipped == skipped
    fetched = _resolved(hub, BOTH)
    assert sorted(f for f in fetched if f.endswith(".bin")) == fetched_bins
    assert "model.safetensors" in fetched
    # a skipped file is never requested, not even its HEAD
    assert (
        all(not r.path.endswith("/pytorch_model.bin") or "/onnx/" in r.path for r in hub.log)
        == prefer
    )
    assert not (report.folder / "pytorch_model.bin").exists() == prefer
    assert (report.folder / "onnx" / "pytorch_model.bin").read_bytes() == hub.repos[BOTH].files[
        "onnx/pytorch_model.bin"
    ]
    assert report.files == sorted(set(hub.repos[BOTH].files) - set(skipped))
    assert report.verdict == "safe"  # torch.save of a state_dict: allowlisted globals only


def test_offline_answers_from_the_cache(hub, hub_env, go_offline):
    import keishiki

    online = keishiki.pull(TINY, prefer_safetensors=True, quiet=True)
    hub.reset()
    go_offline()
    offline = keishiki.pull(TINY, prefer_safetensors=True, quiet=True)
    assert hub.log == []  # not one request
    assert (offline.folder, offline.commit, offline.files) == (
        online.folder,
        online.commit,
        online.files,
    )
    assert offline.offline and offline.verdict == "safe" and offline.warnings == []


def test_offline_and_not_cached_is_one_line(hub, hub_env, go_offline):
    import keishiki

    go_offline()
    with pytest.raises(HubError) as err:
        keishiki.pull(TINY, quiet=True)
    assert str(err.value) == (
        f"{TINY}: not in the cache ({hub_env.cache}) and HF_HUB_OFFLINE=1 "
        f"forbids downloading: pull it once online"
    )
    assert hub.log == []
    code, out, errtext = run_cli("pull", TINY, "--quiet")
    assert (code, out) == (2, "")
    assert errtext == f"keishiki: error: {err.value}\n"


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "keishiki-test/absent",
            "keishiki-test/absent on {endpoint}: repository not found (or "
            "private: log in with `hf auth login` or HF_TOKEN)",
        ),
        (
            f"{TINY}@nope",
            f"{TINY}@nope on {{endpoint}}: revision 'nope' not found (a branch, tag or commit)",
        ),
        (
            GATED,
            f"{GATED} on {{endpoint}}: gated repository: accept its terms at "
            f"{{endpoint}}/{GATED} and log in (`hf auth login` or HF_TOKEN)",
        ),
        ("not-a-repo", "'not-a-repo' is not a Hub repository: write ORG/NAME or ORG/NAME@REV"),
        (
            f"{TINY}@../../x",
            f"{TINY}@../../x: '../../x' is not a revision (a branch, tag, commit or refs/pr/N)",
        ),
    ],
)
def test_errors_are_one_line(hub, hub_env, spec, message):
    code, out, err = run_cli("pull", spec, "--quiet")
    assert (code, out) == (2, "")
    assert err == f"keishiki: error: {message.format(endpoint=hub.endpoint)}\n"
    assert not (hub_env.cache / "models--keishiki-test--absent" / "snapshots").exists()


def test_malicious_repo_verdict_and_exit_1(hub, hub_env, marker):
    code, out, err = run_cli("pull", EVIL, "--quiet")
    assert code == 1, err
    assert "verdict: dangerous" in out and "system" in out
    assert not marker.exists()
    snapshot = (
        hub_env.cache / "models--keishiki-test--evil-pickle" / "snapshots" / hub.repos[EVIL].commit
    )
    # pull only reports: the file stays, byte for byte
    assert (snapshot / "pytorch_model.bin").read_bytes() == hub.repos[EVIL].files[
        "pytorch_model.bin"
    ]
    code, out, _err = run_cli("pull", EVIL, "--quiet", "--json")
    data = json.loads(out)
    assert (code, data["verdict"], data["exit_code"]) == (1, "dangerous", 1)
    assert [
        f["path"].endswith("pytorch_model.bin")
        for f in data["scan"]["files"]
        if f["verdict"] == "dangerous"
    ] == [True]


@pytest.mark.parametrize(
    "args,code,verdict,fetched",
    [
        ([], 1, "dangerous", ["README.md", "config.json", "pytorch_model.bin"]),
        (["--include", "*.json"], 0, "safe", ["config.json"]),  # the pickle never came
        (["--exclude", "*.bin"], 0, "safe", ["README.md", "config.json"]),
        (
            ["--prefer-safetensors"],
            1,
            "dangerous",  # no safetensors beside it
            ["README.md", "config.json", "pytorch_model.bin"],
        ),
    ],
)
def test_verdict_covers_what_was_pulled(hub, hub_env, args, code, verdict, fetched):
    got, out, _err = run_cli("pull", EVIL, "--quiet", "--json", *args)
    data = json.loads(out)
    assert (got, data["verdict"], data["exit_code"], data["files"]) == (
        code,
        verdict,
        code,
        fetched,
    )
    assert sorted(_resolved(hub, EVIL)) == fetched


def test_cli_json(hub, hub_env):
    code, out, err = run_cli(
        "pull",
        f"{BOTH}@main",
        "--prefer-safetensors",
        "--quiet",
        "--include",
        "*.bin",
        "--include",
        "*.safetensors",
        "--json",
    )
    data = json.loads(out)
    assert (code, err) == (0, "")
    assert data["files"] == ["model.safetensors", "onnx/pytorch_model.bin"]
    assert data["skipped"] == ["pytorch_model.bin"]
    assert data["nbytes"] == sum(len(hub.repos[BOTH].files[f]) for f in data["files"])
    assert (data["commit"], data["revision"], data["verdict"]) == (
        hub.repos[BOTH].commit,
        "main",
        "safe",
    )


def test_subprocess_env_progress_and_offline(hub, hub_env):
    """A real process configured by the environment alone, as a user runs it."""
    env = hub_env.env()
    loud = run_keishiki(env, "pull", TINY)
    assert loud.returncode == 0, loud.stderr
    assert "Fetching 6 files" in loud.stderr  # huggingface_hub's own progress bar
    # (a long path may be folded inside the table where COLUMNS is set: compare unfolded)
    assert str(hub_env.cache) in "".join(loud.stdout.split()) and "verdict: safe" in loud.stdout
    offline = run_keishiki(hub_env.env(offline=True), "pull", TINY, "--quiet", "--json")
    assert (offline.returncode, offline.stderr) == (0, "")  # --quiet: no bar at all
    assert json.loads(offline.stdout)["offline"] is True
    missing = run_keishiki(hub_env.env(offline=True), "pull", BOTH, "--quiet")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "HF_HUB_OFFLINE=1" in missing.stderr
    # huggingface_hub's own "No files matched" warning is not said twice
    nothing = run_keishiki(env, "pull", TINY, "--include", "*.nothing")
    assert nothing.returncode == 2 and "No files matched" not in nothing.stderr
    assert nothing.stderr.splitlines()[-1] == (
        f"keishiki: error: {TINY}: no file of the repository matches --include '*.nothing': "
        f"nothing was pulled"
    )


def test_hub_down(hub, hub_env):
    """The Hub unreachable: a cached snapshot is still answered, anything else is one line."""
    import keishiki

    cached = keishiki.pull(TINY, quiet=True)
    hub.stop()
    again = keishiki.pull(TINY, quiet=True)
    assert (again.folder, again.files, again.verdict) == (cached.folder, cached.files, "safe")
    code, out, err = run_cli("pull", BOTH, "--quiet")
    assert (code, out) == (2, "")
    assert err == (
        f"keishiki: error: {BOTH}: not in the cache and {hub.endpoint} cannot be reached\n"
    )
    code, out, err = run_cli("info", f"hf://{TINY}")
    assert (code, out) == (2, "")
    assert err == f"keishiki: error: {TINY}: cannot reach {hub.endpoint} (ConnectError)\n"


def test_pull_through_a_cdn_redirect(hub, hub_env):
    """LFS files answered as huggingface.co answers them: a 302 to another host carrying the
    ETag and size; huggingface_hub takes the metadata from the redirect and GETs the CDN."""
    import hashlib

    import keishiki

    hub.cdn = True
    report = keishiki.pull(TINY, quiet=True)
    files = hub.repos[TINY].files
    for name, data in files.items():
        assert (report.folder / name).read_bytes() == data
    sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert _resolved(hub, TINY) == {
        name: ["HEAD"] if name == "model.safetensors" else ["HEAD", "GET"] for name in files
    }
    assert [(r.method, r.range) for r in hub.log if r.path == f"/cdn/{sha}"] == [("GET", None)]
    assert report.verdict == "safe"
