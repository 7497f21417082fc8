"""ONNX export of a task's inference graph, and an onnxruntime runner that feeds the same decode.

Only the network (``model(images)``) is exported, with a dynamic batch dimension. Whatever ONNX
cannot express well (NMS with per-image counts, COCO formatting, un-letterboxing, arg-max with
sub-pixel refinement) stays in the task's ``decode`` and is shared by both engines: the runner
returns the outputs in the torch structure (dicts, tuples, ``None`` entries), so
``model.decode(runner(images), batch)`` works unchanged.

Every export is checked against torch before it is written, and the check travels in the file's
metadata (``vision_tasks`` in ``metadata_props``) with the output structure and, when the caller
gives it, the checkpoint it came from (``engine.py`` reads that to reuse or refresh its cache).
"""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vision_tasks.tasks.base import BaseTask
from vision_tasks.utils import atomic_write_bytes

EXAMPLE_BATCH = 2  # not 1, so batch-sized outputs can be told from constant ones
# An export differing from torch by more than this share of max(1, largest |output|) is refused.
# Float32 reordering in ONNX Runtime stays near 1e-6 (docs/benchmarks.md: <= 5e-7 on every task);
# a wrong graph (a traced constant, a dropped branch) differs by far more.
CHECK_TOLERANCE = 1e-4
METADATA_KEY = "vision_tasks"


def flatten_outputs(outputs: Any) -> tuple[list[Tensor], Any]:
    """Tensors in a fixed order, plus a JSON-able description of the structure they came in."""
    if isinstance(outputs, Tensor):
        return [outputs], "tensor"
    if outputs is None:
        return [], None
    if isinstance(outputs, dict):
        tensors, spec = [], {}
        for key, value in outputs.items():
            flat, spec[key] = flatten_outputs(value)
            tensors += flat
        return tensors, {"dict": spec}
    if isinstance(outputs, (tuple, list)):
        tensors, specs = [], []
        for value in outputs:
            flat, spec = flatten_outputs(value)
            tensors += flat
            specs.append(spec)
        return tensors, {"tuple": specs}
    raise TypeError(f"cannot export an output of type {type(outputs).__name__}")


def unflatten_outputs(tensors: list[Tensor], spec: Any) -> Any:
    """Undo :func:`flatten_outputs` (consumes ``tensors`` from the front)."""
    if spec == "tensor":
        return tensors.pop(0)
    if spec is None:
        return None
    if "dict" in spec:
        return {key: unflatten_outputs(tensors, value) for key, value in spec["dict"].items()}
    return tuple(unflatten_outputs(tensors, value) for value in spec["tuple"])


class _FlatOutputs(nn.Module):
    """The model with its batch-sized outputs flattened; constant ones (e.g. detection grid
    points, cached by the model) do not depend on the input and travel as metadata instead."""

    def __init__(self, model: nn.Module, batched: list[bool]) -> None:
        super().__init__()
        self.model, self.batched = model, batched

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        tensors = flatten_outputs(self.model(image))[0]
        return tuple(t for t, keep in zip(tensors, self.batched) if keep)


def example_input(model: BaseTask, batch: int = EXAMPLE_BATCH) -> Tensor:
    """A network input of the right shape, from the task's own ``predict_sample``."""
    blank = np.full((240, 320, 3), 114, dtype=np.uint8)
    return model.predict_sample(blank)["image"].unsqueeze(0).repeat(batch, 1, 1, 1)


