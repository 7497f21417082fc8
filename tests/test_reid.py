"""Re-identification: losses and metric against hand-worked values, sampler, data, converter."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader

from vision_tasks.data.coco import CocoDataError, CocoIndex
from vision_tasks.data.convert import convert
from vision_tasks.data.convert.cli import convert_main
from vision_tasks.evaluation.metrics import ReidMetric, market1501_rank
from vision_tasks.tasks.reid import (
    PKBatchSampler,
    ReidData,
    ReidDataset,
    ReidHead,
    ReidTask,
    batch_hard_triplet_loss,
    hardest_pairs,
)

# ---- batch-hard triplet loss: 4 identities x 2 embeddings on a line ---------------------------
# x = 0, 1 | 3, 7 | 10, 10.5 | 20, 24. Farthest positive / nearest negative of each anchor:
#   a0: +1 (d 1), -2 (d 3)    a1: +0 (1), -2 (2)     a2: +3 (4), -1 (2)      a3: +2 (4), -4 (3)
#   a4: +5 (.5), -3 (3)       a5: +4 (.5), -3 (3.5)  a6: +7 (4), -5 (9.5)    a7: +6 (4), -5 (13.5)
POINTS = [0.0, 1.0, 3.0, 7.0, 10.0, 10.5, 20.0, 24.0]
IDS = [0, 0, 1, 1, 2, 2, 3, 3]
HARDEST_POSITIVE = [1, 0, 3, 2, 5, 4, 7, 6]
HARDEST_NEGATIVE = [2, 2, 1, 4, 3, 3, 5, 5]
GAPS = [1 - 3, 1 - 2, 4 - 2, 4 - 3, 0.5 - 3, 0.5 - 3.5, 4 - 9.5, 4 - 13.5]  # d_ap - d_an


def _line(points: list[float]) -> torch.Tensor:
    # Second coordinate 0: Euclidean distances are the |differences| worked out above.
    return torch.tensor([[p, 0.0] for p in points], requires_grad=True)


def test_batch_hard_mining_picks_the_hardest_positive_and_negative() -> None:
    features = _line(POINTS).detach()
    positive, negative, valid = hardest_pairs(torch.cdist(features, features), torch.tensor(IDS))
    assert positive.tolist() == HARDEST_POSITIVE
    assert negative.tolist() == HARDEST_NEGATIVE
    assert valid.all()


def test_batch_hard_triplet_loss_equals_the_hand_computed_value() -> None:
    ids = torch.tensor(IDS)
    # margin 0.3: only a2 (4 - 2 + 0.3 = 2.3) and a3 (4 - 3 + 0.3 = 1.3) violate it.
    assert batch_hard_triplet_loss(_line(POINTS), ids, margin=0.3).item() == pytest.approx(
        (2.3 + 1.3) / 8
    )
    soft = sum(math.log1p(math.exp(g)) for g in GAPS) / 8
    assert batch_hard_triplet_loss(_line(POINTS), ids, margin=None).item() == pytest.approx(soft)


def test_triplet_loss_skips_anchors_without_positive_and_pulls_pairs_together() -> None:
    features = _line([0.0, 2.0, 3.0, 50.0])  # identities 1 and 2 occur once: no positive
    loss = batch_hard_triplet_loss(features, torch.tensor([0, 0, 1, 2]), margin=0.3)
    # Only anchors 0, 1 count: a0: 2 - 3 + .3 < 0 -> 0; a1: d_ap 2 (to x=0) - d_an 1 (to x=3)
    # + .3 = 1.3 -> mean over 2 anchors 0.65 (0.325 if anchors 2, 3 were averaged in).
    assert loss.item() == pytest.approx(0.65)
    loss.backward()
    # d/dx of (x1 - x0) - (x2 - x1), halved: gradient descent pulls a0 and a1 together and
    # pushes the negative x=3 away; x=50 is in no violated triplet.
    assert features.grad[:, 0].tolist() == pytest.approx([-0.5, 1.0, -0.5, 0.0])
    assert features.grad[:, 1].abs().sum() == 0


# ---- CMC / mAP: hand-made distance matrix ----------------------------------------------------
# Gallery: g0 id1 cam1 | g1 id1 cam2 | g2 id2 cam2 | g3 id1 cam3 | g4 id3 cam2 | g5 id4 cam1.
# q0 (id1 cam1): order g0 g2 g4 g1 g5 g3; g0 is the same camera -> dropped; hits at kept ranks
#    3 and 5 -> first hit 3, AP = (1/3 + 2/5) / 2.
# q1 (id2 cam1): g2 first -> AP 1.   q2 (id3 cam2): its only match g4 is the same camera: skipped.
DISTANCES = torch.tensor(
    [
        [0.1, 0.5, 0.3, 0.9, 0.4, 0.6],
        [0.7, 0.8, 0.2, 0.6, 0.5, 0.3],
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.6],
    ]
)
Q_IDS, Q_CAMS = torch.tensor([1, 2, 3]), torch.tensor([1, 1, 2])
G_IDS, G_CAMS = torch.tensor([1, 1, 2, 1, 3, 4]), torch.tensor([1, 2, 2, 3, 2, 1])


def test_cmc_and_average_precision_on_a_hand_made_case() -> None:
    hits, ap, valid = market1501_rank(DISTANCES, Q_IDS, Q_CAMS, G_IDS, G_CAMS, max_rank=6)
    assert valid.tolist() == [True, True, False]
    assert hits[0].tolist() == [False, False, True, True, True, True]
    assert hits[1].tolist() == [True] * 6
    assert ap[0].item() == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert ap[1].item() == pytest.approx(1.0)
    cmc = hits[valid].double().mean(dim=0)
    assert cmc[:3].tolist() == pytest.approx([0.5, 0.5, 1.0])  # rank-1 0.5, rank-3 1.0


def _reference_market1501(dist: np.ndarray, q_ids, q_cams, g_ids, g_cams, max_rank: int):
    """torchreid's eval_market1501, one query at a time (the oracle)."""
    cmcs, aps = [], []
    for i in range(len(q_ids)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_ids[order] == q_ids[i]) & (g_cams[order] == q_cams[i]))
        raw = (g_ids[order][keep] == q_ids[i]).astype(np.float64)
        if not raw.any():
            continue
        cmc = raw.cumsum().clip(max=1)
        cmc = np.pad(cmc, (0, max(0, max_rank - len(cmc))), mode="edge")
        cmcs.append(cmc[:max_rank])
        precision = raw.cumsum() / (np.arange(len(raw)) + 1)
        aps.append((precision * raw).sum() / raw.sum())
    return np.mean(cmcs, axis=0), float(np.mean(aps)), len(q_ids) - len(aps)


