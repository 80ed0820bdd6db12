"""Stream audio to a stateful model served by ``kiln serve``: one sequence per stream, one request per 512-sample
chunk, the speech probability of each chunk back; the server keeps the model's state between chunks.

    python examples/vad/client.py [-m silero_vad] [-n STREAMS] [-s SECONDS] [-i http|grpc] [-u URL]

Each of ``-n`` streams (a synthetic voiced signal, different per stream) is sent over its own thread with its own
sequence id (START on the first chunk, END on the last), over gRPC streaming or HTTP. The probabilities are then
compared with the shipped model run in process over the whole signal with the state threaded by hand; prints
one line per stream and exits 1 if any differs (by more than 1e-4).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from typing import Any

import numpy as np

from kiln.examples.vad import MODEL, chunks, reference, synthetic_speech
from kiln.vision.cli import run
from kiln.vision.remote import DEFAULT_URLS, PROTOCOLS

TOLERANCE = 1e-4


def stream_http(url: str, model: str, sequence_id: int, signal: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    parts = chunks(signal)
    out = []
    for i, chunk in enumerate(parts):
        tensor = httpclient.InferInput("audio", [1, len(chunk)], "FP32")
        tensor.set_data_from_numpy(chunk[np.newaxis])
        result = client.infer(
            model, [tensor], sequence_id=sequence_id, sequence_start=i == 0, sequence_end=i == len(parts) - 1
        )
        out.append(float(result.as_numpy("probability")[0, 0]))
    return np.array(out, np.float32)


def stream_grpc(url: str, model: str, sequence_id: int, signal: np.ndarray) -> np.ndarray:
    """All chunks on one gRPC stream, sent without waiting; answers matched by request id."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    parts = chunks(signal)
    try:
        for i, chunk in enumerate(parts):
            tensor = grpcclient.InferInput("audio", [1, len(chunk)], "FP32")
            tensor.set_data_from_numpy(chunk[np.newaxis])
            client.async_stream_infer(
                model, [tensor], request_id=str(i), sequence_id=sequence_id, sequence_start=i == 0,
                sequence_end=i == len(parts) - 1,
            )  # fmt: skip
        out = np.zeros(len(parts), np.float32)
        for _ in parts:
            result, error = answers.get(timeout=60)
            if error is not None:
                raise error
            out[int(result.get_response().id)] = result.as_numpy("probability")[0, 0]
        return out
    finally:
        client.stop_stream()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default=MODEL)
    p.add_argument("-n", "--streams", type=int, default=4, help="concurrent streams (sequences)")
    p.add_argument("-s", "--seconds", type=float, default=3.0, help="audio per stream")
    p.add_argument("-i", "--protocol", choices=PROTOCOLS, default="grpc")
    p.add_argument("-u", "--url", help="server address (default 127.0.0.1:8000 for http, :8001 for grpc)")
    args = p.parse_args(argv)
    url = args.url or DEFAULT_URLS[args.protocol]
    send = stream_grpc if args.protocol == "grpc" else stream_http
    signals = [synthetic_speech(args.seconds, seed) for seed in range(args.streams)]
    results: dict[int, np.ndarray] = {}
    failures: list[str] = []

    def one(index: int) -> None:
        try:
            results[index] = send(url, args.model, 9000 + index, signals[index])
        except Exception as e:
            failures.append(f"stream {index}: {e}")

    def body() -> None:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise ValueError("; ".join(failures))
        for i, signal in enumerate(signals):
            expected = reference(signal)
            diff = float(np.abs(results[i] - expected).max())
            speech = float((results[i] > 0.5).mean())
            verdict = "same as in process" if diff <= TOLERANCE else "DIFFERENT"
            print(f"stream {i} (sequence {9000 + i}): {len(expected)} chunks, {speech:.0%} speech, max diff "
                  f"{diff:.1e}: {verdict}")  # fmt: skip
            if diff > TOLERANCE:
                failures.append(f"stream {i}")

    code = run(body)
    return 1 if failures else code


if __name__ == "__main__":
    sys.exit(main())
