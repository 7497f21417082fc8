"""End to end through the command line: every task fits, tests, reports and re-evaluates."""

from __future__ import annotations

import json

import pytest

from vision_tasks.cli import evaluate_main, load_task_checkpoint, train_main
from vision_tasks.tasks import TASKS


@pytest.mark.parametrize("task", list(TASKS))
def test_fit_writes_checkpoints_logs_and_report(trained_runs, task: str) -> None:
    run = trained_runs[task]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    assert (run / "metrics.csv").is_file() and list(run.glob("events.out.tfevents.*"))
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["task"] == task and report["headline"]
    for name in report["figures"].values():
        assert (run / "report" / name).stat().st_size > 1000
    assert "## Headline" in (run / "report" / "report.md").read_text()


@pytest.mark.parametrize("task", list(TASKS))
def test_evaluate_from_checkpoint_alone_matches_training_report(trained_runs, task, tmp_path):
    run = trained_runs[task]
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))[-1]
    headline = evaluate_main(["--task", task, "--ckpt", str(best), "--output", str(tmp_path)])
    trained = json.loads((run / "report" / "report.json").read_text())["headline"]
    assert headline == pytest.approx(trained, abs=1e-6)
    assert (tmp_path / "report.md").is_file()


def test_checkpoint_of_another_task_is_refused(trained_runs) -> None:
    task, other = "classify", next((t for t in TASKS if t != "classify"), None)
    if other is None:
        pytest.skip("only one task registered")
    ckpt = trained_runs[other] / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit, match=f"this is a {other} checkpoint; use --task {other}"):
        load_task_checkpoint(ckpt, task)


def test_unknown_task_and_unknown_config_key_fail_clearly(data_args, capsys) -> None:
    with pytest.raises(SystemExit, match="--task must be one of"):
        train_main(["--task", "segmentation-typo"])
    with pytest.raises(SystemExit):
        train_main(["--task", "classify", "--model.not_a_parameter", "1", *data_args])
    assert "not_a_parameter" in capsys.readouterr().err


def test_predict_on_a_coco_file_keeps_its_image_ids(trained_runs, tiny_coco, tmp_path) -> None:
    from pycocotools.coco import COCO

    from vision_tasks.cli import predict_main

    checkpoint = trained_runs["detect"] / "checkpoints" / "last.ckpt"
    predict_main(
        [
            "--coco",
            str(tiny_coco.val_json),
            "--images",
            str(tiny_coco.val_images),
            "--ckpt",
            str(checkpoint),
            "--output",
            str(tmp_path),
        ]
    )
    truth = COCO(str(tiny_coco.val_json))
    files = json.loads((tmp_path / "files.json").read_text())
    assert {int(k): v.rsplit("/", 1)[-1] for k, v in files.items()} == {
        i["id"]: i["file_name"] for i in truth.dataset["images"]
    }
    results = json.loads((tmp_path / "results.json").read_text())
    assert results and {r["image_id"] for r in results} <= set(truth.getImgIds())
    truth.loadRes(str(tmp_path / "results.json"))  # COCOeval-ready against the same file


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from vision_tasks import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda _: "20260101-000000")
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    with ThreadPoolExecutor(4) as pool:  # a sweep launched at once
        versions = list(pool.map(lambda _: cli._new_version("detect"), range(4)))
    assert sorted(versions) == ["20260101-000000", *(f"20260101-000000-{n}" for n in (2, 3, 4))]
    assert sorted(p.name for p in (tmp_path / "runs" / "detect").iterdir()) == sorted(versions)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker claims nothing: rank zero names it
    assert cli._new_version("detect") == "20260101-000000"
    assert len(list((tmp_path / "runs" / "detect").iterdir())) == 4


def test_fit_starts_from_the_backbone_of_another_tasks_checkpoint(
    trained_runs, data_args, tmp_path, monkeypatch
) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    source = trained_runs["detect"] / "checkpoints" / "last.ckpt"
    cli = train_main(
        [
            "--task",
            "classify",
            *data_args,
            "--model.backbone_weights",
            str(source),
            "--trainer.fast_dev_run",
            "true",
        ]
    )
    assert cli.model.hparams.backbone_weights == str(source)
    # fast_dev_run takes one optimiser step: the stem's BatchNorm statistics still match the
    # detector's running mean up to that step's momentum, far from a fresh init's zeros.
    detector = torch.load(source, map_location="cpu", weights_only=True)["state_dict"]
    start = detector["backbone.stem.0.weight"]
    moved = (cli.model.backbone.stem[0].weight.detach() - start).abs().max()
    assert moved < 0.05 * start.abs().max()


def test_evaluate_names_its_split_and_reads_only_that_file(
    trained_runs, tiny_coco, tmp_path, capsys
) -> None:
    best = sorted((trained_runs["detect"] / "checkpoints").glob("best-*.ckpt"))[-1]
    missing = tmp_path / "moved_away.json"  # the training file is not needed to evaluate
    evaluate_main(
        [
            "--task",
            "detect",
            "--ckpt",
            str(best),
            "--output",
            str(tmp_path / "a"),
            "--data.train_json",
            str(missing),
            "--data.test_json",
            str(tiny_coco.val_json),
            "--data.test_images",
            str(tiny_coco.val_images),
            "--split",
            "held-out",
        ]
    )
    name = tiny_coco.val_json.name
    assert f"== detect: evaluation on held-out ({name}) ==" in capsys.readouterr().out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["meta"]["split"] == f"held-out ({name})"
    assert f"- **split**: held-out ({name})" in (tmp_path / "a" / "report.md").read_text()


def test_evaluate_refuses_a_test_split_with_other_categories(
    trained_runs, tiny_coco, tmp_path
) -> None:
    best = sorted((trained_runs["detect"] / "checkpoints").glob("best-*.ckpt"))[-1]
    data = json.loads(tiny_coco.val_json.read_text())
    data["categories"] = data["categories"][:-1]
    dropped = {c["id"] for c in json.loads(tiny_coco.val_json.read_text())["categories"]} - {
        c["id"] for c in data["categories"]
    }
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] not in dropped]
    other = tmp_path / "fewer_classes.json"
    other.write_text(json.dumps(data))
    with pytest.raises(
        SystemExit,
        match=r"fewer_classes.json: category ids .* differ from the "
        r"checkpoint's",
    ):
        evaluate_main(
            [
                "--task",
                "detect",
                "--ckpt",
                str(best),
                "--output",
                str(tmp_path / "b"),
                "--data.test_json",
                str(other),
                "--data.test_images",
                str(tiny_coco.val_images),
            ]
        )
