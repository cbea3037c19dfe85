"""`edge serve --ray`: the same app on a local Ray instance (2 CPUs) with 2 replicas.

The single-process server's protocol checks (tritonclient binary and JSON, plain HTTP, text models, every
error case, the bounded load test) are imported from test_serve and run again here against Ray Serve's
proxy; then one replica is killed under load from 16 clients.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_serve import (  # noqa: F401 - imported tests run again here, against the Ray deployment
    _bert_feeds,
    _name,
    test_every_error_case_returns_its_code_and_a_json_error,
    test_health_metadata_and_config,
    test_load_of_400_requests_from_16_clients_loses_nothing,
    test_plain_http_binary_and_json_equal_runner,
    test_text_models_equal_the_pipelines,
    test_tritonclient_results_equal_runner,
)
from toolkit.cli import edge
from toolkit.errors import BadInputError
from toolkit.serve.kserve.protocol import decode_response, encode_request
from toolkit.serve.options import BatchOptions, ServeOptions
from toolkit.serve.ray_app import APP_NAME, DEPLOYMENT_NAME, RayOptions, deploy_on_ray, ray_application
from toolkit.serve.registry import LoadOptions

REPLICAS = 2


@dataclass(frozen=True)
class RayServer:
    """The Ray Serve proxy's base URL, shaped like test_serve's `Server` for the shared checks."""

    url: str

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _replica_actors() -> list[str]:
    import ray

    return sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == "serve" and entry["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#")
    )


def _running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return 0
    return int(app.deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING", 0))


@pytest.fixture(scope="module")
def server(bert_versions: Path, tiny_classifier_package: Path, minilm_package: Path) -> Iterator[RayServer]:
    """Same packages and limits as test_serve's main server, as 2 Ray Serve replicas on 2 local CPUs."""
    import ray
    from ray import serve

    ray_options = RayOptions(replicas=REPLICAS, num_cpus=0.5, local_cpus=2, port=_free_port())
    options = ServeOptions(
        batching=BatchOptions(max_batch=8, max_delay_ms=100), max_body_bytes=int(0.25 * 1024 * 1024)
    )
    application = ray_application(
        [bert_versions, tiny_classifier_package, minilm_package],
        LoadOptions(threads=1),
        options,
        ray_options,
    )
    try:
        url = deploy_on_ray(application, ray_options, options)
        yield RayServer(url)
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_missing_or_bad_options_give_one_line(
    monkeypatch: pytest.MonkeyPatch, tiny_bert_package: Path
) -> None:
    with pytest.raises(BadInputError, match="--replicas must be at least 1"):
        RayOptions(replicas=0)
    with pytest.raises(BadInputError, match="--autoscale takes MIN:MAX"):
        RayOptions(autoscale=(3, 1))
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("ray") else real_find_spec(name, *a),
    )
    result = CliRunner().invoke(edge, ["serve", str(tiny_bert_package), "--ray"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --ray needs Ray Serve, which is not installed; install it with pip install 'edge-toolkit[ray]'"
    )


def test_two_replicas_each_hold_their_own_runner(server: RayServer) -> None:
    assert _running_replicas() == REPLICAS
    assert len(_replica_actors()) == REPLICAS


def test_killing_a_replica_under_load_keeps_answering(server: RayServer, tiny_bert_package: Path) -> None:
    """16 clients, 320 requests; one replica is killed after the first 80 answers. None may hang."""
    import ray

    bert = _name(tiny_bert_package)
    host, port = server.address.rsplit(":", 1)
    total, clients, kill_after = 320, 16, 80
    outcomes: dict[str, list[int]] = {}
    lock = threading.Lock()
    killed: list[str] = []

    def client(index: int) -> None:
        for n in range(index, total, clients):
            request_id = f"req-{n}"
            body = encode_request(
                _bert_feeds([3 + n % 9], seed=n), binary=False, binary_output=False, request_id=request_id
            )
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                connection.request("POST", f"/v2/models/{bert}/infer", body.body, body.headers())
                response = connection.getresponse()
                data = response.read()
                status = response.status
                if status == 200:
                    header, _ = decode_response(data, None)
                    assert header["id"] == request_id
            except (
                ConnectionError,
                http.client.HTTPException,
            ) as exc:  # a dropped connection counts as a 5xx
                status = 599
                print(f"{request_id}: {type(exc).__name__}")
            finally:
                connection.close()
            with lock:
                outcomes.setdefault(request_id, []).append(status)
                if len(outcomes) == kill_after and not killed:
                    killed.append(_replica_actors()[0])
                    ray.kill(ray.get_actor(killed[0], namespace="serve"), no_restart=True)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.monotonic() - started

    assert killed, "the replica was never killed"
    assert sorted(outcomes) == sorted(f"req-{n}" for n in range(total))  # every request answered once
    assert all(len(statuses) == 1 for statuses in outcomes.values())
    codes = [statuses[0] for statuses in outcomes.values()]
    ok = codes.count(200)
    failed = [code for code in codes if code != 200]
    # only server-side failures: 5xx, or 408 from Ray's proxy when its deadline passed on a dead replica
    assert all(code >= 500 or code == 408 for code in failed), failed
    assert ok >= total - clients, f"{len(failed)} failed: more than the requests in flight on one replica"
    print(json.dumps({"requests": total, "ok": ok, "5xx": len(failed), "seconds": round(elapsed, 1)}))

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        replicas = _replica_actors()
        if _running_replicas() == REPLICAS and len(replicas) == REPLICAS and killed[0] not in replicas:
            break
        time.sleep(1)
    assert _running_replicas() == REPLICAS, "Ray did not bring the killed replica back"
    assert killed[0] not in _replica_actors()
