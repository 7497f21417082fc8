"""Speed and memory of one task, in this process: timed training steps and inference.

One real batch from the task's own data pipeline (synthetic default), then timed repetitions
after warm-up of (a) a training step (forward, loss, backward, optimiser step), (b) inference at
batch 1 (forward + the task's decode/post-processing) and (c) inference at batch 16, each also
for the bare backbone on the same input, so the share of time spent outside the backbone (neck,
head, loss, post-processing) is stated; for the joint model also the training step with each
head left out in turn, so what each head costs is stated. Every figure is a median with its
spread (min/max) over the repetitions.
"""

from __future__ import annotations

import copy
import resource
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from vision_tasks.configs import CONFIG_DIR


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    """Median / min / max wall time in milliseconds of ``fn`` after ``warmup`` untimed calls."""
    return timed_in_turns({"": fn}, repeats, warmup)[""]


def timed_in_turns(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> dict[str, dict[str, float]]:
    """:func:`timed` of several functions, called in turns (one call each per round)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t)}
        for name, t in times.items()
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, for inference.

    Relies on registration order (conv registered right before its BN), which holds for
    torchvision's ResNet blocks and ``ConvBNAct``; :func:`speed` checks the fused outputs
    against the unfused ones, so a module where the order lies is caught, not trusted.
    """
    fused = copy.deepcopy(model).eval()
    for parent in fused.modules():
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[first] = nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                parent._modules[second] = nn.Identity()
    return fused


def _task_config(task: str) -> dict[str, Any]:
    config = yaml.safe_load((CONFIG_DIR / f"{task}.yaml").read_text()) or {}
    shared = yaml.safe_load((CONFIG_DIR / "trainer.yaml").read_text()) or {}
    trainer = {**(shared.get("trainer") or {}), **(config.get("trainer") or {})}
    return {
        "model": config.get("model") or {},
        "data": config.get("data") or {},
        "precision": str(trainer.get("precision", "32-true")),
    }


def _sized(config: dict, image_size: int | None) -> dict:
    """Data arguments that make ``image_size`` the network's input side, in training too: a
    task that trains on crops (segmentation's ``crop_size``) crops at that size."""
    if image_size is None:
        return {}
    return {
        "image_size": image_size,
        **({"crop_size": image_size} if "crop_size" in config["data"] else {}),
    }


def build(
    task: str,
    image_size: int | None,
    batch_size: int,
    split: str = "train",
    model_overrides: dict[str, Any] | None = None,
):
    """Task model (random init, set up for fit as training sets it up) and one real batch of
    its data pipeline at ``image_size``."""
    from vision_tasks.tasks import TASKS

    spec, config = TASKS[task], _task_config(task)
    data_args = {
        **config["data"],
        **_sized(config, image_size),
        "batch_size": batch_size,
        "num_workers": 0,
    }
    data = spec.data(**data_args)
    data.setup("fit")
    loader = data.train_dataloader() if split == "train" else data.val_dataloader()
    batch = _full_batch(loader, batch_size)
    # What the data decides, as the CLI links it (re-ID's identity classifier, sized by the
    # training identities): without it the timed step would skip the identity loss.
    linked = {arg: getattr(data, attr) for arg, attr in spec.model.linked_from_data.items()}
    model_args = {
        **config["model"],
        "backbone_weights": "none",
        **linked,
        **(model_overrides or {}),
    }
    model = spec.model(**model_args, categories=data.categories, image_size=data.image_size)
    return model, batch


def loader_speed(
    task: str, image_size: int | None = None, workers: tuple[int, ...] = (0, 1, 2), batches: int = 8
) -> dict:
    """Training-loader images/s (decode + augmentation + collate) per ``num_workers``, and the
    seconds to the first batch (worker start-up, paid every epoch), timed apart.

    The loader is the one training builds: pinned memory off on CPU, fresh workers each epoch.
    """
    from vision_tasks.tasks import TASKS

    config, speed, startup = _task_config(task), {}, {}
    for count in workers:
        data = TASKS[task].data(
            **{**config["data"], **_sized(config, image_size), "num_workers": count}
        )
        data.setup("fit")
        start = time.perf_counter()
        iterator = iter(data.train_dataloader())
        next(iterator)
        startup[f"workers_{count}"] = time.perf_counter() - start
        start, images = time.perf_counter(), 0
        for _ in range(batches):
            images += next(iterator)["image"].shape[0]
        speed[f"workers_{count}"] = images / (time.perf_counter() - start)
    return {"images_per_s": speed, "first_batch_s": startup}


def _full_batch(loader, batch_size: int) -> dict[str, Any]:
    # A P x K sampler or a small split can give other sizes: the first batch of at least
    # ``batch_size``, else the largest there is.
    largest = None
    for batch in loader:
        if batch["image"].shape[0] >= batch_size:
            return batch
        if largest is None or batch["image"].shape[0] > largest["image"].shape[0]:
            largest = batch
    if largest is None:
        raise RuntimeError("the training loader is empty")
    return largest


def _loss_of_features(features: dict[str, Tensor]) -> Tensor:
    return sum(f.float().mean() for f in features.values())


def speed(
    task: str,
    image_size: int | None = None,
    repeats: int = 5,
    warmup: int = 2,
    channels_last: bool = False,
    fuse: bool = False,
    grad_mode: str = "inference",
) -> dict[str, Any]:
    """Training step, batch-1 latency and batch-16 throughput of a task and of its backbone."""
    torch.manual_seed(0)
    model, batch = build(task, image_size, batch_size=16)
    # Training as the task's config trains (bf16-mixed: autocast); inference is float32 always.
    precision = _task_config(task)["precision"]
    autocast = partial(torch.autocast, "cpu", torch.bfloat16, enabled=precision == "bf16-mixed")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    batch = {**batch, "image": batch["image"].contiguous(memory_format=memory_format)}
    images = batch["image"]

    model.train()
    full_train = timed(_train_step(model, batch, autocast), repeats, warmup)
    backbone_train = timed(
        _train_step(
            model,
            batch,
            autocast,
            lambda: _loss_of_features(model.backbone(model.backbone_input(images))),
        ),
        repeats,
        warmup,
    )
    model.eval()
    inference_model = fuse_conv_bn(model) if fuse else model
    result = {
        "task": task,
        "input": list(images.shape[1:]),
        "channels_last": channels_last,
        "fused_conv_bn": fuse,
        "train_precision": precision,
        "train": _with_share(full_train, backbone_train, images.shape[0]),
    }
    passes = inference_model.backbone_passes  # flip test: the backbone runs twice
    with torch.inference_mode() if grad_mode == "inference" else torch.no_grad():
        if fuse:
            result["fusion_max_abs_diff"] = _max_abs_diff(model(images), inference_model(images))
        for name, size in (("latency_b1", 1), ("throughput_b16", 16)):
            sub = _slice_batch(batch, size, memory_format)
            full = timed(partial(_predict, inference_model, sub), repeats, warmup)
            bare_input = inference_model.backbone_input(sub["image"])
            bare = timed(partial(inference_model.backbone, bare_input), repeats, warmup)
            bare = {**bare, "median_ms": bare["median_ms"] * passes}
            result[name] = _with_share(full, bare, size)
    result["peak_rss_mib"] = peak_rss_mib()  # before the variants below add theirs
    if task == "multitask":
        result["train"]["without_head"] = _train_without_each_head(
            model.train(), batch, image_size, autocast, memory_format, repeats, warmup
        )
    result["loader"] = loader_speed(task, image_size)
    return result


def _train_step(
    model: nn.Module,
    batch: dict[str, Any],
    autocast: Callable,
    forward_loss: Callable[[], Tensor] | None = None,
) -> Callable[[], None]:
    """One optimisation step as training runs it (``forward_batch``: the joint model's per-box
    heads read the batch's boxes), or of ``forward_loss`` with the same optimiser."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as BaseTask

    def task_loss() -> Tensor:
        return model.compute_loss(model.forward_batch(batch), batch)["loss"]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = (forward_loss or task_loss)()
        loss.backward()
        optimizer.step()

    return step


def _train_without_each_head(
    model: nn.Module,
    batch: dict[str, Any],
    image_size: int | None,
    autocast: Callable,
    memory_format: torch.memory_format,
    repeats: int,
    warmup: int,
) -> dict[str, dict[str, float]]:
    """The joint model's training step with each head left out in turn: what dropping that head
    from the config saves (``saved_share`` of the full step).

    The full step and the variants are timed in turns, one step each per round, so that a
    machine slowing down over the minute weighs on all of them alike.
    """
    heads, weights = list(model.heads), dict(model.hparams.loss_weights or {})
    steps = {"": _train_step(model, batch, autocast)}
    for head in heads if len(heads) > 1 else []:
        rest = [h for h in heads if h != head]
        overrides = {"heads": rest, "loss_weights": {h: w for h, w in weights.items() if h in rest}}
        variant, _ = build("multitask", image_size, len(batch["image"]), model_overrides=overrides)
        steps[head] = _train_step(variant.to(memory_format=memory_format).train(), batch, autocast)
    times = timed_in_turns(steps, repeats, warmup)
    full = times.pop("")["median_ms"]
    return {
        head: {"median_ms": t["median_ms"], "saved_share": 1 - t["median_ms"] / full}
        for head, t in times.items()
    }


def _predict(model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``tools/predict.py`` runs per batch: forward + the task's post-processing."""
    return model.decode(model(batch["image"]), batch)


def _with_share(full: dict[str, float], backbone: dict[str, float], images: int) -> dict:
    outside = full["median_ms"] - backbone["median_ms"]
    return {
        **full,
        "images_per_s": images * 1000 / full["median_ms"],
        "backbone_median_ms": backbone["median_ms"],
        # Both ways of stating it: of the whole step, and relative to the backbone's own time.
        "outside_backbone_share": outside / full["median_ms"],
        "outside_vs_backbone": outside / backbone["median_ms"],
    }


def _slice_batch(batch: dict[str, Any], size: int, memory_format) -> dict[str, Any]:
    sliced = {k: v[:size] if isinstance(v, (Tensor, list)) else v for k, v in batch.items()}
    sliced["image"] = sliced["image"].contiguous(memory_format=memory_format)
    return sliced


def _max_abs_diff(a: Any, b: Any) -> float:
    if isinstance(a, Tensor):
        return (a.float() - b.float()).abs().max().item()
    if isinstance(a, dict):
        return max((_max_abs_diff(a[k], b[k]) for k in a if a[k] is not None), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((_max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return 0.0
