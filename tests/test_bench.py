"""`toolkit.bench` and `edge bench`: real sessions on tiny models; assertions on numbers, files and exit codes."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.baseline import load_torch_baseline
from tests.gpu_support import skip_reason
from toolkit.bench import (
    BenchOptions,
    TimingPlan,
    latency_stats,
    load_report,
    parse_budget,
    plan_bench,
    run_bench,
)
from toolkit.bench.compare import compare_reports, report_from_dict, report_to_dict
from toolkit.bench.inputs import synthetic_feeds
from toolkit.bench.measure import Budget, time_concurrent
from toolkit.cli import edge
from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage, Validation, Variant

FAST = TimingPlan(warmup=Budget(runs=1), measure=Budget(runs=5), min_runs=5)


def _bench(args: list[str]) -> object:
    return CliRunner().invoke(edge, ["bench", *args])


@pytest.fixture(scope="module")
def two_variant_bert(tiny_bert_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT package with a second variant (a copy of model.onnx) validated by cosine."""
    folder = tmp_path_factory.mktemp("bench") / "tiny-bert"
    shutil.copytree(tiny_bert_package, folder)
    shutil.copy(folder / "model.onnx", folder / "model.copy.onnx")
    package = ModelPackage.open(folder)
    variant = Variant(
        name="copy",
        file="model.copy.onnx",
        precision="fp32",
        method="copy",
        size_bytes=(folder / "model.copy.onnx").stat().st_size,
        validation=Validation("cosine", 0.99991, 0.99, "fp32", 7, True),
    )
    package.save(package.manifest.with_variant(variant))
    return folder


# --- measuring primitives -----------------------------------------------------------------------


def test_latency_stats_numbers() -> None:
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats.runs == 100
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert (stats.min_ms, stats.max_ms, stats.mean_ms) == (1.0, 100.0, 50.5)
    assert stats.std_ms == pytest.approx(np.std(np.arange(1, 101)))
    assert stats.cv == pytest.approx(stats.std_ms / 50.5)
    assert stats.noisy
    steady = latency_stats([10.0, 10.2, 9.9, 10.1])
    assert not steady.noisy
    assert steady.cv < 0.02


def test_parse_budget() -> None:
    assert parse_budget("10", "--warmup") == Budget(runs=10)
    assert parse_budget("2.5s", "--warmup") == Budget(seconds=2.5)
    with pytest.raises(BadInputError, match="--iterations must be at least 1"):
        parse_budget("0", "--iterations", minimum=1)
    with pytest.raises(BadInputError, match="run count or seconds"):
        parse_budget("ten", "--warmup")


def test_time_concurrent_shares_the_run_budget() -> None:
    calls = []
    samples, wall = time_concurrent(lambda: calls.append(1), 3, FAST)
    assert len(samples) == 5  # max(5 runs, 3 threads)
    assert len(calls) == 5 + 3  # plus one warm-up call per thread
    assert wall > 0


# --- inputs ---------------------------------------------------------------------------------------


def test_synthetic_text_inputs_stay_inside_the_vocabulary(tiny_bert_package: Path) -> None:
    plan = plan_bench(tiny_bert_package, BenchOptions(batches=(3,), seqs=(12,)))
    vocab = len((tiny_bert_package / "vocab.txt").read_text(encoding="utf-8").split())
    assert plan.source.vocab_size == vocab
    feeds = synthetic_feeds(plan.source, 3, 12).feeds
    assert feeds["input_ids"].shape == (3, 12)
    assert feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].min() >= 0
    assert feeds["input_ids"].max() < vocab
    assert (feeds["attention_mask"] == 1).all()
    assert (feeds["token_type_ids"] == 0).all()


