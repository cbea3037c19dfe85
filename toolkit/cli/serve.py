"""`edge serve`: model packages behind the Open Inference Protocol (KServe v2 REST), with dynamic batching."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from toolkit.cli.common import common_options, console, progress
from toolkit.cli.provider_options import provider_options
from toolkit.errors import BadInputError
from toolkit.preprocess import MAX_IMAGE_PIXELS
from toolkit.providers import ProviderConfig
from toolkit.serve.options import ServeOptions
from toolkit.tasks.encoder_decoder import DecodeLimits

if TYPE_CHECKING:
    from toolkit.serve.ray_app import RayOptions
    from toolkit.serve.registry import LoadOptions
    from toolkit.serve.server import ServerRun, TLSFiles

# toolkit.serve.access.API_KEY_ENV (not imported: the CLI loads the server's modules only when it serves)
API_KEY_ENV = "EDGE_API_KEY"

__all__ = ["serve_command"]


def _tensors(tensors: Any) -> str:
    return ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in tensors)


def _ready_lines(url: str, registry: Any, names: list[str]) -> list[str]:
    """The tensor models `names` (the generators' lines are `generator_ready_lines`)."""
    if not names:
        return [f"serving on {url}  (Ctrl+C or SIGTERM stops)"]
    lines = [f"serving on {url}  (KServe v2 REST: {url}/v2, metrics: {url}/metrics; Ctrl+C or SIGTERM stops)"]
    width = max(len(name) for name in names)
    for name in names:
        model = registry.get(name)
        versions = ",".join(registry.versions(name))
        lines.append(
            f"  {name:<{width}}  versions {versions}  {_tensors(model.inputs)} -> {_tensors(model.outputs)}"
        )
    return lines


def _ready_json(url: str, registry: Any) -> str:
    models = [
        {
            "name": name,
            "versions": list(registry.versions(name)),
            "platform": registry.get(name).platform,
            "inputs": [t.to_json() for t in registry.get(name).inputs],
            "outputs": [t.to_json() for t in registry.get(name).outputs],
        }
        for name in registry.names()
    ]
    return json.dumps({"url": url, "models": models})


@click.command("serve")
@click.argument("packages", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: any free port; the printed URL says which).",
)
@provider_options
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads per model."
)
@click.option(
    "--spin",
    is_flag=True,
    help="Let onnxruntime's threads spin between runs: a little lower latency on a machine of its own, "
    "cores taken from the request handling (and other processes) otherwise.",
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    help="Serve only this variant (repeatable). Default: every variant of each package, each as a model version.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batches each model runs at once: threads sharing the model's one onnxruntime session, not processes "
    "(one copy of each model in memory, and one queue per model so batches fill). For throughput under many "
    "clients, --threads 1 --workers CORES (no core waits on another inside a run); for one request's latency, "
    "the default.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Rows merged into one batch at most; 1 turns dynamic batching off.",
)
@click.option(
    "--max-delay-ms",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="How long a batch waits for more requests after its oldest one arrived.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Requests that may wait per model; one more is answered 503 at once.",
)
@click.option(
    "--timeout-ms",
    type=click.FloatRange(min=0),
    default=30000,
    show_default=True,
    help="Per-request limit on queueing plus running, answered 504 after it; 0: no limit.",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=64,
    show_default=True,
    help="Largest request body accepted (after decompression); 413 above it.",
)
@click.option(
    "--max-request-rows",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Rows (texts, images, batch entries) one request may hold; 413 above it.",
)
@click.option(
    "--max-request-tokens",
    type=click.IntRange(min=1),
    default=8192,
    show_default=True,
    help="Rows x sequence length one request may hold after tokenizing; 413 above it. Bounds the memory "
    "one small request can make the server allocate.",
)
@click.option(
    "--truncate/--no-truncate",
    default=True,
    show_default=True,
    help="/v1/embeddings: cut an input longer than the model's positions to them (as sentence-transformers "
    "does, listed in usage.truncated_inputs); --no-truncate answers it 400.",
)
@click.option(
    "--max-image-pixels",
    type=click.IntRange(min=1),
    default=MAX_IMAGE_PIXELS,
    show_default=True,
    help="Pixels (width x height) an image sent to a NAME-image model may declare, checked from its header "
    "before it is decoded; 400 above it.",
)
@click.option(
    "--max-beam-width",
    type=click.IntRange(min=1),
    default=DecodeLimits.max_beam_width,
    show_default=True,
    help="Largest num_beams a request to an encoder-decoder (NAME-audio, NAME-text) may ask for; 400 above it.",
)
@click.option(
    "--max-n",
    type=click.IntRange(min=1),
    default=ServeOptions.max_n,
    show_default=True,
    help="Largest OpenAI 'n' (completions of one prompt, sharing its prefill) a generation request may ask "
    "for; 400 above it.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Largest max_new_tokens a request to an encoder-decoder may ask for; 400 above it. "
    "Default: the decoder's positions.",
)
@click.option(
    "--body-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Time a request body may take to arrive; 408 after it (a body shorter than its Content-Length).",
)
@click.option(
    "--shutdown-timeout-s",
    type=click.FloatRange(min=0),
    default=None,
    help="How long SIGTERM or Ctrl+C lets in-flight requests run before cutting them (streams end with "
    "finish_reason 'abort', others get 503; the exit code is then 128+signal). Default: --timeout-ms + 5 s.",
)
@click.option(
    "--api-key",
    envvar=API_KEY_ENV,
    default=None,
    help=f"Require 'Authorization: Bearer KEY' on every route but /v2/health/* (401 otherwise); "
    f"also read from ${API_KEY_ENV}, which keeps the key out of the process list.",
)
@click.option(
    "--ssl-certfile",
    type=click.Path(dir_okay=False),
    default=None,
    help="Serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile.",
)
@click.option(
    "--ssl-keyfile", type=click.Path(dir_okay=False), default=None, help="The certificate's PEM key."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Once ready, print the URL and models as one JSON line."
)
@click.option(
    "--ray", "on_ray", is_flag=True, help="Deploy on Ray Serve (pip install 'edge-toolkit[ray]') instead."
)
@click.option(
    "--address",
    default=None,
    help="With --ray: the Ray cluster to join (auto, ray://host:10001); default: start a local one.",
)
@click.option(
    "--replicas", type=click.IntRange(min=1), default=1, show_default=True, help="With --ray: replica count."
)
@click.option(
    "--autoscale",
    default=None,
    metavar="MIN:MAX",
    help="With --ray: let Ray Serve scale between MIN and MAX replicas instead of --replicas.",
)
@click.option(
    "--max-ongoing-requests",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="With --ray: requests one replica holds at once (Ray queues the rest at the proxy).",
)
@click.option(
    "--replica-cpus",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="With --ray: CPUs per replica.",
)
@click.option(
    "--replica-gpus",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="With --ray: GPUs per replica.",
)
@common_options
def serve_command(
    packages: tuple[str, ...],
    host: str,
    port: int,
    provider_config: ProviderConfig,
    threads: int | None,
    spin: bool,
    variants: tuple[str, ...],
    workers: int,
    max_batch: int,
    max_delay_ms: float,
    max_queue: int,
    timeout_ms: float,
    max_body_mb: float,
    max_request_rows: int,
    max_request_tokens: int,
    max_image_pixels: int,
    max_beam_width: int,
    max_n: int,
    max_new_tokens: int | None,
    truncate: bool,
    body_timeout_s: float,
    shutdown_timeout_s: float | None,
    api_key: str | None,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    as_json: bool,
    on_ray: bool,
    address: str | None,
    replicas: int,
    autoscale: str | None,
    max_ongoing_requests: int,
    replica_cpus: float,
    replica_gpus: float,
) -> None:
    """Serve model PACKAGES over the Open Inference Protocol (KServe v2 REST, Triton binary tensors).

    Each package is a model named as in its edge.json, its variants are the model's versions (fp32 the
    default); packages with a text pipeline also serve NAME-text, which takes BYTES text. Requests for
    one model are merged into batches (--max-batch, --max-delay-ms). Errors are JSON {"error": ...}:
    400 bad request, 401 no or wrong API key, 404 unknown model, 408 body too slow, 413 body, rows or
    tokens over the limit, 503 queue full, 504 timeout. SIGTERM or Ctrl+C stops accepting, lets in-flight
    requests finish (up to --shutdown-timeout-s), and exits 0; requests still running then are cut and the
    exit code is 128+signal; a second signal answers waiting requests 503 and exits at once.
    """
    from toolkit.serve.options import BatchOptions

    options = ServeOptions(
        BatchOptions(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue, workers=workers),
        timeout_s=timeout_ms / 1000 if timeout_ms else None,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        body_timeout_s=body_timeout_s,
        max_request_rows=max_request_rows,
        max_request_tokens=max_request_tokens,
        truncate=truncate,
        api_key=api_key or None,
        shutdown_timeout_s=shutdown_timeout_s,
        max_n=max_n,
    )
    tls = _tls_files(ssl_certfile, ssl_keyfile)
    if on_ray and (tls is not None or options.api_key is not None):
        raise BadInputError(
            "--api-key and --ssl-* apply to the built-in server; with --ray, configure them on Ray Serve's proxy"
        )
    load = _load_options(
        provider_config, threads, variants, spin, max_image_pixels, max_beam_width, max_new_tokens
    )
    if not on_ray:
        _serve_here(packages, load, options, host, port, tls, as_json)
        return
    ray_options = _ray_options(
        replicas, autoscale, max_ongoing_requests, replica_cpus, replica_gpus, address, host, port
    )
    _serve_on_ray(packages, load, options, ray_options, as_json)


