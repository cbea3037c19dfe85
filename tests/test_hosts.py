"""Per-host int8 results: host detection from fixture /proc/cpuinfo texts, the host recorded with every
validation, the warning on an unvalidated int8 path, `edge verify`, and `auto`'s portable candidates.

Nothing here depends on this machine's CPU: detection is tested on fixture texts, and the other tests compare
against whatever `current_host()` says and pick a recorded host that differs from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from converters.quantization import QuantizeOptions, quantize
from converters.verify import verify
from toolkit.cli import edge
from toolkit.errors import BadInputError
from toolkit.host import current_host, int8_path, parse_cpuinfo, unvalidated_host_warning
from toolkit.manifest import Host, ModelPackage
from toolkit.runner import Runner

X86_BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx lm pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 popcnt aes xsave avx f16c rdrand"


def _x86(model: str, extra: str) -> str:
    block = f"processor\t: {{n}}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nflags\t\t: {X86_BASE} {extra}\n\n"
    return block.format(n=0) + block.format(n=1)


def _arm(features: str, part: str) -> str:
    block = f"processor\t: {{n}}\nBogoMIPS\t: 243.75\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: {part}\n\n"
    return block.format(n=0) + block.format(n=1)


CPUINFO_CASES = [
    pytest.param(
        _x86("Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", "avx2 bmi1 bmi2"), "x86_64", "avx2", id="haswell"
    ),
    pytest.param(
        _x86("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", "avx2 avx512f avx512dq avx512cd avx512bw avx512vl"),
        "x86_64",
        "avx512",
        id="skylake-sp",
    ),
    pytest.param(
        _x86("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "avx2 avx512f avx512bw avx512vl avx512_vnni"),
        "x86_64",
        "avx512-vnni",
        id="cascade-lake",
    ),
    pytest.param(
        _x86("12th Gen Intel(R) Core(TM) i7-12700", "avx2 avx_vnni"), "x86_64", "avx-vnni", id="alder-lake"
    ),
    pytest.param(
        _x86(
            "Intel(R) Xeon(R) Platinum 8480+",
            "avx2 avx512f avx512bw avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8",
        ),
        "x86_64",
        "amx",
        id="sapphire-rapids",
    ),
    pytest.param(_x86("AMD EPYC 7B13", "avx2 sha_ni"), "x86_64", "avx2", id="zen3"),
    pytest.param(_x86("Old Core 2", "").replace("sse4_1 ", ""), "x86_64", "generic", id="pre-sse4.1"),
    pytest.param(
        _arm(
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs",
            "0xd0c",
        ),
        "aarch64",
        "arm-dotprod",
        id="graviton2",
    ),
    pytest.param(
        _arm("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm bf16 svebf16", "0xd40"),
        "aarch64",
        "arm-i8mm",
        id="graviton3",
    ),
    pytest.param(_arm("fp asimd evtstrm crc32 cpuid", "0xd08"), "aarch64", "arm-neon", id="raspberry-pi-4"),
]


@pytest.mark.parametrize(("text", "arch", "expected"), CPUINFO_CASES)
def test_int8_path_from_cpuinfo_fixtures(text: str, arch: str, expected: str) -> None:
    model, path = parse_cpuinfo(text, arch)
    assert path == expected
    assert model
    if arch == "x86_64":
        assert model == text.split("model name\t: ")[1].splitlines()[0]
    else:
        part = int(text.split("CPU part\t: ")[1].splitlines()[0], 16)
        assert model == {0xD0C: "ARM Neoverse-N1", 0xD40: "ARM Neoverse-V1", 0xD08: "ARM Cortex-A72"}[part]
    assert parse_cpuinfo(_arm("fp asimd", "0xfff"), "aarch64")[0] == "ARM implementer 0x41 part 0xfff"


def test_int8_path_prefers_the_most_capable_kernel() -> None:
    assert int8_path({"avx2", "avx512bw", "avx512_vnni", "avx_vnni"}, "x86_64") == "avx512-vnni"
    assert int8_path({"avx2", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile"}, "x86_64") == "amx"
    assert int8_path({"amx_int8"}, "x86_64") != "amx"  # AMX needs its tile registers too
    assert int8_path({"asimd", "asimddp", "i8mm"}, "arm64") == "arm-i8mm"
    assert int8_path(set(), "aarch64") == "arm-generic"


@pytest.fixture
def bert_int8(tiny_bert_package: Path, tmp_path: Path) -> Path:
    """A tiny BERT package with a dynamic int8 variant whose budget (0.5) any host meets."""
    package = Path(shutil.copytree(tiny_bert_package, tmp_path / "bert"))
    quantize(package, "dynamic-int8", QuantizeOptions(budget=0.5, latency_runs=3))
    return package


def _other_path() -> str:
    """An int8 path that is not this host's, for a package 'quantized elsewhere'."""
    return "avx2" if current_host().int8_path != "avx2" else "avx512-vnni"


