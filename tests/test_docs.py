"""Every fenced code block of README.md and docs/*.md runs as written (issue 9).

The blocks are read from the markdown at collection time, so a block added to the docs is
tested without touching this file.  Each block is one test case with the id ``file:line``
(the line of its opening fence):

- ```` ```python ```` blocks are executed in a fresh namespace (``>>>``/``...`` prompts are
  stripped and the expected-output lines of such doctest-style blocks dropped);
- ```` ```console ````/``bash``/``sh`` blocks, and unlabelled blocks with ``$ `` prompts, run
  each ``$ keishiki ...`` line in-process (``tests.conftest.run_cli``), in order, and check
  its exit code: the number printed by a following ``echo $?``, else an ``exit N`` in the
  line's comment, else 1 when the shown output says ``verdict: dangerous|unknown|different``,
  else 0.  Other lines (``make``, ``pip``, ``python``, ``ls``) are not run: see ``NOT_RUN``.
  ``keishiki view`` serves until Ctrl-C: it runs in a subprocess until it prints its URL.
- Other blocks (a layout listing, a usage synopsis without a ``$`` prompt) are skipped with
  the reason.

Each block runs in its own empty folder, into which the files it names are copied first
(``FIXTURES``: one table from the names the docs use to builders of tiny models).  A name the
block itself writes before it reads it (``keishiki convert A B`` makes B) is not prepared.
Every fixture is built once per session, shared by the xdist workers.

A block that cannot run here (GPU, network, a placeholder) says so in the markdown, on the
line before its fence: ``<!-- docs-test: skip (reason) -->``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import REPO, corpus_path, run_cli

pytestmark = pytest.mark.slow

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>.*)\)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s{0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
PYTHON = {"python", "py", "pycon", "python3"}
SHELL = {"console", "bash", "sh", "shell", "shell-session", "zsh", ""}

# Lines of shell blocks that are not keishiki commands: not run, and why.
NOT_RUN = {
    "make": "a make target: creates .venv / runs the whole suite (the CI runs `make test`)",
    "pip": "installs packages (no network here; the environment is already installed)",
    "python": "a Python or benchmark command, not a keishiki command (its result is a fixture)",
    "ls": "lists a folder (shown for illustration)",
    "echo": "prints the previous exit code (checked against that command)",
    "cd": "changes folder",
}


def _not_run(word: str) -> str:
    return NOT_RUN.get(os.path.basename(word), f"`{word}` is not a keishiki command")


# ---- reading the docs ------------------------------------------------------------------------


@dataclass
class Block:
    file: str  # relative to the repository
    line: int  # 1-based line of the opening fence
    lang: str
    lines: list[str]
    skip: str | None = None  # reason from a <!-- docs-test: skip (...) --> marker

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def extract_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a markdown file, with its language and skip marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m["fence"], (m["info"].split() or [""])[0].lower()
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence[0] * len(fence))
            and not lines[j].strip().strip(fence[0])
        ):
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = SKIP_MARK.search(prev)
        indent = len(m["indent"])
        body = [ln[indent:] if ln[:indent].isspace() else ln for ln in lines[i + 1 : j]]
        name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        blocks.append(Block(name, i + 1, lang, body, marker["reason"] if marker else None))
        i = j + 1
    return blocks


BLOCKS = [b for f in DOC_FILES for b in extract_blocks(f)]


@dataclass
class Command:
    line: int  # line in the markdown file
    text: str  # after the "$ " prompt, continuation lines joined
    argv: list[str]
    output: list[str] = field(default_factory=list)
    expect: int | None = None  # exit code the docs imply (None: not run)
    not_run: str | None = None  # why the line is not run
    env: dict[str, str] = field(default_factory=dict)  # VAR=value before the command
    rest: str = ""  # what follows a pipe or && (not run)


def parse_shell(block: Block) -> list[Command]:
    """The ``$ `` commands of a shell block with the output lines shown under each."""
    commands: list[Command] = []
    lines, k = block.lines, 0
    while k < len(lines):
        line = lines[k]
        if not line.startswith("$ "):
            if commands:
                commands[-1].output.append(line)
            k += 1
            continue
        start, text = k, line[2:]
        while True:  # continuation: a trailing backslash or an unclosed quote
            try:
                if text.endswith("\\"):
                    raise ValueError("continued")
                argv = shlex.split(text, comments=True)
                break
            except ValueError:
                if k + 1 >= len(lines):
                    raise
                k += 1
                text = (text[:-1] if text.endswith("\\") else text + "\n") + lines[k]
        commands.append(Command(block.line + 1 + start, text, argv))
        k += 1
    for n, cmd in enumerate(commands):
        argv = cmd.argv
        if argv[-2:] == ["echo", "$?"] and ";" in cmd.text:  # "keishiki ...; echo $?"
            cmd.argv = argv = [a.rstrip(";") for a in argv[:-2] if a != ";"]
            shown = [ln for ln in cmd.output if ln.strip().isdigit()]
            cmd.expect = int(shown[-1]) if shown else None
        while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):  # HF_HUB_OFFLINE=1 keishiki
            key, _, value = argv.pop(0).partition("=")
            cmd.env[key] = value
        for i, a in enumerate(argv):  # keishiki ... | jq .x: the keishiki part runs
            if a in ("|", "||", "&&", ";"):
                cmd.argv, cmd.rest = argv[:i], " ".join(argv[i:])
                argv = cmd.argv
                break
        if not argv or argv[0] != "keishiki":
            cmd.not_run = _not_run(argv[0] if argv else "")
            continue
        if "--backend=vllm" in argv or any(
            a == "--backend" and b == "vllm" for a, b in zip(argv, argv[1:])
        ):
            cmd.not_run = "--backend vllm needs a CUDA GPU and vLLM"
            continue
        if cmd.expect is None and n + 1 < len(commands) and commands[n + 1].argv == ["echo", "$?"]:
            shown = [ln for ln in commands[n + 1].output if ln.strip().isdigit()]
            cmd.expect = int(shown[0]) if shown else None
        if cmd.expect is None:
            m = re.search(r"\bexit (?:code )?(\d+)\b", _comment(cmd.text))
            if m:
                cmd.expect = int(m[1])
            elif any(
                re.search(r"verdict: (dangerous|unknown|different)\b", ln) for ln in cmd.output
            ):
                cmd.expect = 1
            else:
                cmd.expect = 0
    return commands


def _comment(text: str) -> str:
    """The ``# ...`` comment of a shell line (a ``#`` inside quotes is not one)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[i + 1 :]
    return ""


