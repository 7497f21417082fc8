"""ONNX export of a task's inference graph, and an onnxruntime runner that feeds the same decode.

Only the network (``model(images)``) is exported, with a dynamic batch dimension. Whatever ONNX
cannot express well (NMS with per-image counts, COCO formatting, un-letterboxing, arg-max with
sub-pixel refinement) stays in the task's ``decode`` and is shared by both engines: the runner
returns the outputs in the torch structure (dicts, tuples, ``None`` entries), so
``model.decode(runner(images), batch)`` works unchanged.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vision_tasks.checkpoint import load_task_checkpoint
from vision_tasks.tasks.base import BaseTask

EXAMPLE_BATCH = 2  # not 1, so batch-sized outputs can be told from constant ones


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


def export_onnx(model: BaseTask, path: str | Path, opset: int = 17) -> Path:
    """Write ``model``'s inference graph to ``path`` (dynamic batch; structure in metadata)."""
    import onnx

    model = model.eval()
    images = example_input(model)
    with torch.no_grad():
        tensors, spec = flatten_outputs(model(images))
    batched = [t.ndim > 0 and t.shape[0] == EXAMPLE_BATCH for t in tensors]
    constants = {i: t.tolist() for i, (t, keep) in enumerate(zip(tensors, batched)) if not keep}
    names = [f"output_{i}" for i in range(sum(batched))]
    dynamic = {name: {0: "batch"} for name in ["image", *names]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # An eval-mode wrapper: the exporter restores the wrapper's mode afterwards, recursively.
    wrapper = _FlatOutputs(model, batched).eval()
    torch.onnx.export(
        wrapper,
        (images,),
        str(tmp),
        input_names=["image"],
        output_names=names,
        dynamic_axes=dynamic,
        opset_version=opset,
        dynamo=False,
    )
    graph = onnx.load(str(tmp))
    entry = graph.metadata_props.add()
    meta = {"task": model.task_name, "outputs": spec, "constants": constants}
    entry.key, entry.value = "vision_tasks", json.dumps(meta)
    onnx.save(graph, str(tmp))
    tmp.replace(path)  # atomic: a half-written model is never left at the final name
    return path


class OnnxRunner:
    """onnxruntime session returning outputs in the torch model's structure."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = json.loads(self.session.get_modelmeta().custom_metadata_map["vision_tasks"])
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


def export_main(argv: list[str] | None = None) -> dict[str, Any]:
    """``tools/export.py --ckpt PATH [--format onnx] [--output FILE]``: export and check."""
    parser = argparse.ArgumentParser(description=export_main.__doc__)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--output", type=Path, help="default: the checkpoint with .onnx")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    model = load_task_checkpoint(args.ckpt)
    if not getattr(model, "exportable", True):
        raise SystemExit(
            f"{model.task_name}: ONNX export is not supported (its inference "
            f"forward runs NMS and per-box heads on a data-dependent number of "
            f"boxes); predict with --engine torch"
        )
    path = export_onnx(model, args.output or args.ckpt.with_suffix(".onnx"), args.opset)
    check = compare(model, OnnxRunner(path, threads=torch.get_num_threads()))
    print(f"{model.task_name} -> {path}")
    print(
        f"  max |torch - onnxruntime| = {check['max_abs_diff']:.2e} (outputs up to "
        f"{check['max_abs_output']:.3g}, batch {check['batch_checked']})"
    )
    print(
        f"  batch-1 latency: torch {check['torch_b1_ms']:.1f} ms, onnxruntime "
        f"{check['onnxruntime_b1_ms']:.1f} ms"
    )
    return {"path": str(path), **check}
