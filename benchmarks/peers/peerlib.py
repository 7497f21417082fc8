"""What every side of ``benchmarks/peers.py`` shares: the network guard and the latency timer.

Imported by path (no package) from both virtual environments, so it needs only the standard
library, torch and onnxruntime: the toolkit's latency and the peers' are measured by the same
function on the same input.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ATTEMPTS: list[str] = []  # every refused connection or name look-up, for the run's summary


def block_network() -> list[str]:
    """Refuse outbound connections and DNS look-ups in this process; the list records tries.

    A peer that would fetch a font, weights or a dataset at run time then fails on the spot
    (or falls back, as Ultralytics' font check does) instead of hanging or downloading.
    """
    connect = socket.socket.connect

    def refused_connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            ATTEMPTS.append(f"connect {address}")
            raise OSError(f"peers benchmark: network blocked ({address})")
        return connect(self, address)

    def refused_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        ATTEMPTS.append(f"getaddrinfo {host}")
        raise socket.gaierror(f"peers benchmark: network blocked ({host})")

    socket.socket.connect = refused_connect  # type: ignore[method-assign]
    socket.getaddrinfo = refused_lookup  # type: ignore[assignment]
    return ATTEMPTS


def median_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> dict[str, float]:
    """Median / min / max wall time (ms) of ``fn`` over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "repeats": repeats,
    }


def latency(
    network: Any, onnx_path: Path, size: int, threads: int, warmup: int, repeats: int
) -> dict[str, Any]:
    """Batch-1 latency of ``network`` (eager torch) and of its ONNX file (onnxruntime, CPU),
    both on one (1, 3, size, size) input with ``threads`` threads, and how far they disagree.
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: image.numpy()}
    memory_format = getattr(network, "peers_memory_format", torch.contiguous_format)
    torch_input = image.contiguous(memory_format=memory_format)
    with torch.inference_mode():
        eager = median_ms(lambda: network(torch_input), warmup, repeats)
        first = _first_tensor(network(torch_input))
    onnx = median_ms(lambda: session.run(None, feed), warmup, repeats)
    onnx_first = session.run(None, feed)[0]
    same_shape = tuple(first.shape) == tuple(onnx_first.shape)
    difference = float(np.abs(first.float().numpy() - onnx_first).max()) if same_shape else None
    return {
        "input": [1, 3, size, size],
        "threads": threads,
        "torch": eager,
        "onnxruntime": onnx,
        "max_abs_diff_first_output": difference,
    }


def _first_tensor(outputs: Any) -> Any:
    """The first tensor of a (nested) output structure: what the ONNX graph's output 0 holds."""
    while not hasattr(outputs, "shape"):
        outputs = next(iter(outputs.values())) if isinstance(outputs, dict) else outputs[0]
    return outputs


def serve(commands: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """A side's entry point, ``script.py COMMAND PAYLOAD_JSON``: runs the command and writes its
    result to the payload's ``summary`` file, where ``benchmarks/peers.py`` reads it."""
    command, payload = sys.argv[1], json.loads(sys.argv[2])
    result = commands[command](payload)
    summary = Path(payload["summary"])
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(result, indent=1))
