"""Code that runs only when the user opts in: name it, so the opt-in is an informed one.

A model folder can carry code that no weight file shows: ``auto_map`` in ``config.json`` /
``tokenizer_config.json`` makes transformers import the folder's ``*.py`` files under
``trust_remote_code=True``; a ``.py`` file is code whoever imports it.  Chat templates are
jinja2 run in a sandbox (transformers and keishiki both use ``ImmutableSandboxedEnvironment``)
and are data while they stay inside it; one that reaches for dunder or private attributes
(``__globals__``, ``__subclasses__``, ``cycler.__init__``, ``|attr('__class__')``) is trying to
get out, and one jinja cannot parse cannot be judged.  Each is a finding of severity
``unknown`` naming the file and key: the load gate then asks for ``--trust-remote-code``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..core.source import read_regular
from .findings import Finding

# files whose auto_map (and custom_pipelines) transformers follows into the folder's code
AUTO_MAP_FILES = frozenset(
    {
        "config.json",
        "tokenizer_config.json",
        "processor_config.json",
        "preprocessor_config.json",
        "feature_extractor_config.json",
        "image_processor_config.json",
        "video_preprocessor_config.json",
    }
)
# what makes a folder a model's: then its .py files are code a loader may import
_MODEL_CONFIGS = AUTO_MAP_FILES | {
    "generation_config.json",
    "adapter_config.json",
    "model_index.json",
    "tokenizer.json",
}
_WEIGHT_EXTS = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".onnx",
    ".gguf",
    ".h5",
    ".keras",
    ".msgpack",
    ".pkl",
    ".jit",
    ".pt2",
    ".npz",
    ".t7",
)
_TEMPLATE_FILES = frozenset({"chat_template.jinja", "chat_template.json"})
_MAX_JSON = 64 * 1024 * 1024
# filters and tests that look attributes up by a name given as a string
_ATTR_FILTERS = frozenset(
    {
        "attr",
        "map",
        "selectattr",
        "rejectattr",
        "sort",
        "groupby",
        "sum",
        "unique",
        "min",
        "max",
        "dictsort",
    }
)
# filters whose first argument is an attribute name (the others take attribute=...)
_ATTR_FIRST_ARG = frozenset({"attr", "selectattr", "rejectattr", "groupby"})
# filters that build strings: a key made with them is computed
_STRING_FILTERS = frozenset(
    {
        "format",
        "join",
        "replace",
        "string",
        "reverse",
        "lower",
        "upper",
        "title",
        "capitalize",
        "trim",
        "urlencode",
        "first",
        "last",
        "list",
        "center",
        "indent",
        "wordwrap",
        "truncate",
        "safe",
        "e",
        "escape",
    }
)
# a string that is a private name: the pieces of a name built at render time ('_' ~ '_class__')
_PRIVATE_NAME = re.compile(r"_[A-Za-z0-9_]+")
# a str.format field that walks attributes or items: "{0.__class__}", "{x[_y]}"
_FORMAT_WALK = re.compile(r"\{[^{}]*?(?:\.|\[)\s*['\"]?_")

Judgement = tuple[str, str, str]  # (severity, subject, reason)


def folder_findings(folder: str | os.PathLike) -> list[Finding]:
    """Opt-in code in a model folder (walked without following links).

    Args:
        folder: a model folder (an HF snapshot, a ``save_pretrained`` output).

    Returns:
        One ``unknown`` :class:`Finding` per ``auto_map`` entry, ``*.py`` file and chat
        template that reaches outside jinja2's sandbox (or does not parse).
    """
    out: list[Finding] = []
    root = Path(folder).resolve()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if not path.is_symlink() or path.resolve().is_relative_to(root):
                out.extend(file_findings(path))
    return out


def file_findings(path: Path) -> list[Finding]:
    """Opt-in code named by one file of a model folder (chosen by its name; a link is read
    through, so the caller decides which links to follow)."""
    name = path.name
    lower = name.lower()
    if not path.is_file():
        return []
    if lower.endswith((".py", *_COMPILED_MODULES)):
        if not _importable_from_model_folder(path):
            return []  # a folder of scripts: nothing loads them as part of a model
        why = (
            "Python file in the model folder: transformers imports it under "
            "trust_remote_code=True (via auto_map), and so does any loader told to"
            if lower.endswith(".py")
            else "compiled Python module in the model folder: any Python started in the "
            "folder imports it before the standard library of the same name"
        )
        return [Finding(str(path), "", None, "python-file", name, "unknown", why)]
    if name not in AUTO_MAP_FILES and name not in _TEMPLATE_FILES and not lower.endswith(".jinja"):
        return []
    if lower.endswith(".jinja"):  # chat_template.jinja, additional_chat_templates/*.jinja
        text = _read_text(path)
        judged = (
            template_findings(text, name)
            if text is not None
            else [("unknown", name, f"{name}: unreadable (not UTF-8 or too large)")]
        )
        return [_finding(path, "chat-template", j) for j in judged]
    config = _read_json(path)
    if config is None:
        if _too_large(path):  # the loaders read it whole: it is not judged, so not safe
            return [
                _finding(
                    path,
                    "auto-map",
                    ("unknown", name, f"{name}: larger than {_MAX_JSON >> 20} MiB, not judged"),
                )
            ]
        return []  # not JSON: the loaders reject it too; other checks report the file
    out = [_finding(path, "auto-map", j) for j in auto_map_findings(config, name)]
    if name != "config.json":  # tokenizer, processor and chat_template JSON carry templates
        out += [_finding(path, "chat-template", j) for j in config_template_findings(config, name)]
    return out


# sourceless bytecode and extension modules: importable like a .py of the same name
_COMPILED_MODULES = (".pyc", ".pyo", ".so", ".pyd")


def _importable_from_model_folder(path: Path) -> bool:
    """``path`` is a module a Python started in a model folder can import: in that folder,
    or in a package (a folder with an ``__init__``) right inside it."""
    if is_model_folder(path.parent):
        return True
    try:
        package = any(n.startswith("__init__.") for n in os.listdir(path.parent))
    except OSError:
        return False
    return package and is_model_folder(path.parent.parent)


def _too_large(path: Path) -> bool:
    try:
        return path.stat().st_size > _MAX_JSON
    except OSError:
        return False


def is_model_folder(folder: Path) -> bool:
    """``folder`` holds a model: an HF config or a weights file beside its ``.py`` files."""
    try:
        names = [n.lower() for n in os.listdir(folder)]
    except OSError:
        return False
    return any(n in _MODEL_CONFIGS or n.endswith(_WEIGHT_EXTS) for n in names)


def auto_map_findings(config: Any, where: str) -> list[Judgement]:
    """``auto_map`` / ``custom_pipelines`` entries of one config: code transformers imports
    from the folder (or another repo, ``org/repo--module.Class``) with trust_remote_code."""
    if not isinstance(config, dict):
        return []
    out: list[Judgement] = []
    for key in ("auto_map", "custom_pipelines"):
        value = config.get(key)
        if not value:
            continue
        entries = value.items() if isinstance(value, dict) else [("", value)]
        for auto_class, target in entries:
            subject = f"{key}.{auto_class}" if auto_class else key
            refs = [t for t in (target if isinstance(target, list) else [target]) if t]
            shown = ", ".join(map(str, refs))[:200]
            other = any(isinstance(t, str) and "--" in t for t in refs)
            out.append(
                (
                    "unknown",
                    subject,
                    f"{where}: {subject} → {shown}: transformers "
                    "imports and runs this code when loaded with trust_remote_code=True"
                    + (" (fetched from another repository)" if other else ""),
                )
            )
    return out


def config_template_findings(config: Any, where: str) -> list[Judgement]:
    """Chat templates of ``tokenizer_config.json`` / ``chat_template.json``: a string, or a
    list of ``{"name", "template"}``."""
    if not isinstance(config, dict) or "chat_template" not in config:
        return []
    value = config["chat_template"]
    if isinstance(value, str):
        return template_findings(value, f"{where}: chat_template")
    if isinstance(value, list):
        out: list[Judgement] = []
        for i, item in enumerate(value):
            name = item.get("name", i) if isinstance(item, dict) else i
            text = item.get("template") if isinstance(item, dict) else None
            if isinstance(text, str):
                out += template_findings(text, f"{where}: chat_template[{name}]")
            else:
                out.append(
                    (
                        "unknown",
                        f"chat_template[{name}]",
                        f"{where}: chat_template entry {name!r} is not a {{name, template}} pair",
                    )
                )
        return out
    if value is None:
        return []
    return [
        (
            "unknown",
            "chat_template",
            f"{where}: chat_template is a "
            f"{type(value).__name__}, neither a template nor a list of them",
        )
    ]


def gguf_findings(kv: dict) -> list[Judgement]:
    """Chat templates in GGUF metadata (``tokenizer.chat_template``, and the named
    ``tokenizer.chat_template.<name>`` variants llama.cpp reads)."""
    out: list[Judgement] = []
    for key, value in kv.items():
        if isinstance(key, str) and key.startswith("tokenizer.chat_template"):
            if isinstance(value, str):
                out += template_findings(value, key)
            elif not isinstance(value, list):  # tokenizer.chat_templates: the list of names
                out.append(("unknown", key, f"{key} is not a string"))
    return out


def template_findings(text: str, where: str) -> list[Judgement]:
    """What in one jinja2 chat template reaches outside the sandbox.

    Args:
        text: the template source.
        where: the file and key it came from, for the reasons.

    Returns:
        ``(severity, subject, reason)`` triples, all ``unknown``; empty for a template that
        only reads messages and renders text.
    """
    from jinja2 import TemplateSyntaxError, nodes  # noqa: PLC0415 - only for templates
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    try:
        tree = env.parse(text)
    except TemplateSyntaxError as exc:
        return [
            (
                "unknown",
                "unparseable-template",
                f"{where}: jinja2 cannot parse it (line {exc.lineno}: {exc.message}), so what "
                f"it reaches cannot be judged",
            )
        ]
    except (RecursionError, MemoryError) as exc:
        return [("unknown", "unparseable-template", f"{where}: {type(exc).__name__} parsing it")]
    found: dict[str, Judgement] = {}

    def flag(subject: str, why: str) -> None:
        found.setdefault(
            subject,
            (
                "unknown",
                subject,
                f"{where}: {why}: a template that reaches outside jinja2's sandbox",
            ),
        )

    uses_format = False
    judged: set[int] = set()  # constants already named as an item or attribute lookup
    try:
        computed = _computed_names(tree, nodes)
        for node in tree.find_all(nodes.Node):
            if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
                flag(f".{node.attr}", f"reads the attribute .{node.attr}")
            elif isinstance(node, nodes.Getattr) and node.attr in ("format", "format_map"):
                uses_format = True
            elif isinstance(node, nodes.Getitem):
                judged.add(id(node.arg))
                _item(node.arg, flag, nodes, computed)
            elif isinstance(node, (nodes.Filter, nodes.Test)) and node.name in _ATTR_FILTERS:
                judged.update(id(v) for v in (*node.args, *(kw.value for kw in node.kwargs)))
                _attr_filter(node, flag, nodes)
            elif isinstance(node, (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends)):
                flag(type(node).__name__.lower(), "loads another template")
            elif isinstance(node, nodes.Name) and node.name.startswith("_"):
                flag(node.name, f"names the private global {node.name}")
            elif (
                isinstance(node, nodes.Const)
                and isinstance(node.value, str)
                and id(node) not in judged
                and _PRIVATE_NAME.fullmatch(node.value)
            ):
                flag(
                    repr(node.value),
                    f"spells the private name {node.value!r}, the makings "
                    "of an attribute lookup at render time",
                )
        if uses_format:
            for const in tree.find_all(nodes.Const):
                if isinstance(const.value, str) and _FORMAT_WALK.search(const.value):
                    flag(
                        "str.format",
                        f"formats {const.value[:60]!r}, whose fields walk private attributes",
                    )
    except RecursionError:
        flag("unparseable-template", "nested too deep to judge")
    return list(found.values())


def _builds_a_string(value, nodes) -> bool:
    """Whether an expression builds a string at render time (``~``, ``%``, calls, string
    filters): a name made that way cannot be read before the template runs."""
    return any(
        isinstance(n, (nodes.Concat, nodes.Call, nodes.Mod))
        or isinstance(n, nodes.Filter)
        and n.name in _STRING_FILTERS
        for n in (value, *value.find_all(nodes.Node))
    )


def _computed_names(tree, nodes) -> set[str]:
    """Variables ``{% set %}`` to a string built at render time (``'_' ~ '_globals__'``):
    used as a key or an attribute name later, they are a computed lookup too."""
    names: set[str] = set()
    for assign in tree.find_all(nodes.Assign):
        if isinstance(assign.target, nodes.Name) and _builds_a_string(assign.node, nodes):
            names.add(assign.target.name)
    return names


def _item(arg, flag, nodes, computed: set[str] = frozenset()) -> None:
    """``x['_y']`` reads a private attribute (jinja's getitem falls back to getattr); a key
    built from strings (``x['__cl' ~ 'ass__']``, ``x['%c'|format(95)]``, or a variable set to
    such a string) cannot be read before it runs.  Arithmetic on names
    (``messages[messages|length - 1]``) is an index."""
    if isinstance(arg, nodes.Const):
        if isinstance(arg.value, str) and arg.value.startswith("_"):
            flag(f"[{arg.value!r}]", f"reads the item {arg.value!r}")
    elif _builds_a_string(arg, nodes) or any(
        isinstance(n, nodes.Name) and n.name in computed for n in (arg, *arg.find_all(nodes.Name))
    ):
        flag("[<computed>]", "looks an item up by a name built from strings")


def _attr_filter(node, flag, nodes) -> None:
    """``|attr('__x__')``, ``|map(attribute='__x__')``, ``selectattr('_y')``…: attribute
    names given as strings; for ``attr`` a name not written out is computed."""
    values = [*node.args, *(kw.value for kw in node.kwargs)]
    for value in values:
        if isinstance(value, nodes.Const) and isinstance(value.value, str):
            if any(part.startswith("_") for part in value.value.split(".")):
                flag(
                    f"|{node.name}({value.value!r})",
                    f"|{node.name} looks up the attribute {value.value!r}",
                )
    # the argument that names an attribute, when it is not written out: computed
    naming = [kw.value for kw in node.kwargs if kw.key == "attribute"]
    if node.name in _ATTR_FIRST_ARG and node.args:
        naming.append(node.args[0])
    if any(not isinstance(v, nodes.Const) for v in naming):
        flag(f"|{node.name}(<computed>)", f"|{node.name} with a computed attribute name")


def _finding(path: Path, kind: str, judged: Judgement) -> Finding:
    severity, subject, reason = judged
    return Finding(str(path), "", None, kind, subject, severity, reason)


def _read_text(path: Path) -> str | None:
    try:  # (a FIFO swapped in after the folder's walk is not waited on)
        return read_regular(path, _MAX_JSON).decode("utf-8")
    except (OSError, ValueError):  # (UnicodeDecodeError is a ValueError)
        return None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None
