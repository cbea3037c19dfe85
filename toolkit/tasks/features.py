"""``features``: the raw model, feeds in and named outputs out; also every package whose task needs what it lacks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from toolkit.manifest import ModelPackage, TensorSpec
from toolkit.tasks.base import Outputs, Pipeline, Task
from toolkit.tasks.modality import Modality, modality_of

__all__ = ["PIPELINE", "TASK", "FeaturesTask", "ModelPipeline"]


class FeaturesTask(Task[Modality]):
    """No pre- or post-processing: the outputs are the results."""

    name = "features"

    def __init__(self, package: ModelPackage, specs: Sequence[TensorSpec] | None = None) -> None:
        super().__init__(package, specs)
        self.data = modality_of(package, self.inputs)  # samples follow whatever section the package has


class ModelPipeline(Pipeline[Modality]):
    """The raw model: `ModelPipeline.load(path).run(feeds)` (any package: every task has feeds)."""

    task_class = FeaturesTask

    def __call__(self, feeds: Mapping[str, Any]) -> Outputs:
        """Run the raw model."""
        return self.runner.run(feeds)


TASK = FeaturesTask
PIPELINE = ModelPipeline