def _ray_options(
    replicas: int,
    autoscale: str | None,
    max_ongoing_requests: int,
    replica_cpus: float,
    replica_gpus: float,
    address: str | None,
    host: str,
    port: int,
) -> RayOptions:
    """The Ray Serve deployment the --ray options ask for."""
    from toolkit.serve.ray_app import RayOptions, parse_autoscale

    return RayOptions(
        replicas=replicas,
        autoscale=parse_autoscale(autoscale) if autoscale else None,
        max_ongoing_requests=max_ongoing_requests,
        num_cpus=replica_cpus,
        num_gpus=replica_gpus,
        address=address,
        host=host,
        port=port,
    )


def _load_options(
    provider_config: ProviderConfig,
    threads: int | None,
    variants: tuple[str, ...],
    spin: bool,
    max_image_pixels: int,
    max_beam_width: int,
    max_new_tokens: int | None,
) -> LoadOptions:
    """How the packages are loaded, and the limits of their served pipelines."""
    from toolkit.serve.registry import LoadOptions

    return LoadOptions(
        provider_config,
        threads,
        variants,
        spinning=spin,
        max_image_pixels=max_image_pixels,
        decode_limits=DecodeLimits(max_beam_width=max_beam_width, max_new_tokens=max_new_tokens),
    )