def python_source(block: Block) -> str:
    """The block as Python: doctest prompts stripped, their expected output dropped; padded
    with blank lines so that tracebacks give the markdown file's line numbers."""
    lines = block.lines
    if any(ln.lstrip().startswith(">>>") for ln in lines):
        code = []
        for ln in lines:
            s = ln.lstrip()
            if s.startswith(">>> ") or s == ">>>":
                code.append(s[4:])
            elif s.startswith("... ") or s == "...":
                code.append(s[4:])
            else:
                code.append("")  # expected output
        lines = code
    return "\n" * block.line + "\n".join(lines) + "\n"


def kind_of(block: Block) -> tuple[str, str | None]:
    """("python" | "shell" | "none", reason when nothing is run)."""
    if block.lang in PYTHON:
        return "python", None
    if block.lang in SHELL and any(ln.startswith("$ ") for ln in block.lines):
        return "shell", None
    if block.lang in SHELL:
        if block.lang:
            words = sorted({ln.split()[0] for ln in block.lines if ln.strip()})
            return "none", (
                "no `$ keishiki` command to run ("
                + ", ".join(f"`{w}`: {_not_run(w)}" for w in words)
                + ")"
            )
        return "none", "not code: a listing or usage synopsis without a `$ ` prompt"
    return "none", f"a `{block.lang}` block is not run"


# ---- fixtures: every file the docs name, built once per session ------------------------------


@dataclass
class Fixture:
    build: Callable[[Path, Callable[[str], Path]], None]  # (dest, get) -> writes dest
    place: str | None = None  # what is copied into the block's folder (default: the name)


def _seq_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _seq_safetensors(dest, get):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _seq_model().state_dict().items()}, str(dest))


def _seq_onnx(example_shape):
    def build(dest, get):
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # 3-D input: MatMul with transposed onnx::MatMul_<N> weights; 2-D: Gemm, names kept
            torch.onnx.export(
                _seq_model(),
                (torch.randn(*example_shape),),
                str(dest),
                dynamo=False,
                do_constant_folding=True,
            )

    return build


