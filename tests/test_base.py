"""BaseTask's optimisation: the fused optimiser, a schedule that follows a time budget, mixed
precision in training only, and the weight average (ModelEMA); the one way from network pixels
back to the original image."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from vision_tasks import ops
from vision_tasks.tasks.base import letterbox_numbers, warmup_cosine
from vision_tasks.tasks.classify import ClassifyData, ClassifyTask
from vision_tasks.utils import ModelEMA


def cosine(progress: float, min_ratio: float) -> float:
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def test_schedule_follows_the_steps_or_the_clock_whichever_is_further() -> None:
    spent = {"fraction": 0.0}
    by_steps = warmup_cosine(110, 10, 0.05)
    both = warmup_cosine(110, 10, 0.05, time_fraction=lambda: spent["fraction"])
    assert by_steps(4) == both(4) == pytest.approx(5 / 11)  # warm-up is counted in steps
    assert both(60) == by_steps(60) == pytest.approx(cosine(0.5, 0.05))
    spent["fraction"] = 0.9  # a slow machine: 90% of the budget gone at half the steps
    assert both(60) == pytest.approx(cosine(0.9, 0.05))
    spent["fraction"] = 1.0
    assert both(60) == pytest.approx(0.05)  # the budget ends: annealed, not cut mid-way
    spent["fraction"] = 0.1  # a fast machine: the steps are further along
    assert both(100) == pytest.approx(cosine(0.9, 0.05))
    unbounded = warmup_cosine(float("inf"), 0, 0.05, time_fraction=lambda: 0.5)
    assert unbounded(1000) == pytest.approx(cosine(0.5, 0.05))


class _StopAfterTwoSteps(L.Callback):
    """Ends the fit after 2 steps without max_steps, which would set the schedule's length."""

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        trainer.should_stop = trainer.global_step >= 2


def _fit_two_steps(tiny_coco, callbacks: list, root) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    data = ClassifyData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=32,
        batch_size=4,
        num_workers=0,
    )
    model = ClassifyTask(
        categories=data.categories, image_size=32, lr=0.01, warmup_epochs=0, min_lr_ratio=0.05
    )
    trainer = L.Trainer(
        max_epochs=100,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        # The task's own ModelCheckpoint comes back through configure_callbacks: keep its files
        # out of the working directory.
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    return trainer.optimizers[0]


def test_a_time_budget_anneals_the_learning_rate_and_the_optimiser_is_fused(
    tiny_coco, clock_at, tmp_path
) -> None:
    # The fake clock says 90% of max_time is gone after 2 of 200 steps: the learning rate is
    # already near its floor, as the budget's end would otherwise cut it at its peak.
    optimizer = _fit_two_steps(tiny_coco, [clock_at(0.9), _StopAfterTwoSteps()], tmp_path)
    assert optimizer.state_dict()["state"][0]["step"] == 2
    assert optimizer.defaults["fused"] is True
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.01 * cosine(0.9, 0.05), rel=1e-6)


def test_mixed_precision_trains_in_bfloat16_and_evaluates_in_float32(tiny_coco, tmp_path) -> None:
    """Reports must not move with --trainer.precision: evaluation switches autocast off."""
    data = ClassifyData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=32,
        batch_size=4,
        num_workers=0,
    )
    model = ClassifyTask(categories=data.categories, image_size=32)
    seen: dict[bool, set] = {True: set(), False: set()}
    model.head.register_forward_hook(lambda m, i, out: seen[m.training].add(out.dtype))
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    trainer.predict(model, dataloaders=data.val_dataloader(), return_predictions=False)
    assert seen == {True: {torch.bfloat16}, False: {torch.float32}}


def test_model_ema_is_the_ramped_exponential_average() -> None:
    ema = ModelEMA(decay=0.9, warmup_steps=2)
    module = torch.nn.BatchNorm1d(3)
    averaged = AveragedModel(module, multi_avg_fn=ema._average, use_buffers=True)
    expected = None
    for count, value in enumerate([1.0, 5.0, -2.0, 4.0]):
        with torch.no_grad():
            module.weight.fill_(value)
        module.num_batches_tracked.fill_(10 * count)
        averaged.update_parameters(module)
        if expected is None:
            expected = value  # the first update copies
        else:
            decay = 0.9 * (1 - math.exp(-count / 2))
            expected = decay * expected + (1 - decay) * value
        assert averaged.module.weight[0].item() == pytest.approx(expected, rel=1e-6)
        assert averaged.module.num_batches_tracked.item() == 10 * count  # integers: copied
    with pytest.raises(ValueError, match="0 < decay < 1"):
        ModelEMA(decay=1.0)


def test_boxes_go_back_to_the_original_image_clipped() -> None:
    # A 100 x 200 (h x w) image in a 64 square: scale 64 / 200 = 0.32, 64 x 32 pixels, 16 rows
    # of padding above and below.
    assert ops.letterbox_params(100, 200, 64) == (0.32, 0, 16)
    inside = [8.0, 20.0, 40.0, 36.0]  # x / 0.32, (y - 16) / 0.32
    into_padding = [-4.0, 10.0, 70.0, 60.0]  # -12.5, -18.75, 218.75, 137.5 before clipping
    boxes = ops.boxes_to_original(torch.tensor([inside, into_padding]), 0.32, (0, 16), (100, 200))
    assert boxes.dtype == torch.float64
    expected = [[25.0, 12.5, 125.0, 62.5], [0.0, 0.0, 200.0, 100.0]]
    torch.testing.assert_close(boxes, torch.tensor(expected, dtype=torch.float64))


def test_letterbox_numbers_read_collated_tensors_and_plain_numbers_alike() -> None:
    collated = {
        "scale": torch.tensor([0.5, 0.32], dtype=torch.float64),
        "pad": torch.tensor([[0.0, 0.0], [0.0, 16.0]], dtype=torch.float64),
        "orig_size": torch.tensor([[128, 128], [100, 200]]),
    }
    from_files = {
        "scale": [0.5, 0.32],
        "pad": [(0, 0), (0, 16)],
        "orig_size": [(128, 128), (100, 200)],
    }
    expected = (0.32, 0, 16, (100, 200))
    assert letterbox_numbers(collated, 1) == letterbox_numbers(from_files, 1) == expected


def test_task_and_data_classes_pass_base_arguments_by_keyword() -> None:
    # A positional call binds by order: reordering BaseTask's or VisionDataModule's parameters
    # would then silently hand lr to weight_decay (or one split's file to another).
    import ast
    from pathlib import Path

    import vision_tasks.tasks

    root = Path(vision_tasks.tasks.__file__).parent
    positional = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "__init__"
                and isinstance(node.func.value, ast.Call)
                and getattr(node.func.value.func, "id", None) == "super"
                and node.args
            ):
                positional.append(f"{path.relative_to(root)}:{node.lineno}")
    assert positional == []
