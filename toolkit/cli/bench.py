"""`edge bench`: latency, throughput, cold start and memory of every variant on each provider, in one table."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
from rich.console import Console

from toolkit.cli.common import (
    EXIT_VALIDATION_FAILED,
    CommaList,
    _state,
    common_options,
    console,
    stdout,
    target_family,
)
from toolkit.cli.provider_options import provider_tuning_options
from toolkit.errors import BadInputError
from toolkit.providers import ProviderConfig, provider_names, resolve_providers
from toolkit.runner import GRAPH_OPT_LEVELS
from toolkit.tasks import Family

if TYPE_CHECKING:
    from toolkit.bench import BenchOptions, BenchReport

__all__ = ["bench_command"]

log = logging.getLogger("toolkit.cli")


def _positive_int(values: tuple[int, ...] | None, option: str) -> int | None:
    if values is None:
        return None
    if len(values) != 1 or values[0] < 1:
        raise BadInputError(
            f"{option} takes one whole number of at least 1, got '{','.join(map(str, values))}'"
        )
    return values[0]


def _run_count(text: str) -> int:
    """``--iterations`` as a whole number of runs (generate packages time whole generations)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise BadInputError(
            f"--iterations takes a run count of at least 1 for a generate package, got '{text}'"
        )
    return int(text)


