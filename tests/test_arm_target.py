"""The emulated aarch64 target: `edge target prepare linux-aarch64`, then `edge verify --target` of a tiny package
on emulated Cortex-A53 and Neoverse-N1 CPUs (qemu-user), against fp32 computed natively here.

The ``emulated`` tests build the target once into the cache (about 130 MB of Debian packages and aarch64 wheels,
a minute or two; later runs reuse it) and run onnxruntime under qemu: deselect them with ``-m "not emulated"``.
Under CI (``CI=true``) a target that cannot be built fails the run instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from converters.quantization import QuantizeOptions, quantize
from converters.target import (
    CPUS,
    Emulation,
    PreparedTarget,
    cpuinfo_text,
    feature_names,
    open_target,
    prepare,
)
from converters.verify import verify
from toolkit.cli import edge
from toolkit.errors import TargetError
from toolkit.host import parse_cpuinfo
from toolkit.manifest import ModelPackage


def test_generated_cpuinfo_names_the_int8_path_of_its_features() -> None:
    neon = feature_names(0b11, 0)  # fp, asimd
    dotprod = feature_names(0b11 | 1 << 20, 0)  # + asimddp
    i8mm = feature_names(0b11 | 1 << 20, 1 << 13)  # + i8mm (HWCAP2)
    sme = feature_names(0b11 | 1 << 20, 1 << 13 | 1 << 23)  # + SME
    assert neon == ["fp", "asimd"]
    assert "asimddp" in dotprod
    assert "i8mm" in i8mm
    for features, want, model in (
        (neon, "arm-neon", "ARM Cortex-A53"),
        (dotprod, "arm-dotprod", "ARM Neoverse-N1"),
        (i8mm, "arm-i8mm", "ARM Neoverse-N1"),
        (sme, "arm-sme", "ARM Neoverse-N1"),
    ):
        cpu = CPUS["cortex-a53" if want == "arm-neon" else "neoverse-n1"]
        text = cpuinfo_text(cpu, features, processors=2)
        assert text.count("processor\t:") == 2
        assert parse_cpuinfo(text, "aarch64") == (model, want)


def test_verify_on_a_target_not_prepared_names_the_command(bert_int8_package: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        edge, ["verify", str(bert_int8_package), "--target", "linux-aarch64", "--cache-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "edge target prepare linux-aarch64" in result.output
    cpu = CliRunner().invoke(
        edge, ["verify", str(bert_int8_package), "--target", "linux-aarch64", "--cpu", "pentium"]
    )
    assert cpu.exit_code == 2
    assert (
        "unknown CPU 'pentium' for target linux-aarch64; choose one of: cortex-a53, cortex-a76" in cpu.output
    )
    broken = tmp_path / "targets" / "linux-aarch64"
    broken.mkdir(parents=True)
    (broken / "target.json").write_text('{"name": "linux-aarch64"}')
    stale = CliRunner().invoke(
        edge, ["verify", str(bert_int8_package), "--target", "linux-aarch64", "--cache-dir", str(tmp_path)]
    )
    assert stale.exit_code == 2
    assert "unreadable target.json" in stale.output
    assert "edge target prepare linux-aarch64 --force" in stale.output
    unknown = CliRunner().invoke(edge, ["target", "prepare", "linux-riscv", "--cache-dir", str(tmp_path)])
    assert unknown.exit_code == 2
    assert "unknown target 'linux-riscv'; choose one of: linux-aarch64" in unknown.output


@pytest.fixture(scope="session")
def aarch64() -> PreparedTarget:
    """The prepared linux-aarch64 target in the default cache (built on first use)."""
    try:
        return prepare("linux-aarch64")
    except TargetError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the aarch64 target cannot be built here: {exc}")


@pytest.fixture(scope="session")
def bert_int8_package(tiny_bert_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT package with a dynamic int8 variant whose budget (0.5) any CPU meets."""
    package = Path(shutil.copytree(tiny_bert_package, tmp_path_factory.mktemp("arm") / "bert"))
    quantize(package, "dynamic-int8", QuantizeOptions(budget=0.5, latency_runs=1))
    return package


@pytest.mark.emulated
def test_prepare_builds_once_and_records_what_it_downloaded(aarch64: PreparedTarget) -> None:
    record = aarch64.record
    assert record.python == "3.11"
    assert any(w.startswith("onnxruntime==") for w in record.wheels)
    assert record.download_bytes > 50e6
    assert record.site_bytes > 50e6
    stamp = (aarch64.root / "target.json").stat().st_mtime_ns
    again = prepare("linux-aarch64")  # already prepared: nothing is rebuilt
    assert (again.root / "target.json").stat().st_mtime_ns == stamp
    assert open_target("linux-aarch64").record == record


@pytest.mark.emulated
def test_target_python_tokenizes_like_this_host(aarch64: PreparedTarget, bert_int8_package: Path) -> None:
    from tokenizers import Tokenizer

    text = "edge devices run int8 kernels"
    tokenizer = bert_int8_package / "tokenizer.json"
    code = (
        "import platform, tokenizers, numpy, onnxruntime; "
        f"print(platform.machine(), tokenizers.Tokenizer.from_file({str(tokenizer)!r}).encode({text!r}).ids)"
    )
    done = subprocess.run(
        aarch64.command("cortex-a53", ["-c", code]), env=aarch64.environment(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    machine, ids = done.stdout.strip().split(" ", 1)
    assert machine == "aarch64"
    assert ids == str(Tokenizer.from_file(str(tokenizer)).encode(text).ids)


@pytest.mark.emulated
def test_verify_on_emulated_cortex_a53_matches_native_fp32(
    aarch64: PreparedTarget, bert_int8_package: Path
) -> None:
    result = verify(bert_int8_package, emulation=Emulation("linux-aarch64", "cortex-a53"), threads=1)
    assert result.host.arch == "aarch64"
    assert result.host.int8_path == "arm-neon"  # no dot-product on an A53
    assert result.host.cpu.startswith("ARM Cortex-A53 (emulated: qemu ")
    assert result.fp32_max_abs_diff is not None
    assert result.fp32_max_abs_diff <= 1e-4
    (check,) = result.checks
    assert check.variant == "int8"
    assert check.meets_budget
    assert check.now.host == result.host
    assert check.fp32_ms is None
    assert check.speedup is None
    assert not result.updated


@pytest.mark.emulated
def test_edge_verify_target_neoverse_n1_records_the_dotprod_path(
    aarch64: PreparedTarget, bert_int8_package: Path, tmp_path: Path
) -> None:
    package = Path(shutil.copytree(bert_int8_package, tmp_path / "bert"))
    result = CliRunner().invoke(
        edge,
        [
            "verify",
            str(package),
            "--target",
            "linux-aarch64",
            "--cpu",
            "neoverse-n1",
            "--update",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "no timings: under emulation" in result.output
    assert "arm-dotprod" in result.output
    diff = float(result.output.split("fp32 there against fp32 here: max abs diff ")[1].split()[0])
    assert diff <= 1e-4
    recorded = json.loads((package / "edge.json").read_text())["variants"]["int8"]["verifications"]
    assert [v["host"]["int8_path"] for v in recorded] == ["arm-dotprod"]
    assert recorded[0]["host"]["arch"] == "aarch64"
    variant = ModelPackage.open(package).manifest.variant("int8")
    assert variant.verifications[0].host is not None
    assert "Neoverse-N1" in variant.verifications[0].host.cpu
