"""TorchScript archives carry code: every call in it must resolve to an allowlisted op.

``torch.jit.load`` compiles the archive's ``code/`` files (runs ``__setstate__`` at once) and
runs the rest when the model is called; ``torch.load`` on such an archive hands it to
``torch.jit.load`` (CVE-2025-32434 used exactly that to get past ``weights_only``).  The code
is Python syntax written by TorchScript's own serializer, so it is read with :mod:`ast` and
every name it reaches is resolved statically (:mod:`.torchscript_calls`): ``torch.*`` and ``ops.*`` ops
against an allowlist of what real exports use (``data/torchscript_allowlist.json``),
``__torch__.*`` against the classes and functions the archive itself defines, bare names
against TorchScript's pure builtins.  A file that does not parse is dangerous (torch's parser
may read it differently); file, process and code-loading ops are dangerous; ops of custom
namespaces and custom classes (native code) and anything else off the list are unknown.
"""

from __future__ import annotations

import ast
import re
import time

from ..core import python_code
from .torchscript_calls import Index, Judgement, allowlist, judge_tree

__all__ = [
    "allowlist",
    "archive_findings",
    "code_findings",
    "is_code_member",
    "is_torchscript",
    "module_of",
    "parse",
]

# a code member: <archive>/code/<qualified path>.py; torch's reader (miniz) finds members
# case-insensitively, so CODE/ and .PY load too
_CODE = re.compile(r"(?:^|/)code/(.+)\.py$", re.IGNORECASE)
_CUSTOM_OP = re.compile(r"\bops\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_CUSTOM_CLASS = re.compile(r"__torch__\.torch\.classes\.([A-Za-z0-9_.]+)")
_FILE_OPS = re.compile(r"\b(?:torch|ops\.aten)\.(from_file|save|load|_load_for_mobile)\b")
_STANDARD_NS = frozenset(
    {
        "aten",
        "prim",
        "quantized",
        "_quantized",
        "profiler",
        "cuda",
        "_caffe2",
        "onnx",
        "_test",
        "uninitialized",
    }
)

_LEXED_APART = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_CODE_CHARS = 16 * 1024 * 1024  # per archive; Python's parser takes seconds per few MB


def is_code_member(name: str) -> bool:
    """``name`` is a ``code/…py`` member that ``torch.jit.load`` may compile."""
    return bool(_CODE.search(name))


def is_torchscript(names: list[str]) -> bool:
    """A zip holding ``code/*.py`` files (with or without ``constants.pkl``/``bytecode.pkl``:
    the code is what matters)."""
    return any(is_code_member(n) for n in names)


def module_of(member: str) -> str:
    """The TorchScript module a code member defines: ``a/code/__torch__/x/y.py`` →
    ``__torch__.x.y`` (the qualified name torch.jit.load looks the file up by)."""
    m = _CODE.search(member)
    return m.group(1).replace("/", ".") if m else member


def archive_findings(files, deadline: float | None = None) -> list[tuple[str, str, str, str]]:
    """Judge every code file of one archive together (a call into ``__torch__.x.f`` is
    resolved against what the archive's other files define).

    Args:
        files: ``(member, text)`` pairs (or a dict) for each ``code/…py`` member; a member
            may carry its outer archives' path (``outer.zip!a/code/__torch__.py``).
        deadline: a ``time.monotonic()`` past which the rest is left unjudged (``unknown``).

    Returns:
        ``(member, severity, subject, reason)`` for every call that is not allowlisted;
        empty when all the code is.
    """
    pairs = list(files.items()) if isinstance(files, dict) else list(files)
    trees: list[tuple[str, ast.Module]] = []
    out: list[tuple[str, str, str, str]] = []
    if sum(len(text) for _, text in pairs) > MAX_CODE_CHARS:
        return [
            (
                pairs[0][0],
                "unknown",
                "torchscript-code",
                f"more than {MAX_CODE_CHARS:,} "
                "characters of code (real exports hold a few hundred KB): not judged",
            )
        ]
    for member, text in pairs:
        if deadline is not None and time.monotonic() > deadline:
            return out + [
                (
                    member,
                    "unknown",
                    "torchscript-code",
                    "the scan's time limit passed before this code was judged",
                )
            ]
        tree, problem = parse(member, text)
        if tree is None:
            out.append((member, "dangerous", "unparseable-code", problem))
        else:
            trees.append((member, tree))
    index = Index.build([(module_of(m.rsplit("!", 1)[-1]), t) for m, t in trees])
    for member, tree in trees:
        for sev, subject, reason in judge_tree(member, tree, index):
            out.append((member, sev, subject, reason))
    return out


def parse(member: str, text: str) -> tuple[ast.Module | None, str]:
    """``(tree, "")`` or ``(None, why)``: a file Python's parser rejects (NUL bytes, nesting
    beyond its limits, bad indentation) may still load in torch, read its own way.

    So may a file with control characters other than newline and tab: TorchScript's lexer
    takes a lone ``\r`` (and ``\f``, ``\v``) for a blank where Python ends the line, so a
    comment ended by ``\r`` in Python's reading runs on in torch's, and a line Python reads
    inside a string is code to torch.  TorchScript's own printer never writes them (it
    escapes them inside string literals)."""
    control = _LEXED_APART.search(text)
    if control:
        line = text.count("\n", 0, control.start()) + 1
        return None, (
            f"{member} holds the control character {control.group()!r} (line {line}), which "
            "Python's and TorchScript's lexers read differently: its calls cannot be judged"
        )
    try:
        return python_code.parse(text), ""  # (the reader's tree of the same text, if parsed)
    except SyntaxError as exc:
        why = f"{exc.msg} (line {exc.lineno})"
    except (ValueError, RecursionError, MemoryError) as exc:
        why = f"{type(exc).__name__}: {str(exc)[:80]}"
    return None, (
        f"{member} does not parse as Python ({why}): torch's own parser may read "
        "it differently, so its calls cannot be judged"
    )


def code_findings(name: str, text: str) -> list[Judgement]:
    """(severity, subject, reason) for one ``code/`` file judged on its own, or for a
    ``torch.export`` JSON graph (``.pt2``): there, ops outside the standard namespaces
    need native code (unknown)."""
    if not name.lower().endswith(".py"):
        return _graph_findings(name, text)
    return [(sev, subject, reason) for _, sev, subject, reason in archive_findings({name: text})]


def _graph_findings(name: str, text: str) -> list[Judgement]:
    out: list[Judgement] = []
    for ns, op in sorted(set(_CUSTOM_OP.findall(text))):
        if ns not in _STANDARD_NS:
            out.append(
                (
                    "unknown",
                    f"torch.ops.{ns}.{op}",
                    f"custom op {ns}::{op} in {name}: needs a native extension library",
                )
            )
    for cls in sorted(set(_CUSTOM_CLASS.findall(text))):
        out.append(
            (
                "unknown",
                f"__torch__.torch.classes.{cls}",
                f"custom TorchScript class {cls} in {name}: native code",
            )
        )
    for op in sorted(set(_FILE_OPS.findall(text))):
        out.append(("dangerous", f"torch.{op}", f"{name} calls {op}: reads or writes files"))
    for target in sorted(_graph_targets(text)):
        judged = _judge_target(name, target)
        if judged is not None:
            out.append(judged)
    return out


# what torch.export's serializer writes as a node's target: torch.ops.<ns>.<op>[.<overload>],
# a Python operator or math function, or a symbolic-shape helper of torch
_CANONICAL_OP = re.compile(r"torch\.ops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?:\.[A-Za-z_]\w*)?")
_PURE_TARGET = re.compile(r"(?:math\.[a-z_0-9]+|torch\._?sym_[a-z_]+)")
_OPERATORS = frozenset(
    "abs add and_ contains eq floordiv ge getitem gt index inv invert is_ is_not le lshift lt "
    "matmul mod mul ne neg not_ or_ pos pow rshift sub truediv truth xor".split()
)
_GRAPH_FILE_OPS = frozenset(("from_file", "save", "load", "_load_for_mobile"))


def _graph_targets(text: str) -> set[str]:
    """Every node target a ``torch.export`` graph JSON names (its ``"target"`` strings)."""
    import json  # noqa: PLC0415 - .pt2 graphs only

    found: set[str] = set()
    try:
        stack = [json.loads(text)]
    except (ValueError, RecursionError):
        return found  # torch.export.load refuses it too
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "target" and isinstance(value, str):
                    found.add(value)
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _judge_target(name: str, target: str) -> Judgement | None:
    """A graph node's target as torch's deserializer resolves it: a name starting with
    ``torch`` by walking attributes from the torch module, so any module's alias of an op
    namespace reaches its ops (``torch._decomp.decompositions.aten.from_file.default`` is
    ``aten::from_file``).  Only the serializer's own spellings are judged by name; any other
    is unknown, and dangerous when it ends in a file op."""
    op = _CANONICAL_OP.fullmatch(target)
    if op is not None:
        return None  # judged above, by namespace and op name
    if _PURE_TARGET.fullmatch(target) or (
        target.startswith("_operator.") and target[len("_operator.") :] in _OPERATORS
    ):
        return None
    parts = target.split(".")
    if any(part in _GRAPH_FILE_OPS for part in parts[-3:]):
        return ("dangerous", target, f"{name} calls {target}: an alias of a file op")
    return (
        "unknown",
        target,
        f"{name} names the op {target!r} in a form torch.export does not write: torch "
        "resolves it attribute by attribute from the torch module, which can reach any op",
    )