def _record_elsewhere(package: Path, variant: str = "int8", **validation_changes: object) -> Host:
    manifest = json.loads((package / "edge.json").read_text())
    validation = manifest["variants"][variant]["validation"]
    validation["host"].update(int8_path=_other_path(), cpu="Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz")
    validation.update(validation_changes)
    (package / "edge.json").write_text(json.dumps(manifest))
    host = ModelPackage.open(package).manifest.variant(variant).validation
    assert host is not None
    assert host.host is not None
    return host.host


def test_every_validation_records_its_host(bert_int8: Path) -> None:
    manifest = ModelPackage.open(bert_int8).manifest
    here = current_host()
    for name in ("fp32", "int8"):
        validation = manifest.variant(name).validation
        assert validation is not None
        assert validation.host == dataclasses.replace(here, provider="cpu")
    flat = " ".join(CliRunner().invoke(edge, ["info", str(bert_int8)]).output.split())
    assert f"measured on: {here.cpu} ({here.int8_path}), onnxruntime {here.onnxruntime}, cpu" in flat


def test_int8_variant_from_another_int8_path_warns_once_naming_verify(
    bert_int8: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="toolkit"):
        Runner(bert_int8, "cpu", variant="int8")
    assert not [r for r in caplog.records if "edge verify" in r.getMessage()]  # validated on this very host
    _record_elsewhere(bert_int8)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="toolkit"):
        Runner(bert_int8, "cpu", variant="int8")
        Runner(bert_int8, "cpu")  # fp32 computes in float: no warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"edge verify {bert_int8} --variant int8" in warnings[0]
    assert f"this host's int8 path is {current_host().int8_path}" in warnings[0]


def test_warning_ignores_other_providers_and_unrecorded_hosts(bert_int8: Path) -> None:
    _record_elsewhere(bert_int8)
    package = ModelPackage.open(bert_int8)
    here = current_host()
    assert unvalidated_host_warning(package, "model.int8.onnx", "cpu", here) is not None
    assert unvalidated_host_warning(package, "model.int8.onnx", "cuda", here) is None
    assert unvalidated_host_warning(package, "model.onnx", "cpu", here) is None
    same = dataclasses.replace(here, int8_path=_other_path())
    assert unvalidated_host_warning(package, "model.int8.onnx", "cpu", same) is None


def test_verify_re_measures_a_package_quantized_elsewhere_and_update_records_this_host(
    bert_int8: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorded = _record_elsewhere(bert_int8)
    with caplog.at_level(logging.WARNING, logger="toolkit"):
        result = CliRunner().invoke(edge, ["verify", str(bert_int8), "--runs", "3"])
    assert result.exit_code == 0, result.output
    assert any("edge verify" in r.getMessage() for r in caplog.records)  # it warns, then re-measures
    flat = " ".join(result.output.split())
    assert f"host now: {current_host().cpu}" in flat
    assert f"({recorded.int8_path})" in flat
    assert f"({current_host().int8_path})" in flat
    assert "recorded on Intel(R) Core(TM) i7-4770" in flat
    assert ModelPackage.open(bert_int8).manifest.variant("int8").verifications == ()  # no --update: untouched

    data = json.loads(
        CliRunner().invoke(edge, ["verify", str(bert_int8), "--runs", "3", "--update", "--json"]).stdout
    )
    (check,) = data["checks"]
    variant = ModelPackage.open(bert_int8).manifest.variant("int8")
    (verification,) = variant.verifications
    assert verification.host == current_host()
    assert verification.value == pytest.approx(check["now"]["value"])
    assert verification.threshold == 0.5
    assert variant.validation is not None
    assert variant.validation.host == recorded
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="toolkit"):
        Runner(bert_int8, "cpu", variant="int8")
    assert not [r for r in caplog.records if "edge verify" in r.getMessage()]
    verify(bert_int8, update=True, latency_runs=2)  # a second run on the same host replaces, not appends
    assert len(ModelPackage.open(bert_int8).manifest.variant("int8").verifications) == 1


