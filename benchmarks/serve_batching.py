"""`edge serve` with dynamic batching on vs off: MiniLM, batch-1 requests from 16 concurrent clients.

Run:  .venv/bin/python benchmarks/serve_batching.py  [--package out/minilm] [--requests 240] [--clients 16]
                                                      [--rounds 6] [--mode text|raw] [--threads 2]

Two `edge serve` processes run side by side on 127.0.0.1 with the same onnxruntime threads: batching on
(``--max-batch 32 --max-delay-ms 5``) and off (``--max-batch 1``). Both get the same requests, one
sentence each (3 to 40 words of ordinary English, so sequence lengths vary), sent by `--clients` threads
over keep-alive connections. The load alternates between the two servers round by round, so drift in a
shared machine's load hits both alike; only one server is busy at a time.

``--mode text`` (default): requests go to ``minilm-text`` as JSON with the sentence as BYTES, and the
server tokenizes; the answer is the 384-d embedding. ``--mode raw``: the client tokenizes and sends
binary INT64 tensors to ``minilm``, and gets ``last_hidden_state`` back as binary.

Printed: requests/s, p50 and p99 latency per request (client side), the mean batch the server ran (from
its /metrics), and the throughput ratio on/off.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from http_load import post_all
from minilm_package import open_or_convert_minilm
from prometheus_client.parser import text_string_to_metric_families

from toolkit import ModelPackage
from toolkit.serve.kserve.protocol import encode_request
from toolkit.tasks import task_for

SENTENCES = [
    "Good morning.",
    "The train was late again today.",
    "Could you send me the report before the meeting on Thursday?",
    "She planted tomatoes, basil and a row of sunflowers along the fence.",
    "Battery life matters more than raw speed on a small device.",
    "I think we should wait.",
    "The museum is closed on Mondays but open late on Fridays until nine in the evening.",
    "Our team shipped the new search feature after three weeks of testing with real users.",
    "Rain again.",
    "He forgot his umbrella, so he waited under the bridge until the storm had passed.",
    "The recipe calls for two cups of flour, one egg, a pinch of salt and some warm milk.",
    "Please restart the router and try connecting again.",
    "After the concert the crowd walked slowly back through the old town, talking about the encore "
    "and the long guitar solo that nobody had expected.",
    "Prices rose sharply in the second quarter.",
    "The library lends out telescopes as well as books.",
    "Which of these two laptops has the better keyboard for writing long documents?",
    "Thanks!",
    "The committee will publish its final recommendations in a report next spring, after hearing "
    "from farmers, scientists and local councils across the region.",
    "My sister moved to Lisbon last year and loves it.",
    "Turn left at the bakery, then take the second street on the right.",
]


@dataclass(frozen=True)
class Result:
    """One configuration's requests: throughput, latency percentiles, and the server's mean batch."""

    requests: int
    seconds: float
    latencies_ms: tuple[float, ...]
    mean_batch: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Server:
    """An `edge serve` subprocess on a free port."""

    def __init__(self, package: Path, args: Sequence[str], log: Path) -> None:
        self.log = log
        command = [sys.executable, "-c", "from toolkit.cli import main; main()", "serve", str(package)]
        command += ["--port", "0", "--json", *args]
        self.out = log.with_suffix(".out")
        with self.out.open("wb") as out, log.open("wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err)
        deadline = time.monotonic() + 180
        while not self.out.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"edge serve did not start: {log.read_text()}")
            time.sleep(0.1)
        self.url = json.loads(self.out.read_text().splitlines()[0])["url"]
        self.host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)

    def batches(self) -> tuple[float, float]:
        """(requests merged, batches run) so far, summed over the server's models."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        total = count = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "edge_batch_requests_sum":
                    total += sample.value
                elif sample.name == "edge_batch_requests_count":
                    count += sample.value
        return total, count

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def build_requests(
    package: ModelPackage, mode: str, count: int
) -> tuple[str, list[tuple[bytes, dict[str, str]]]]:
    """The path and the (body, headers) of each request, built once so clients only send."""
    name = package.manifest.name
    bodies = []
    if mode == "text":
        for i in range(count):
            payload = {
                "inputs": [
                    {
                        "name": "text",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [SENTENCES[i % len(SENTENCES)]],
                    }
                ]
            }
            bodies.append((json.dumps(payload).encode(), {"Content-Type": "application/json"}))
        return f"/v2/models/{name}-text/infer", bodies
    tokenizer = task_for(package).data.tokenizer
    for i in range(count):
        encoded = encode_request(tokenizer([SENTENCES[i % len(SENTENCES)]]), binary=True, binary_output=True)
        bodies.append((encoded.body, encoded.headers()))
    return f"/v2/models/{name}/infer", bodies


