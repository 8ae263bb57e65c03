"""What keeps the CLI's start-up short under typer 0.29 (``keishiki --help`` ≤ 0.15 s,
``keishiki info small.safetensors`` ≤ 0.25 s: benchmarks/bench_startup.py).

Two costs of typer are skipped here, each by a narrow hook that falls back to typer's own way
when typer's internals change (``tests/test_imports.py`` then fails: pydantic or markdown_it
is imported again):

- typer coerces every parameter that is not a bool flag through a pydantic ``TypeAdapter``
  built on first use (importing pydantic: 60-120 ms).  keishiki's parameters are plain
  ``str``/``int``/``float``/``bool``/``Path`` (lists of them, ``parser=``):
  :func:`plain_coercion` gives those a coercion without pydantic, with the same checks (a
  ``Path`` still goes through typer's own ``coerce_cli_path``).
- ``typer.rich_utils`` imports ``rich.markdown`` and ``rich.traceback`` (markdown_it and
  pygments: ~30 ms) at its top, for the "markdown" markup mode and pretty tracebacks.
  keishiki's help uses the "rich" mode (help text reflowed and escaped here by
  :func:`plain_help`, so it reads as it did in markdown) and no pretty tracebacks:
  :func:`import_rich_utils` imports typer's renderer with stand-ins for those two modules
  that load the real ones if they are ever used.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from typer._click import Context
from typer._click.exceptions import BadParameter

from ..errors import KeishikiError

try:  # the typer whose coercion goes through pydantic
    from typer._coercion import RuntimeParam
    from typer._param_types import coerce_cli_path
except ImportError:  # another typer: its own coercion, whatever it costs
    RuntimeParam = None  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class _Plain(RuntimeParam or object):  # type: ignore[misc]
    """typer's coercion contract (``None`` and multi-value handling in ``coerce``) with a
    converter of our own for each value."""

    convert: Callable[[Any, Any, Any], Any]

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [self.convert(v, param, ctx) for v in value]
        return self.convert(value, param, ctx)


def _number(kind: type, noun: str) -> Callable[[Any, Any, Any], Any]:
    def convert(value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise BadParameter(f"{value!r} is not a valid {noun}.", ctx=ctx, param=param) from None

    return convert


def _text(value: Any, param: Any, ctx: Any) -> str:
    return value if isinstance(value, str) else str(value)


_TRUE, _FALSE = {"1", "true", "t", "yes", "y", "on"}, {"0", "false", "f", "no", "n", "off"}


def _flag(value: Any, param: Any, ctx: Any) -> bool:
    """A bool that is not a plain flag's (typer's completion options default to None)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise BadParameter(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)


def _parser(parse: Callable[[str], Any]) -> Callable[[Any, Any, Any], Any]:
    def convert(value: Any, param: Any, ctx: Any) -> Any:
        try:
            return parse(value)
        except KeishikiError:
            raise  # the CLI's one line and exit code, not a usage error
        except ValueError as exc:
            raise BadParameter(str(exc), ctx=ctx, param=param) from None

    return convert


def _path(info: Any) -> Callable[[Any, Any, Any], Any]:
    def convert(value: Any, param: Any, ctx: Any) -> Any:
        value = Path(value) if isinstance(value, str) else value
        return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)

    return convert


_SCALARS = {
    int: _number(int, "integer"),
    float: _number(float, "number"),
    str: _text,
    bool: _flag,
}


def _converter(annotation: Any, info: Any) -> Callable[[Any, Any, Any], Any] | None:
    """Our converter for one parameter, or None to leave it to typer (any option this
    module does not reproduce: ranges, enums, choices, files, path_type=...)."""
    if getattr(annotation, "__origin__", None) is list:
        (annotation,) = annotation.__args__
    if getattr(info, "parser", None) is not None:
        return _parser(info.parser)
    if getattr(info, "min", None) is not None or getattr(info, "max", None) is not None:
        return None
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation is Path and getattr(info, "path_type", None) is None:
        return _path(info)
    return None


