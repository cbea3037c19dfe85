"""The device side of `edge verify --target`: run a package's variants on saved feeds, report this host.

Started by `converters.target` inside an emulated device (``python -m toolkit.target_worker WORKDIR``), where only
`toolkit` and its runtime dependencies are installed. ``WORKDIR/request.json`` names the package and variants,
``WORKDIR/feeds.npz`` holds the held-out feeds (``<sample>/<input>``); this writes ``<variant>.npz``
(``<sample>/<output>``) for each variant and ``host.json`` (this host as `toolkit.host` sees it, the providers
onnxruntime used). Accuracy is computed by the caller, on the host that made the fp32 reference.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.host import current_host
from toolkit.manifest import ModelPackage
from toolkit.runner import Runner

__all__ = ["load_samples", "main", "save_samples"]


def save_samples(path: Path, samples: list[dict[str, np.ndarray]]) -> None:
    """Write a list of name->array dicts to one ``.npz`` as ``<index>/<name>``."""
    arrays: dict[str, Any] = {
        f"{i}/{name}": a for i, sample in enumerate(samples) for name, a in sample.items()
    }
    np.savez(path, **arrays)


def load_samples(path: Path) -> list[dict[str, np.ndarray]]:
    """The list `save_samples` wrote."""
    samples: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            index, _, name = key.partition("/")
            samples.setdefault(int(index), {})[name] = data[key]
    return [samples[i] for i in sorted(samples)]


def main(workdir: Path) -> None:
    """Run every requested variant of the package on the saved feeds; write outputs and this host's record."""
    request = json.loads((workdir / "request.json").read_text("utf-8"))
    package = ModelPackage.open(request["package"])
    feeds = load_samples(workdir / "feeds.npz")
    providers: list[str] = []
    for name in request["variants"]:
        runner = Runner(package.model_path(name), "cpu", variant=name, threads=request["threads"])
        save_samples(workdir / f"{name}.npz", [runner.run(f) for f in feeds])
        providers = list(runner.providers)
    host = current_host(providers[0] if providers else "cpu")
    (workdir / "host.json").write_text(json.dumps({"host": asdict(host), "providers": providers}), "utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
