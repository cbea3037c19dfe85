"""`edge serve --ray`: MiniLM batch-1 requests at concurrency 16, 1 replica vs 2 replicas, same CPU budget.

Run:  .venv/bin/python benchmarks/ray_replicas.py  [--package out/minilm] [--requests 240] [--rounds 3]

One local Ray instance (2 CPUs). The two configurations use the same onnxruntime threads in all: one
replica with 2 intra-op threads, or two replicas with 1 thread each, both with the app's dynamic batching
(``--max-batch 32 --max-delay-ms 5``). The deployment is switched between them round by round (the
switch is not timed), so drift in a shared machine's load hits both alike. Requests and the client load
are the ones of benchmarks/serve_batching.py (server-side tokenization, ``minilm-text``).
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request
from pathlib import Path

from minilm_package import open_or_convert_minilm
from serve_batching import Result, build_requests, fire, merge

from toolkit.serve.options import BatchOptions, ServeOptions
from toolkit.serve.ray_app import RayOptions, deploy_on_ray, ray_application
from toolkit.serve.registry import LoadOptions


class RayTarget:
    """Ray Serve's proxy, shaped like serve_batching's `Server` for `fire` (batch sizes are per replica: not read)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)

    def batches(self) -> tuple[float, float]:
        return 0.0, 0.0


def _deploy(package: Path, replicas: int, threads: int, port: int) -> RayTarget:
    options = RayOptions(replicas=replicas, num_cpus=0.5, local_cpus=2, port=port, max_ongoing_requests=64)
    application = ray_application(
        [package],
        LoadOptions(threads=threads, variants=("fp32",)),
        ServeOptions(batching=BatchOptions(max_batch=32, max_delay_ms=5, max_queue=4096)),
        options,
    )
    target = RayTarget(deploy_on_ray(application, options))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        from ray import serve

        app = serve.status().applications.get("edge")
        running = app.deployments["edge"].replica_states.get("RUNNING", 0) if app else 0
        if running == replicas and len(app.deployments["edge"].replica_states) == 1:  # old replicas gone
            break
        time.sleep(0.5)
    with urllib.request.urlopen(target.url + "/v2/health/ready", timeout=30) as response:
        assert response.status == 200
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--package", type=Path, default=Path("out/minilm"))
    parser.add_argument("--requests", type=int, default=240, help="requests per configuration per round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    package = open_or_convert_minilm(args.package)
    path, bodies = build_requests(package, "text", args.requests)
    configs = {"1 replica x 2 threads": (1, 2), "2 replicas x 1 thread": (2, 1)}
    runs: dict[str, list[Result]] = {label: [] for label in configs}
    import ray
    from ray import serve

    try:
        for _ in range(args.rounds):
            for label, (replicas, threads) in configs.items():
                target = _deploy(package.path.resolve(), replicas, threads, args.port)
                fire(target, path, bodies[: 4 * args.clients], args.clients)  # warm-up
                runs[label].append(fire(target, path, bodies, args.clients))
    finally:
        serve.shutdown()
        ray.shutdown()
    results = {label: merge(r) for label, r in runs.items()}
    print(
        f"MiniLM fp32 on Ray Serve (local, 2 CPUs), batch-1 text requests, {args.clients} concurrent clients, "
        f"{args.requests} requests x {args.rounds} rounds per configuration, dynamic batching in each replica"
    )
    print(f"{'configuration':<26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for label, result in results.items():
        print(
            f"{label:<26} {result.per_second:>8.1f} {result.percentile(50):>8.1f} {result.percentile(99):>8.1f}"
        )
    one, two = results.values()
    ratios = [b.per_second / a.per_second for a, b in zip(*runs.values(), strict=True)]
    print(
        f"throughput ratio 2 replicas / 1 replica: {two.per_second / one.per_second:.2f}x "
        f"(per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}x)"
    )


if __name__ == "__main__":
    main()
