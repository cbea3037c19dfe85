"""The low-memory profile (`--low-memory` on run, bench and serve): onnxruntime's CPU arena, memory-pattern planner
and pre-packed weight copies off, the same outputs."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner

import toolkit.runner as runner_module
from toolkit.cli import edge
from toolkit.manifest import ModelPackage
from toolkit.providers import ProviderConfig
from toolkit.runner import LOW_MEMORY, Runner
from toolkit.serve.registry import LoadOptions, ModelRegistry
from toolkit.tasks import task_for

LOW = ProviderConfig(providers=("cpu",), low_memory=True)


def _is_low_memory(options: ort.SessionOptions) -> bool:
    entries = {key: options.get_session_config_entry(key) for key in LOW_MEMORY}
    return (
        not options.enable_cpu_mem_arena and not options.enable_mem_pattern and set(entries.values()) == {"1"}
    )


def test_low_memory_pins_the_glibc_mmap_threshold() -> None:
    # without it, freed activations stay in glibc's heap with the arena off (see toolkit.runner)
    assert runner_module._fix_mmap_threshold() is (platform.libc_ver()[0] == "glibc")


def test_low_memory_runner_gives_the_same_outputs(bert_versions: Path) -> None:
    feeds = task_for(ModelPackage.open(bert_versions)).samples("held-out", 3)
    for variant in ("fp32", "int8"):
        low = Runner(bert_versions, variant=variant, config=LOW, threads=1)
        default = Runner(bert_versions, "cpu", variant=variant, threads=1)
        assert _is_low_memory(low.session.get_session_options())
        assert default.session.get_session_options().enable_cpu_mem_arena
        for feed in feeds:
            got, want = low.run(feed), default.run(feed)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], atol=1e-6)


def test_low_memory_flag_on_run_bench_and_serve(bert_versions: Path, tmp_path: Path) -> None:
    args = ["--json"]
    for name, value in (
        ("input_ids", [[1, 7, 8, 2]]),
        ("attention_mask", [[1] * 4]),
        ("token_type_ids", [[0] * 4]),
    ):
        np.save(tmp_path / f"{name}.npy", np.array(value, dtype=np.int64))
        args += ["--input", f"{name}={tmp_path / f'{name}.npy'}"]
    low = CliRunner().invoke(edge, ["run", str(bert_versions), *args, "--low-memory"])
    default = CliRunner().invoke(edge, ["run", str(bert_versions), *args])
    assert low.exit_code == 0, low.output
    assert json.loads(low.output)["outputs"] == json.loads(default.output)["outputs"]
    bench = CliRunner().invoke(
        edge,
        [
            "bench",
            str(bert_versions),
            "--batch",
            "1",
            "--seq",
            "8",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "--low-memory",
        ],
    )
    assert bench.exit_code == 0, bench.output
    registry = ModelRegistry.load([bert_versions], LoadOptions(config=LOW, threads=1))
    for model in registry:
        assert _is_low_memory(model.engine.runner.session.get_session_options())
    served = CliRunner().invoke(edge, ["serve", "--help"])
    assert "--low-memory" in served.output