def test_verify_exits_1_when_a_variant_misses_its_budget_here(bert_int8: Path) -> None:
    _record_elsewhere(bert_int8, threshold=1.0)  # int8 cannot reach cosine 1.0 exactly
    result = CliRunner().invoke(edge, ["verify", str(bert_int8), "--runs", "2"])
    assert result.exit_code == 1
    assert "error: variant int8 misses its budget on this host" in result.output
    assert "--portable" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variant", "fp32"], "fp32 is the reference"),
        (["--variant", "int5"], "variant 'int5' is not in package"),
        (["--providers", "tpu"], "tpu"),
    ],
)
def test_verify_bad_input_is_one_line_exit_2(bert_int8: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(edge, ["verify", str(bert_int8), *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ")
    assert message in result.output
    assert result.output.count("\n") == 1


def test_verify_a_package_without_variants_is_exit_2(tiny_bert_package: Path) -> None:
    with pytest.raises(BadInputError, match="no variant besides fp32"):
        verify(tiny_bert_package)


def test_auto_contract_and_portable_candidates(tiny_classifier_package: Path, tmp_path: Path) -> None:
    package = Path(shutil.copytree(tiny_classifier_package, tmp_path / "classifier"))
    result = quantize(package, "auto", QuantizeOptions(budget=0.9, latency_runs=3))
    by_name = {c.name: c for c in result.candidates}
    # Portability is a property of the graph, the same on every host.
    assert by_name["int8 per-channel reduced-range"].portable
    assert by_name["8-bit blockwise, every MatMul"].portable
    assert not by_name["int8 per-channel"].portable
    assert not by_name["int8 static QDQ"].portable
    assert result.host == current_host()
    if result.variant is None:
        assert not (package / "model.auto.onnx").exists()
        return
    assert result.accuracy is not None
    assert result.accuracy.meets(0.9)
    validation = result.variant.validation
    assert validation is not None
    assert validation.passed
    assert validation.host == current_host()
    assert result.variant.settings["measured_on"]["int8_path"] == current_host().int8_path


def test_auto_portable_keeps_only_portable_candidates(tiny_classifier_package: Path, tmp_path: Path) -> None:
    package = Path(shutil.copytree(tiny_classifier_package, tmp_path / "classifier"))
    result = CliRunner().invoke(
        edge, ["quantize", str(package), "--method", "auto", "--budget", "0.9", "--portable", "--json"]
    )
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    assert not any(c["meets_budget"] and not c["portable"] for c in data["candidates"])
    if result.exit_code == 0:
        variant = ModelPackage.open(package).manifest.variant("auto")
        picked = next(r for r in variant.settings["candidates"] if r["name"] == variant.settings["picked"])
        assert picked["portable"]
        assert variant.settings["portable_only"] is True
    else:
        assert not (package / "model.auto.onnx").exists()


def test_portable_and_reduce_range_flags_are_checked(bert_int8: Path) -> None:
    result = CliRunner().invoke(edge, ["quantize", str(bert_int8), "--portable", "--name", "x"])
    assert result.exit_code == 2
    assert "--portable applies to --method auto only" in result.output
    quantize(bert_int8, "dynamic-int8", QuantizeOptions(name="int7", reduce_range=True, latency_runs=2))
    variant = ModelPackage.open(bert_int8).manifest.variant("int7")
    assert variant.settings["weight_type"] == "int7 (reduce_range)"
