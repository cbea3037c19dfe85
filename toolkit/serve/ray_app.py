"""The `edge serve` app on Ray Serve: the same Open Inference Protocol routes, one `Runner` set per replica.

Ray is an optional extra (``edge-toolkit[ray]``); it is imported inside these functions only. Each replica
builds its own `ModelRegistry` (and so its own onnxruntime sessions) when Ray starts it, through the ASGI
builder form of ``serve.ingress``: nothing heavier than package paths and frozen options is pickled.

Batching: every replica runs the app's own dynamic batcher (`BatchingScheduler`), which merges requests for
the same model up to ``max_batch`` / ``max_delay_ms`` and pads sequences exactly as the single-process
server does. That is the job Ray Serve's ``@serve.batch`` does for a deployment method; stacking both would
batch twice, so the app's batcher is the one used, inside each replica.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import BadInputError
from toolkit.manifest import ModelPackage
from toolkit.serve.options import ServeOptions
from toolkit.serve.registry import LoadOptions
from toolkit.serve.server import STOP_SIGNALS

__all__ = [
    "APP_NAME",
    "DEPLOYMENT_NAME",
    "PROXY_TIMEOUT_MARGIN_S",
    "RayOptions",
    "deploy_on_ray",
    "parse_autoscale",
    "ray_application",
    "require_ray",
    "undeploy",
    "wait_for_stop_signal",
]

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "edge"
APP_NAME = "edge"
PROXY_TIMEOUT_MARGIN_S = 5.0


@dataclass(frozen=True)
class RayOptions:
    """How the app is deployed on Ray Serve.

    `replicas` fixes the replica count; `autoscale` (min, max) asks Ray Serve to scale between the bounds
    on ongoing requests instead. `num_cpus` / `num_gpus` are each replica's `ray_actor_options`.
    `address` joins an existing cluster (``ray://...`` or ``auto``); None starts a local Ray instance
    with `local_cpus` CPUs.
    """

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    max_ongoing_requests: int = 32
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    address: str | None = None
    local_cpus: int | None = None
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise BadInputError(f"--replicas must be at least 1, got {self.replicas}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 0 <= low <= high or high < 1:
                raise BadInputError(
                    f"--autoscale takes MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, got {low}:{high}"
                )
        if self.max_ongoing_requests < 1:
            raise BadInputError(f"--max-ongoing-requests must be at least 1, got {self.max_ongoing_requests}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise BadInputError("--replica-cpus and --replica-gpus must be 0 or more")

    def deployment_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Deployment.options``."""
        scaling: dict[str, Any] = (
            {
                "autoscaling_config": {
                    "min_replicas": self.autoscale[0],
                    "max_replicas": self.autoscale[1],
                    "target_ongoing_requests": max(1, self.max_ongoing_requests // 2),
                }
            }
            if self.autoscale is not None
            else {"num_replicas": self.replicas}
        )
        return {
            **scaling,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }


def require_ray() -> None:
    """A one-line error naming the extra when Ray Serve is not installed."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise BadInputError(
            "--ray needs Ray Serve, which is not installed; install it with pip install 'edge-toolkit[ray]'"
        )


def _build_asgi_app(paths: tuple[str, ...], load: LoadOptions, options: ServeOptions) -> Any:
    """Runs on each replica: its own registry, sessions and batcher (and generators)."""
    from toolkit.serve.app import build_serving_app

    return build_serving_app(paths, load, options).app


def ray_application(
    paths: Sequence[str | Path],
    load: LoadOptions | None = None,
    options: ServeOptions | None = None,
    ray_options: RayOptions | None = None,
) -> Any:
    """The Ray Serve application (``serve.run`` it) serving `paths` over the Open Inference Protocol."""
    require_ray()
    from ray import serve

    # Every package is checked here, so a typo is one line before any replica starts.
    resolved = tuple(str(ModelPackage.open(path).path.resolve()) for path in paths)
    if not resolved:
        raise BadInputError("no models to serve; pass at least one model package directory")
    load = load or LoadOptions()
    options = options or ServeOptions()
    ray_options = ray_options or RayOptions()

    def build() -> Any:
        return _build_asgi_app(resolved, load, options)

    class EdgeReplica:
        """One replica of the edge-toolkit server; the routes come from the ASGI app `build` returns."""

    deployment = serve.deployment(name=DEPLOYMENT_NAME)(serve.ingress(build)(EdgeReplica))
    return deployment.options(**ray_options.deployment_options()).bind()


def parse_autoscale(text: str) -> tuple[int, int]:
    """``1:4`` -> (1, 4); anything else is a one-line error."""
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise BadInputError(f"--autoscale takes MIN:MAX replica counts like 1:4, got '{text}'")
    return int(low), int(high)


def deploy_on_ray(application: Any, ray_options: RayOptions, options: ServeOptions | None = None) -> str:
    """Start (or join) Ray and Ray Serve's HTTP proxy, deploy `application`, return its base URL.

    A request whose replica dies under it can wait in Ray's proxy until Ray notices, which on a loaded
    machine took over a minute; so the proxy gets its own deadline, `PROXY_TIMEOUT_MARGIN_S` past the
    app's timeout (the app's 504 comes first when the replica is alive). Past it, Ray answers 408.
    """
    import ray
    from ray import serve

    timeout_s = (options or ServeOptions()).timeout_s

    port = ray_options.port or _free_port(ray_options.host)
    if not ray.is_initialized():
        if ray_options.address is None:
            ray.init(num_cpus=ray_options.local_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=ray_options.address, log_to_driver=False)
    http_options: dict[str, Any] = {"host": ray_options.host, "port": port}
    if timeout_s is not None:
        http_options["request_timeout_s"] = timeout_s + PROXY_TIMEOUT_MARGIN_S
    serve.start(http_options=http_options)
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
    host = f"[{ray_options.host}]" if ":" in ray_options.host else ray_options.host
    return f"http://{host}:{port}"


def undeploy(ray_options: RayOptions) -> None:
    """Remove the application; a Ray instance this process started goes too, a joined cluster stays up."""
    import ray
    from ray import serve

    if ray_options.address is None:
        # Ray Serve's shutdown is untyped; through a typed name so `mypy --strict` needs no ignore
        shutdown_serve: Callable[[], None] = serve.shutdown
        shutdown_serve()
        ray.shutdown()
    else:
        serve.delete(APP_NAME)


def wait_for_stop_signal() -> str:
    """Block until SIGINT or SIGTERM; the signal's name."""
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in STOP_SIGNALS}
    try:
        while not caught:
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return signal.Signals(caught[0]).name


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