def export_onnx(
    model: BaseTask, path: str | Path, opset: int = 17, source: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s checked inference graph to ``path`` atomically (see :func:`export_bytes`);
    a killed export leaves no half file at ``path``."""
    return atomic_write_bytes(path, export_bytes(model, opset, source))


def export_bytes(model: BaseTask, opset: int = 17, source: dict[str, Any] | None = None) -> bytes:
    """``model``'s inference graph as an ONNX file's bytes, checked against torch.

    Args:
        model: the task model (put in eval mode).
        opset: ONNX opset of the graph.
        source: what the graph was exported from (the checkpoint's fingerprint), kept in the
            metadata for :mod:`vision_tasks.export.engine`.
    """
    graph = _traced_graph(model.eval(), opset)
    meta = read_metadata(graph)
    meta["check"] = check_against_torch(model, OnnxRunner(graph.SerializeToString()))
    if source is not None:
        meta["source"] = source
    write_metadata(graph, meta)
    return graph.SerializeToString()


def _traced_graph(model: BaseTask, opset: int) -> Any:
    """The ONNX ``ModelProto`` of ``model``, with the output structure in its metadata."""
    import onnx

    images = example_input(model)
    with torch.no_grad():
        tensors, spec = flatten_outputs(model(images))
    batched = [t.ndim > 0 and t.shape[0] == EXAMPLE_BATCH for t in tensors]
    constants = {i: t.tolist() for i, (t, keep) in enumerate(zip(tensors, batched)) if not keep}
    names = [f"output_{i}" for i in range(sum(batched))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Python branches on cached shapes (the detection grid) trace as constants; what that
        # could break, check_against_torch catches on the finished graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # An eval-mode wrapper: the exporter restores the wrapper's mode afterwards, recursively.
        torch.onnx.export(
            _FlatOutputs(model, batched).eval(),
            (images,),
            buffer,
            input_names=["image"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["image", *names]},
            opset_version=opset,
            dynamo=False,
        )
    graph = onnx.load_model_from_string(buffer.getvalue())
    write_metadata(graph, {"task": model.task_name, "outputs": spec, "constants": constants})
    return graph


def read_metadata(graph: Any) -> dict[str, Any]:
    """The ``vision_tasks`` metadata of an ONNX ``ModelProto`` (empty if it has none)."""
    for entry in graph.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}


def write_metadata(graph: Any, meta: dict[str, Any]) -> None:
    """Set the ``vision_tasks`` metadata of an ONNX ``ModelProto`` (replacing any)."""
    kept = [e for e in graph.metadata_props if e.key != METADATA_KEY]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)


class OnnxRunner:
    """onnxruntime session returning outputs in the torch model's structure.

    Args:
        model: an ``.onnx`` file written by :func:`export_onnx` (or its bytes).
        threads: intra-op threads (default: onnxruntime's, one per physical core).
    """

    def __init__(self, model: str | Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        meta = json.loads(self.session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        self.meta = meta
        self.task, self.spec = meta["task"], meta["outputs"]
        self.constants = {int(i): torch.tensor(v) for i, v in meta["constants"].items()}

    def __call__(self, images: Tensor) -> Any:
        """Run the graph on (B, C, H, W) images."""
        arrays = iter(self.session.run(None, {"image": images.detach().cpu().numpy()}))
        count = len(self.session.get_outputs()) + len(self.constants)
        tensors = [
            self.constants[i] if i in self.constants else torch.from_numpy(next(arrays))
            for i in range(count)
        ]
        return unflatten_outputs(tensors, self.spec)


def max_abs_difference(a: Any, b: Any) -> float:
    """Largest element-wise difference between two output structures."""
    tensors_a, tensors_b = flatten_outputs(a)[0], flatten_outputs(b)[0]
    return max(
        (
            float((x.float() - y.float()).abs().max())
            for x, y in zip(tensors_a, tensors_b)
            if x.numel()
        ),
        default=0.0,
    )


def check_against_torch(model: BaseTask, runner: OnnxRunner, seed: int = 0) -> dict[str, Any]:
    """Torch vs onnxruntime on one seeded random batch: max abs difference, scale, verdict."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(example_input(model).shape, generator=generator)
    with torch.inference_mode():
        reference = model(images)
        difference = max_abs_difference(reference, runner(images))
    # Scaled by the image-dependent outputs only: constants (a detector's grid points, up to
    # the input size) travel as metadata, equal by construction, and would loosen the tolerance.
    batched = [t for t in flatten_outputs(reference)[0] if t.ndim and t.shape[0] == len(images)]
    scale = max((float(t.abs().max()) for t in batched if t.numel()), default=0.0)
    passed = difference <= CHECK_TOLERANCE * max(1.0, scale)  # False for NaN too
    return {"max_abs_diff": difference, "max_abs_output": scale, "passed": bool(passed)}


def compare(model: BaseTask, runner: OnnxRunner, batch: int = 3, repeats: int = 10) -> dict:
    """Torch vs onnxruntime on the same input: max abs difference and median latencies (ms)."""
    images = torch.randn_like(example_input(model, batch))
    with torch.inference_mode():
        reference = model(images)
        difference = max_abs_difference(reference, runner(images))
        scale = max(float(t.abs().max()) for t in flatten_outputs(reference)[0] if t.numel())
        single = images[:1]
        torch_ms = _median_ms(lambda: model(single), repeats)
    onnx_ms = _median_ms(lambda: runner(single), repeats)
    return {
        "max_abs_diff": difference,
        "max_abs_output": scale,
        "batch_checked": batch,
        "torch_b1_ms": torch_ms,
        "onnxruntime_b1_ms": onnx_ms,
    }


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))
