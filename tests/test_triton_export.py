"""`edge export triton`: every config.pbtxt parsed with Triton's own ModelConfig schema and checked
against the ONNX graph it serves; the copied models load and give the package's outputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from toolkit.cli import edge
from toolkit.manifest import Manifest, ModelPackage, SourceInfo, TensorSpec, Variant
from toolkit.triton import (
    TritonExportOptions,
    export_triton_repository,
    triton_model_config,
    triton_model_name,
)

mc = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is a test dependency"
)

# ONNX element type -> Triton DataType, written out here independently of toolkit.triton's table.
EXPECTED_TYPES = {
    TensorProto.FLOAT: mc.TYPE_FP32,
    TensorProto.FLOAT16: mc.TYPE_FP16,
    TensorProto.DOUBLE: mc.TYPE_FP64,
    TensorProto.INT64: mc.TYPE_INT64,
    TensorProto.INT32: mc.TYPE_INT32,
    TensorProto.INT8: mc.TYPE_INT8,
    TensorProto.UINT8: mc.TYPE_UINT8,
    TensorProto.BOOL: mc.TYPE_BOOL,
    TensorProto.STRING: mc.TYPE_STRING,
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(edge, [str(a) for a in args])


def parse_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


def graph_io(model_file: Path) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    model = onnx.load(str(model_file), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers], list(model.graph.output)


def onnx_dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def check_against_graph(config: mc.ModelConfig, model_file: Path, max_batch_size: int) -> None:
    """The config's tensors are the graph's, in order, with Triton types and dims (batch axis folded)."""
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == max_batch_size
    inputs, outputs = graph_io(model_file)
    for declared, values in ((config.input, inputs), (config.output, outputs)):
        assert [t.name for t in declared] == [v.name for v in values]
        for tensor, value in zip(declared, values, strict=True):
            assert tensor.data_type == EXPECTED_TYPES[value.type.tensor_type.elem_type], tensor.name
            dims = onnx_dims(value)
            if max_batch_size > 0:
                assert dims[0] == -1, f"{tensor.name}: batch axis must be dynamic to batch"
                dims = dims[1:]
            assert list(tensor.dims) == dims, tensor.name
    assert config.HasField("dynamic_batching") == (max_batch_size > 0)


def feeds_for(session: ort.InferenceSession, batch: int, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Random feeds: symbolic dims from `sizes` by name (5 when unnamed there), the first one `batch`."""
    rng = np.random.default_rng(0)
    feeds = {}
    for i, node in enumerate(session.get_inputs()):
        shape = [
            d if isinstance(d, int) else (batch if axis == 0 else sizes.get(d, 5))
            for axis, d in enumerate(node.shape)
        ]
        if "int" in node.type:
            feeds[node.name] = rng.integers(0, 2, size=shape).astype(np.int64)
        else:
            feeds[node.name] = rng.standard_normal(shape).astype(np.float32) + i
    return feeds


def assert_same_outputs(
    served: Path, original: Path, batch: int, sizes: dict[str, int] | None = None
) -> None:
    """The repository's model file loads on its own and gives exactly the package model's outputs."""
    reference = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    copy = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    feeds = feeds_for(reference, batch, sizes or {})
    for got, want in zip(copy.run(None, feeds), reference.run(None, feeds), strict=True):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def write_package(folder: Path, name: str, model: onnx.ModelProto, external: bool = False) -> Path:
    """A model package around a hand-built ONNX model: model.onnx (+ model.onnx.data) and edge.json."""
    folder.mkdir(parents=True)
    onnx.checker.check_model(model)
    onnx.save(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )

    def specs(values: Iterable[Any]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(
                v.name,
                helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                tuple(d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim),
            )
            for v in values
        )

    manifest = Manifest(
        name=name,
        task="features",
        source=SourceInfo(kind="test", ref="onnx.helper", sha256="0" * 64),
        inputs=specs(model.graph.input),
        outputs=specs(model.graph.output),
        opset=17,
        variants={
            "fp32": Variant("fp32", "model.onnx", "fp32", "export", (folder / "model.onnx").stat().st_size)
        },
    )
    ModelPackage(folder, manifest).save(manifest)
    return folder


