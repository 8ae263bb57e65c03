"""Both sides of the ``hf-model -> gguf`` tokenizer check, encoded in a child process.

The check compares the folder's tokenizer (``transformers.AutoTokenizer``) with the written
GGUF's (:func:`.gguf_vocab.load_gguf_tokenizer`, transformers' GGUF loader) on sample texts.
Loading them is seconds of imports (transformers pulls in torch) and Python, none of which
the conversion itself needs.  So a child process starts with the conversion, loads the
folder's tokenizer and encodes the samples while this process writes the GGUF; it is
handed the file, loads the GGUF's tokenizer (transformers already imported) and encodes the
same samples while this process writes and reads the tensors back.  A torch-free child
(below) is handed the file as soon as its metadata is written, and reads only that: the
finished file must then start with the very bytes it read (:meth:`TokenizerChild.
read_the_same`), else the check runs here on the finished file.  Any other child reads the
finished file (transformers' own GGUF loader reads it whole).

Why a process and not a thread: the writer makes many short numpy calls that let go of the
GIL, and each had to win it back from a thread busy importing: the write took 2-3x longer.
In the child, which does nothing else, transformers' GGUF loader is handed
:func:`.gguf_edges.reference_reader`'s class as ``gguf.GGUFReader``: the same fields, parsed
over a plain view of the file's map (a 32000-token vocabulary: 0.05 s instead of 1.6 s).

Without torch, where it can (``torch_free``): transformers 5 imports torch for any tokenizer
when torch is installed (1.1 s here, and its tokenizer loading then imports more), yet loads
tokenizers without it: that is its documented tokenizer-only mode, which the child enters
by marking torch absent (``sys.modules["torch"] = None``) before importing transformers
(the folder's side: 1.4 s instead of 3.5 s).  The GGUF's side needs one more step:
``AutoTokenizer.from_pretrained(gguf_file=...)`` builds the model's config from the file
with ``load_gguf_checkpoint``, which requires torch, only to pick the tokenizer class, and
transformers' GGUF metadata reader module imports torch for its tensors.  For the
architectures whose class is transformers' generic ``TokenizersBackend``
(:data:`TORCH_FREE_ARCHS`, checked again in the child against transformers' own
``TOKENIZER_MAPPING_NAMES``) the child calls that class directly, and transformers'
``read_gguf_metadata`` is served from gguf-py's reader of the same file (the metadata,
values as transformers' reader gives them).  The backend tokenizer that comes out is the
same (tests/convert/test_gguf_archs.py compares its JSON with the ``AutoTokenizer`` one).
Should the torch-free child fail for any reason, the check runs here the usual way
(:meth:`TokenizerChild.failed`).

Otherwise the child makes exactly the calls the in-process check makes (same functions,
same arguments) and returns the ids; :class:`Recorded` hands them to
:func:`.gguf_vocab.compare_encodings` as the tokenizers would.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..core.children import python_code

# GGUF architectures whose tokenizer transformers builds with its generic TokenizersBackend
# (none or that class in TOKENIZER_MAPPING_NAMES): their check runs without torch (a test
# checks that this names exactly those among the architectures keishiki writes)
TORCH_FREE_ARCHS = frozenset({"llama", "phi3"})

# run by ``python -c``; stdin: a JSON line {"folder", "samples", "keishiki", "torch_free"},
# later {"gguf"} (or end of input: nothing more to do); stdout: one JSON object
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
samples, torch_free = first["samples"], first["torch_free"]
sys.path.insert(0, first["keishiki"])  # this keishiki, however the parent found it
if torch_free:  # transformers' tokenizer-only mode (see keishiki._convert.encodings)
    sys.modules["torch"] = None

def source():
    import transformers
    transformers.utils.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(first["folder"], trust_remote_code=False)

out = {"expected": encode(source, samples)}
try:  # imported while the parent still writes
    from keishiki._convert.encodings import gguf_tokenizer
except Exception as exc:
    failed = {"error": type(exc).__name__, "message": str(exc)}
else:
    failed = None
line = sys.stdin.readline()
if line:
    asked, read = json.loads(line), {}
    path, early = Path(asked["gguf"]), asked.get("metadata_only", False)
    out["got"] = failed or encode(lambda: gguf_tokenizer(path, torch_free, early, read), samples)
    out["read"] = read
sys.stdout.write(json.dumps(out))
"""


