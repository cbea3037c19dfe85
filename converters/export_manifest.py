"""The manifest of a fresh export: one fp32 variant, made by ``export``, described by what the export produced.

Every converter (`converters.conversion` for single-pass models, `converters.causal_lm`, `converters.seq2seq`)
hands a `FreshExport` to `fresh_manifest`; the sections only some families have (labels, subgraphs, the
generation or seq2seq contract) are optional fields of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from converters.sources import ResolvedSource
from toolkit.inspect import ModelInfo
from toolkit.manifest import (
    FP32_VARIANT,
    GenerationSpec,
    Manifest,
    Preprocessing,
    Seq2SeqSpec,
    Validation,
    Variant,
    tool_versions,
)

__all__ = ["FreshExport", "fresh_manifest"]


@dataclass(frozen=True)
class FreshExport:
    """What an export produced: its task, the source's content hash, the fp32 variant's main graph (`graph`, its
    inputs as the manifest records them), how the variant was made (`settings`) and validated, the exporter record,
    and the sections the family has. `size_bytes` is the variant's size on disk (None: the main graph's alone)."""

    task: str
    sha256: str
    graph: ModelInfo
    settings: Mapping[str, Any]
    validation: Validation
    exporter: Mapping[str, Any]
    preprocessing: Preprocessing | None = None
    labels: tuple[str, ...] | None = None
    subgraphs: Mapping[str, str] = field(default_factory=dict)
    size_bytes: int | None = None
    generation: GenerationSpec | None = None
    seq2seq: Seq2SeqSpec | None = None


def fresh_manifest(resolved: ResolvedSource, export: FreshExport) -> Manifest:
    """The manifest of `resolved` exported as `export`: its one variant, fp32, made by ``export``."""
    graph = export.graph
    return Manifest(
        name=resolved.name,
        task=export.task,
        source=resolved.source_info(export.sha256),
        inputs=graph.inputs,
        outputs=graph.outputs,
        opset=graph.opset,
        variants={
            FP32_VARIANT: Variant(
                name=FP32_VARIANT,
                file=graph.path.name,
                precision="fp32",
                method="export",
                size_bytes=graph.size_bytes if export.size_bytes is None else export.size_bytes,
                settings=export.settings,
                validation=export.validation,
                tool_versions=tool_versions(),
                subgraphs=export.subgraphs,
            )
        },
        preprocessing=export.preprocessing,
        labels=export.labels,
        exporter=export.exporter,
        generation=export.generation,
        seq2seq=export.seq2seq,
    )
