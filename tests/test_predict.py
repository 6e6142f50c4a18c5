"""tagrank-predict on real photos: the same lists as tagrank-eval, from the checkpoint alone; bad input is
one message and nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tagrank.errors import TagrankError
from tagrank.cli.predict import main as predict_main
from tagrank.cli.predict import predict

from .conftest import COCO, compose_cfg, needs_shared, run_command, train_on_coco_mini

TEST_PHOTOS = COCO / "val2017"  # coco-mini's test split


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory, cache_dir):
    """An LSTM whose backbone was fine-tuned before its only validation (tested on the photos through it)."""
    return train_on_coco_mini(tmp_path_factory, cache_dir, "finetuned", "model.finetune_after_steps=3",
                              "model.finetune_lr=0.001")


def predict_cfg(tmp_path, cache_dir, *overrides: str):
    return compose_cfg(list(overrides), tmp_path / "predict-run", cache_dir, config_name="predict")


def eval_lists(run) -> dict[str, list[str]]:
    """What the run's test of best.ckpt (the code path of tagrank-eval) predicted for each test photo."""
    lines = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    return {str(COCO / p["image"]): p["predicted"] for p in lines}


@needs_shared("coco-mini")
@pytest.mark.parametrize("kind", ["coco_run", "finetuned_run"])
def test_predict_gives_tagrank_eval_lists_on_real_photos(kind, request, tmp_path, cache_dir, capsys):
    run, _ = request.getfixturevalue(kind)
    out = tmp_path / "preds.jsonl"
    predict(predict_cfg(tmp_path, cache_dir, f"ckpt_path={run}/checkpoints/best.ckpt", f"images={TEST_PHOTOS}",
                        f"out={out}"))
    got = {r["image"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(got) == len(list(TEST_PHOTOS.iterdir()))  # every photo, also those the test split leaves out
    expected = eval_lists(run)
    assert len(expected) == 77  # coco-mini's test split
    for image, tags in expected.items():
        assert [t["tag"] for t in got[image]["tags"]] == tags, image
    # Softmax probabilities of each step's tag: in (0, 1], and not all alike.
    scores = [t["score"] for r in got.values() for t in r["tags"]]
    assert all(0 < s <= 1 for s in scores) and len(set(scores)) > 10
    printed = capsys.readouterr().out
    assert f"{len(got)} photos tagged" in printed and "score = the softmax probability of the tag at its step" in printed
    first = sorted(expected)[0]
    assert f"{first}  {expected[first][0]} (" in printed  # one row per photo: image, then tag (score), ...


@needs_shared("coco-mini")
def test_csv_and_shorter_lists(coco_run, tmp_path, cache_dir):
    """CSV, one row per tag; a shorter list is the start of the full one (greedy decoding)."""
    run, _ = coco_run
    got = {r["image"]: r for r in predict(predict_cfg(tmp_path, cache_dir, f"ckpt_path={run}/checkpoints/best.ckpt",
                                                      f"images={TEST_PHOTOS}"))}
    csv_out = tmp_path / "preds.csv"
    predict(predict_cfg(tmp_path, cache_dir, f"ckpt_path={run}/checkpoints/best.ckpt", f"images={TEST_PHOTOS}/*.jpg",
                        "top_k=3", f"out={csv_out}", "batch_size=7"))
    rows = csv_out.read_text().splitlines()
    assert rows[0] == "image,rank,tag,score" and len(rows) == 1 + 3 * len(got)
    for row in rows[1:]:
        image, rank, tag, score = row.split(",")
        assert got[image]["tags"][int(rank) - 1]["tag"] == tag
        assert float(score) == pytest.approx(got[image]["tags"][int(rank) - 1]["score"], rel=1e-5)


def photos_and_junk(tmp_path: Path, n: int) -> tuple[Path, list[Path]]:
    """A folder of the first ``n`` test photos and a text file (not an image); the photos' sources."""
    photos = tmp_path / "photos"
    photos.mkdir()
    good = sorted(TEST_PHOTOS.iterdir())[:n]
    for p in good:
        shutil.copy(p, photos / p.name)
    (photos / "notes.txt").write_text("not an image")
    return photos, good


@needs_shared("coco-mini")
def test_unreadable_files_are_reported_skipped_and_counted(coco_run, tmp_path, cache_dir, capsys, caplog):
    run, _ = coco_run
    photos, good = photos_and_junk(tmp_path, 3)
    (photos / "cut.jpg").write_bytes(good[0].read_bytes()[:2000])  # a JPEG cut short
    out = tmp_path / "preds.jsonl"
    with caplog.at_level("WARNING", logger="tagrank"):
        results = predict(predict_cfg(tmp_path, cache_dir, f"ckpt_path={run}/checkpoints/best.ckpt",
                                      f"images={photos}", f"out={out}", "batch_size=2"))
    assert [r["image"] for r in results] == [str(photos / p.name) for p in good]
    assert len(out.read_text().splitlines()) == 3
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(photos / "cut.jpg") in m and "cannot read image" in m for m in warned)
    assert any(str(photos / "notes.txt") in m and "cannot read image" in m for m in warned)
    assert "3 photos tagged, 2 files skipped" in capsys.readouterr().out


@needs_shared("coco-mini")
def test_checkpoint_without_tag_names_falls_back_to_its_run_config(coco_run, tmp_path, cache_dir, caplog):
    run, cfg = coco_run
    old = tmp_path / "old-run"
    (old / "checkpoints").mkdir(parents=True)
    ckpt = torch.load(run / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    del ckpt["tagrank_inputs"]  # as written before tagrank kept them
    torch.save(ckpt, old / "checkpoints/best.ckpt")
    photo = sorted(TEST_PHOTOS.iterdir())[0]
    with pytest.raises(TagrankError, match="holds no tag names .* its run config .* is absent"):
        predict(predict_cfg(tmp_path, cache_dir, f"ckpt_path={old}/checkpoints/best.ckpt", f"images={photo}"))
    (old / ".hydra").mkdir()
    OmegaConf.save(cfg, old / ".hydra/config.yaml")
    with caplog.at_level("WARNING", logger="tagrank"):
        results = predict(predict_cfg(tmp_path, cache_dir, f"ckpt_path={old}/checkpoints/best.ckpt", f"images={photo}"))
    assert "holds no tag names" in caplog.text
    assert [t["tag"] for t in results[0]["tags"]] == eval_lists(run)[str(photo)]


@needs_shared("coco-mini")
@pytest.mark.parametrize("args, message", [
    (["images={empty}"], "images='{empty}': the folder holds no files"),
    (["images={empty}/*.jpg"], "images='{empty}/*.jpg': the pattern matches no file"),
    (["images={empty}/nothing.jpg"], "no such file or folder"),
    (["ckpt_path={empty}/best.ckpt"], "ckpt_path='{empty}/best.ckpt' does not exist"),
    (["top_k=0"], "top_k=0 is out of range: expected int > 0"),
    (["top_k=1000"], "top_k=1000 is out of range: expected 1 to "),
    (["out={empty}/preds.txt"], "expected a file ending in .jsonl or .csv"),
    (["stop=maybe"], "stop='maybe' has the wrong type: expected bool"),
    (["stop=true"], "(LSTMTagger) has no stop rule, it names top_k tags; the scorer has one once validated in "),
])
def test_bad_input_is_one_message_and_nothing_written(coco_run, tmp_path, cache_dir, args, message):
    run, _ = coco_run
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "preds.jsonl"
    given = {"ckpt_path": f"{run}/checkpoints/best.ckpt", "images": str(TEST_PHOTOS), "out": str(out)}
    given.update(a.format(empty=empty).split("=", 1) for a in args)
    with pytest.raises(TagrankError) as err:
        predict(predict_cfg(tmp_path, cache_dir, *(f"{k}={v}" for k, v in given.items())))
    assert message.format(empty=empty) in str(err.value)
    assert not out.exists() and not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob("*.txt"))


@needs_shared("coco-mini")
@pytest.mark.parametrize("setting, message", [
    ("top_k=1000", "tagrank: error: top_k=1000 is out of range"),
    ("out=/proc/preds.jsonl", "tagrank: error: out='/proc/preds.jsonl': the folder /proc "),
])
def test_the_command_exits_2_with_one_line(setting, message, coco_run, tmp_path, cli_env):
    """tagrank-predict's entry run in this process (its console script runs for real in the tests above and below)."""
    run, _ = coco_run
    out = tmp_path / "preds.jsonl"
    args = [f"ckpt_path={run}/checkpoints/best.ckpt", f"images={TEST_PHOTOS}", f"out={out}", setting,
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_command(predict_main, args, cli_env, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in proc.stderr and "photos tagged" not in proc.stdout and not out.exists()


@needs_shared("coco-mini")
def test_the_console_script_keeps_log_lines_off_stdout(coco_run, tmp_path, cli_env):
    run, _ = coco_run
    photos, good = photos_and_junk(tmp_path, 2)
    proc = subprocess.run([sys.executable, "-m", "tagrank.cli.predict", f"ckpt_path={run}/checkpoints/best.ckpt",
                           f"images={photos}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=cli_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # stdout, what a pipe or a redirect gets: the header, a line a photo, the count; the warning on stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and lines[-1] == "2 photos tagged, 1 file skipped (not readable images: see the warnings)"
    assert [line.split()[0] for line in lines[1:3]] == [str(photos / p.name) for p in good]
    assert f"[WARNING] - skipped {photos / 'notes.txt'}: cannot read image" in proc.stderr


@needs_shared("coco-mini")
def test_a_reader_that_stops_early_stops_it_quietly(coco_run, tmp_path, cli_env):
    # `tagrank-predict ... | head -1`: the pipe closed before the tags are printed (here before anything).
    run, _ = coco_run
    proc = subprocess.Popen([sys.executable, "-m", "tagrank.cli.predict", f"ckpt_path={run}/checkpoints/best.ckpt",
                             f"images={TEST_PHOTOS}", f"hydra.run.dir={tmp_path / 'run'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, stderr[-2000:]  # as a writer killed by SIGPIPE: 128 + 13
    assert "Traceback" not in stderr and "Error executing job" not in stderr


@needs_shared("coco-mini")
def test_stop_true_ends_each_list_where_the_scorer_s_rule_does(tmp_path_factory, tmp_path, cache_dir, capsys):
    run, _ = train_on_coco_mini(tmp_path_factory, cache_dir, "frozen", "model=scorer", "trainer.max_steps=10",
                                "trainer.val_check_interval=5", "trainer.check_val_every_n_epoch=null")
    ckpt = run / "checkpoints/best.ckpt"
    threshold = float(torch.load(ckpt, weights_only=True)["state_dict"]["stop_threshold"])
    assert 0 < threshold < 1  # chosen on the validation split while fitting
    full = {r["image"]: r["tags"] for r in predict(predict_cfg(tmp_path, cache_dir, f"ckpt_path={ckpt}",
                                                              f"images={TEST_PHOTOS}"))}
    capsys.readouterr()
    kept = {r["image"]: r["tags"] for r in predict(predict_cfg(tmp_path, cache_dir, f"ckpt_path={ckpt}",
                                                              f"images={TEST_PHOTOS}", "stop=true"))}
    assert kept.keys() == full.keys()
    for image, tags in kept.items():
        n = len(tags)
        assert 1 <= n <= 10 and tags == full[image][:n], image  # the start of the ranked list
        assert all(t["score"] >= threshold for t in tags[1:])  # the first tag is kept whatever its score
        assert n == 10 or full[image][n]["score"] < threshold
    assert any(len(tags) < 10 for tags in kept.values())  # the rule ended lists (top_k would give 10)
    assert f"up to 10 tags, the tags of softmax probability >= {threshold:.4g}, chosen on the validation split" in \
        capsys.readouterr().out


@pytest.mark.parametrize("where", ["proc", "folder", "under a file", "read-only"])
def test_an_out_that_cannot_be_written_is_refused_before_any_work(where, tmp_path, cache_dir, request):
    """Checked before the checkpoint is even read (here it does not exist: that error would come first)."""
    if where == "proc":
        out, expected = Path("/proc/preds.jsonl"), "the folder /proc "
    elif where == "folder":
        out, expected = tmp_path / "preds.jsonl", "is a folder: name a file"
        out.mkdir()
    elif where == "under a file":
        (tmp_path / "file").write_text("the user's file")
        out, expected = tmp_path / "file" / "preds.jsonl", "is a file, so the folder"
    else:
        out, expected = request.getfixturevalue("read_only_folder") / "preds.jsonl", "is on a read-only file system"
    cfg = predict_cfg(tmp_path, cache_dir, f"ckpt_path={tmp_path}/missing.ckpt", f"images={tmp_path}", f"out={out}")
    with pytest.raises(TagrankError, match=rf"^out='{out}'.*{expected}") as err:
        predict(cfg)
    assert "\n" not in str(err.value)
    if where == "under a file":
        assert (tmp_path / "file").read_text() == "the user's file"
    assert not list(tmp_path.glob("**/.preds.jsonl.*"))


