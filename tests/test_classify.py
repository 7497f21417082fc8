"""Classification: dataset views, metrics on a hand-made case, a few steps of learning."""

from __future__ import annotations

import pytest
import torch

from vision_tasks.data.coco import CocoDataError, CocoIndex
from vision_tasks.tasks.classify import ClassifyData, ClassifyDataset, ClassifyTask

CATEGORIES = [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]


def test_crop_mode_gives_one_sample_per_annotation(tiny_coco) -> None:
    index = CocoIndex(tiny_coco.train_json, tiny_coco.train_images)
    dataset = ClassifyDataset(index, image_size=48, train=True, mode="crop")
    expected = sum(len(index.annotations(i, include_crowd=False)) for i in index.image_ids)
    assert len(dataset) == expected > 0
    sample = dataset[0]
    assert sample["image"].shape == (3, 48, 48) and sample["image"].dtype == torch.float32
    assert 0 <= sample["label"] < index.num_classes


def test_image_mode_refuses_images_with_several_annotations(tiny_coco) -> None:
    index = CocoIndex(tiny_coco.train_json, tiny_coco.train_images)
    with pytest.raises(CocoDataError, match=r"image id=\d+: field 'annotations'"):
        ClassifyDataset(index, image_size=48, train=False, mode="image")


@pytest.mark.parametrize("num_classes", [3, 5, 8])
def test_top5_is_computed_on_its_own_after_a_perfect_first_batch(num_classes: int) -> None:
    # A perfect first batch once let MetricCollection's compute groups merge top-5 into top-1.
    categories = [{"id": i + 1, "name": f"c{i}"} for i in range(num_classes)]
    model = ClassifyTask(categories=categories, image_size=32)
    ranked = torch.arange(num_classes, 0, -1, dtype=torch.float32)  # class 0 first, 1 next, ...
    model.update_metric(model.test_metric, ranked.repeat(2, 1), {"label": torch.tensor([0, 0])})
    # Second batch: truths ranked 2nd, 5th and 6th (the last only exists with > 5 classes).
    truths = [1, min(4, num_classes - 1), min(5, num_classes - 1)]
    model.update_metric(model.test_metric, ranked.repeat(3, 1), {"label": torch.tensor(truths)})
    report = model.build_report(model.test_metric.compute(), samples=[])
    in_top5 = 2 + sum(t < 5 for t in truths)  # hand count: ranks 1..5 are classes 0..4
    assert report.headline["top1"] == pytest.approx(2 / 5)
    assert report.headline["top5"] == pytest.approx(in_top5 / 5)
    assert report.headline["top5"] == (1.0 if num_classes <= 5 else pytest.approx(4 / 5))


def test_metrics_and_report_on_hand_made_case() -> None:
    model = ClassifyTask(categories=CATEGORIES, image_size=32)
    # Truth 0,0,1,2; predicted 0,1,1,1 -> top-1 = 2/4; class a: 1/2, b: 1/1, c: 0/1.
    logits = torch.tensor(
        [[5.0, 1, 0], [1, 5, 0], [0, 5, 1], [1, 5, 2]]
    )  # second choice of the last sample is c (2) -> top-2 would fix it; top-3 covers all.
    labels = torch.tensor([0, 0, 1, 2])
    model.update_metric(model.test_metric, logits, {"label": labels})
    values = model.test_metric.compute()
    report = model.build_report(values, samples=[])
    assert report.headline["top1"] == pytest.approx(0.5)
    assert report.headline["top5"] == pytest.approx(1.0)  # 3 classes: top-5 is top-3
    per_class = {row["class"]: row["accuracy"] for row in report.tables["per_class"]}
    assert per_class == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.0})
    assert values["confusion"].tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_decode_maps_indices_back_to_coco_ids() -> None:
    model = ClassifyTask(categories=CATEGORIES, image_size=32)
    logits = torch.tensor([[0.0, 0, 3], [2.0, 0, 0]])
    results = model.decode(logits, {"image_id": torch.tensor([11, 12])})
    assert [r["category_id"] for r in results] == [9, 3]
    assert results[0]["top5"][0]["category_id"] == 9 and len(results[0]["top5"]) == 3


def test_few_steps_on_one_batch_halve_the_loss(tiny_coco) -> None:
    torch.manual_seed(0)
    data = ClassifyData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=32,
        num_workers=0,
    )
    dataset = ClassifyDataset(data.index("val"), image_size=32, train=False)
    batch = data.collate([dataset[i] for i in range(min(16, len(dataset)))])
    model = ClassifyTask(categories=data.categories, image_size=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(15):
        loss = model.compute_loss(model(batch["image"]), batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_rebuilds_model_without_config(tmp_path) -> None:
    model = ClassifyTask(categories=CATEGORIES, image_size=40, dropout=0.1)
    path = tmp_path / "model.ckpt"
    import lightning as L

    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    restored = ClassifyTask.load_from_checkpoint(path, weights_only=True)
    assert restored.categories == CATEGORIES and restored.hparams.image_size == 40
    torch.testing.assert_close(restored.head.fc.weight, model.head.fc.weight)
