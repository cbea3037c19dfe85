"""What serving a transcription costs over the library: `SpeechRecognizer.transcribe` of one WAV in-process vs
a POST of the same WAV's bytes to `edge serve`'s ``NAME-audio`` (binary tensor data, keep-alive connection).

Run from the repo root:  python benchmarks/serve_seq2seq.py PACKAGE [--seconds 2] [--rate 44100] [--channels 2]
                         [--runs 20] [--threads 1]

PACKAGE is a ``transcribe`` package (``edge convert whisper-tiny``, or any converted Whisper). The clip is
speech-like noise written as 16-bit PCM WAV at `--rate` with `--channels`, so the server resamples and mixes
down as the library does. The library and the server alternate run by run (drift in a shared machine's load
hits both alike), both greedy with the package's defaults and `--threads` onnxruntime threads. Printed: the
median wall time of each and their difference (HTTP, the body, WAV parsing and the scheduler's hand-off).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from toolkit import ModelPackage, SpeechRecognizer
from toolkit.serve.kserve.protocol import encode_request
from toolkit.tasks.modality import synthetic_waveform


def _wav(path: Path, seconds: float, rate: int, channels: int) -> Path:
    samples = 0.1 * synthetic_waveform(int(seconds * rate), rate, np.random.default_rng(3))
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(pcm[:, None], channels, axis=1).tobytes())
    return path


def _start(package: Path, threads: int, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    out = folder / "stdout.txt"
    command = [sys.executable, "-c", "from toolkit.cli import main; main()", "serve", str(package)]
    command += ["--port", "0", "--threads", str(threads), "--timeout-ms", "600000"]
    with out.open("wb") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = out.read_text(encoding="utf-8")
        if "serving on " in text:
            return process, text.split("serving on ", 1)[1].split()[0]
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit("edge serve did not start")


def main() -> None:
    """Time the library and the served model on the same clip and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    name = ModelPackage.open(args.package).manifest.name
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wav = _wav(folder / "clip.wav", args.seconds, args.rate, args.channels)
        recognizer = SpeechRecognizer.load(args.package, threads=args.threads)
        process, url = _start(args.package, args.threads, folder)
        try:
            encoded = encode_request({"audio": np.array([wav.read_bytes()], dtype=object)}, binary=True)
            host, port = url.removeprefix("http://").rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port), timeout=600)

            def post() -> None:
                connection.request("POST", f"/v2/models/{name}-audio/infer", encoded.body, encoded.headers()
                                   | {"Inference-Header-Content-Length": str(encoded.header_length)})  # fmt: skip
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    raise SystemExit(f"the server answered {response.status}: {body[:200]!r}")

            recognizer.transcribe([wav])
            post()
            library, served = [], []
            for _ in range(args.runs):
                started = time.perf_counter()
                recognizer.transcribe([wav])
                library.append(time.perf_counter() - started)
                started = time.perf_counter()
                post()
                served.append(time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(timeout=60)
    lib_ms, srv_ms = 1000 * statistics.median(library), 1000 * statistics.median(served)
    print(
        f"{name}: {args.seconds:g} s clip, {args.rate} Hz x {args.channels} ch, {args.runs} interleaved runs, "
        f"{args.threads} thread(s)"
    )
    print(f"  library SpeechRecognizer.transcribe  median {lib_ms:8.1f} ms")
    print(f"  edge serve {name}-audio (HTTP)     median {srv_ms:8.1f} ms  (+{srv_ms - lib_ms:.1f} ms)")


if __name__ == "__main__":
    main()
