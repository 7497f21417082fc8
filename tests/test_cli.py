"""End to end through the command line: every task fits, tests, reports and re-evaluates."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from vision_tasks import cli
from vision_tasks.checkpoint import load_task_checkpoint
from vision_tasks.cli import evaluate_main, train_main
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


def test_evaluate_without_output_keeps_the_training_report(trained_runs, tiny_coco, capsys):
    run = trained_runs["classify"]
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))[-1]
    trained = {p.relative_to(run): p.read_bytes() for p in (run / "report").rglob("*")}
    assert Path("report/report.json") in trained and Path("report/report.md") in trained
    first = run / f"eval-{tiny_coco.val_json.stem}"  # the split trained with as validation
    headline = evaluate_main(["--task", "classify", "--ckpt", str(best)])
    assert f"report:     {first}/report.md" in capsys.readouterr().out
    written = (first / "report.json").read_bytes()
    assert json.loads(written)["headline"] == pytest.approx(headline)
    evaluate_main(["--task", "classify", "--ckpt", str(best)])  # again: a folder of its own
    second = first.with_name(first.name + "-2")
    assert f"report:     {second}/report.md" in capsys.readouterr().out
    assert (second / "report.md").is_file() and (first / "report.json").read_bytes() == written
    assert {p.relative_to(run): p.read_bytes() for p in (run / "report").rglob("*")} == trained


def test_fresh_report_dir_names_the_split_and_never_reuses_a_folder(tmp_path) -> None:
    from vision_tasks.cli import fresh_report_dir

    (tmp_path / "eval-held_out_v2").mkdir()
    (tmp_path / "eval-held_out_v2" / "report.json").write_text("{}")
    assert fresh_report_dir(tmp_path, "held out/v2") == tmp_path / "eval-held_out_v2-2"
    assert fresh_report_dir(tmp_path, "held out/v2") == tmp_path / "eval-held_out_v2-3"
    assert fresh_report_dir(tmp_path / "new", "../") == tmp_path / "new" / "eval-test"
    assert (tmp_path / "eval-held_out_v2" / "report.json").read_text() == "{}"


def test_checkpoint_of_another_task_is_refused(trained_runs) -> None:
    task, other = "classify", next(t for t in TASKS if t != "classify")
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

    from vision_tasks.cli import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train.time, "strftime", lambda _: "20260101-000000")
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    with ThreadPoolExecutor(4) as pool:  # a sweep launched at once
        versions = list(pool.map(lambda _: train._new_version("detect"), range(4)))
    assert sorted(versions) == ["20260101-000000", *(f"20260101-000000-{n}" for n in (2, 3, 4))]
    assert sorted(p.name for p in (tmp_path / "runs" / "detect").iterdir()) == sorted(versions)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker claims nothing: rank zero names it
    assert train._new_version("detect") == "20260101-000000"
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


# ---- the command line itself: defaults, run folders, output, entry points --------------------


def _help_default(help_text: str, option: str) -> str:
    """The ``default:`` value that ``--help`` prints for ``option`` (its text may wrap)."""
    block = re.search(rf"\n  {re.escape(option)} [A-Z_]+\s(.*?)(?=\n  -)", help_text, re.S)
    assert block, f"{option} not in the help text"
    return re.search(r"default:\s+([^)\s]+)\)", block.group(1)).group(1)


def test_help_shows_the_task_config_values_and_creates_no_run_folder(
    tmp_path, monkeypatch, capsys
) -> None:
    config = yaml.safe_load((cli.CONFIG_DIR / "detect.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        train_main(["--task", "detect", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert float(_help_default(text, "--model.lr")) == config["model"]["lr"]  # 0.003, not 0.001
    assert int(_help_default(text, "--data.image_size")) == config["data"]["image_size"]
    assert int(_help_default(text, "--trainer.max_epochs")) == config["trainer"]["max_epochs"]
    assert not (tmp_path / "runs").exists()


def test_print_config_layers_task_config_then_config_file_then_command_line(
    tmp_path, monkeypatch, capsys
) -> None:
    shared = yaml.safe_load((cli.CONFIG_DIR / "trainer.yaml").read_text())["trainer"]
    task = yaml.safe_load((cli.CONFIG_DIR / "detect.yaml").read_text())
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  lr: 0.02\ndata:\n  batch_size: 3\n")
    monkeypatch.chdir(tmp_path)
    argv = ["--task", "detect", "--config", str(extra), "--data.batch_size", "5", "--print_config"]
    with pytest.raises(SystemExit):
        train_main(argv)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["precision"] == shared["precision"]  # trainer.yaml
    assert printed["trainer"]["max_epochs"] == task["trainer"]["max_epochs"]  # detect.yaml
    assert printed["data"]["image_size"] == task["data"]["image_size"]  # detect.yaml
    assert printed["model"]["lr"] == 0.02  # --config over detect.yaml
    assert printed["data"]["batch_size"] == 5  # the command line over --config
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model.not_a_parameter", "1"], "not_a_parameter"),
        (["--optimizer", "Adam"], "--optimizer is not supported: every task trains with AdamW"),
        (["--lr_scheduler.class_path=StepLR"], "--lr_scheduler is not supported"),
        (["--data.train_json", "missing.json", "--data.train_images", "."], "missing.json"),
    ],
)
def test_a_bad_command_line_fails_in_one_line_and_leaves_no_run_folder(
    argv, message, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        train_main(["--task", "classify", *argv])
    assert message in f"{exit_.value.code} {capsys.readouterr().err}"
    assert not (tmp_path / "runs").exists()


def test_a_run_failing_after_its_loggers_started_removes_its_folder(
    tiny_coco, tmp_path, monkeypatch
) -> None:
    no_samples = json.loads(tiny_coco.train_json.read_text())
    no_samples["annotations"] = []  # classify has nothing to crop: setup refuses the split
    (tmp_path / "empty.json").write_text(json.dumps(no_samples))
    monkeypatch.chdir(tmp_path)
    argv = ["--task", "classify", "--data.train_json", "empty.json"]
    argv += ["--data.train_images", str(tiny_coco.train_images), "--data.num_workers", "0"]
    argv += ["--data.val_json", str(tiny_coco.val_json), "--data.val_images"]
    with pytest.raises(SystemExit, match="the train split has no samples"):
        train_main([*argv, str(tiny_coco.val_images)])
    assert not (tmp_path / "runs").exists()


def test_an_option_a_constructor_refuses_is_one_line_and_leaves_no_run_folder(
    tiny_coco, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--task", "multitask", "--model.heads", "[instance]"]
    argv += ["--model.loss_weights", "{instance: 1.0}", "--data.num_workers", "0"]
    argv += ["--data.train_json", str(tiny_coco.train_json)]
    argv += ["--data.train_images", str(tiny_coco.train_images)]
    with pytest.raises(SystemExit) as exit_:
        train_main(argv)
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "instance needs detect" in message
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_run_folder_is_removed_only_while_it_holds_nothing_but_startup_files(
    tmp_path, monkeypatch
) -> None:
    from jsonargparse import Namespace

    monkeypatch.chdir(tmp_path)
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)

    def started(task: str) -> tuple[cli.RunFolder, Path]:
        run = cli.RunFolder(task, None)
        logger = Namespace(class_path="x", init_args=Namespace(save_dir=run.root, version=None))
        run.claim([logger, Namespace(class_path="y", init_args=Namespace(save_dir="elsewhere"))])
        assert logger.init_args.version == run.version  # the logger writes where it was claimed
        folder = tmp_path / "runs" / task / run.version
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "events.out.tfevents.1.host").write_bytes(b"x")
        (folder / "hparams.yaml").write_text("{}")
        return run, folder

    run, folder = started("detect")
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    run.discard_if_unused()
    assert folder.is_dir()  # it saved a checkpoint: a run that started, kept

    run, folder = started("segment")
    run.discard_if_unused()
    assert not folder.parent.exists()  # runs/segment was this run's own
    assert (tmp_path / "runs" / "detect").is_dir()

    resumed = cli.RunFolder("detect", folder.name)
    resumed.claim([Namespace(class_path="x", init_args=Namespace(save_dir="runs/detect"))])
    assert resumed.claimed == [] and resumed.version == folder.name


def test_epoch_line_shows_loss_headline_and_time_of_that_epoch_only() -> None:
    from types import SimpleNamespace

    import torch

    from vision_tasks.console import EpochSummary

    trainer = SimpleNamespace(
        callback_metrics={
            "train/loss_epoch": torch.tensor(1.23456),
            "train/loss_step": torch.tensor(9.0),
            "val/loss": torch.tensor(0.9),
            "val/AP": torch.tensor(0.45678),
            "val/AP50": torch.tensor(0.7),
        },
        max_epochs=10,
        current_epoch=2,
        sanity_checking=False,
    )
    model = SimpleNamespace(monitor="val/AP")
    summary = EpochSummary()
    summary.on_train_epoch_start(trainer, model)
    line = summary.line(trainer, model)
    assert re.fullmatch(r"epoch 3/10  loss 1\.2346  \d+\.\ds", line)  # no validation yet
    summary.on_validation_end(trainer, model)
    line = summary.line(trainer, model)
    assert re.fullmatch(
        r"epoch 3/10  loss 1\.2346  val/loss 0\.9000  val/AP 0\.4568  \d+\.\ds", line
    )
    trainer.max_epochs = -1  # a time budget only: no total to show
    assert summary.line(trainer, model).startswith("epoch 3  loss")


def test_fit_output_is_quiet_and_the_bar_shows_loss_and_headline_only(
    data_args, tmp_path, monkeypatch, capfd, caplog, recwarn
) -> None:
    from lightning.pytorch.callbacks import TQDMProgressBar

    from vision_tasks.console import HeadlineProgressBar

    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    argv = ["--task", "classify", *data_args, "--data.batch_size", "4"]
    run = train_main([*argv, "--trainer.fast_dev_run", "true"])
    output = capfd.readouterr()
    shown = output.out + output.err + "\n".join(caplog.messages)
    shown += "\n".join(str(w.message) for w in recwarn)
    for noise in ("args parameter is intended", "💡", "litlogger", "GPU available", "Seed set"):
        assert noise not in shown
    assert "Running in `fast_dev_run` mode" in shown  # Lightning's other lines still show
    # tqdm.write clears the bar ("\r   \r") and prints the epoch's line above it
    epoch_line = r"(?:^|\r)epoch 1/1  loss \d+\.\d{4}  val/loss \S+  val/top1 \S+  \S+s$"
    assert re.search(epoch_line, output.out, re.M)
    # fast_dev_run logs nothing, so claims no run folder. (Lightning 2.6's ModelCheckpoint still
    # writes runs/classify/checkpoints/last.ckpt as training ends, fast_dev_run or not.)
    assert [p for p in tmp_path.glob("runs/classify/*") if p.name != "checkpoints"] == []

    trainer, model = run.trainer, run.model
    bar = trainer.progress_bar_callback
    assert isinstance(bar, HeadlineProgressBar)
    assert len(TQDMProgressBar.get_metrics(bar, trainer, model)) > 2  # what it filters
    assert bar.get_metrics(trainer, model) == pytest.approx(
        {
            "loss": float(trainer.progress_bar_metrics["train/loss_step"]),
            "val/top1": float(trainer.callback_metrics["val/top1"]),
        }
    )


def test_vision_tasks_command_dispatches_to_each_tool(capsys) -> None:
    from importlib.metadata import entry_points

    from vision_tasks.__main__ import COMMANDS, main

    expected = {"train", "evaluate", "predict", "export", "convert", "track"}
    assert set(COMMANDS) == expected
    # a wheel has no tools/ folder: every command must live in the package
    assert all(module.startswith("vision_tasks.") for module, _, _ in COMMANDS.values())
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    listed = re.findall(r"^  (\S+) ", capsys.readouterr().out, re.M)
    assert exit_.value.code == 0 and set(listed) == expected
    with pytest.raises(SystemExit, match="unknown command 'fit'; choose one of train, evaluate"):
        main(["fit"])
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--task", "detect", "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and text.startswith("usage: vision-tasks train --task detect")
    # 0.003: vision_tasks/configs/detect.yaml's, as train reads it.
    assert float(_help_default(text, "--model.lr")) == 0.003
    for name in ("evaluate", "convert"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert capsys.readouterr().out.startswith(f"usage: vision-tasks {name} ")
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("vision-tasks") == "vision_tasks.__main__:main"


def test_python_dash_m_runs_the_same_command() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "vision_tasks", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "train     train, validate or test" in done.stdout


def test_values_linked_from_the_data_are_saved_with_the_model(trained_runs, tiny_coco) -> None:
    import torch

    config = yaml.safe_load((cli.CONFIG_DIR / "reid.yaml").read_text())["data"]
    saved = torch.load(trained_runs["reid"] / "checkpoints" / "last.ckpt", weights_only=True)
    train = json.loads(tiny_coco.train_json.read_text())["annotations"]
    identities = {
        a["track_id"] for a in train if not a.get("iscrowd") and a.get("track_id", -1) >= 0
    }
    hparams = saved["hyper_parameters"]
    assert hparams["num_identities"] == len(identities)
    assert saved["state_dict"]["classifier.weight"].shape[0] == len(identities)
    assert hparams["crop_aspect_ratio"] == config["aspect_ratio"]
    saved = torch.load(trained_runs["homography"] / "checkpoints" / "last.ckpt", weights_only=True)
    data = saved["datamodule_hyper_parameters"]
    assert (saved["hyper_parameters"]["patch_size"], saved["hyper_parameters"]["rho"]) == (
        data["patch_size"],
        data["rho"],
    )


def test_linked_values_cannot_be_set_apart_from_the_data(trained_runs, data_args, capsys) -> None:
    import torch

    with pytest.raises(SystemExit):
        train_main(["--task", "reid", *data_args, "--model.num_identities", "7"])
    assert 'Linked "model.num_identities" must be given via' in capsys.readouterr().err
    best = sorted((trained_runs["homography"] / "checkpoints").glob("best-*.ckpt"))[-1]
    rho = torch.load(best, weights_only=True)["hyper_parameters"]["rho"]
    with pytest.raises(SystemExit, match=rf"--data.rho {rho / 2} differs from the {rho} "):
        evaluate_main(["--task", "homography", "--ckpt", str(best), "--data.rho", str(rho / 2)])
