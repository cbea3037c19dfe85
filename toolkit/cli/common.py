"""What every `edge` command shares: error handling, -v/-q/--debug, --json output, progress."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from toolkit.errors import BadInputError, EdgeError
from toolkit.manifest import MANIFEST_NAME, ModelPackage
from toolkit.tasks import Family, family_of

__all__ = [
    "EXIT_USER_ERROR",
    "EXIT_VALIDATION_FAILED",
    "CommaList",
    "EdgeGroup",
    "common_options",
    "console",
    "emit_json",
    "handle_sigterm",
    "progress",
    "target_family",
]

EXIT_VALIDATION_FAILED = 1
EXIT_USER_ERROR = 2

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

# click >= 8.5 types ParamType by its value and input; older clicks (pyproject allows 8.1) cannot subscript it
if TYPE_CHECKING:
    _ListParam = click.ParamType[tuple[Any, ...], Any]
else:
    _ListParam = click.ParamType


class _CliLogHandler(logging.Handler):
    """`warning: ...` lines on stderr, the way the rest of the CLI talks."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)
        if record.exc_info:  # attached only when debug logging is on (--debug, -vv)
            click.echo("".join(traceback.format_exception(*record.exc_info)).rstrip(), err=True)


_handler = _CliLogHandler()


def _configure_logging(verbosity: int) -> None:
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    for name in ("toolkit", "converters"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)
        logger.propagate = False


def _state() -> dict[str, Any]:
    ctx = click.get_current_context()
    root = ctx.find_root()
    root.meta.setdefault("edge.verbosity", 0)
    root.meta.setdefault("edge.debug", False)
    return root.meta


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        _state()["edge.verbosity"] = value
        _configure_logging(value)


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _state()["edge.verbosity"] = -1
        _configure_logging(-1)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _state()["edge.debug"] = True
        _state()["edge.verbosity"] = 2
        _configure_logging(2)


def common_options(func: F) -> F:
    """Add -v/--verbose, -q/--quiet and --debug to a command (they also work before the command name)."""
    func = click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        callback=_set_debug,
        help="Show tracebacks and debug logs.",
    )(func)
    func = click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet, help="Only errors."
    )(func)
    func = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_set_verbose,
        help="More logs (-vv: debug).",
    )(func)
    return func


class CommaList(_ListParam):
    """A comma-separated list option (``--batch 1,8,32``): a tuple of names, or of whole numbers with
    `integers`; a malformed value is a BadInputError naming the option and an example."""

    name = "list"

    def __init__(self, integers: bool = False, example: str = "a,b") -> None:
        self.integers = integers
        self.example = example

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[Any, ...]:
        """Split on commas, drop blanks, parse integers when asked."""
        if isinstance(value, tuple):
            return value
        option = param.opts[0] if param is not None and param.opts else "the value"
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        if self.integers:
            if not items or not all(item.lstrip("-").isdigit() for item in items):
                raise BadInputError(
                    f"{option} takes comma-separated whole numbers like {option} {self.example}, got '{value}'"
                )
            return tuple(int(item) for item in items)
        if not items:
            raise BadInputError(
                f"{option} is empty; pass comma-separated names, e.g. {option} {self.example}"
            )
        return tuple(items)


class EdgeGroup(click.Group):
    """A click group that turns `EdgeError` into ``error: ...`` and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        _configure_logging(0)
        try:
            return super().invoke(ctx)
        except EdgeError as exc:
            if ctx.meta.get("edge.debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt as exc:
            # SIGTERM arrives as `Terminated` (see handle_sigterm): the same unwinding, exit 128 + 15
            terminated = isinstance(exc, Terminated)
            click.echo(f"error: {'terminated' if terminated else 'interrupted'}", err=True)
            ctx.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so it unwinds (staging folders removed) as on Ctrl+C."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread, so commands clean up as on SIGINT and exit 143."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def emit_json(value: Any) -> None:
    """Print `value` (dataclasses, arrays, paths welcome) as JSON on stdout."""
    click.echo(json.dumps(_jsonable(value), indent=2))


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr showing the current step; each step is also logged at info level."""
    log = logging.getLogger("toolkit.cli")
    if not enabled or _state()["edge.verbosity"] < 0 or not sys.stderr.isatty():
        yield lambda message: log.info(message)
        return
    with console.status("starting") as status:

        def update(message: str) -> None:
            log.info(message)
            status.update(message)

        yield update


def target_family(target: str | Path) -> Family:
    """How the model at `target` runs (`toolkit.tasks.family_of` of its package); a bare .onnx file (no
    edge.json beside it) runs in a single pass."""
    path = Path(target)
    if not (path / MANIFEST_NAME).is_file():
        return Family.SINGLE_PASS
    return family_of(ModelPackage.open(path))