def test_metric_matches_the_reference_protocol_and_counts_each_sample_once() -> None:
    generator = torch.Generator().manual_seed(0)
    n = 60
    embeddings = torch.randn(n, 8, generator=generator)
    ids = torch.randint(0, 8, (n,), generator=generator)
    cams = torch.randint(0, 3, (n,), generator=generator)
    query = torch.rand(n, generator=generator) < 0.3
    metric = ReidMetric(max_rank=10, chunk_size=7)  # several chunks
    halves = (slice(0, 25), slice(25, n), slice(10, 30))  # the third repeats samples (DDP pad)
    for part in halves:
        metric.update(embeddings[part], ids[part], cams[part], query[part], torch.arange(n)[part])
    values = metric.compute()
    q, g = query.numpy(), ~query.numpy()
    dist = torch.cdist(embeddings[query], embeddings[~query]).numpy()
    cmc, mean_ap, skipped = _reference_market1501(
        dist, ids.numpy()[q], cams.numpy()[q], ids.numpy()[g], cams.numpy()[g], 10
    )
    assert values["cmc"].numpy() == pytest.approx(cmc)
    assert float(values["mAP"]) == pytest.approx(mean_ap)
    assert float(values["rank5"]) == pytest.approx(cmc[4])
    assert values["num_queries"] == int(q.sum()) and values["num_gallery"] == int(g.sum())
    assert values["num_skipped_queries"] == skipped
    examples = values["examples"]
    for query_key, top, correct in zip(
        examples["query_keys"], examples["gallery_keys"], examples["correct"]
    ):
        assert len(top) == 10 and torch.equal(correct, ids[top] == ids[query_key])


