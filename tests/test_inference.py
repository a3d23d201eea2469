"""Using a trained run: evaluate, predict, ONNX export (checked in onnxruntime) and the LR range test."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, one_error_line, tiny_config

import thawline
from thawline.cli import main
from thawline.core.errors import ThawlineError
from thawline.deploy.evaluate import evaluate_run
from thawline.deploy.load import Preprocess, load_run
from thawline.deploy.predict import predict
from thawline.report.metrics import per_class_metrics, read_predictions
from thawline.training.checkpoint import load_checkpoint, save_checkpoint
from thawline.training.lrfind import lr_find, smooth, suggestion


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny trained run for the whole module (training is the slow part)."""
    root = tmp_path_factory.mktemp("inference")
    data = make_image_folder(root / "data")
    config = tiny_config(data, strategy="full", cache_dir=str(root / "cache"))
    result = thawline.train(config, run_dir=root / "run", quiet=True)
    training_predictions = (root / "run" / "predictions.csv").read_text()
    return {"dir": root / "run", "data": data, "summary": result.summary, "train_predictions": training_predictions}


# ---- evaluate ------------------------------------------------------------------------------------------------


def test_evaluate_agrees_with_its_predictions_and_the_training_summary(run: dict, capsys) -> None:
    out = run["dir"]
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "evaluation.json" in printed
    report = json.loads((out / "evaluation.json").read_text())
    assert json.loads((out / "evaluation_test.json").read_text()) == report
    classes = run["summary"]["classes"]
    assert report["split"] == "test" and report["classes"] == classes and report["num_images"] == 24

    # The numbers equal a direct computation on the per-image rows evaluate wrote (evaluation_test.csv) ...
    preds = read_predictions(out / "evaluation_test.csv", classes)
    assert len(preds) == 24 and preds.split == "test"
    assert report["accuracy"] == pytest.approx(float(np.mean(preds.labels == preds.preds)), abs=1e-6)
    direct = per_class_metrics(preds.labels, preds.preds, len(classes))
    for i, c in enumerate(classes):
        got = report["per_class"][c]
        assert got["precision"] == pytest.approx(direct.precision[i], abs=1e-6)
        assert got["recall"] == pytest.approx(direct.recall[i], abs=1e-6)
        assert got["f1"] == pytest.approx(direct.f1[i], abs=1e-6)
        assert got["support"] == direct.support[i] == 8
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 24 and np.trace(cm) == int(preds.correct.sum())
    # ... and the training run's own test accuracy and predictions for the best checkpoint.
    assert report["accuracy"] == pytest.approx(run["summary"]["test_acc"], abs=1e-6)
    assert report["loss"] == pytest.approx(run["summary"]["test_loss"], abs=1e-4)
    train_rows = list(csv.DictReader(io.StringIO(run["train_predictions"])))
    eval_rows = list(csv.DictReader(io.StringIO((out / "evaluation_test.csv").read_text())))
    assert [(r["path"], r["pred"]) for r in eval_rows] == [(r["path"], r["pred"]) for r in train_rows]
    assert (out / "predictions.csv").read_text() == run["train_predictions"]  # the training run's file stays


def test_evaluate_on_val_and_on_a_labelled_folder(run: dict, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(run["dir"]), "--split", "val"]) == 0
    assert json.loads((run["dir"] / "evaluation_val.json").read_text())["num_images"] == 24
    # A folder holding only some of the classes, plus a file that is no image.
    folder = tmp_path / "extra"
    shutil.copytree(run["data"] / "test" / "circle", folder / "circle")
    (folder / "circle" / "broken.png").write_text("not a png")
    ev = evaluate_run(run["dir"], str(folder), write=False)
    assert ev.split == "extra" and len(ev.paths) == 8 and ev.report["num_images"] == 8
    assert [s[0] for s in ev.skipped] == [str(folder / "circle" / "broken.png")]
    assert ev.report["per_class"]["circle"]["support"] == 8 and ev.report["per_class"]["square"]["support"] == 0
    capsys.readouterr()
    # Names training cannot read and macOS metadata files are listed, as in training, not a traceback; an empty
    # folder of a class the run never saw is skipped and said, as training does.
    odd = os.path.join(os.fsencode(folder / "circle"), b"caf\xe9.png")
    shutil.copy(folder / "circle" / "circle_0.png", odd.decode("utf-8", "surrogateescape"))
    (folder / "circle" / "._circle_0.png").write_bytes(b"\0\5\26\7" + b"\0" * 60)
    (folder / "hexagon").mkdir()
    ev = evaluate_run(run["dir"], str(folder), write=False)
    reasons = {Path(p).name: r for p, r in ev.skipped}
    assert len(ev.paths) == 8 and set(reasons) == {"caf\ufffd.png", "._circle_0.png", "hexagon", "broken.png"}
    assert "not valid UTF-8" in reasons["caf\ufffd.png"] and "macOS metadata" in reasons["._circle_0.png"]
    # A class folder the run never saw, holding images, is one line naming it.
    shutil.copy(folder / "circle" / "circle_0.png", folder / "hexagon" / "h.png")
    assert main(["evaluate", str(run["dir"]), "--split", str(folder)]) == 2
    one_error_line(capsys, "hexagon", "not one of the run's classes")
    assert main(["evaluate", str(run["dir"]), "--split", "val", "--batch-size", "0"]) == 2
    one_error_line(capsys, "--batch-size 0: must be at least 1")


