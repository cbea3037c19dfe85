"""GPU tests: providers in use, node placement, outputs vs CPU, IO binding, CUDA graphs, TensorRT engine cache.

Each test skips, with onnxruntime's reason, where its provider cannot create a session (see gpu_support).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.gpu_support import needs
from toolkit import BadInputError, Runner
from toolkit.providers import CudaOptions, TensorRTOptions
from toolkit.runner import TRT_CACHE_DIR


def _text_feeds(batch: int = 4, seq: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 5000, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _image_feeds(package: Path, runner: Runner, batch: int = 2) -> dict[str, np.ndarray]:
    # the exported pixel_values leaves channels, height and width symbolic too: the model's config sizes them
    config = json.loads((package / "config.json").read_text(encoding="utf-8"))
    shape = (batch, config["num_channels"], config["image_size"], config["image_size"])
    return {runner.inputs[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@needs("cuda")
def test_cuda_runs_the_graph_and_matches_cpu(minilm_package: Path) -> None:
    cpu = Runner(minilm_package, "cpu")
    gpu = Runner(minilm_package, "cuda,cpu", strict=True)
    assert gpu.providers[0] == "cuda"
    assert gpu.fallbacks == ()
    placement = gpu.node_placement()
    assert placement.get("cuda", 0) > placement.get("cpu", 0), placement
    assert sum(placement.values()) == sum(cpu.node_placement().values())
    feeds = _text_feeds()
    want, got = cpu.run(feeds)["last_hidden_state"], gpu.run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)


@needs("cuda")
def test_cuda_io_binding_keeps_tensors_on_the_device(minilm_package: Path) -> None:
    cpu = Runner(minilm_package, "cpu")
    bound = Runner(minilm_package, "cuda", io_binding=True, strict=True)
    for seq in (32, 32, 16):
        feeds = _text_feeds(seq=seq)
        np.testing.assert_allclose(
            bound.run(feeds)["last_hidden_state"], cpu.run(feeds)["last_hidden_state"], atol=2e-3, rtol=1e-3
        )
    on_device = bound.run_on_device(_text_feeds())["last_hidden_state"]
    assert on_device.device_name().lower() == "cuda"
    assert on_device.shape() == [4, 32, 384]


@needs("cuda")
def test_cuda_graph_replays_fixed_shapes(minilm_package: Path) -> None:
    cpu = Runner(minilm_package, "cpu")
    # batch_size and sequence_length sized up front: MiniLM's shape computations then fold away, so every
    # node is on CUDA, which a capture needs (without the sizes onnxruntime refused it on an H200)
    sizes = dict(zip((d for d in cpu.inputs[0].shape if isinstance(d, str)), (4, 32), strict=True))
    graph = Runner(minilm_package, "cuda", cuda=CudaOptions(cuda_graph=True, graph_dims=sizes), strict=True)
    assert graph.config.io_binding
    for seed in range(3):
        feeds = _text_feeds()
        feeds["input_ids"] = np.roll(feeds["input_ids"], seed, axis=1)
        np.testing.assert_allclose(
            graph.run(feeds)["last_hidden_state"], cpu.run(feeds)["last_hidden_state"], atol=2e-3, rtol=1e-3
        )
    with pytest.raises(BadInputError, match="axis 1 must be 32; --cuda-graph-dim fixed it"):
        graph.run(_text_feeds(seq=16))


@needs("cuda")
def test_cuda_on_an_image_model(tiny_vit_package: Path) -> None:
    cpu = Runner(tiny_vit_package, "cpu")
    gpu = Runner(tiny_vit_package, "cuda", strict=True)
    feeds = _image_feeds(tiny_vit_package, cpu)
    assert gpu.node_placement().get("cuda", 0) > 0
    np.testing.assert_allclose(gpu.run(feeds)["logits"], cpu.run(feeds)["logits"], atol=1e-3, rtol=1e-3)


@needs("tensorrt")
def test_tensorrt_fp16_engine_cache_is_written_and_reused(minilm_package: Path, tmp_path: Path) -> None:
    package = Path(shutil.copytree(minilm_package, tmp_path / "minilm"))
    options = TensorRTOptions(fp16=True)
    messages: list[str] = []
    first = Runner(package, "tensorrt,cuda,cpu", tensorrt=options, strict=True, progress=messages.append)
    feeds = _text_feeds()
    got = first.run(feeds)["last_hidden_state"]
    assert first.providers[0] == "tensorrt"
    assert any("building the engine" in m for m in messages)
    assert first.startup.engine_cache == "built"
    cache = package / TRT_CACHE_DIR
    assert list(cache.glob("*.engine")), "engine cache written into the package"
    assert any("timing" in p.name.lower() for p in cache.iterdir()), "timing cache written"
    placement = first.node_placement()
    assert placement.get("tensorrt", 0) >= sum(placement.values()) // 2, placement

    want = Runner(package, "cpu").run(feeds)["last_hidden_state"]
    assert _cosine(got, want) > 0.999

    del first
    messages.clear()
    second = Runner(package, "tensorrt,cuda,cpu", tensorrt=options, strict=True, progress=messages.append)
    second.run(feeds)
    assert second.startup.engine_cache == "reused"
    assert any("cached engine" in m for m in messages)


@needs("tensorrt")
def test_tensorrt_on_an_image_model(tiny_vit_package: Path, tmp_path: Path) -> None:
    package = Path(shutil.copytree(tiny_vit_package, tmp_path / "vit"))
    cpu = Runner(package, "cpu")
    trt = Runner(package, "tensorrt,cuda,cpu", strict=True)
    feeds = _image_feeds(package, cpu)
    np.testing.assert_allclose(trt.run(feeds)["logits"], cpu.run(feeds)["logits"], atol=2e-3, rtol=1e-3)
    assert trt.node_placement().get("tensorrt", 0) > 0
