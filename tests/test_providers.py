"""Providers on a CPU machine: honest fallback, strict mode, options mapping, node placement, IO binding, doctor."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from tests.gpu_support import skip_reason
from toolkit import BadInputError, ProviderUnavailableError, Runner
from toolkit.cli import edge
from toolkit.doctor import check_cpu, check_gpus, int8_meaning, needed_libraries, run_doctor
from toolkit.manifest import TensorSpec
from toolkit.providers import (
    CudaOptions,
    DimRange,
    ProviderConfig,
    TensorRTOptions,
    derive_tensorrt_profile,
    ort_provider_options,
    parse_dim_range,
    probe_model_bytes,
    resolve_providers,
)
from toolkit.runner import placement_from_profile

GPU_UNUSABLE = skip_reason("cuda") is not None and skip_reason("tensorrt") is not None
only_without_gpu = pytest.mark.skipif(
    not GPU_UNUSABLE, reason="a GPU provider works here; fallback not testable"
)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """Four nodes no optimiser fuses: z = -|(x + y) * y|, with a dynamic batch dim."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])
    nodes = [
        helper.make_node("Add", ["x", "y"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "y"], ["b"], name="mul"),
        helper.make_node("Abs", ["b"], ["c"], name="abs"),
        helper.make_node("Neg", ["c"], ["z"], name="neg"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [x, y], [z]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return path


def _feeds(batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((batch, 4)).astype(np.float32),
        "y": rng.standard_normal((batch, 4)).astype(np.float32),
    }


def _expected(feeds: dict[str, np.ndarray]) -> np.ndarray:
    return -np.abs((feeds["x"] + feeds["y"]) * feeds["y"])


@only_without_gpu
def test_gpu_providers_fall_back_to_cpu_with_the_missing_library(
    tiny_model: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.WARNING, logger="toolkit"):
        runner = Runner(tiny_model, "tensorrt,cuda,cpu")
    assert runner.providers == ("cpu",)
    assert [f.provider for f in runner.fallbacks] == ["tensorrt", "cuda"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    for fallback, line in zip(runner.fallbacks, warnings, strict=True):
        assert "\n" not in line
        assert fallback.reason in line
        assert f"'{fallback.provider}' is unavailable" in line
        assert "falling back to cpu" in line
        # onnxruntime's own reason, e.g. "libcublasLt.so.13: cannot open shared object file"
        assert re.search(r"lib\w+\.so[.\d]*: cannot open shared object file|built without", fallback.reason)
    np.testing.assert_allclose(runner.run(_feeds())["z"], _expected(_feeds()), rtol=1e-6)
    assert not (tmp_path / ".trt_cache").exists(), "a TensorRT that never ran leaves no cache folder"


@only_without_gpu
def test_strict_raises_provider_unavailable(tiny_model: Path) -> None:
    with pytest.raises(
        ProviderUnavailableError, match=r"execution provider 'cuda' is unavailable \(.+\); drop --strict"
    ):
        Runner(tiny_model, "cuda,cpu", strict=True)
    with pytest.raises(ProviderUnavailableError):
        Runner(tiny_model, config=ProviderConfig(("cuda", "cpu"), strict=True))


@only_without_gpu
def test_cli_strict_exits_2_with_one_line(tiny_model: Path, tmp_path: Path) -> None:
    feeds = _feeds()
    args = []
    for name, array in feeds.items():
        np.save(tmp_path / f"{name}.npy", array)
        args += ["--input", f"{name}={tmp_path / f'{name}.npy'}"]
    result = CliRunner().invoke(edge, ["run", str(tiny_model), *args, "--providers", "cuda,cpu", "--strict"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: execution provider 'cuda' is unavailable")

    result = CliRunner().invoke(edge, ["run", str(tiny_model), *args, "--providers", "cuda,cpu", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{") :])
    assert payload["providers"] == ["cpu"]
    assert payload["node_placement"] == {"cpu": 4}


def test_unknown_provider_and_bad_flags_exit_2(tiny_model: Path) -> None:
    result = CliRunner().invoke(edge, ["run", str(tiny_model), "--input", "x=a.npy", "--providers", "gpu"])
    assert result.exit_code == 2
    assert "error: unknown execution provider 'gpu'; use one of: tensorrt, cuda" in result.output
    result = CliRunner().invoke(
        edge, ["run", str(tiny_model), "--input", "x=a.npy", "--trt-dim", "batch=8:1:32"]
    )
    assert result.exit_code == 2
    assert "must satisfy 1 <= min <= opt <= max" in result.output
    with pytest.raises(BadInputError, match="unknown execution provider 'npu'"):
        resolve_providers(["npu"])


def test_node_placement_counts_every_node(tiny_model: Path) -> None:
    runner = Runner(tiny_model, threads=1)
    assert runner.node_placement() == {"cpu": 4}
    providers = [("CPUExecutionProvider", {})]
    assert placement_from_profile(tiny_model, providers, _feeds()) == {"cpu": 4}
    assert not list(Path.cwd().glob("placement*.json")), "the profile file is deleted"


def test_io_binding_on_cpu_matches_plain_runs_and_rebinds_new_shapes(tiny_model: Path) -> None:
    plain = Runner(tiny_model)
    bound = Runner(tiny_model, io_binding=True)
    for batch in (2, 2, 5, 1):
        feeds = _feeds(batch)
        kept = {k: v.copy() for k, v in feeds.items()}
        np.testing.assert_array_equal(bound.run(feeds)["z"], plain.run(feeds)["z"])
        for name in feeds:
            np.testing.assert_array_equal(feeds[name], kept[name])  # the caller's arrays are never written
    values = bound.run_on_device(_feeds(3))
    assert values["z"].shape() == [3, 4]
    assert bound.startup.first_run_s is not None
    assert bound.startup.engine_cache is None
    with pytest.raises(BadInputError, match="run_on_device needs IO binding"):
        plain.run_on_device(_feeds())


def test_cuda_graph_and_int8_restrictions_are_checked_up_front(tiny_model: Path) -> None:
    with pytest.raises(BadInputError, match="CUDA graphs need the cuda provider"):
        Runner(tiny_model, "cpu", cuda=CudaOptions(cuda_graph=True))
    with pytest.raises(BadInputError, match="CUDA graphs need IO binding"):
        Runner(tiny_model, "cuda,cpu", cuda=CudaOptions(cuda_graph=True), io_binding=False)
    with pytest.raises(BadInputError, match="TensorRT int8 needs a QDQ model"):
        Runner(tiny_model, "tensorrt,cpu", tensorrt=TensorRTOptions(int8=True))
    with pytest.raises(BadInputError, match="cudnn_conv_algo_search"):
        CudaOptions(cudnn_conv_algo_search="FAST")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="optimisation level must be 0 to 5"):
        TensorRTOptions(builder_optimization_level=7)


def test_cuda_graph_needs_each_symbolic_dimension_sized_up_front(tiny_model: Path) -> None:
    with pytest.raises(BadInputError, match=r"leaves batch open: give each .* --cuda-graph-dim batch=N"):
        Runner(tiny_model, "cuda,cpu", cuda=CudaOptions(cuda_graph=True))
    with pytest.raises(
        BadInputError,
        match=r"--cuda-graph-dim seq: .* no such symbolic dimension \(its symbolic dimensions are batch\)",
    ):
        Runner(tiny_model, "cuda,cpu", cuda=CudaOptions(cuda_graph=True, graph_dims={"batch": 2, "seq": 8}))
    with pytest.raises(BadInputError, match="need --cuda-graph"):
        CudaOptions(graph_dims={"batch": 2})
    with pytest.raises(BadInputError, match="a size must be 1 or more"):
        CudaOptions(cuda_graph=True, graph_dims={"batch": 0})
    result = CliRunner().invoke(
        edge,
        [
            "run",
            str(tiny_model),
            "--providers",
            "cuda,cpu",
            "--cuda-graph",
            "--cuda-graph-dim",
            "batch=1:2:4",
        ],
    )
    assert result.exit_code == 2, result.output
    assert (
        result.output.strip().splitlines()[-1].startswith("error: dimension 'batch=1:2:4' must be one size")
    )


def test_sized_dimensions_fold_the_shape_computations_a_cuda_graph_cannot_capture(
    tiny_bert_package: Path, tmp_path: Path
) -> None:
    """Fixed sizes let onnxruntime fold the Shape/Gather/Concat chains it would run on the CPU beside CUDA (a
    graph capture refuses any CPU node: MiniLM on an H200); on a CPU-only host the cuda entry falls back to the
    CPU, and the folding is the same either way."""

    runners = []

    def optimized_ops(name: str, **cuda: object) -> list[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        cuda_options = CudaOptions(**cuda)  # type: ignore[arg-type]
        runners.append(Runner(tiny_bert_package, "cuda,cpu", cuda=cuda_options, session_options=options))
        return [
            node.op_type for node in onnx.load(tmp_path / f"{name}.onnx", load_external_data=False).graph.node
        ]

    symbolic = [d for d in Runner(tiny_bert_package, "cpu").inputs[0].shape if isinstance(d, str)]
    assert len(symbolic) == 2, symbolic
    assert optimized_ops("open").count("Shape") > 0
    sized = optimized_ops("sized", cuda_graph=True, graph_dims=dict(zip(symbolic, (2, 16), strict=True)))
    assert "Shape" not in sized, sorted(set(sized))
    assert "Concat" not in sized, sorted(set(sized))
    sized_runner = runners[-1]
    assert [spec.shape for spec in sized_runner.inputs] == [(2, 16)] * len(sized_runner.inputs)
    other = {spec.name: np.ones((2, 8), dtype=np.int64) for spec in sized_runner.inputs}
    with pytest.raises(BadInputError, match=r"axis 1 must be 16; --cuda-graph-dim fixed it"):
        sized_runner.run(other)


def test_if_model_is_refused_for_cuda_graphs(tmp_path: Path) -> None:
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])
    one = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["o"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
            )
        ],
        "then",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])],
    )
    node = helper.make_node("If", ["cond"], ["out"], then_branch=one, else_branch=one)
    model = helper.make_model(
        helper.make_graph([node], "g", [cond], [out]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.save(model, tmp_path / "if.onnx")
    with pytest.raises(BadInputError, match=r"control-flow operators \(If\)"):
        Runner(tmp_path / "if.onnx", "cuda,cpu", cuda=CudaOptions(cuda_graph=True))


def test_options_map_to_onnxruntime_names(tmp_path: Path) -> None:
    specs = {s.short: s for s in resolve_providers(["tensorrt", "cuda", "cpu"])}
    config = ProviderConfig(
        ("tensorrt", "cuda", "cpu"),
        cuda=CudaOptions(
            device_id=1, cudnn_conv_algo_search="HEURISTIC", cuda_graph=True, gpu_mem_limit=2**30
        ),
        tensorrt=TensorRTOptions(fp16=True, builder_optimization_level=5, max_workspace_size=2**31),
    )
    assert ort_provider_options(specs["cuda"], config) == {
        "device_id": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "1",
        "enable_cuda_graph": "1",
        "gpu_mem_limit": str(2**30),
    }
    profile, missing = derive_tensorrt_profile(
        (TensorSpec("input_ids", "int64", ("batch_size", "sequence_length")),), max_length=256
    )
    assert missing == ()
    trt = ort_provider_options(specs["tensorrt"], config, tmp_path / ".trt_cache", profile)
    assert trt == {
        "device_id": "0",
        "trt_fp16_enable": "1",
        "trt_int8_enable": "0",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path / ".trt_cache"),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(tmp_path / ".trt_cache"),
        "trt_builder_optimization_level": "5",
        "trt_max_workspace_size": str(2**31),
        "trt_profile_min_shapes": "input_ids:1x1",
        "trt_profile_opt_shapes": "input_ids:1x128",
        "trt_profile_max_shapes": "input_ids:32x256",
    }
    assert ort_provider_options(specs["cpu"], config) == {}


def test_tensorrt_profile_from_dims_and_overrides() -> None:
    image = (TensorSpec("pixel_values", "float32", ("batch", 3, 224, 224)),)
    profile, missing = derive_tensorrt_profile(image, {"batch": DimRange(1, 8, 16)})
    assert profile is not None
    assert missing == ()
    assert profile.ort_options()["trt_profile_opt_shapes"] == "pixel_values:8x3x224x224"
    profile, missing = derive_tensorrt_profile((TensorSpec("audio", "float32", ("batch", "samples")),))
    assert profile is None
    assert missing == ("samples",)
    assert parse_dim_range("samples=16000") == ("samples", DimRange(16000, 16000, 16000))
    with pytest.raises(BadInputError, match="NAME=MIN:OPT:MAX"):
        parse_dim_range("batch:1:2")


@only_without_gpu
def test_doctor_reports_the_cuda_library_problem() -> None:
    result = CliRunner().invoke(edge, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    cuda = next(p for p in report["providers"] if p["name"] == "cuda")
    cpu = next(p for p in report["providers"] if p["name"] == "cpu")
    assert cpu["usable"]
    assert not cuda["usable"]
    assert cuda["reason"]
    assert any(f["topic"] == "providers" and "cuda" in f["message"] and f["fix"] for f in report["problems"])
    if cuda["compiled"]:
        missing = [lib for lib in report["libraries"] if not lib["loadable"]]
        assert missing
        assert all(lib["error"] for lib in missing)
        assert any(lib["soname"] in cuda["reason"] for lib in missing)
        assert any(lib["soname"] in f["message"] and f["fix"] for lib in missing for f in report["problems"])
    text = CliRunner().invoke(edge, ["doctor"]).output
    assert "providers compiled in:" in text
    assert "fix: " in text


def test_doctor_require_exits_1_for_an_unusable_provider() -> None:
    assert CliRunner().invoke(edge, ["doctor", "--require", "cpu"]).exit_code == 0
    unknown = CliRunner().invoke(edge, ["doctor", "--require", "warp-drive"])
    assert unknown.exit_code == 2
    assert "unknown execution provider 'warp-drive'" in unknown.output
    reason = skip_reason("cuda")
    if reason is not None:
        result = CliRunner().invoke(edge, ["doctor", "--require", "cuda"])
        assert result.exit_code == 1
        assert "error: required provider cuda is not usable here: " in result.output


def test_load_takes_a_provider_config(tiny_classifier_package: Path) -> None:
    from toolkit import TextClassifier

    pipeline = TextClassifier.load(
        tiny_classifier_package, config=ProviderConfig(providers=("cpu",), io_binding=True)
    )
    assert pipeline.runner.config.io_binding
    assert pipeline.runner.providers == ("cpu",)
    texts = ["a quick brown fox", "the lazy dog sat on the mat"]
    plain = TextClassifier.load(tiny_classifier_package)
    bound = pipeline.classify(texts, top_k=3)
    unbound = plain.classify(texts, top_k=3)
    for got, want in zip((c for top in bound for c in top), (c for top in unbound for c in top), strict=True):
        assert got.label == want.label
        assert got.scores == pytest.approx(want.scores, abs=1e-6)


def test_doctor_parts() -> None:
    report = run_doctor()
    assert any(p.name == "cpu" and p.usable for p in report.providers)
    cpu = check_cpu("model name : Test CPU\nflags : fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu.model == "Test CPU"
    assert "AVX-512 VNNI" in cpu.isa
    assert "VNNI" in cpu.int8
    assert "saturate" in int8_meaning(("AVX2",))
    gpus, note = check_gpus(lambda _cmd: "0, NVIDIA H100 80GB HBM3, 560.35.03, 81559, 9.0\n")
    assert note is None
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert gpus[0].memory_mib == 81559
    assert onnx.load_from_string(probe_model_bytes()).graph.node[0].op_type == "Add"
    import onnxruntime

    library = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if library.is_file():
        assert any(name.startswith("libcudart.so") for name in needed_libraries(library))