def test_metric_without_any_valid_query_reports_zero_and_counts_them() -> None:
    metric = ReidMetric()
    # Two samples of one identity, both from camera 1: the gallery match is the same camera.
    metric.update(
        torch.eye(2),
        torch.tensor([5, 5]),
        torch.tensor([1, 1]),
        torch.tensor([True, False]),
        torch.tensor([1, 2]),
    )
    values = metric.compute()
    assert float(values["rank1"]) == 0.0 and float(values["mAP"]) == 0.0
    assert values["num_skipped_queries"] == 1 and values["num_valid_queries"] == 0


# ---- P x K sampler ----------------------------------------------------------------------------
# identity 9 has one sample (left out), 4 has 3 < K samples (repeated), the rest 5..8 samples.
SAMPLER_IDS = [0] * 6 + [1] * 5 + [2] * 8 + [3] * 7 + [4] * 3 + [5] * 6 + [9]


def test_pk_sampler_yields_p_distinct_identities_with_k_instances_each() -> None:
    sampler = PKBatchSampler(None, SAMPLER_IDS, num_identities=3, num_instances=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (len(SAMPLER_IDS) - 1) // 12
    assert sampler.left_out == 1
    seen = Counter()
    for batch in batches:
        per_identity = Counter(SAMPLER_IDS[i] for i in batch)
        assert len(per_identity) == 3 and set(per_identity.values()) == {4}
        assert 9 not in per_identity
        for identity in per_identity:
            members = [i for i in batch if SAMPLER_IDS[i] == identity]
            # distinct instances whenever the identity has K of them
            if SAMPLER_IDS.count(identity) >= 4:
                assert len(set(members)) == 4
        seen.update(per_identity)
    assert max(seen.values()) - min(seen.values()) <= 1  # identities come in rounds


def test_pk_sampler_is_deterministic_per_epoch_and_shards_ranks_evenly() -> None:
    ids = [i // 6 for i in range(120)]  # 20 identities x 6 -> 120 // 16 = 7 global batches

    def make(world: int = 1, rank: int = 0) -> PKBatchSampler:
        shard = torch.utils.data.DistributedSampler(range(120), world, rank, shuffle=False)
        return PKBatchSampler(shard, ids, num_identities=4, num_instances=4, seed=3)

    single = make()
    first = list(single)
    assert list(make()) == first
    single.sampler.set_epoch(1)  # what Lightning calls every epoch
    assert list(single) != first
    single.set_epoch(0)
    assert list(single) == first
    ranks = [list(make(2, r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(first) // 2 == 3
    interleaved = [batch for pair in zip(*ranks) for batch in pair]
    assert interleaved == first[: len(interleaved)]


def test_lightning_ddp_rebuilds_the_sampler_as_the_rank_shard() -> None:
    # What Lightning does under DDP (private helpers, the very code path): it records the batch
    # sampler's init args, then rebuilds it with a DistributedSampler of the rank as `sampler`.
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader

    ids = [i // 6 for i in range(120)]
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = DataLoader(range(120), batch_sampler=PKBatchSampler(None, ids, 4, 4, seed=3))
    single = list(PKBatchSampler(None, ids, 4, 4, seed=3))
    for rank in (0, 1):
        shard = torch.utils.data.DistributedSampler(range(120), 2, rank, shuffle=True)
        rebuilt = _update_dataloader(loader, shard).batch_sampler
        assert isinstance(rebuilt, PKBatchSampler) and len(rebuilt) == 3
        assert list(rebuilt) == single[rank::2][:3]


def test_pk_sampler_refuses_data_without_two_repeated_identities() -> None:
    with pytest.raises(CocoDataError, match="2 or more identities with 2 or more samples"):
        PKBatchSampler(None, [1, 1, 2, 3], num_identities=2, num_instances=2)


# ---- dataset view -----------------------------------------------------------------------------


def _edited_copy(tiny_coco, tmp_path: Path, split: str, edit) -> CocoIndex:
    data = json.loads(getattr(tiny_coco, f"{split}_json").read_text())
    edit(data)
    path = tmp_path / f"{split}.json"
    path.write_text(json.dumps(data))
    return CocoIndex(path, getattr(tiny_coco, f"{split}_images"))


def test_dataset_leaves_out_annotations_without_identity_and_splits_queries(tiny_coco, tmp_path):
    def drop_some(data: dict) -> None:
        data["annotations"][0]["track_id"] = None
        data["annotations"][1]["track_id"] = -1
        del data["annotations"][2]["track_id"]

    index = _edited_copy(tiny_coco, tmp_path, "val", drop_some)
    dataset = ReidDataset(index, image_size=32, train=False)
    assert len(dataset) == len(index.coco.dataset["annotations"]) - 3
    assert dataset.skipped == {"annotations without identity": 3}
    # one query per (identity, camera): the one with the lowest annotation id
    first: dict[tuple, int] = {}
    for s in dataset.samples:
        key = (s["identity"], s["camera"])
        first[key] = min(first.get(key, s["ann"]["id"]), s["ann"]["id"])
    queries = {s["ann"]["id"] for s, q in zip(dataset.samples, dataset.is_query) if q}
    assert queries == set(first.values())
    sample = dataset[0]
    assert sample["image"].shape == (3, 32, 16) and sample["label"] == -1


def test_dataset_reads_the_query_split_from_the_data(tiny_coco, tmp_path) -> None:
    def mark(data: dict) -> None:
        for image in data["images"]:
            image["split"] = "query" if image["id"] % 2 else "gallery"

    dataset = ReidDataset(_edited_copy(tiny_coco, tmp_path, "val", mark), 32, train=True)
    assert dataset.is_query == [s["image_id"] % 2 == 1 for s in dataset.samples]
    labels = [dataset[i]["label"] for i in range(len(dataset))]
    assert sorted(set(labels)) == list(range(len(set(dataset.identities))))


def test_dataset_names_file_record_and_field_of_bad_input(tiny_coco, tmp_path) -> None:
    def no_camera(data: dict) -> None:
        del data["images"][0]["camera_id"]

    index = _edited_copy(tiny_coco, tmp_path, "val", no_camera)
    with pytest.raises(CocoDataError, match=r"val.json: image id=1: field 'camera_id'"):
        ReidDataset(index, 32, train=False)

    def text_identity(data: dict) -> None:
        data["annotations"][0]["track_id"] = "bob"

    index = _edited_copy(tiny_coco, tmp_path, "val", text_identity)
    with pytest.raises(CocoDataError, match=r"annotation id=1: field 'track_id'"):
        ReidDataset(index, 32, train=False)


# ---- Market-1501 converter --------------------------------------------------------------------


def _market(root: Path, names: dict[str, list[str]]) -> Path:
    for folder, files in names.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            cv2.imwrite(str(root / folder / name), np.full((16, 8, 3), 90, np.uint8))
    return root


def test_market1501_converter_keeps_identities_cameras_and_junk(tmp_path) -> None:
    root = _market(
        tmp_path / "market",
        {
            "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg"],
            "query": ["0007_c2s3_070952_01.jpg"],
            "bounding_box_test": [
                "0007_c1s1_000100_02.jpg",
                "0000_c1s1_000151_01.jpg",
                "-1_c4s2_000201_01.jpg",
            ],
        },
    )
    train = json.loads(convert("market1501", root, tmp_path / "train.json").read_text())
    found = [
        (a["track_id"], i["camera_id"], i["split"])
        for a, i in zip(train["annotations"], train["images"])
    ]
    assert found == [(2, 1, "train"), (2, 3, "train")]
    assert train["annotations"][0]["bbox"] == [0, 0, 8, 16]
    out = convert("market1501", root, tmp_path / "test.json", {"split": "test"})
    dataset = ReidDataset(CocoIndex(out, root), 32, train=False)
    # junk (-1) left out; the distractor (0) stays in the gallery; query from the query folder
    assert sorted(zip(dataset.identities, dataset.cameras, dataset.is_query)) == [
        (0, 1, False),
        (7, 1, False),
        (7, 2, True),
    ]
    assert dataset.skipped == {"annotations without identity": 1}


def test_market1501_converter_names_bad_file_names(tmp_path) -> None:
    root = _market(tmp_path / "m", {"bounding_box_train": ["0002_c1s1_000451_03.jpg", "x.jpg"]})
    with pytest.raises(CocoDataError, match=r"bounding_box_train/x.jpg"):
        convert("market1501", root, tmp_path / "out.json")
    with pytest.raises(CocoDataError, match="no folder 'query'"):
        convert("market1501", root, tmp_path / "out.json", {"split": "test"})


def test_convert_tool_writes_the_json_and_reports_bad_input_in_one_line(tmp_path) -> None:
    names = ["0002_c1s1_000451_03.jpg", "0005_c2s1_000451_01.jpg"]
    root = _market(tmp_path / "m", {"bounding_box_train": names})
    out = convert_main(["market1501", str(root), "--output", str(tmp_path / "train.json")])
    assert [a["track_id"] for a in json.loads(out.read_text())["annotations"]] == [2, 5]
    test_args = ["market1501", str(root), "--split", "test", "--output", str(tmp_path / "t.json")]
    with pytest.raises(SystemExit, match="^error: .*no folder 'query'"):
        convert_main(test_args)


# ---- model --------------------------------------------------------------------------------------

CATEGORIES = [{"id": 1, "name": "person"}]


@pytest.mark.parametrize("pooling", ["avg", "gem"])
def test_head_pools_c5_by_average_or_gem_before_the_bnneck(pooling) -> None:
    c5 = torch.rand(3, 8, 4, 2) + 0.1
    features, bn_features = ReidHead(8, pooling=pooling)(c5)
    power = 1.0 if pooling == "avg" else 3.0  # GeM starts at p = 3
    expected = c5.pow(power).mean(dim=(2, 3)).pow(1 / power)
    assert features.detach().numpy() == pytest.approx(expected.numpy(), rel=1e-5)
    # BNNeck in training mode: each channel standardised over the batch, no shift
    standardised = (expected - expected.mean(0)) / expected.var(0, unbiased=False).add(1e-5).sqrt()
    assert bn_features.detach().numpy() == pytest.approx(standardised.numpy(), abs=1e-4)


@torch.no_grad()
def test_last_stride_one_keeps_c5_at_stride_16() -> None:
    images = torch.randn(1, 3, 64, 32)
    for last_stride, size in ((2, (2, 1)), (1, (4, 2))):
        model = ReidTask(CATEGORIES, image_size=64, last_stride=last_stride).eval()
        assert tuple(model.backbone(images)["c5"].shape[-2:]) == size
        assert model(images)["embedding"].shape == (1, 512)


def test_model_outputs_unit_embeddings_and_learns_on_one_batch() -> None:
    torch.manual_seed(0)
    model = ReidTask(CATEGORIES, image_size=32, num_identities=4, last_stride=1, lr=1e-3)
    identities = torch.arange(4).repeat_interleave(2)
    images = torch.randn(4, 3, 32, 16).repeat_interleave(2, dim=0)
    images = images + 0.3 * torch.randn_like(images)  # two noisy views per identity
    batch = {"image": images, "identity": identities + 10, "label": identities}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        outputs = model(batch["image"])
        loss = model.compute_loss(outputs, batch)
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append(loss["loss"].item())
    assert outputs["embedding"].shape == (8, 512) and outputs["logits"].shape == (8, 4)
    norms = outputs["embedding"].detach().norm(dim=1)
    assert norms.tolist() == pytest.approx([1.0] * 8, abs=1e-5)
    assert set(loss) == {"loss", "triplet", "id"}
    assert losses[-1] < 0.7 * losses[0]


def test_checkpoint_rebuilds_the_model_and_predict_writes_embeddings(tmp_path) -> None:
    model = ReidTask(CATEGORIES, image_size=32, crop_aspect_ratio=0.75, num_identities=5)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ReidTask.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True).eval()
    assert loaded.classifier.out_features == 5
    images = [np.full((40, 20, 3), v, np.uint8) for v in (10, 200, 90)]
    samples = [loaded.predict_sample(image) for image in images]
    assert samples[0]["image"].shape == (3, 32, 24)
    out = tmp_path / "pred"
    out.mkdir()
    with torch.inference_mode():
        for start, names in ((1, ["a.jpg", "b.jpg"]), (3, ["c.jpg"])):  # two predict.py chunks
            chunk = samples[start - 1 : start - 1 + len(names)]
            batch = {
                "image": torch.stack([s["image"] for s in chunk]),
                "image_id": torch.arange(start, start + len(names)),
            }
            predictions = loaded.decode(loaded(batch["image"]), batch)
            loaded.write_predictions(predictions, images, names, out)
        expected = loaded(torch.stack([s["image"] for s in samples]))["embedding"].numpy()
    assert np.load(out / "embeddings.npy") == pytest.approx(expected, abs=1e-5)
    assert json.loads((out / "embeddings.json").read_text())["files"] == ["a.jpg", "b.jpg", "c.jpg"]


def test_test_run_reports_metrics_and_a_consistent_retrieval_grid(tiny_coco, tmp_path) -> None:
    def mark_queries(data: dict) -> None:  # the first sample of each identity is its query
        cameras = {i["id"]: i["camera_id"] for i in data["images"]}
        seen = {}
        for ann in data["annotations"]:
            ann["is_query"] = ann["track_id"] not in seen
            seen.setdefault(ann["track_id"], cameras[ann["image_id"]])

    index = _edited_copy(tiny_coco, tmp_path, "train", mark_queries)
    data = ReidData(
        train_json=str(index.json_path),
        train_images=str(tiny_coco.train_images),
        val_json=str(index.json_path),
        val_images=str(tiny_coco.train_images),
        image_size=32,
        batch_size=16,
        num_workers=0,
    )
    model = ReidTask(data.categories, image_size=32)
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.test(model, datamodule=data, verbose=False)
    report = model.test_report
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written["headline"] == pytest.approx(report.headline)
    assert all(
        (tmp_path / "report" / name).stat().st_size > 1000 for name in written["figures"].values()
    )
    assert set(written["figures"]) >= {"cmc", "retrieval"}
    assert report.metrics["num_valid_queries"] > 0
    assert set(report.headline) == {"rank1", "rank5", "rank10", "mAP"}
    assert report.metrics["num_queries"] + report.metrics["num_gallery"] == len(
        data.datasets["test"]
    )
    grid = next(f for f in report.figures if f.name == "retrieval").data
    columns = grid["columns"]
    for row in range(len(grid["images"]) // columns):
        captions = grid["captions"][row * columns : (row + 1) * columns]
        query_id = captions[0].split()[2]
        for caption, ok in zip(captions[1:], grid["ok"][row * columns + 1 :]):
            if caption:
                assert ok == (caption.split()[2] == query_id)


def test_predict_on_a_coco_file_embeds_every_box_as_evaluation_does(
    trained_runs, tiny_coco, tmp_path
) -> None:
    from vision_tasks.cli import load_task_checkpoint, predict_main

    checkpoint = trained_runs["reid"] / "checkpoints" / "last.ckpt"
    out = tmp_path / "embeddings"
    predict_main(
        [
            "--coco",
            str(tiny_coco.val_json),
            "--images",
            str(tiny_coco.val_images),
            "--ckpt",
            str(checkpoint),
            "--output",
            str(out),
            "--batch-size",
            "5",
        ]
    )
    listing = json.loads((out / "embeddings.json").read_text())
    embeddings = np.load(out / "embeddings.npy")
    boxes = [
        a for a in json.loads(tiny_coco.val_json.read_text())["annotations"] if not a.get("iscrowd")
    ]
    assert [r["annotation_id"] for r in listing["annotations"]] == [a["id"] for a in boxes]
    assert embeddings.shape == (len(boxes), listing["dim"])
    assert [r["identity"] for r in listing["annotations"]] == [a.get("track_id") for a in boxes]

    # The rows of identity-carrying boxes are what evaluation computes for the same crops.
    model = load_task_checkpoint(checkpoint)
    data = torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]
    dataset = ReidDataset(
        CocoIndex(tiny_coco.val_json, tiny_coco.val_images),
        model.hparams.image_size,
        False,
        model.hparams.crop_aspect_ratio,
        crop_margin=data["crop_margin"],
    )
    row = {r["annotation_id"]: i for i, r in enumerate(listing["annotations"])}
    samples = [dataset[i] for i in range(len(dataset))]
    with torch.inference_mode():
        expected = model(torch.stack([s["image"] for s in samples]))["embedding"].numpy()
    got = embeddings[[row[s["annotation_id"]] for s in samples]]
    assert len(samples) > 0 and got == pytest.approx(expected, abs=1e-5)


def test_predict_needs_images_or_a_coco_file_not_both(trained_runs, tiny_coco) -> None:
    from vision_tasks.cli import predict_main

    checkpoint = str(trained_runs["reid"] / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit):
        predict_main(["--ckpt", checkpoint])
    with pytest.raises(SystemExit):
        predict_main(["--coco", str(tiny_coco.val_json), "--ckpt", checkpoint])  # no --images