def test_synthetic_images_are_normalised_pixels(tiny_vit_package: Path) -> None:
    plan = plan_bench(tiny_vit_package, BenchOptions(batches=(2,)))
    pre = ModelPackage.open(tiny_vit_package).manifest.preprocessing
    pixels = synthetic_feeds(plan.source, 2, None).feeds["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32)
    assert pixels.dtype == np.float32
    low = min((0 - m) / s for m, s in zip(pre.mean, pre.std, strict=True))
    high = max((1 - m) / s for m, s in zip(pre.mean, pre.std, strict=True))
    assert low - 1e-6 <= pixels.min()
    assert pixels.max() <= high + 1e-6
    assert plan.shapes == ((2, None),)  # no sequence axis: no seq sweep


# --- the whole run --------------------------------------------------------------------------------


def test_run_bench_every_variant_and_shape(two_variant_bert: Path) -> None:
    plan = plan_bench(
        two_variant_bert,
        BenchOptions(batches=(1, 2), seqs=(8, 16), concurrency=(1, 2), timing=FAST),
    )
    seen = []
    report = run_bench(plan, lambda label, done, total: seen.append((done, total)))
    assert [c.variant for c in report.cells].count("fp32") == 8
    assert {c.variant for c in report.cells} == {"fp32", "copy"}
    assert {(c.batch, c.seq, c.concurrency) for c in report.cells} == {
        (b, s, n) for b in (1, 2) for s in (8, 16) for n in (1, 2)
    }
    assert seen[-1] == (16, 16)
    for cell in report.cells:
        assert cell.provider == "cpu"
        assert cell.providers == ("cpu",)
        lat = cell.latency
        assert lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
        assert lat.runs >= 5
        assert cell.session_ms > 0
        assert cell.first_run_ms > 0
        assert cell.memory is not None
        assert cell.memory.peak_mb >= cell.memory.base_mb > 0
        assert (
            cell.size_bytes
            == (two_variant_bert / ("model.onnx" if cell.variant == "fp32" else "model.copy.onnx"))
            .stat()
            .st_size
        )
        if cell.concurrency == 1:
            assert cell.throughput == pytest.approx(cell.batch * 1e3 / lat.mean_ms)
        assert cell.vs_fp32 is not None
    copy = next(c for c in report.cells if c.variant == "copy")
    assert copy.accuracy is not None
    assert copy.accuracy.metric == "cosine"
    assert copy.accuracy.value == 0.99991
    fp32 = next(c for c in report.cells if c.variant == "fp32")
    assert fp32.accuracy is not None
    assert fp32.accuracy.reference == "pytorch"
    assert next(c for c in report.cells if c.variant == "fp32").vs_fp32 == pytest.approx(1.0)
    # every cell says where onnxruntime put the graph: all of it on the CPU here
    nodes = sum(count for _name, count in fp32.placement)
    assert dict(fp32.placement) == {"cpu": nodes}
    assert nodes > 10
    assert all(c.engine_cache is None for c in report.cells)
    # the same report survives a JSON round trip
    assert report_from_dict(json.loads(json.dumps(report_to_dict(report)))) == report


def test_unavailable_provider_reports_what_ran(tiny_bert_package: Path) -> None:
    plan = plan_bench(tiny_bert_package, BenchOptions(providers="tensorrt", seqs=(8,), timing=FAST))
    report = run_bench(plan)
    cell = report.cells[0]
    assert cell.requested_provider == "tensorrt"
    if cell.provider != "tensorrt":  # no usable GPU here: the table says cpu, and why
        assert cell.provider == "cpu"
        assert any("tensorrt requested, unavailable" in note for note in report.notes)


def test_provider_flags_reach_the_session(tiny_bert_package: Path) -> None:
    """--io-binding times device-resident runs; the table shows node placement; --strict refuses a fallback."""
    result = _bench(
        [
            str(tiny_bert_package),
            "--seq",
            "8",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "--io-binding",
            "--json",
            "-",
        ]
    )
    assert result.exit_code == 0, result.output
    cell = json.loads(result.output)["cells"][0]
    assert cell["provider"] == "cpu"
    assert cell["placement"][0][0] == "cpu"
    assert cell["placement"][0][1] > 10
    if skip_reason("cuda") is not None:
        strict = _bench([str(tiny_bert_package), "--seq", "8", "--providers", "cuda", "--strict"])
        assert strict.exit_code == 2
        assert strict.output.startswith("error: execution provider 'cuda' is unavailable")
        assert "Traceback" not in strict.output


def test_torch_baseline_gives_speedups(tiny_bert_package: Path) -> None:
    plan = plan_bench(tiny_bert_package, BenchOptions(seqs=(8,), baseline="torch", timing=FAST))
    report = run_bench(plan, baseline_loader=load_torch_baseline)
    torch_cell = next(c for c in report.cells if c.variant == "pytorch")
    onnx_cell = next(c for c in report.cells if c.variant == "fp32")
    assert torch_cell.provider == "torch"
    assert torch_cell.speedup == pytest.approx(1.0)
    assert onnx_cell.speedup == pytest.approx(torch_cell.latency.p50_ms / onnx_cell.latency.p50_ms)
    assert report.environment.torch is not None


def test_real_text_and_npz_inputs(tiny_bert_package: Path, tiny_vit_package: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("the quick brown fox\nhello world\n\nedge model run fast\n", encoding="utf-8")
    plan = plan_bench(tiny_bert_package, BenchOptions(batches=(3,), seqs=(10,), text_file=texts, timing=FAST))
    report = run_bench(plan)
    assert [(c.inputs, c.batch, c.seq) for c in report.cells] == [("text", 3, 10)]
    arrays = tmp_path / "pixels.npz"
    np.savez(arrays, pixel_values=np.zeros((2, 3, 32, 32), dtype=np.float32))
    report = run_bench(plan_bench(tiny_vit_package, BenchOptions(batches=(5,), npz_file=arrays, timing=FAST)))
    assert [(c.inputs, c.batch, c.seq) for c in report.cells] == [("npz", 5, None)]


# --- the CLI ----------------------------------------------------------------------------------------


def test_cli_writes_json_csv_markdown_and_png(two_variant_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = _bench(
        [
            str(two_variant_bert),
            "--batch", "1,4", "--seq", "8,16", "--iterations", "5", "--warmup", "1",
            "--json", str(out / "run.json"), "--csv", str(out / "run.csv"),
            "--markdown", str(out / "run.md"), "--plot", str(out / "run.png"),
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "AVX" in result.output or "ISA" in result.output
    assert "onnxruntime" in result.output
    assert "p50 ms" in result.output
    assert "cosine 0.9999 vs fp32" in result.output

    report = load_report(out / "run.json")
    assert len(report.cells) == 8
    rows = list(csv.DictReader(io.StringIO((out / "run.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 8
    assert {r["variant"] for r in rows} == {"fp32", "copy"}
    for row, cell in zip(rows, report.cells, strict=True):
        assert float(row["p50 ms"]) == pytest.approx(cell.latency.p50_ms, rel=1e-2)
        assert row["noisy"] in ("true", "false")
    markdown = (out / "run.md").read_text(encoding="utf-8").splitlines()
    table = [line for line in markdown if line.startswith("|")]
    assert len(table) == 2 + 8
    assert all(line.count("|") == table[0].count("|") for line in table)

    png = (out / "run.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 20_000
    from PIL import Image

    with Image.open(out / "run.png") as image:
        width, height = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert width > 800
    assert height > 500
    assert colours is not None
    assert len(colours) > 50


def test_cli_json_to_stdout(tiny_vit_package: Path) -> None:
    result = _bench(
        [str(tiny_vit_package), "--batch", "2", "--iterations", "5", "--warmup", "1", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["format"] == "edge-bench/1"
    assert data["cells"][0]["batch"] == 2
    assert data["cells"][0]["seq"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--providers", "cpu,quantum"], "unknown execution provider 'quantum'"),
        (["--batch", "0"], "--batch values must be at least 1"),
        (["--batch", "one"], "--batch takes comma-separated whole numbers"),
        (["--seq", "65"], "beyond the model's maximum sequence length 64"),
        (["--variant", "int3"], "variant 'int3' is not in package"),
        (["--text", "no-such-file.txt"], "does not exist"),
        (["--npz", "no-such-file.npz"], "does not exist"),
        (["--iterations", "0"], "--iterations must be at least 1"),
        (["--threads", "0"], "--threads takes one whole number of at least 1"),
        (["--baseline", "tensorflow"], "unknown baseline 'tensorflow'"),
        (["--plot", "latency.svg"], "--plot writes a PNG"),
        (["--opt-level", "max"], "unknown graph optimisation level 'max'"),
    ],
)
def test_bad_options_exit_2_with_one_line(tiny_bert_package: Path, args: list[str], message: str) -> None:
    result = _bench([str(tiny_bert_package), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_missing_model_and_seq_without_sequence_axis(tiny_vit_package: Path, tmp_path: Path) -> None:
    for args, message in (
        ([str(tmp_path / "nowhere")], "does not exist"),
        ([str(tiny_vit_package), "--seq", "16"], "has no sequence axis"),
        ([], "missing TARGET"),
    ):
        result = _bench(args)
        assert result.exit_code == 2
        assert result.stderr.strip().startswith("error: ")
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def _hand_made(p50s: dict[str, float], throughput: float, base: dict) -> dict:
    data = json.loads(json.dumps(base))
    data["cells"] = data["cells"][:2]
    for cell, (variant, p50) in zip(data["cells"], p50s.items(), strict=True):
        cell["variant"] = variant
        cell["latency"].update(p50_ms=p50, p99_ms=p50 * 2)
        cell["throughput"] = throughput
    return data


def test_compare_ratios(tiny_bert_package: Path, tmp_path: Path) -> None:
    saved = tmp_path / "real.json"
    assert (
        _bench(
            [str(tiny_bert_package), "--batch", "1,2", "--iterations", "5", "--json", str(saved)]
        ).exit_code
        == 0
    )
    base = json.loads(saved.read_text(encoding="utf-8"))
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_hand_made({"fp32": 10.0, "int8": 4.0}, 100.0, base)), encoding="utf-8")
    new.write_text(json.dumps(_hand_made({"fp32": 12.0, "int8": 3.0}, 80.0, base)), encoding="utf-8")

    comparison = compare_reports(load_report(old), load_report(new), threshold=0.1)
    by_variant = {c.variant: c for c in comparison.cells}
    assert by_variant["fp32"].p50_ratio == pytest.approx(1.2)
    assert by_variant["fp32"].verdict == "slower"
    assert by_variant["int8"].p50_ratio == pytest.approx(0.75)
    assert by_variant["int8"].verdict == "faster"
    assert by_variant["fp32"].p99_ratio == pytest.approx(1.2)
    assert by_variant["fp32"].throughput_ratio == pytest.approx(0.8)
    assert [c.variant for c in comparison.regressions] == ["fp32"]

    result = _bench(["--compare", str(old), str(new)])
    assert result.exit_code == 0, result.output
    assert "1.200" in result.stdout
    assert "0.750" in result.stdout
    assert "0.800" in result.stdout
    assert "1 slower, 1 faster, 0 within 10%" in result.stdout
    assert _bench(["--compare", str(old), str(new), "--fail-on-regression"]).exit_code == 1
    assert (
        _bench(["--compare", str(old), str(new), "--threshold", "25%", "--fail-on-regression"]).exit_code == 0
    )

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}', encoding="utf-8")
    result = _bench(["--compare", str(old), str(bad)])
    assert result.exit_code == 2
    assert "is not an edge bench report" in result.stderr


def test_import_toolkit_bench_stays_light() -> None:
    code = (
        "import sys, toolkit, toolkit.bench, toolkit.bench.render, toolkit.cli; "
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'matplotlib', 'converters') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_minilm_bench_with_variants(minilm_package: Path, tmp_path: Path) -> None:
    result = _bench(
        [str(minilm_package), "--batch", "1,2", "--seq", "16,256", "--iterations", "5", "--warmup", "1",
         "--json", str(tmp_path / "minilm.json")]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = load_report(tmp_path / "minilm.json")
    assert {(c.batch, c.seq) for c in report.cells} >= {(1, 16), (2, 256)}
    assert _bench([str(minilm_package), "--seq", "257"]).exit_code == 2
