"""Both sides of the ``hf-model -> gguf`` tokenizer check, encoded in a child process.

The check compares the folder's tokenizer (``transformers.AutoTokenizer``) with the written
GGUF's (:func:`.gguf_vocab.load_gguf_tokenizer`, transformers' GGUF loader) on sample texts.
Loading them is seconds of imports (transformers pulls in torch) and Python, none of which
the conversion itself needs.  So a child process starts with the conversion, loads the
folder's tokenizer and encodes the samples while this process writes the GGUF; once the
file is written it is handed the file, loads the GGUF's tokenizer (transformers already
imported) and encodes the same samples while this process reads the tensors back.

Why a process and not a thread: the writer makes many short numpy calls that let go of the
GIL, and each had to win it back from a thread busy importing: the write took 2-3x longer.
In the child, which does nothing else, transformers' GGUF loader is handed
:func:`.gguf_edges.reference_reader`'s class as ``gguf.GGUFReader``: the same parsing over a
plain view of the file's map (opening a 32000-token vocabulary: 0.4 s instead of 1.6 s).

The child makes exactly the calls the in-process check makes (same functions, same
arguments) and returns the ids; :class:`Recorded` hands them to
:func:`.gguf_vocab.compare_encodings` as the tokenizers would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# run by ``python -c``; stdin: a JSON line {"folder", "samples", "keishiki"}, later {"gguf",
# "flags"} (or end of input: nothing more to do); stdout: one JSON object
_CHILD = r"""
import json, sys
from pathlib import Path

def encode(load, samples):
    try:
        tok = load()
        return {"ids": [list(tok.encode(t, add_special_tokens=s)) for t, s in samples]}
    except Exception as exc:
        return {"error": getattr(exc, "kind", type(exc).__name__), "message": str(exc)}

first = json.loads(sys.stdin.readline())
samples = first["samples"]
sys.path.insert(0, first["keishiki"])  # this keishiki, however the parent found it

def source():
    import transformers
    transformers.utils.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(first["folder"], trust_remote_code=False)

out = {"expected": encode(source, samples)}
try:  # imported while the parent still writes
    import gguf
    from keishiki._convert.gguf_edges import _plain_view_reader
    from keishiki._convert.gguf_vocab import load_gguf_tokenizer
    # this process does nothing else: transformers' GGUF loader (it takes gguf.GGUFReader
    # when called) gets the same reader over a plain view of the map, 4x faster to open
    gguf.GGUFReader = _plain_view_reader()
except Exception as exc:
    failed = {"error": type(exc).__name__, "message": str(exc)}
else:
    failed = None
line = sys.stdin.readline()
if line:
    second = json.loads(line)
    load = lambda: load_gguf_tokenizer(Path(second["gguf"]), second["flags"])
    out["got"] = failed or encode(load, samples)
sys.stdout.write(json.dumps(out))
"""


class Recorded:
    """A stand-in tokenizer that answers ``encode`` with the ids recorded for each sample."""

    def __init__(self, ids: dict[tuple[str, bool], list[int]]):
        self._ids = ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids the real tokenizer gave ``text`` (KeyError for a text not encoded)."""
        return self._ids[(text, add_special_tokens)]


class ChildError(Exception):
    """The child could not load or run a tokenizer; ``kind`` is the exception's type name."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def samples() -> list[tuple[str, bool]]:
    """(text, add_special_tokens) of every encoding :func:`.gguf_vocab.compare_encodings` makes."""
    from .gguf_vocab import LOOSE_SAMPLES, STRICT_SAMPLES

    return [(t, False) for t in STRICT_SAMPLES + LOOSE_SAMPLES] + [(STRICT_SAMPLES[0], True)]


class TokenizerChild:
    """The child process of one check: started on the source folder at once;
    :meth:`send_gguf` hands it the written file; :meth:`expected` / :meth:`got` wait for the
    encodings (a :class:`Recorded` each) or raise :class:`ChildError` as loading would have."""

    def __init__(self, folder: Path):
        self._samples = samples()
        self._result: dict[str, Any] | None = None
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        package_root = str(Path(__file__).resolve().parents[2])
        self._send({"folder": str(folder), "samples": self._samples, "keishiki": package_root})

    def _send(self, message: dict) -> None:
        if self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(json.dumps(message) + "\n")  # small: never fills the pipe
            self._proc.stdin.flush()
        except OSError:  # the child has ended already: its output says why
            self.close()

    def send_gguf(self, path: Path, flags: dict[str, Any]) -> None:
        """Load ``path``'s tokenizer with ``load_gguf_tokenizer(path, flags)`` in the child."""
        self._send({"gguf": str(path), "flags": flags})
        self.close()

    def close(self) -> None:
        """No more to send: the child finishes what it has (idempotent)."""
        stdin, self._proc.stdin = self._proc.stdin, None  # (communicate would flush it)
        if stdin is not None:
            try:
                stdin.close()
            except OSError:  # a broken pipe: the child has ended already
                pass

    def discard(self) -> None:
        """End the child if its encodings were not collected (the conversion failed first)."""
        if self._result is None:
            self.close()
            self._proc.kill()
            self._proc.communicate()
            self._result = {}

    def _wait(self) -> dict[str, Any]:
        if self._result is None:
            self.close()
            out, err = self._proc.communicate()  # both pipes read together: no deadlock
            try:
                self._result = json.loads(out)
            except json.JSONDecodeError:
                last = (err.strip().splitlines() or [f"exit status {self._proc.returncode}"])[-1]
                error = {"error": "ChildProcessError", "message": last}
                self._result = {"expected": error, "got": error}
        return self._result

    def _side(self, key: str) -> Recorded:
        side = self._wait().get(key) or {"error": "ChildProcessError", "message": "not asked"}
        if "error" in side:
            raise ChildError(side["error"], side["message"])
        return Recorded(dict(zip(self._samples, side["ids"])))

    def expected(self) -> Recorded:
        """The folder's tokenizer's encodings."""
        return self._side("expected")

    def got(self) -> Recorded:
        """The GGUF's tokenizer's encodings (after :meth:`send_gguf`)."""
        return self._side("got")


def start(folder: Path) -> TokenizerChild:
    """Start the child process for ``folder`` (OSError when no interpreter can start)."""
    return TokenizerChild(folder)