def plain_coercion(command: Any, help_names: list[str] | None = None) -> None:
    """Give every parameter of ``command`` and its subcommands that keishiki uses (str, int,
    float, bool, Path, lists of them, ``parser=``) a coercion without pydantic."""
    if RuntimeParam is None:
        return
    if help_names is None:
        help_names = (command.context_settings or {}).get("help_option_names", ["--help"])
    # click makes the help option on first use: made here, so that it is covered too
    help_option = command.get_help_option(Context(command, help_option_names=help_names))
    for param in [*command.params, *([help_option] if help_option else [])]:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", 0) is not None:
            continue  # not typer's, already built, or a typer that changed: typer's own way
        if descriptor.file_annotation is not None:
            continue
        convert = _converter(descriptor.annotation, descriptor.parameter_info)
        if convert is not None:
            param._runtime_param = _Plain(
                parameter_info=descriptor.parameter_info,
                annotation=descriptor.annotation,
                convert=convert,
            )
    for sub in getattr(command, "commands", {}).values():
        plain_coercion(sub, help_names)


def _stand_in(module: str, name: str) -> type:
    """A class that is ``module.name`` (imported then) when made or asked for an attribute."""

    def real() -> Any:
        return getattr(importlib.import_module(module), name)

    class _Lazy(type):
        def __getattr__(cls, attr: str) -> Any:  # Traceback.from_exception
            return getattr(real(), attr)

    class StandIn(metaclass=_Lazy):
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            return real()(*args, **kwargs)

    return StandIn


# what typer.rich_utils imports at its top and uses only in paths keishiki turns off: the
# "markdown" markup mode, and pretty tracebacks (pretty_exceptions_enable=False)
_DEFERRED = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


def import_rich_utils() -> None:
    """Import ``typer.rich_utils`` without ``rich.markdown`` and ``rich.traceback``
    (markdown_it, pygments: ~30 ms)."""
    if "typer.rich_utils" in sys.modules:
        return
    stand_ins = {}
    for module, name in _DEFERRED.items():
        if module not in sys.modules:
            stand_ins[module] = types.ModuleType(module)
            setattr(stand_ins[module], name, _stand_in(module, name))
    sys.modules.update(stand_ins)
    try:
        import typer.rich_utils  # noqa: F401
    finally:
        for module, stand_in in stand_ins.items():
            if sys.modules.get(module) is stand_in:
                del sys.modules[module]  # a later import gets the real module


_LINE_BREAK = re.compile(r"(?<!\n)\n(?!\n)")
_CODE = re.compile(r"`([^`\n]+)`")


def _reflow(text: str) -> str:
    """Paragraphs joined into lines and `code` in rich's markdown code style (as the
    markdown mode showed them), the rest escaped for rich markup: help text quotes names
    such as hf://ORG/NAME[@REV][/FILE], which rich would read as tags."""
    from rich.markup import escape

    return _CODE.sub(r"[markdown.code]\1[/]", escape(_LINE_BREAK.sub(" ", text)))


def _flag_help_option(made: Any, ctx: Any) -> Any:
    option = made(ctx)
    if option is not None:
        option.metavar = ""
    return option


def plain_help(command: Any) -> None:
    """Reflow and escape the help of ``command``, its parameters and its subcommands, for
    typer's "rich" markup mode (none with TYPER_USE_RICH=0: click's plain help, as is)."""
    import inspect

    from typer.core import HAS_RICH

    if not HAS_RICH:
        return

    if getattr(command, "help", None):
        command.help = _reflow(inspect.cleandoc(command.help))
    for param in getattr(command, "params", []):
        if getattr(param, "help", None):
            param.help = _reflow(param.help)
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            # typer >= 0.2x shows a flag's type (`--json <bool>`, `-v <int>`), which reads
            # as if it took a value: a flag takes none, and shows none (as click shows it)
            param.metavar = ""
    if hasattr(command, "get_help_option"):  # --help is made per run, outside params
        command.get_help_option = functools.partial(_flag_help_option, command.get_help_option)
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)