def test_evaluate_reads_the_run_own_image_cache(run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The split training decoded is read back from the run's cache (config.yaml's cache_dir), not decoded again
    into the user's default cache."""
    default = tmp_path / "default cache"
    monkeypatch.setenv("THAWLINE_CACHE_DIR", str(default))
    ev = evaluate_run(run["dir"], "test", write=False)
    assert len(ev.paths) == 24 and not default.exists()


def test_bad_run_folders_are_one_line_errors(run: dict, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    one_error_line(capsys, "not found")
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), str(run["data"])]) == 2
    one_error_line(capsys, "no best.pt")
    # A checkpoint whose config claims another number of classes does not fit its weights.
    state = load_checkpoint(run["dir"] / "best.pt")
    state["config"] = {**state["config"], "classes": ["a", "b", "c", "d"]}
    state.pop("format")
    (tmp_path / "mismatch").mkdir()
    save_checkpoint(tmp_path / "mismatch" / "best.pt", state)
    with pytest.raises(ThawlineError, match="does not fit test_efficientnet with 4 classes"):
        load_run(tmp_path / "mismatch")
    assert main(["export", str(tmp_path / "mismatch")]) == 2
    one_error_line(capsys, "does not fit")


def test_tta_averages_the_probabilities_of_each_image_and_its_mirror(run: dict, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from thawline.deploy.load import logits_of

    model, _ = load_run(run["dir"])
    x = torch.randn(3, 3, 32, 32)
    mean = (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(-1)), 1)) / 2
    got = logits_of(model, x, torch.device("cpu"), tta=True)
    assert torch.allclose(torch.softmax(got, 1), mean, atol=1e-6) and torch.allclose(got.exp().sum(1), torch.ones(3))

    # predict --tta on an image = the mean of plain predictions on the image and on its mirrored copy
    folder = tmp_path / "pair"
    folder.mkdir()
    src = run["data"] / "test" / "stripes" / "stripes_0.png"
    shutil.copy(src, folder / "a.png")
    Image.open(src).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.png")
    n = len(run["summary"]["classes"])
    plain = {
        Path(r.path).name: dict(zip(r.labels, r.probs, strict=True)) for r in predict(run["dir"], [folder], top_k=n)
    }
    tta = predict(run["dir"], [folder / "a.png"], top_k=n, tta=True)[0]
    for label, p in zip(tta.labels, tta.probs, strict=True):
        assert p == pytest.approx((plain["a.png"][label] + plain["b.png"][label]) / 2, abs=1e-5)

    # evaluate --tta: its own files, marked, beside the plain evaluation (which it leaves alone)
    assert main(["evaluate", str(run["dir"])]) == 0
    plain_report = (run["dir"] / "evaluation_test.json").read_text()
    assert main(["evaluate", str(run["dir"]), "--tta"]) == 0
    assert "test (mirror-averaged): 24 images" in capsys.readouterr().out
    report = json.loads((run["dir"] / "evaluation_test_tta.json").read_text())
    assert report["tta"] is True and report["num_images"] == 24
    assert (run["dir"] / "evaluation_test.json").read_text() == plain_report
    assert json.loads((run["dir"] / "evaluation.json").read_text())["tta"] is True  # evaluation.json: the latest
    assert (run["dir"] / "evaluation_test_tta.csv").is_file()

    # a run trained without flips: mirrored images may be another class (text, digits); refused in one line
    state = load_checkpoint(run["dir"] / "best.pt")
    state["config"] = {**state["config"], "hflip": False}
    state.pop("format")
    (tmp_path / "noflip").mkdir()
    save_checkpoint(tmp_path / "noflip" / "best.pt", state)
    for argv in (
        ["evaluate", str(tmp_path / "noflip"), "--tta"],
        ["predict", str(tmp_path / "noflip"), str(src), "--tta"],
    ):
        assert main(argv) == 2
        one_error_line(capsys, "trained without flips")


