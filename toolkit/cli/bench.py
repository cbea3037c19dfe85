"""`edge bench`: latency, throughput, cold start and memory of every variant on each provider, in one table."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console

from toolkit.cli.common import EXIT_VALIDATION_FAILED, CommaList, _state, common_options, console, stdout
from toolkit.cli.provider_options import provider_tuning_options
from toolkit.errors import BadInputError
from toolkit.providers import ProviderConfig
from toolkit.runner import GRAPH_OPT_LEVELS

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


def _bench_seq2seq(
    target: str,
    variants: tuple[str, ...] | None,
    config: ProviderConfig,
    threads: int | None,
    json_path: str | None,
) -> bool:
    """`edge bench` on an encoder-decoder package (encoder and decoding together: the real-time factor of
    speech, tokens/s of text-to-text), per variant; False for other targets."""
    from toolkit.atomic import atomic_write_text
    from toolkit.cli.common import _jsonable
    from toolkit.manifest import MANIFEST_NAME, ModelPackage
    from toolkit.tasks import pipeline_class
    from toolkit.tasks.encoder_decoder import Seq2SeqPipeline

    if not (Path(target) / MANIFEST_NAME).is_file():
        return False
    package = ModelPackage.open(target)
    pipeline = pipeline_class(package)
    if not issubclass(pipeline, Seq2SeqPipeline):
        return False
    rows = []
    for variant in variants or tuple(package.manifest.variants):
        with pipeline.load(target, variant=variant, config=config, threads=threads) as loaded:
            rows.append(loaded.speed(variant))
    if json_path is not None:
        # a row's fields and its derived figures (rtf, tokens_per_s: properties)
        text = json.dumps(
            [
                {
                    **_jsonable(row),
                    **{
                        name: getattr(row, name)
                        for name, member in vars(type(row)).items()
                        if isinstance(member, property)
                    },
                }
                for row in rows
            ],
            indent=2,
        )
        if json_path == "-":
            click.echo(text)
        else:
            atomic_write_text(Path(json_path), text + "\n")
    for row in rows:
        stdout.print(row.line(), markup=False)
    return True


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


def _compare(files: tuple[str, str], threshold: str, json_path: str | None, fail: bool) -> None:
    from toolkit.bench.compare import compare_reports, load_report, plain
    from toolkit.bench.render import comparison_table

    old, new = (load_report(f) for f in files)
    comparison = compare_reports(old, new, _threshold(threshold), names=(files[0], files[1]))
    if json_path == "-":
        click.echo(json.dumps(plain(comparison), indent=2))
    else:
        if json_path:
            from toolkit.atomic import atomic_write_text

            atomic_write_text(Path(json_path), json.dumps(plain(comparison), indent=2) + "\n")
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
    # --- an encoder-decoder package is timed whole (real-time factor of speech, tokens/s of text-to-text)
    if _bench_seq2seq(target, variants, provider_config, _positive_int(threads, "--threads"), json_path):
        return
    # --- a generate package is timed by TTFT and decode tokens/s (toolkit/cli/generate.py)
    from toolkit.cli.generate import bench_generator, is_generator_package

    if is_generator_package(target):
        source = click.get_current_context().get_parameter_source("iterations")
        bench_generator(
            target,
            variants or None,
            tuple(p.strip() for p in providers.split(",") if p.strip()),
            provider_config,
            _positive_int(threads, "--threads"),
            batches or (1,),
            seqs,
            new_tokens,
            3 if source == click.core.ParameterSource.DEFAULT else _run_count(iterations),
            baseline.strip().lower() if baseline else None,
            json_path,
        )
        return

    from toolkit.bench import BenchOptions, TimingPlan, parse_budget, plan_bench, run_bench
    from toolkit.bench.compare import report_to_dict, save_report
    from toolkit.bench.render import (
        WIDE_TERMINAL,
        environment_lines,
        report_table,
        write_csv,
        write_markdown,
        write_plot,
    )

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
    options = BenchOptions(
        variants=variants,
        providers=providers,
        batches=batches,
        seqs=seqs,
        concurrency=concurrency,
        timing=TimingPlan(warmup=parse_budget(warmup, "--warmup"), measure=measure),
        threads=_positive_int(threads, "--threads"),
        graph_optimization=opt_level.strip().lower(),
        text_file=Path(text_file) if text_file else None,
        npz_file=Path(npz_file) if npz_file else None,
        baseline=baseline.strip().lower() if baseline else None,
        provider_config=provider_config,
    )
    plan = plan_bench(target, options)
    to_stdout = json_path == "-"
    with _progress(True) as update:
        report = run_bench(plan, update)

    if json_path and not to_stdout:
        save_report(report, Path(json_path))
    if csv_path:
        write_csv(report, Path(csv_path))
    if markdown_path:
        write_markdown(report, Path(markdown_path))
    if plot_path:
        write_plot(report, Path(plot_path))
    if to_stdout:
        click.echo(json.dumps(report_to_dict(report), indent=2))
        return
    for line in environment_lines(report):
        stdout.print(line, soft_wrap=True)
    # Redirected output gets every column at full width; a terminal gets what fits its width.
    out = stdout if stdout.is_terminal else Console(highlight=False, width=WIDE_TERMINAL + 100)
    out.print(report_table(report, out.width))
    for note in report.notes:
        stdout.print(f"note: {note}", soft_wrap=True)
    for label, path in (
        ("json", json_path),
        ("csv", csv_path),
        ("markdown", markdown_path),
        ("plot", plot_path),
    ):
        if path:
            stdout.print(f"wrote {label}: {path}")