def gguf_tokenizer(path: Path, torch_free: bool, metadata_only: bool = False, read=None):
    """The written GGUF's tokenizer, loaded in the child (:func:`.gguf_vocab.load_gguf_tokenizer`
    with the flags the file holds, read by gguf-py as the parent reads them).

    ``metadata_only`` (torch-free only): the file's tensor data may still be being written;
    its metadata is read (:func:`.gguf_edges.metadata_reader`) and ``read`` gets how many
    bytes from the start that was, and their sha256, for the parent to compare with the
    finished file (:meth:`TokenizerChild.read_the_same`).

    Raises:
        ChildError: ``torch_free`` and transformers gives this architecture a tokenizer
            class of its own (the parent then checks the usual way).
    """
    import gguf

    from .gguf_edges import _plain_view_reader, _tokenizer_flags, metadata_reader, reference_reader
    from .gguf_vocab import load_gguf_tokenizer

    reader = metadata_reader(path) if metadata_only and torch_free else reference_reader(path)
    if metadata_only and torch_free and read is not None:
        end = int(reader.metadata_end)
        read.update(bytes=end, sha256=hashlib.sha256(reader.data[:end]).hexdigest())
    flags = _tokenizer_flags(reader)
    if not torch_free:
        # transformers' loader takes gguf.GGUFReader when called: the reference reader's
        # class, the same fields made faster (this process does nothing else)
        gguf.GGUFReader = _plain_view_reader()
        return load_gguf_tokenizer(path, flags)
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    arch = reader.fields["general.architecture"].contents()
    # (a model type absent from the table gets the generic class too)
    if TOKENIZER_MAPPING_NAMES.get(arch) not in (None, "TokenizersBackend"):
        raise ChildError("NotGeneric", f"transformers has a tokenizer class of its own for {arch}")
    _serve_gguf_metadata(path, reader)
    return load_gguf_tokenizer(path, flags, generic=True)


def _serve_gguf_metadata(path: Path, reader) -> None:
    """Stand in for transformers' GGUF reader module (it imports torch) with a
    ``read_gguf_metadata`` over gguf-py's ``reader`` of ``path``: values as transformers'
    reader gives them (scalars and number arrays as Python values, a string array as its
    count unless named in ``string_arrays``), and the tensor names."""
    import types

    import gguf

    def read_gguf_metadata(gguf_path: str, string_arrays=()) -> tuple[dict, tuple[str, ...]]:
        if Path(gguf_path).resolve() != path.resolve():
            raise ChildError("UnexpectedFile", f"asked for {gguf_path}, read {path}")
        metadata: dict[str, Any] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):  # gguf-py's header pseudo-fields
                continue
            strings = field.types[:1] == [gguf.GGUFValueType.ARRAY] and field.types[-1] == (
                gguf.GGUFValueType.STRING
            )
            asked = not strings or key in string_arrays
            metadata[key] = field.contents() if asked else len(field.data)
        return metadata, tuple(t.name for t in reader.tensors)

    stand_in = types.ModuleType("transformers.integrations.gguf.reader")
    stand_in.read_gguf_metadata = read_gguf_metadata  # type: ignore[attr-defined]
    sys.modules[stand_in.__name__] = stand_in


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

    def __init__(self, folder: Path, torch_free: bool = False):
        self._samples = samples()
        self.torch_free = torch_free
        self._result: dict[str, Any] | None = None
        self._proc = subprocess.Popen(
            python_code(_CHILD),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        package_root = str(Path(__file__).resolve().parents[2])
        first = {"folder": str(folder), "samples": self._samples, "keishiki": package_root}
        self._send({**first, "torch_free": torch_free})

    def _send(self, message: dict) -> None:
        if self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(json.dumps(message) + "\n")  # small: never fills the pipe
            self._proc.stdin.flush()
        except OSError:  # the child has ended already: its output says why
            self.close()

    def send_gguf(self, path: Path, metadata_only: bool = False) -> None:
        """Load the written ``path``'s tokenizer in the child (:func:`gguf_tokenizer`);
        ``metadata_only``: its metadata is written, its tensors may still be being written
        (torch-free only: see :meth:`read_the_same`)."""
        self._send({"gguf": str(path), "metadata_only": metadata_only and self.torch_free})
        self.close()

    def read_the_same(self, path: Path) -> bool:
        """Whether the bytes the child read its GGUF tokenizer from, before the file was
        finished, are those the finished ``path`` starts with (True when it read the
        finished file)."""
        read = self._wait().get("read") or {}
        if "bytes" not in read:
            return True
        digest, left = hashlib.sha256(), int(read["bytes"])
        with open(path, "rb") as fh:
            while left > 0 and (chunk := fh.read(min(left, 1 << 24))):
                digest.update(chunk)
                left -= len(chunk)
        return left == 0 and digest.hexdigest() == read["sha256"]

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

    def failed(self) -> bool:
        """Whether either side could not be encoded in the child."""
        result = self._wait()
        return any("error" in (result.get(key) or {"error": 1}) for key in ("expected", "got"))

    def expected(self) -> Recorded:
        """The folder's tokenizer's encodings."""
        return self._side("expected")

    def got(self) -> Recorded:
        """The GGUF's tokenizer's encodings (after :meth:`send_gguf`)."""
        return self._side("got")


def start(folder: Path, arch: str) -> TokenizerChild:
    """Start the child process for ``folder``, to be converted as GGUF architecture ``arch``
    (OSError when no interpreter can start)."""
    return TokenizerChild(folder, torch_free=arch in TORCH_FREE_ARCHS)
