"""Closed-loop HTTP load for the serving benchmarks: every request once, from client threads that start together."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# a request's (status, answer body, index in the requests) -> what is wrong with the answer, or None
AnswerCheck = Callable[[int, bytes, int], str | None]


@dataclass(frozen=True)
class Fired:
    """What one `post_all` saw: wall seconds from the start signal to the last answer, each request's latency
    (ms, client side) and the answers its check refused."""

    seconds: float
    latencies_ms: tuple[float, ...]
    failures: tuple[str, ...]


def post_all(
    host: str,
    port: int,
    path: str,
    requests: Sequence[tuple[bytes, Mapping[str, str]]],
    clients: int,
    check: AnswerCheck,
    timeout: float = 300,
) -> Fired:
    """POST every (body, headers) in `requests` to `path` once, from `clients` threads over keep-alive
    connections (client i sends requests i, i + clients, ...), all released together."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(first: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        mine = []
        start.wait()
        for index in range(first, len(requests), clients):
            body, headers = requests[index]
            began = time.perf_counter()
            connection.request("POST", path, body, dict(headers))
            response = connection.getresponse()
            answer = response.read()
            mine.append((time.perf_counter() - began) * 1e3)
            problem = check(response.status, answer, index)
            if problem is not None:
                with lock:
                    failures.append(problem)
        connection.close()
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(clients) as pool:
        done = [pool.submit(client, i) for i in range(clients)]
        start.wait()
        began = time.perf_counter()
        for future in done:
            future.result()
        seconds = time.perf_counter() - began
    return Fired(seconds, tuple(latencies), tuple(failures))
