"""TorchScript archives carry code: list it, and name the calls that reach beyond aten/prim.

``torch.jit.load`` compiles the archive's ``code/`` files and runs them when the model is
called; ``torch.load`` on such an archive hands it to ``torch.jit.load`` (CVE-2025-32434
used exactly that to get past ``weights_only``).  The code is plain TorchScript text, so
ops from custom namespaces (``torch.ops.myns.op``: a C++ extension that must be loaded)
and custom classes (``__torch__.torch.classes``) are visible by reading it.
"""

from __future__ import annotations

import io
import keyword
import re
import tokenize

_CUSTOM_OP = re.compile(r"\bops\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_CUSTOM_CLASS = re.compile(r"__torch__\.torch\.classes\.([A-Za-z0-9_.]+)")
_FILE_OPS = re.compile(r"\b(?:torch|ops\.aten)\.(from_file|save|load|_load_for_mobile)\b")
_STANDARD_NS = frozenset({"aten", "prim", "quantized", "_quantized", "profiler", "cuda",
                          "_caffe2", "onnx", "_test", "uninitialized"})


def is_torchscript(names: list[str]) -> bool:
    """A zip holding ``code/`` files and ``constants.pkl`` (or mobile ``bytecode.pkl``)."""
    has_code = any("/code/" in f"/{n}" for n in names)
    return has_code and any(n.endswith(("constants.pkl", "bytecode.pkl")) for n in names)


def code_findings(name: str, text: str) -> list[tuple[str, str, str]]:
    """(severity, subject, reason) for the unusual calls in one ``code/`` file (Python
    source, read as ``torch.jit.load`` parses it) or ``torch.export`` JSON graph."""
    if name.lower().endswith(".py"):
        text = canonical_code(text)
    out: list[tuple[str, str, str]] = []
    for ns, op in sorted(set(_CUSTOM_OP.findall(text))):
        if ns not in _STANDARD_NS:
            out.append(("unknown", f"torch.ops.{ns}.{op}",
                        f"custom op {ns}::{op} in {name}: needs a native extension library"))
    for cls in sorted(set(_CUSTOM_CLASS.findall(text))):
        out.append(("unknown", f"__torch__.torch.classes.{cls}",
                    f"custom TorchScript class {cls} in {name}: native code"))
    for op in sorted(set(_FILE_OPS.findall(text))):
        out.append(("dangerous", f"torch.{op}",
                    f"TorchScript code in {name} calls {op}: reads or writes files"))
    return out


_NAME_LIKE = (tokenize.NAME, tokenize.NUMBER)
# blanks before or after a dot; a match starts only where a run of blanks starts, so a long
# run costs one look at it (the plain "\s*\.\s*" is quadratic in the run's length)
_SPACE_AT_DOT = re.compile(r"(?<!\s)\s+(?=\.)|(?<=\.)\s+")
_SKIPPED = (tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
            tokenize.DEDENT, tokenize.ENDMARKER)


def canonical_code(text: str) -> str:
    """TorchScript source as its parser sees it, for the patterns above: comments and string
    literals dropped (a ``# torch.load`` comment calls nothing), and the layout Python
    allows inside a name removed (``torch . from_file``, a backslash line break,
    ``(torch).from_file`` all call ``torch.from_file``: ``torch.jit.load`` accepts them).
    Text the tokenizer rejects falls back to the raw text with that layout removed."""
    parts: list[str] = []
    previous = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in _SKIPPED:
                previous = None
                continue
            if previous in _NAME_LIKE and tok.type in _NAME_LIKE:
                parts.append(" ")  # keep "return torch" from becoming one name
            parts.append(tok.string)
            if keyword.iskeyword(tok.string):
                parts.append(" ")  # "return(torch)" groups, it does not call
            previous = tok.type
        code = "".join(parts)
    except (tokenize.TokenError, SyntaxError):
        code = _SPACE_AT_DOT.sub("", re.sub(r"\\\r?\n", " ", text))
    return _drop_grouping(code)


def _drop_grouping(code: str) -> str:
    """``code`` with grouping parentheses blanked out and call parentheses kept: ``(torch)``
    and ``((torch).ops)`` are names, ``f(x)`` stays a call.  A ``(`` right after a name,
    ``)`` or ``]`` opens a call; any other opens a group.  One pass, whatever the nesting."""
    out: list[str] = []
    calls: list[bool] = []  # per open "(": is it a call?
    for ch in code:
        if ch == "(":
            previous = next((c for c in reversed(out[-2:]) if c), " ") if out else " "
            is_call = previous.isalnum() or previous in "_)]"
            calls.append(is_call)
            out.append("(" if is_call else "")
        elif ch == ")":
            out.append(")" if not calls or calls.pop() else "")
        else:
            out.append(ch)
    return "".join(out)