def _torch_save(make):
    def build(dest, get):
        import torch

        torch.save(make(get), dest)

    return build


def _tiny_llama_state_dict(get):
    from safetensors.torch import load_file

    return load_file(get("tiny-llama") / "model.safetensors")


class _Payload:
    """Pickles as a call to ``func(*args)``: saved only, never loaded by these tests."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _evil(get):  # what docs/scan.md's `python -c` writes (loading it would `touch PWNED`)
    import torch

    return {"w": torch.zeros(2), "x": _Payload(os.system, ("touch PWNED",))}


def _suspicious(get):  # a harmless pickle that still calls a global on load: print("hello")
    import torch

    return {"w": torch.zeros(2), "x": _Payload(print, ("hello",))}


def _evil_pkl(dest, get):
    # a protocol-2 pickle whose GLOBAL os.system sits at offset 17 (docs/pytorch.md)
    dest.write_bytes(
        b"\x80\x02}q\x00X\x05\x00\x00\x00shellq\x01cos\nsystem\nq\x02"
        b"X\x0b\x00\x00\x00touch PWNEDq\x03\x85q\x04Rq\x05s."
    )


def _ckpt(get):
    import torch

    model = _seq_model()
    return {
        "model": model.state_dict(),
        "epoch": 3,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
    }


def _net_t7(dest, get):
    from tests.formats.test_torch7 import write_sequential

    dest.write_bytes(write_sequential())


def _convert(src: str, **options):
    def build(dest, get):
        import keishiki

        keishiki.convert(get(src), dest, quiet=True, **options)

    return build


def _copy_of(name: str, member: str | None = None):
    def build(dest, get):
        src = get(name) / member if member else get(name)
        _copy(src, dest)

    return build


def _corpus(rel: str):
    def build(dest, get):
        _copy(corpus_path(rel), dest)

    return build


def _llama_gguf_pair(dest, get):
    """hf.safetensors + model.gguf: llama names, Q/K permuted as llama.cpp does, ffn_up Q8_0
    (docs/compare_view.md), written as tests/compare does."""
    from tests.compare.conftest import write_llama_gguf_pair

    dest.mkdir()
    write_llama_gguf_pair(dest, up_scale=0.1)


def _resnet_pair(dest, get):
    """resnet.pt (state_dict) + resnet.onnx (dynamo=False export: BatchNorm folded into the
    conv, whose weight is then an ``onnx::Conv_<N>`` initializer)."""
    import warnings

    import torch

    class TinyResNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(4)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            return self.fc(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = TinyResNet()
    with torch.no_grad():  # a trained-looking BatchNorm, so that the fold changes the values
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 1.5)
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.uniform_(-0.5, 0.5)
    model.eval()
    dest.mkdir()
    torch.save(model.state_dict(), dest / "resnet.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 8, 8),),
            str(dest / "resnet.onnx"),
            dynamo=False,
            do_constant_folding=True,
        )


QWEN2_5_7B_INSTRUCT = {  # Qwen/Qwen2.5-7B-Instruct's config.json as published
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}


def _config_only(config: dict):
    def build(dest, get):
        import json

        dest.mkdir()
        (dest / "config.json").write_text(json.dumps(config, indent=2))

    return build


def _downloads(dest, get):  # a folder of clean downloads: `scan downloads/` exits 0
    dest.mkdir()
    _copy(get("model.safetensors"), dest / "model.safetensors")
    _copy(get("model.onnx"), dest / "model.onnx")


# The names the docs use -> how each is made.  Names are matched as whole path tokens in a
# block's text (``llama`` does not match ``tiny-llama`` or ``llama.gguf``).
FIXTURES: dict[str, Fixture] = {
    # Hugging Face folders and their exports (keishiki.examples + keishiki convert)
    "tiny-llama": Fixture(
        lambda dest, get: __import__(
            "keishiki.examples", fromlist=["build_tiny_llama"]
        ).build_tiny_llama(dest)
    ),
    "llama": Fixture(_copy_of("tiny-llama")),
    "some-hf-folder": Fixture(_copy_of("tiny-llama")),
    "tiny-onnx": Fixture(_convert("tiny-llama", to="onnx")),
    "llama-onnx": Fixture(_copy_of("tiny-onnx")),
    "tiny-llama-onnx": Fixture(_copy_of("tiny-onnx")),
    "tiny-ts": Fixture(_convert("tiny-llama", to="torchscript", method="trace-kv")),
    "ts/model.pt": Fixture(_copy_of("tiny-ts"), place="ts"),
    "tiny.gguf": Fixture(_convert("tiny-llama", to="gguf")),
    "llama.gguf": Fixture(_convert("tiny-llama", to="gguf", quant="q8_0")),
    "pytorch_model.bin": Fixture(_torch_save(_tiny_llama_state_dict)),
    # small torch modules
    "model.safetensors": Fixture(_seq_safetensors),
    "seq.safetensors": Fixture(_seq_safetensors),
    "a.safetensors": Fixture(_seq_safetensors),
    "model.pt": Fixture(_torch_save(lambda get: _seq_model().state_dict())),
    "model.onnx": Fixture(_seq_onnx((2, 4))),
    "seq.onnx": Fixture(_seq_onnx((1, 2, 4))),
    "b.onnx": Fixture(_seq_onnx((1, 2, 4))),
    "ckpt.pt": Fixture(_torch_save(_ckpt)),
    "whole_module.pt": Fixture(_torch_save(lambda get: _seq_model())),
    "net.t7": Fixture(_net_t7),
    "llama-gguf-pair": Fixture(_llama_gguf_pair),
    "hf.safetensors": Fixture(_copy_of("llama-gguf-pair", "hf.safetensors")),
    "model.gguf": Fixture(_copy_of("llama-gguf-pair", "model.gguf")),
    "resnet-pair": Fixture(_resnet_pair),
    "resnet.pt": Fixture(_copy_of("resnet-pair", "resnet.pt")),
    "resnet.onnx": Fixture(_copy_of("resnet-pair", "resnet.onnx")),
    "downloads": Fixture(_downloads),
    "Qwen2.5-7B-Instruct": Fixture(_config_only(QWEN2_5_7B_INSTRUCT)),  # before the download
    # pickles that scan flags (saved, never loaded)
    "suspicious.pt": Fixture(_torch_save(_suspicious)),
    "evil.pt": Fixture(_torch_save(_evil)),
    "evil.pkl": Fixture(_evil_pkl),
    # real files from the corpus
    "nmp_external_single": Fixture(
        _corpus("onnx_external_data/onnx-1.12.0-debian/nmp_external_single")
    ),
    "tiny-bert-q8_0.gguf": Fixture(_corpus("gguf/llama.cpp-convert/tiny-bert-q8_0.gguf")),
    "pytorch_zip/torch-1.13.1-debian/mixed_dtypes_views_zip.pt": Fixture(
        _corpus("pytorch_zip/torch-1.13.1-debian/mixed_dtypes_views_zip.pt")
    ),
}


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy2(src, dest)


def _token(name: str) -> re.Pattern:
    return re.compile(r"(?<![\w./-])" + re.escape(name) + r"(?![\w-]|\.\w)")


# a call that writes its second path argument: convert(...), export_causal_lm(...), ...
_WRITES_PY = re.compile(
    r"\b(?:convert|export_\w+)\(\s*(?:Path\()?[\"'][^\"']+[\"']\)?\s*,\s*"
    r"(?:Path\()?[\"'](?P<out>[^\"']+)[\"']"
)


def _fixture_of(arg: str) -> str | None:
    """The fixture a command-line argument names: itself, or the folder it lies in."""
    arg = arg.rstrip("/")
    return next((name for name in FIXTURES if arg == name or arg.startswith(name + "/")), None)


def names_to_prepare(block: Block, commands: list[Command] | None) -> list[str]:
    """The fixture names the block reads before (or without) writing them itself: for a shell
    block, the arguments of its keishiki commands (``keishiki convert A B`` writes B); for
    Python, the names in its text (``convert("A", "B")``, ``export_*(Path("A"), Path("B"))``
    write B)."""
    needed: list[str] = []
    if commands is not None:
        written: set[str] = set()
        for cmd in commands:
            if cmd.not_run is not None or len(cmd.argv) < 2:
                continue
            args = cmd.argv[2:]
            paths = [a for a in args if not a.startswith("-")]
            for arg in args:
                name = _fixture_of(arg)
                is_out = cmd.argv[1] == "convert" and paths[1:2] == [arg]
                if name and not is_out and name not in written and name not in needed:
                    needed.append(name)
            if cmd.argv[1] == "convert" and len(paths) > 1:
                written.add(paths[1].rstrip("/"))
        return needed
    text = block.text
    written_at: dict[str, int] = {}
    for m in _WRITES_PY.finditer(text):
        written_at.setdefault(m["out"].rstrip("/"), m.start("out") - 1)
    for name in FIXTURES:
        m = _token(name).search(text)
        if m and (name not in written_at or m.start() < written_at[name]):
            needed.append(name)
    return needed


@pytest.fixture(scope="session")
def docs_fixtures(tmp_path_factory):
    """``get(name) -> Path``: the built fixture, made once per test session (the xdist
    workers share one folder and a lock per name)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "docs-fixtures"
    root.mkdir(exist_ok=True)

    def get(name: str) -> Path:
        fixture = FIXTURES[name]
        folder = root / re.sub(r"[^\w.-]", "_", name)
        path = folder / (fixture.place or name)
        with FileLock(str(folder) + ".lock"):
            if not (folder / ".done").exists():
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir()
                target = folder / (fixture.place or name)  # ts/model.pt: builds ts/
                target.parent.mkdir(parents=True, exist_ok=True)
                fixture.build(target, get)
                (folder / ".done").write_text("ok")
        return path

    return get