@pytest.fixture(scope="module")
def fixed_batch_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x float32 [1, 4] @ W -> y float32 [1, 3] and its argmax int64 [1]; W kept in external data."""
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"]),
            helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0),
        ],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
        ],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path_factory.mktemp("fixed") / "pkg"
    # A name Triton would reject (space, slash, colon): the repository gets a sanitised one.
    return write_package(folder, "fixed batch/v1:demo", model, external=True)


@pytest.fixture(scope="module")
def bert_with_variant(tiny_bert_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of tiny_bert_package with a second variant 'int8' (the fp32 file under the variant's name)."""
    folder = tmp_path_factory.mktemp("bert-variant") / "pkg"
    shutil.copytree(tiny_bert_package, folder)
    shutil.copyfile(folder / "model.onnx", folder / "model.int8.onnx")
    package = ModelPackage.open(folder)
    fp32 = package.manifest.variant("fp32")
    package.save(
        package.manifest.with_variant(dataclasses.replace(fp32, name="int8", file="model.int8.onnx"))
    )
    return folder


def test_bert_repository_via_cli_matches_graph_and_package(bert_with_variant: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = invoke(
        "export", "triton", bert_with_variant, "-o", repo, "--tensorrt-fp16", "--kind", "gpu",
        "--instances", "2", "--preferred-batch-sizes", "4,8", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    name = ModelPackage.open(bert_with_variant).manifest.name
    assert [m["name"] for m in report["models"]] == [name, f"{name}_int8"]
    assert report["command"] == f"tritonserver --model-repository {repo.resolve()}"
    assert sorted(p.name for p in repo.iterdir()) == sorted([name, f"{name}_int8"])

    for model, source in ((name, "model.onnx"), (f"{name}_int8", "model.int8.onnx")):
        config = parse_config(repo / model / "config.pbtxt")
        assert config.name == model
        check_against_graph(config, repo / model / "1" / "model.onnx", max_batch_size=32)
        # both batch and sequence axes are dynamic: batch folded away, sequence -1
        assert [list(t.dims) for t in config.input] == [[-1]] * len(config.input)
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt"
        assert dict(accelerator.parameters) == {"precision_mode": "FP16"}
        assert sorted(p.name for p in (repo / model).rglob("*")) == ["1", "config.pbtxt", "model.onnx"]
        assert_same_outputs(repo / model / "1" / "model.onnx", bert_with_variant / source, batch=3)
    # the package keeps its files: they are linked or copied, never moved
    assert (bert_with_variant / "model.onnx").is_file()
    assert (bert_with_variant / "model.int8.onnx").is_file()


def test_vit_default_options_fold_batch_and_keep_image_dims(tiny_vit_package: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export = export_triton_repository(tiny_vit_package, repo)
    (model,) = export.models
    assert model.variant == "fp32"
    assert model.version == 1
    assert model.max_batch_size == 32
    config = parse_config(model.config_path)
    check_against_graph(config, model.model_path, max_batch_size=32)
    # optimum exports channels, height and width as symbolic axes: Triton gets what the graph says
    assert [list(t.dims) for t in config.input] == [[-1, -1, -1]]
    assert [list(t.dims) for t in config.output] == [[5]]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, mc.ModelInstanceGroup.KIND_AUTO)]
    assert not config.HasField("optimization")
    image = {"num_channels": 3, "height": 32, "width": 32}
    assert_same_outputs(model.model_path, tiny_vit_package / "model.onnx", batch=2, sizes=image)


def test_fixed_batch_axis_gets_max_batch_size_0_full_dims_and_external_data(
    fixed_batch_package: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    result = invoke("export", "triton", fixed_batch_package, "-o", repo, "--kind", "cpu")
    assert result.exit_code == 0, result.output
    assert "tritonserver --model-repository" in result.output
    assert [p.name for p in repo.iterdir()] == ["fixed_batch_v1_demo"]
    model_dir = repo / "fixed_batch_v1_demo"
    config = parse_config(model_dir / "config.pbtxt")
    assert config.name == "fixed_batch_v1_demo"
    check_against_graph(config, model_dir / "1" / "model.onnx", max_batch_size=0)
    assert [list(t.dims) for t in config.input] == [[1, 4]]
    assert [list(t.dims) for t in config.output] == [[1, 3], [1]]
    assert [t.data_type for t in config.output] == [mc.TYPE_FP32, mc.TYPE_INT64]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]
    # the weights live in external data, copied to where the model refers to them
    assert (model_dir / "1" / "model.onnx.data").is_file()
    assert_same_outputs(model_dir / "1" / "model.onnx", fixed_batch_package / "model.onnx", batch=1)

    refused = invoke(
        "export", "triton", fixed_batch_package, "-o", tmp_path / "other", "--max-batch-size", "8"
    )
    assert "fixed first dim 1" in one_error_line(refused)
    assert "--max-batch-size 0" in refused.output
    assert not (tmp_path / "other").exists()


def test_rank_one_batched_tensor_is_declared_1_with_an_empty_reshape() -> None:
    options = TritonExportOptions(max_queue_delay_microseconds=0)
    config = triton_model_config(
        "m",
        [TensorSpec("ids", "int64", ("batch", "seq"))],
        [TensorSpec("score", "float32", ("batch",)), TensorSpec("text", "str", ("batch", 2))],
        options,
    )
    parsed = text_format.Parse(config.to_pbtxt(), mc.ModelConfig())
    assert parsed.max_batch_size == 32
    score, text = parsed.output
    assert list(score.dims) == [1]
    assert score.HasField("reshape")
    assert list(score.reshape.shape) == []
    assert text.data_type == mc.TYPE_STRING
    assert list(text.dims) == [2]
    assert not text.HasField("reshape")
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 0


def test_missing_package_is_one_line_exit_2(tmp_path: Path) -> None:
    line = one_error_line(invoke("export", "triton", tmp_path / "nope", "-o", tmp_path / "repo"))
    assert "does not exist" in line
    assert not (tmp_path / "repo").exists()


def test_non_empty_repository_is_untouched_without_force(fixed_batch_package: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "other_model").mkdir(parents=True)
    (repo / "other_model" / "config.pbtxt").write_text('name: "other_model"\n', encoding="utf-8")
    line = one_error_line(invoke("export", "triton", fixed_batch_package, "-o", repo))
    assert "not empty" in line
    assert "--force" in line
    assert [p.relative_to(repo).as_posix() for p in sorted(repo.rglob("*"))] == [
        "other_model",
        "other_model/config.pbtxt",
    ]
    assert (repo / "other_model" / "config.pbtxt").read_text(encoding="utf-8") == 'name: "other_model"\n'
    assert [p.name for p in tmp_path.iterdir()] == ["repo"], "no staging directory left behind"

    result = invoke("export", "triton", fixed_batch_package, "-o", repo, "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == ["fixed_batch_v1_demo"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_option_and_dtype_errors_are_one_line(fixed_batch_package: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert "--kind is cpu" in one_error_line(
        invoke("export", "triton", fixed_batch_package, "-o", repo, "--tensorrt-fp16", "--kind", "cpu")
    )
    assert "variant 'int4'" in one_error_line(
        invoke("export", "triton", fixed_batch_package, "-o", repo, "--variants", "fp32,int4")
    )
    graph = helper.make_graph(
        [helper.make_node("Identity", ["z"], ["w"])],
        "complex",
        [helper.make_tensor_value_info("z", TensorProto.COMPLEX64, ["batch", 2])],
        [helper.make_tensor_value_info("w", TensorProto.COMPLEX64, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    package = write_package(tmp_path / "complex", "complex", model)
    line = one_error_line(invoke("export", "triton", package, "-o", repo))
    assert "tensor 'z' has dtype complex64" in line
    assert "Triton has no data type" in line
    assert not repo.exists()


def test_differently_named_first_axes_are_not_one_batch_axis_and_names_are_sanitised() -> None:
    config = triton_model_config(
        "m",
        [TensorSpec("image", "float32", ("batch", 3))],
        [TensorSpec("boxes", "float32", ("num_boxes", 4))],
        TritonExportOptions(),
    )
    parsed = text_format.Parse(config.to_pbtxt(), mc.ModelConfig())
    assert parsed.max_batch_size == 0
    assert [list(t.dims) for t in (*parsed.input, *parsed.output)] == [[-1, 3], [-1, 4]]
    assert not parsed.HasField("dynamic_batching")
    assert triton_model_name("my model/v2") == "my_model_v2"
    assert triton_model_name(".hidden") == "_hidden"
    assert triton_model_name("") == "model"