def _threshold(text: str) -> float:
    value = text.strip().rstrip("%")
    try:
        number = float(value)
    except ValueError:
        raise BadInputError(f"--threshold takes a percentage like 10%, got '{text}'") from None
    return number / 100 if text.strip().endswith("%") or number >= 1 else number


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr when it is a terminal; info logs otherwise."""
    if not enabled or _state()["edge.verbosity"] < 0 or not sys.stderr.isatty():
        yield lambda label, done, total: log.info("[%d/%d] %s", done, total, label)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def update(label: str, done: int, total: int) -> None:
            log.info("[%d/%d] %s", done, total, label)
            bar.update(task, description=label, completed=done, total=total)

        yield update


def _write_json(json_path: str, text: str) -> None:
    """`--json FILE`: the JSON `text` on stdout for '-', else written to FILE."""
    if json_path == "-":
        click.echo(text)
        return
    from toolkit.atomic import atomic_write_text

    atomic_write_text(Path(json_path), text + "\n")


def _compare(files: tuple[str, str], threshold: str, json_path: str | None, fail: bool) -> None:
    from toolkit.bench.compare import compare_reports, load_report, plain
    from toolkit.bench.render import comparison_table

    old, new = (load_report(f) for f in files)
    comparison = compare_reports(old, new, _threshold(threshold), names=(files[0], files[1]))
    if json_path:
        _write_json(json_path, json.dumps(plain(comparison), indent=2))
    if json_path != "-":
        out = stdout if stdout.is_terminal else Console(highlight=False, width=200)
        out.print(comparison_table(comparison))
        for change in comparison.environment_changes:
            stdout.print(f"environment changed: {change}")
        for key in comparison.only_old:
            stdout.print(f"only in {files[0]}: {key}")
        for key in comparison.only_new:
            stdout.print(f"only in {files[1]}: {key}")
        if not comparison.cells:
            stdout.print("no cell appears in both runs: nothing to compare")
        stdout.print(
            f"{len(comparison.regressions)} slower, "
            f"{sum(c.verdict == 'faster' for c in comparison.cells)} faster, "
            f"{sum(c.verdict == 'same' for c in comparison.cells)} within {comparison.threshold:.0%}"
        )
    if fail and comparison.regressions:
        sys.exit(EXIT_VALIDATION_FAILED)


@click.command("bench")
@click.argument("target", required=False)
@click.option(
    "--variant",
    "variants",
    type=CommaList(example="fp32,int8"),
    default=None,
    help="Variants to time, comma-separated (default: all).",
)
@click.option(
    "--providers",
    default="cpu",
    show_default=True,
    help="Providers to time, each separately: cpu,cuda,tensorrt.",
)
@provider_tuning_options
@click.option(
    "--batch",
    "batches",
    type=CommaList(integers=True, example="1,8,32"),
    default="1",
    show_default=True,
    help="Batch sizes to sweep, e.g. 1,8,32.",
)
@click.option(
    "--seq",
    "seqs",
    type=CommaList(integers=True, example="16,128,512"),
    default=None,
    help="Sequence lengths to sweep, e.g. 16,128,512 (models with a sequence axis).",
)
@click.option(
    "--warmup", default="10", show_default=True, help="Warm-up per cell: runs (10) or seconds (2s)."
)
@click.option(
    "--iterations",
    default="100",
    show_default=True,
    help="Timed runs per cell (generate packages: whole generations, default 3).",
)
@click.option(
    "--new-tokens",
    "new_tokens",
    type=CommaList(integers=True, example="32,128"),
    default="32",
    show_default=True,
    help="Generate packages: new tokens per generation, swept, e.g. 32,128.",
)
@click.option("--duration", default=None, help="Time each cell for this long instead, e.g. 5s.")
@click.option(
    "--concurrency",
    type=CommaList(integers=True, example="1,2,4"),
    default="1",
    show_default=True,
    help="Threads sharing one session, swept, e.g. 1,2,4.",
)
@click.option(
    "--threads",
    type=CommaList(integers=True, example="4"),
    default=None,
    help="onnxruntime intra-op threads (and torch's for the baseline).",
)
@click.option(
    "--opt-level",
    default="all",
    show_default=True,
    help=f"Graph optimisation: {', '.join(GRAPH_OPT_LEVELS)}.",
)
@click.option("--text", "text_file", default=None, metavar="FILE", help="Real inputs: one text per line.")
@click.option(
    "--npz",
    "npz_file",
    default=None,
    metavar="FILE",
    help="Real inputs: arrays named like the model's inputs.",
)
@click.option("--baseline", default=None, help="Also time the original model: torch.")
@click.option(
    "--json", "json_path", default=None, metavar="FILE", help="Save the report as JSON ('-' for stdout)."
)
@click.option("--csv", "csv_path", default=None, metavar="FILE", help="Save the cells as CSV.")
@click.option("--markdown", "markdown_path", default=None, metavar="FILE", help="Save a Markdown table.")
@click.option(
    "--plot",
    "plot_path",
    default=None,
    metavar="FILE.png",
    help="Save latency and throughput vs batch size as a PNG.",
)
@click.option(
    "--compare",
    "compare_files",
    nargs=2,
    default=None,
    metavar="OLD.json NEW.json",
    help="Print the ratios between two saved runs instead.",
)
@click.option(
    "--threshold",
    default="10%",
    show_default=True,
    help="With --compare: p50 change that counts as slower/faster.",
)
@click.option(
    "--fail-on-regression",
    is_flag=True,
    help="With --compare: exit 1 when a cell got slower than the threshold.",
)
@common_options
def bench_command(
    target: str | None,
    variants: tuple[str, ...] | None,
    providers: str,
    batches: tuple[int, ...],
    seqs: tuple[int, ...] | None,
    warmup: str,
    iterations: str,
    new_tokens: tuple[int, ...],
    duration: str | None,
    concurrency: tuple[int, ...],
    threads: tuple[int, ...] | None,
    opt_level: str,
    text_file: str | None,
    npz_file: str | None,
    baseline: str | None,
    json_path: str | None,
    csv_path: str | None,
    markdown_path: str | None,
    plot_path: str | None,
    compare_files: tuple[str, str] | None,
    threshold: str,
    fail_on_regression: bool,
    provider_config: ProviderConfig,
) -> None:
    """Time TARGET (a package directory or an .onnx file): every variant, on each provider, over a batch x seq sweep."""
    if compare_files:
        if target is not None:
            raise BadInputError("--compare takes two saved reports and no TARGET; drop one of them")
        _compare(compare_files, threshold, json_path, fail_on_regression)
        return
    if target is None:
        raise BadInputError(
            "missing TARGET: pass a model package directory or an .onnx file (or --compare A.json B.json)"
        )
    iterations_source = click.get_current_context().get_parameter_source("iterations")
    args = _BenchArgs(
        variants=variants,
        providers=providers,
        provider_config=provider_config,
        threads=_positive_int(threads, "--threads"),
        batches=batches,
        seqs=seqs,
        warmup=warmup,
        iterations=iterations,
        iterations_given=iterations_source != click.core.ParameterSource.DEFAULT,
        new_tokens=new_tokens,
        duration=duration,
        concurrency=concurrency,
        opt_level=opt_level,
        text_file=text_file,
        npz_file=npz_file,
        baseline=baseline.strip().lower() if baseline else None,
        json_path=json_path,
        csv_path=csv_path,
        markdown_path=markdown_path,
        plot_path=plot_path,
    )
    _BENCH_BY_FAMILY[target_family(target)](target, args)


@dataclass(frozen=True)
class _BenchArgs:
    """One `edge bench TARGET`'s options, parsed as far as every family's bench reads them alike."""

    variants: tuple[str, ...] | None
    providers: str
    provider_config: ProviderConfig
    threads: int | None
    batches: tuple[int, ...]
    seqs: tuple[int, ...] | None
    warmup: str
    iterations: str
    iterations_given: bool  # a generator times 3 whole generations unless --iterations says otherwise
    new_tokens: tuple[int, ...]
    duration: str | None
    concurrency: tuple[int, ...]
    opt_level: str
    text_file: str | None
    npz_file: str | None
    baseline: str | None
    json_path: str | None
    csv_path: str | None
    markdown_path: str | None
    plot_path: str | None


def _bench_single_pass(target: str, args: _BenchArgs) -> None:
    """Every variant on each provider over the batch x seq x concurrency sweep, as a table and the files asked for."""
    from toolkit.bench import plan_bench, run_bench

    plan = plan_bench(target, _suite_options(args))
    baseline_loader = None
    # the torch baseline is converters' (torch, transformers), imported only when asked for
    if args.baseline is not None:
        from converters.baseline import load_torch_baseline

        baseline_loader = load_torch_baseline
    with _progress(True) as update:
        report = run_bench(plan, update, baseline_loader)
    _save_report(report, args)
    if args.json_path == "-":
        from toolkit.bench.compare import report_to_dict

        click.echo(json.dumps(report_to_dict(report), indent=2))
        return
    _print_report(report, args)


def _suite_options(args: _BenchArgs) -> BenchOptions:
    """The sweep's options: --plot's file and the timing budgets checked before anything is loaded."""
    from toolkit.bench import BenchOptions, TimingPlan, parse_budget

    plot_path, duration, iterations = args.plot_path, args.duration, args.iterations
    if plot_path is not None:
        if not plot_path.lower().endswith(".png"):
            raise BadInputError(f"--plot writes a PNG; name the file with .png, got '{plot_path}'")
        if importlib.util.find_spec("matplotlib") is None:
            raise BadInputError("--plot needs matplotlib; install it with pip install 'edge-toolkit[bench]'")
    measure = (
        parse_budget(duration, "--duration")
        if duration
        else parse_budget(iterations, "--iterations", minimum=1)
    )
    if duration and measure.seconds is None:
        raise BadInputError(f"--duration takes seconds like 5s, got '{duration}'")
    if not duration and measure.seconds is not None:
        raise BadInputError(f"--iterations takes a run count; for seconds use --duration {iterations}")
    return BenchOptions(
        variants=args.variants,
        providers=args.providers,
        batches=args.batches,
        seqs=args.seqs,
        concurrency=args.concurrency,
        timing=TimingPlan(warmup=parse_budget(args.warmup, "--warmup"), measure=measure),
        threads=args.threads,
        graph_optimization=args.opt_level.strip().lower(),
        text_file=Path(args.text_file) if args.text_file else None,
        npz_file=Path(args.npz_file) if args.npz_file else None,
        baseline=args.baseline,
        provider_config=args.provider_config,
    )


def _save_report(report: BenchReport, args: _BenchArgs) -> None:
    """Write the report to the --json, --csv, --markdown and --plot files asked for."""
    from toolkit.bench.compare import save_report
    from toolkit.bench.render import write_csv, write_markdown, write_plot

    if args.json_path and args.json_path != "-":
        save_report(report, Path(args.json_path))
    if args.csv_path:
        write_csv(report, Path(args.csv_path))
    if args.markdown_path:
        write_markdown(report, Path(args.markdown_path))
    if args.plot_path:
        write_plot(report, Path(args.plot_path))


def _print_report(report: BenchReport, args: _BenchArgs) -> None:
    """The host, the table, the notes and the files written."""
    from toolkit.bench.render import WIDE_TERMINAL, environment_lines, report_table

    for line in environment_lines(report):
        stdout.print(line, soft_wrap=True)
    # Redirected output gets every column at full width; a terminal gets what fits its width.
    out = stdout if stdout.is_terminal else Console(highlight=False, width=WIDE_TERMINAL + 100)
    out.print(report_table(report, out.width))
    for note in report.notes:
        stdout.print(f"note: {note}", soft_wrap=True)
    for label, path in (
        ("json", args.json_path),
        ("csv", args.csv_path),
        ("markdown", args.markdown_path),
        ("plot", args.plot_path),
    ):
        if path:
            stdout.print(f"wrote {label}: {path}")


def _bench_encoder_decoder(target: str, args: _BenchArgs) -> None:
    """An encoder-decoder is timed whole (encoder and decoding together: the real-time factor of speech, tokens/s
    of text-to-text), per variant."""
    from toolkit.cli.common import _jsonable
    from toolkit.manifest import ModelPackage
    from toolkit.tasks import pipeline_class
    from toolkit.tasks.encoder_decoder import Seq2SeqPipeline

    package = ModelPackage.open(target)
    # an encoder-decoder task's pipeline decodes over a Seq2SeqPipeline, which times itself (`speed`)
    pipeline = cast("type[Seq2SeqPipeline[Any]]", pipeline_class(package))
    rows = []
    for variant in args.variants or tuple(package.manifest.variants):
        with pipeline.load(
            target, variant=variant, config=args.provider_config, threads=args.threads
        ) as loaded:
            rows.append(loaded.speed(variant))
    if args.json_path is not None:
        # a row's fields and its derived figures (rtf, tokens_per_s: properties)
        figures = [
            {
                **_jsonable(row),
                **{
                    name: getattr(row, name)
                    for name, member in vars(type(row)).items()
                    if isinstance(member, property)
                },
            }
            for row in rows
        ]
        _write_json(args.json_path, json.dumps(figures, indent=2))
    for row in rows:
        stdout.print(row.line(), markup=False)


def _bench_generator(target: str, args: _BenchArgs) -> None:
    """A generator is timed by TTFT and decode tokens/s (toolkit/cli/generate.py)."""
    from toolkit.cli.generate import bench_generator

    bench_generator(
        target,
        args.variants or None,
        tuple(spec.short for spec in resolve_providers(provider_names(args.providers))),
        args.provider_config,
        args.threads,
        args.batches or (1,),
        args.seqs,
        args.new_tokens,
        _run_count(args.iterations) if args.iterations_given else 3,
        args.baseline,
        args.json_path,
    )


# how `edge bench` times each family of model (toolkit.tasks.Family)
_BENCH_BY_FAMILY: dict[Family, Callable[[str, _BenchArgs], None]] = {
    Family.SINGLE_PASS: _bench_single_pass,
    Family.ENCODER_DECODER: _bench_encoder_decoder,
    Family.GENERATOR: _bench_generator,
}
