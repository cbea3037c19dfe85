"""Shared click options for execution providers and their CUDA / TensorRT settings.

Decorate a command with `provider_options`; it receives one `provider_config: ProviderConfig`
instead of a dozen flags, and passes it on as ``Runner(path, config=provider_config)``. Commands that
take their own ``--providers`` (``edge bench`` times each provider on its own row) use
`provider_tuning_options`: every flag but ``--providers``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from toolkit.providers import (
    CudaOptions,
    ProviderConfig,
    TensorRTOptions,
    parse_dim_range,
    parse_fixed_dim,
    provider_names,
    resolve_providers,
)

__all__ = ["build_provider_config", "placement_line", "provider_options", "provider_tuning_options"]

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = (
    click.option(
        "--providers",
        default="cpu",
        show_default=True,
        help="Execution providers in priority order, e.g. tensorrt,cuda,cpu.",
    ),
    click.option(
        "--strict", is_flag=True, help="Fail (exit 2) instead of falling back when a provider is unavailable."
    ),
    click.option(
        "--device-id", type=click.IntRange(min=0), default=0, show_default=True, help="GPU to run on."
    ),
    click.option("--io-binding", is_flag=True, help="Keep inputs and outputs on the device between runs."),
    click.option(
        "--cuda-graph", is_flag=True, help="CUDA: capture a CUDA graph (fixed shapes; implies --io-binding)."
    ),
    click.option(
        "--cuda-graph-dim",
        "cuda_graph_dims",
        multiple=True,
        metavar="NAME=SIZE",
        help="CUDA graph: the size of a symbolic dim, e.g. batch_size=4 (repeatable; each one is needed).",
    ),
    click.option(
        "--cudnn-algo-search",
        type=click.Choice(["EXHAUSTIVE", "HEURISTIC", "DEFAULT"], case_sensitive=False),
        default="EXHAUSTIVE",
        show_default=True,
        help="CUDA: how cuDNN picks convolution algorithms.",
    ),
    click.option("--trt-fp16", is_flag=True, help="TensorRT: allow fp16 kernels."),
    click.option(
        "--trt-int8", is_flag=True, help="TensorRT: int8 from the model's Q/DQ nodes (a QDQ variant)."
    ),
    click.option(
        "--trt-cache-dir",
        default=None,
        metavar="DIR",
        help="TensorRT: engine and timing cache folder (default: .trt_cache/ in the package).",
    ),
    click.option(
        "--no-trt-cache", is_flag=True, help="TensorRT: neither read nor write engine/timing caches."
    ),
    click.option(
        "--trt-dim",
        "trt_dims",
        multiple=True,
        metavar="NAME=MIN:OPT:MAX",
        help="TensorRT: profile range of a symbolic dim, e.g. batch_size=1:8:32 (repeatable).",
    ),
    click.option(
        "--trt-opt-level",
        type=click.IntRange(0, 5),
        default=None,
        help="TensorRT: builder optimisation level 0-5 (onnxruntime's default 3).",
    ),
    click.option(
        "--trt-workspace-mib",
        type=click.IntRange(min=1),
        default=None,
        help="TensorRT: maximum builder workspace in MiB.",
    ),
    click.option(
        "--low-memory",
        is_flag=True,
        help="Footprint over speed: no CPU memory arena, no memory-pattern planner, no pre-packed weight copies.",
    ),
)

_KEYS = (
    "providers",
    "strict",
    "device_id",
    "io_binding",
    "cuda_graph",
    "cuda_graph_dims",
    "cudnn_algo_search",
    "trt_fp16",
    "trt_int8",
    "trt_cache_dir",
    "no_trt_cache",
    "trt_dims",
    "trt_opt_level",
    "trt_workspace_mib",
    "low_memory",
)


def build_provider_config(
    providers: str = "cpu",
    strict: bool = False,
    device_id: int = 0,
    io_binding: bool = False,
    cuda_graph: bool = False,
    cuda_graph_dims: tuple[str, ...] = (),
    cudnn_algo_search: str = "EXHAUSTIVE",
    trt_fp16: bool = False,
    trt_int8: bool = False,
    trt_cache_dir: str | None = None,
    no_trt_cache: bool = False,
    trt_dims: tuple[str, ...] = (),
    trt_opt_level: int | None = None,
    trt_workspace_mib: int | None = None,
    low_memory: bool = False,
) -> ProviderConfig:
    """The `ProviderConfig` the provider flags describe (unknown providers are a BadInputError)."""
    names = tuple(s.short for s in resolve_providers(provider_names(providers)))
    cuda = CudaOptions(
        device_id=device_id,
        cudnn_conv_algo_search=cudnn_algo_search.upper(),  # type: ignore[arg-type]
        cuda_graph=cuda_graph,
        graph_dims=dict(parse_fixed_dim(text) for text in cuda_graph_dims),
    )
    tensorrt = TensorRTOptions(
        device_id=device_id,
        fp16=trt_fp16,
        int8=trt_int8,
        engine_cache=not no_trt_cache,
        timing_cache=not no_trt_cache,
        cache_dir=trt_cache_dir,
        builder_optimization_level=trt_opt_level,
        max_workspace_size=trt_workspace_mib * 1024 * 1024 if trt_workspace_mib else None,
        dims=dict(parse_dim_range(text) for text in trt_dims),
    )
    return ProviderConfig(names, strict, cuda, tensorrt, io_binding or cuda_graph, low_memory)


def _decorate(func: F, options: tuple[Callable[[Any], Any], ...], keys: tuple[str, ...]) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {key: kwargs.pop(key) for key in keys if key in kwargs}
        return func(*args, provider_config=build_provider_config(**values), **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return cast(F, wrapper)


def provider_options(func: F) -> F:
    """Add the provider flags to a command; it receives them as one ``provider_config`` argument."""
    return _decorate(func, _OPTIONS, _KEYS)


def provider_tuning_options(func: F) -> F:
    """Every provider flag but ``--providers``, for commands that choose providers themselves."""
    return _decorate(func, _OPTIONS[1:], _KEYS[1:])


def placement_line(placement: dict[str, int]) -> str:
    """``nodes: cuda 310, cpu 10 (of 320)``: where onnxruntime put the graph's nodes."""
    total = sum(placement.values())
    parts = ", ".join(f"{name} {count}" for name, count in placement.items())
    return f"nodes: {parts} (of {total})"