def fire(server: Server, path: str, bodies: Sequence[tuple[bytes, dict[str, str]]], clients: int) -> Result:
    """Send every body once from `clients` threads; wall time, per-request latency, mean batch."""
    before = server.batches()
    fired = post_all(
        server.host,
        server.port,
        path,
        bodies,
        clients,
        lambda status, _answer, _index: None if status == 200 else str(status),
        timeout=120,
    )
    after = server.batches()
    if fired.failures:
        raise SystemExit(f"{len(fired.failures)} requests failed: {sorted(set(fired.failures))}")
    batches = after[1] - before[1]
    return Result(
        len(bodies), fired.seconds, fired.latencies_ms, (after[0] - before[0]) / batches if batches else 0.0
    )


def merge(results: Sequence[Result]) -> Result:
    batches = sum(r.requests / r.mean_batch for r in results if r.mean_batch)
    return Result(
        sum(r.requests for r in results),
        sum(r.seconds for r in results),
        tuple(x for r in results for x in r.latencies_ms),
        sum(r.requests for r in results) / batches if batches else 0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--package", type=Path, default=Path("out/minilm"))
    parser.add_argument("--requests", type=int, default=240, help="requests per configuration per round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--mode", choices=("text", "raw"), default="text")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads in both servers")
    args = parser.parse_args()
    package = open_or_convert_minilm(args.package)
    path, bodies = build_requests(package, args.mode, args.requests)
    common = ["--threads", str(args.threads), "--variant", "fp32", "--max-queue", "4096", "-q"]
    configs = {
        "batching on (--max-batch 32 --max-delay-ms 5)": ["--max-batch", "32", "--max-delay-ms", "5"],
        "batching off (--max-batch 1)": ["--max-batch", "1"],
    }
    with tempfile.TemporaryDirectory(prefix="edge-serve-bench-") as folder:
        servers = {
            label: Server(package.path, [*common, *extra], Path(folder) / f"server{i}.log")
            for i, (label, extra) in enumerate(configs.items())
        }
        try:
            for server in servers.values():  # warm-up: sessions, allocator, connections
                fire(server, path, bodies[: 4 * args.clients], args.clients)
            runs: dict[str, list[Result]] = {label: [] for label in servers}
            for _ in range(args.rounds):
                for label, server in servers.items():
                    runs[label].append(fire(server, path, bodies, args.clients))
        finally:
            for server in servers.values():
                server.stop()
    results = {label: merge(r) for label, r in runs.items()}
    print(
        f"MiniLM fp32, {args.mode} requests of batch 1 ({'server-side' if args.mode == 'text' else 'client-side'} "
        f"tokenization), {args.clients} concurrent clients, {args.requests} requests x {args.rounds} rounds "
        f"per configuration, onnxruntime threads {args.threads} (not spinning, the server's default), loopback"
    )
    print(f"{'configuration':<48} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>11}")
    for label, result in results.items():
        print(
            f"{label:<48} {result.per_second:>8.1f} {result.percentile(50):>8.1f} "
            f"{result.percentile(99):>8.1f} {result.mean_batch:>11.1f}"
        )
    on, off = results.values()
    print(f"throughput ratio on/off: {on.per_second / off.per_second:.2f}x")
    print(
        "p50 ratio on/off: "
        f"{on.percentile(50) / off.percentile(50):.2f}x, p99 ratio on/off: {on.percentile(99) / off.percentile(99):.2f}x"
    )
    ratios = [a.per_second / b.per_second for a, b in zip(*runs.values(), strict=True)]
    print(
        f"per-round throughput ratios: {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}x)"
    )
    print(
        "per-round req/s: "
        + "; ".join(
            f"{label.split(' (')[0]}: " + ", ".join(f"{r.per_second:.0f}" for r in rs)
            for label, rs in runs.items()
        )
    )


if __name__ == "__main__":
    main()