def _tls_files(certfile: str | None, keyfile: str | None) -> TLSFiles | None:
    """The certificate and key for HTTPS (None: HTTP); one without the other is a BadInputError."""
    from toolkit.serve.server import TLSFiles

    if (certfile is None) != (keyfile is None):
        raise BadInputError("--ssl-certfile and --ssl-keyfile go together; pass both (or neither for HTTP)")
    return TLSFiles(Path(certfile), Path(keyfile)) if certfile and keyfile else None


def _serve_on_ray(
    packages: tuple[str, ...],
    load: LoadOptions,
    options: ServeOptions,
    ray_options: RayOptions,
    as_json: bool,
) -> None:
    """Deploy on Ray Serve, print where, wait for a stop signal, then remove the application."""
    from toolkit.serve.ray_app import deploy_on_ray, ray_application, undeploy, wait_for_stop_signal

    with progress(not as_json) as say:
        say("deploying on Ray Serve")
        url = deploy_on_ray(ray_application(packages, load, options, ray_options), ray_options, options)
    scaling = (
        f"{ray_options.autoscale[0]}-{ray_options.autoscale[1]}"
        if ray_options.autoscale
        else ray_options.replicas
    )
    if as_json:
        click.echo(json.dumps({"url": url, "ray": True, "replicas": scaling}))
    else:
        click.echo(
            f"serving on {url} via Ray Serve ({scaling} replicas; KServe v2 REST: {url}/v2; Ctrl+C stops)"
        )
    try:
        stopped = wait_for_stop_signal()
    finally:
        undeploy(ray_options)
    if not as_json:
        console.print(f"stopped ({stopped}); the Ray Serve application was removed")


def _serve_here(
    packages: tuple[str, ...],
    load: LoadOptions,
    options: ServeOptions,
    host: str,
    port: int,
    tls: TLSFiles | None,
    as_json: bool,
) -> None:
    """Load the packages into one app (`toolkit.serve.app`), serve it with uvicorn until a signal, and exit
    as the shutdown went."""
    from toolkit.cli.generate import generator_ready_lines

    with progress(not as_json) as say:
        say(f"loading {len(packages)} package(s)")
        from toolkit.serve.app import build_serving_app
        from toolkit.serve.models import generator_models
        from toolkit.serve.server import bind, run_server

        serving = build_serving_app(packages, load, options)
        registry, app = serving.registry, serving.app
    generators = {model.name: model.generator for model in generator_models(registry)}
    sock = bind(host, port)

    def ready(url: str) -> None:
        if as_json:
            data = json.loads(_ready_json(url, registry))
            data["generators"] = list(generators)
            click.echo(json.dumps(data))
        else:
            for line in _ready_lines(url, registry, [n for n in registry.names() if n not in generators]):
                click.echo(line)
            for line in generator_ready_lines(url, generators):
                click.echo(line)

    run = run_server(
        app,
        sock,
        on_ready=ready,
        on_force=serving.abort,
        on_cut=serving.abort,
        graceful_timeout_s=options.grace_s,
        tls=tls,
    )
    _exit_as_stopped(run, options.grace_s, as_json)


def _exit_as_stopped(run: ServerRun, grace_s: float, as_json: bool) -> None:
    """Say how the server stopped; exit 128+signal when requests were cut or a second signal forced it."""
    if run.forced:
        # a second signal: waiting requests were answered 503; do not wait for a model run on a worker thread
        console.print(f"stopped at once ({run.signal}, twice); waiting requests were answered 503")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signal.Signals[run.signal or "SIGINT"].value)
    stopped = f"stopped{f' ({run.signal})' if run.signal else ''}"
    if run.cut:
        console.print(
            f"{stopped}: {run.cut} request(s) still running after the {grace_s:g} s grace period were cut "
            "(streams ended with finish_reason 'abort', the others were answered 503)",
            soft_wrap=True,
        )
        sys.exit(128 + signal.Signals[run.signal or "SIGTERM"].value)
    if not as_json:
        console.print(f"{stopped}; every in-flight request was answered")