@pytest.fixture
def workdir(tmp_path, monkeypatch, docs_fixtures, tmp_path_factory):
    """An empty folder as the working directory, keishiki's caches under the session's
    temporary folder, no network for Hugging Face."""
    cache = tmp_path_factory.getbasetemp() / "keishiki-cache"
    monkeypatch.setenv("KEISHIKI_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("BROWSER", "true")  # `keishiki view` opens "the browser": /bin/true
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def prepare(names: list[str]) -> None:
        for name in names:
            place = FIXTURES[name].place or name
            if not (work / place).exists():
                _copy(docs_fixtures(name), work / place)

    return work, prepare


# ---- the tests -------------------------------------------------------------------------------


def _run_view(argv: list[str], timeout: float = 120) -> tuple[bool, int | None, str]:
    """``keishiki view`` serves until Ctrl-C: start it, wait for its URL, stop it.
    Returns (served, exit code if it ended by itself, output)."""
    import selectors

    proc = subprocess.Popen(
        [sys.executable, "-m", "keishiki", *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out = b""
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:  # it exited
                    break
                out += chunk
                if b"http://127.0.0.1:" in out and proc.poll() is None:
                    return True, None, out.decode(errors="replace")
        return False, proc.poll(), out.decode(errors="replace")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _shell(block: Block, workdir) -> None:
    work, prepare = workdir
    commands = parse_shell(block)
    runnable = [c for c in commands if c.not_run is None]
    if not runnable:
        pytest.skip(
            "no keishiki command to run: "
            + "; ".join(
                f"line {c.line} `{c.text.splitlines()[0][:40]}`: {c.not_run}" for c in commands
            )
        )
    prepare(names_to_prepare(block, commands))
    failures = []
    for cmd in commands:
        if cmd.not_run is not None:
            print(f"not run: {block.file}:{cmd.line}: {cmd.text.splitlines()[0]} ({cmd.not_run})")
            continue
        print(f"$ {cmd.text}")
        if cmd.argv[1:2] == ["view"]:
            served, code, out = _run_view(cmd.argv)
            print(out)
            if not served:
                failures.append(
                    f"{block.file}:{cmd.line}: `{cmd.text}` did not serve its page "
                    f"(exit code {code}):\n{out[-2000:]}"
                )
            continue
        if cmd.rest:
            print(f"not run: `{cmd.rest}` (only the keishiki command is)")
        with _environ(cmd.env):
            code, out, err = run_cli(*cmd.argv[1:])
        print(out[-4000:], err[-4000:], sep="\n")
        if code != cmd.expect:
            hint = (
                "\n(a file the docs name that FIXTURES does not build?)"
                if "no such file" in err
                else ""
            )
            failures.append(
                f"{block.file}:{cmd.line}: `{cmd.text}` exited {code}, the docs "
                f"imply {cmd.expect}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}" + hint
            )
    assert not failures, "\n\n".join(failures)


def _python(block: Block, workdir) -> None:
    work, prepare = workdir
    prepare(names_to_prepare(block, None))
    # the markdown file as the code's file name: tracebacks show the doc's own lines
    code = compile(python_source(block), str(REPO / block.file), "exec")
    exec(code, {"__name__": "__docs__"})  # noqa: S102 - the docs' own examples


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs(block: Block, request):
    if block.skip:
        pytest.skip(f"marked in the markdown: {block.skip}")
    kind, reason = kind_of(block)
    if kind == "none":
        pytest.skip(reason)
    workdir = request.getfixturevalue("workdir")
    if kind == "python":
        _python(block, workdir)
    else:
        _shell(block, workdir)


# ---- the reader itself -----------------------------------------------------------------------


def test_blocks_are_found_with_languages_and_markers(tmp_path):
    md = tmp_path / "x.md"
    md.write_text(
        "text\n\n```python\nprint(1)\n```\n\n<!-- docs-test: skip (needs a GPU) -->\n"
        "```console\n$ keishiki run m --backend vllm\n```\n\n````\n```\n````\n"
    )
    blocks = extract_blocks(md)
    assert [(b.line, b.lang, b.skip) for b in blocks] == [
        (3, "python", None),
        (8, "console", "needs a GPU"),
        (12, "", None),
    ]
    assert blocks[2].lines == ["```"]


def test_shell_commands_expected_codes_and_prepared_names():
    block = Block(
        "x.md",
        1,
        "console",
        [
            "$ keishiki convert llama/ llama-onnx/ --to onnx   # made here, not prepared",
            "$ keishiki scan evil.pt",
            "verdict: dangerous (1 files scanned)",
            "$ keishiki compare hf.safetensors model.gguf --atol 0.05; echo $?",
            "... verdict: within tolerance",
            "0",
            "$ keishiki scan downloads/ --json   # exit 0 clean, 1 unsafe",
            "$ keishiki run llama-onnx -p 'a",
            "b'",
            "$ echo $?",
            "2",
            "$ ls llama-onnx/",
            "$ keishiki run llama -p '# exit 3' --backend vllm",
            "$ keishiki run llama -p '# exit 3'   # exit 2 (no such model)",
            "$ HF_HUB_OFFLINE=1 keishiki info downloads/ --json | jq .format",
        ],
    )
    cmds = parse_shell(block)
    assert [(c.expect, c.not_run is None) for c in cmds] == [
        (0, True),
        (1, True),
        (0, True),
        (0, True),
        (2, True),
        (None, False),
        (None, False),
        (None, False),
        (2, True),
        (0, True),
    ]
    assert "GPU" in cmds[7].not_run
    assert (cmds[9].env, cmds[9].argv, cmds[9].rest) == (
        {"HF_HUB_OFFLINE": "1"},
        ["keishiki", "info", "downloads/", "--json"],
        "| jq .format",
    )
    assert cmds[2].argv == ["keishiki", "compare", "hf.safetensors", "model.gguf", "--atol", "0.05"]
    assert cmds[4].argv[-1] == "a\nb" and cmds[4].line == 9
    assert sorted(names_to_prepare(block, cmds)) == [
        "downloads",
        "evil.pt",
        "hf.safetensors",
        "llama",
        "model.gguf",
    ]


def test_python_writes_are_not_prepared_and_doctest_prompts_are_stripped():
    block = Block(
        "x.md",
        10,
        "python",
        [
            ">>> import keishiki",
            '>>> keishiki.inspect("model.safetensors")',
            "ModelInfo(...)",
            '>>> keishiki.convert("pytorch_model.bin", "model.safetensors", to="safetensors")',
        ],
    )
    assert names_to_prepare(block, None) == ["pytorch_model.bin", "model.safetensors"]
    src = python_source(block)
    assert src.splitlines()[10:] == [
        "import keishiki",
        'keishiki.inspect("model.safetensors")',
        "",
        'keishiki.convert("pytorch_model.bin", "model.safetensors", to="safetensors")',
    ]
    block.lines = [
        'keishiki.convert("pytorch_model.bin", "model.safetensors")',
        'keishiki.inspect("model.safetensors")',
    ]
    assert names_to_prepare(block, None) == ["pytorch_model.bin"]