# ---- predict -------------------------------------------------------------------------------------------------


@pytest.fixture
def mixed_folder(run: dict, tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(run["data"] / "test" / "circle" / "circle_0.png", folder / "a.png")
    shutil.copy(run["data"] / "test" / "square" / "square_0.png", folder / "b.png")
    shutil.copy(run["data"] / "test" / "stripes" / "stripes_0.png", folder / "nested" / "c.png")
    good = (run["data"] / "test" / "circle" / "circle_1.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "nested" / "notes.jpg").write_text("this is text, not a JPEG\n")
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return folder


def test_predict_reports_bad_files_and_predicts_the_rest(run: dict, mixed_folder: Path, capsys) -> None:
    assert main(["predict", str(run["dir"]), str(mixed_folder), "--top-k", "2", "--format", "json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert (doc["predicted"], doc["failed"], doc["skipped"]) == (3, 2, 1)  # readme.txt is listed, not tried
    assert "predicted 3 image(s), 2 failed, 1 skipped (not image files, listed above)" in captured.err
    by_name = {Path(r["path"]).name: r for r in doc["results"]}
    assert set(by_name) == {"a.png", "b.png", "c.png", "truncated.png", "notes.jpg", "readme.txt"}
    assert "truncated" in by_name["truncated.png"]["error"]
    assert "not an image" in by_name["notes.jpg"]["error"]
    assert "not an image file extension (.txt)" in by_name["readme.txt"]["error"]  # said, not silently dropped
    assert by_name["readme.txt"]["skipped"] is True and "skipped" not in by_name["notes.jpg"]
    classes = set(run["summary"]["classes"])
    for name in ("a.png", "b.png", "c.png"):
        top = by_name[name]["top_k"]
        probs = [t["probability"] for t in top]
        assert len(top) == 2 and {t["label"] for t in top} <= classes
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6 and all(0 <= p <= 1 for p in probs)

    assert main(["predict", str(run["dir"]), str(mixed_folder), "--format", "csv", "--batch-size", "2"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 6 and sum(bool(r["error"]) for r in rows) == 3
    for r in rows:
        if not r["error"]:  # top-3 of 3 classes: every class once, probabilities summing to 1
            assert {r["label_1"], r["label_2"], r["label_3"]} == classes
            assert sum(float(r[f"prob_{i}"]) for i in (1, 2, 3)) == pytest.approx(1, abs=1e-5)
            assert float(r["prob_1"]) >= float(r["prob_2"]) >= float(r["prob_3"])

    missing = mixed_folder / "missing.png"
    assert main(["predict", str(run["dir"]), str(mixed_folder / "a.png"), str(missing)]) == 0
    table = capsys.readouterr().out
    assert f"{missing}" in table and "no such file or folder" in table and "1 failed" in table
    assert "skipped" not in table  # a path named on the command line is never merely skipped
    pipe, moved = mixed_folder / "pipe.png", mixed_folder / "moved.png"
    os.mkfifo(pipe)
    moved.symlink_to(mixed_folder / "gone.png")
    assert main(["predict", str(run["dir"]), str(mixed_folder / "a.png"), str(pipe), str(moved)]) == 0
    table = capsys.readouterr().out
    assert "not a regular file or folder" in table and "broken symbolic link" in table and "2 failed" in table

    assert main(["predict", str(run["dir"]), str(mixed_folder / "truncated.png")]) == 1
    one_error_line(capsys, "none of the 1 input(s)")


def test_predict_batches_give_the_same_answers(run: dict, mixed_folder: Path) -> None:
    one = predict(run["dir"], [mixed_folder], top_k=5, batch_size=1)
    many = predict(run["dir"], [mixed_folder], top_k=5, batch_size=64)
    assert [r.path for r in one] == [r.path for r in many]
    for a, b in zip(one, many, strict=True):
        assert a.labels == b.labels and a.error == b.error
        assert np.allclose(a.probs, b.probs, atol=1e-5)


# ---- export --------------------------------------------------------------------------------------------------


def test_onnx_export_matches_pytorch_in_onnxruntime(run: dict, tmp_path: Path, capsys) -> None:
    import onnxruntime as ort

    assert main(["export", str(run["dir"]), "--format", "onnx", "--dynamic-batch"]) == 0
    out = capsys.readouterr().out
    assert "max abs logit difference" in out and "images from" in out
    onnx_path, prep_path = run["dir"] / "model.onnx", run["dir"] / "preprocessing.json"
    info = json.loads(prep_path.read_text())
    assert info["classes"] == run["summary"]["classes"] and info["img_size"] == 32
    assert info["input"]["name"] == "input" and info["input"]["layout"] == "NCHW"
    assert info["input"]["shape"] == ["batch", 3, 32, 32]

    # Independently of export's own check: real images through the run's preprocessing, batch sizes 1 and 3.
    model, cfg = load_run(run["dir"])
    prep = Preprocess.from_config(cfg)
    assert (prep.img_size, tuple(prep.mean)) == (32, tuple(info["mean"]))
    files = sorted((run["data"] / "val").rglob("*.png"))[::5][:3]
    x = prep(files)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (x[:1], x[:3]):
        got = session.run(None, {"input": batch.numpy()})[0]
        with torch.inference_mode():
            ref = model(batch).numpy()
        assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4

    # A fixed-batch export to another file: preprocessing.json goes beside it.
    target = tmp_path / "deploy" / "clf.onnx"
    assert main(["export", str(run["dir"]), "--out", str(target)]) == 0
    assert target.is_file() and json.loads((target.parent / "preprocessing.json").read_text())["input"]["shape"][0] == 1


# ---- lr-find -------------------------------------------------------------------------------------------------


def test_lr_find_writes_plot_and_a_finite_suggestion(run: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "lr"
    args = ["lr-find", "--data", str(run["data"]), "--model", "test_efficientnet", "--weights", "none"]
    args += ["--img-size", "32", "--batch-size", "8", "--workers", "1", "--strategy", "full"]
    assert main([*args, "--steps", "40", "--out", str(out), "--quiet"]) == 0
    assert "suggested lr:" in capsys.readouterr().out
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "lr_find.json").read_text())
    assert math.isfinite(doc["suggested_lr"]) and 1e-7 <= doc["suggested_lr"] <= 10
    assert doc["info"]["phase"]["train"] == "all" and len(doc["lrs"]) <= 40
    assert doc["lrs"] == sorted(doc["lrs"]) and doc["lrs"][0] == pytest.approx(1e-7)

    # The Python API (what `--lr auto` calls), on the head-only strategy's cached features.
    options = {"model": "test_efficientnet", "weights": "none", "img_size": 32, "batch_size": 8, "workers": 1}
    config = thawline.make_config(data=str(run["data"]), strategy="head-only", **options)
    result = lr_find(config, steps=20, quiet=True)
    assert result.info["feature_cache"] and result.info["phase"]["train"] == "head"
    assert math.isfinite(result.suggested_lr) and result.suggested_lr > 0


def test_suggestion_is_half_way_down_the_valley() -> None:
    lrs = list(np.logspace(-7, 1, 81))
    x = np.log10(lrs)
    # Flat with noise, a fall from 1e-5 to 1e-2, a minimum near 1e-1, then divergence.
    rng = np.random.default_rng(0)
    loss = 2.0 - 1.5 / (1 + np.exp(-(x + 3.5) * 2)) + np.where(x > -1, (x + 1) ** 2 * 4, 0)
    loss = loss + np.where(x < -5.5, rng.normal(0, 0.02, len(x)), 0)
    pick = suggestion(lrs, list(loss))
    assert pick.method == "valley" and pick.lr == pick.valley_lr
    assert 1e-5 < pick.lr < 1e-2 and pick.lr < pick.min_loss_lr / 3
    assert 1e-2 < pick.min_loss_lr < 1 and 1e-5 < pick.steepest_lr < 1e-2
    # Too few points: min / 10.
    pick = suggestion(lrs[:3], [1.0, 0.5, 0.9])
    assert pick.method == "min/10" and pick.lr == pytest.approx(lrs[1] / 10)
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])
