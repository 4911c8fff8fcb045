"""``ssamba predict`` and ``ssamba embed`` over a folder with a corrupt file: every good file is processed, the bad
one is reported (stderr, index, exit code 1)."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from _inference_helpers import (FINETUNE, LABELS, PRETRAIN, one_thread, shallow_copy, tone, tts_files,  # noqa: F401
                                write_wav)
from safetensors.numpy import load_file

import ssamba
from ssamba.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return shallow_copy(FINETUNE, tmp_path_factory.mktemp("m") / "shallow", labels=LABELS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    for word in ("yes", "no"):
        (root / word).mkdir()
        for k, f in enumerate(tts_files(word, 2)):
            shutil.copy(f, root / word / f"clip{k}.wav")  # the same file names in both folders
    (root / "no" / "broken.wav").write_bytes(b"not audio at all" * 50)
    write_wav(root / "long.flac", tone(12.0), subtype="PCM_16")
    return root


def test_predict_folder_json_reports_the_corrupt_file_and_finishes(model_dir, folder, capsys):
    assert main(["predict", str(folder), "--model", str(model_dir), "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert len(records) == 6  # 4 clips + broken + long, sorted by path
    broken = [r for r in records if "error" in r]
    assert [r["source"] for r in broken] == [str(folder / "no" / "broken.wav")]
    assert "not a readable audio file" in broken[0]["error"]
    assert "broken.wav" in captured.err and "5 of 6 inputs done, 1 failed" in captured.err
    model = ssamba.load(model_dir)
    for rec in records:
        if "error" not in rec:
            assert [t["label"] for t in rec["top"]] == [lab for lab, _ in model.predict(rec["source"], top_k=2).top]
            assert all(t["label"] in LABELS for t in rec["top"])


def test_predict_bf16_precision_matches_the_api(model_dir, folder, capsys):
    """--precision bf16 reaches the Predictor: the CLI's scores are the API's bf16 ones."""
    files = [folder / "yes" / "clip0.wav", folder / "no" / "clip1.wav"]
    assert main(["predict", *map(str, files), "--model", str(model_dir), "--top-k", "3",
                 "--precision", "bf16"]) == 0
    records = json.loads(capsys.readouterr().out)
    model = ssamba.load(model_dir)
    for rec, pred in zip(records, model.predict(files, top_k=3, precision="bf16")):
        assert [t["label"] for t in rec["top"]] == [lab for lab, _ in pred.top]
        assert [t["score"] for t in rec["top"]] == pytest.approx([s for _, s in pred.top], abs=1e-6)


def test_predict_csv_per_second_to_a_file(model_dir, folder, tmp_path):
    out = tmp_path / "labels.csv"
    long_file = folder / "long.flac"
    assert main(["predict", str(long_file), "--model", str(model_dir), "--format", "csv", "--top-k", "1",
                 "--per-second", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["second"] for r in rows] == [""] + [str(s) for s in range(12)]
    assert all(r["source"] == str(long_file) and r["rank"] == "1" and r["label"] in LABELS for r in rows)


def test_a_failed_predict_leaves_an_earlier_out_file_whole(tmp_path, caplog):
    """--out is written atomically: a job that fails (here: a model without a classification head) does not
    truncate the results of an earlier run."""
    out = tmp_path / "labels.json"
    out.write_text('[{"source": "earlier results"}]\n')
    headless = shallow_copy(PRETRAIN, tmp_path / "pretrained")
    assert main(["predict", str(tts_files("yes", 1)[0]), "--model", str(headless), "--out", str(out)]) == 2
    assert "without a classification head" in caplog.text
    assert out.read_text() == '[{"source": "earlier results"}]\n' and sorted(tmp_path.iterdir()) == [
        out, tmp_path / "pretrained"]


def test_embed_writes_each_file_atomically(model_dir, tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) leaves the earlier file whole and no temporary behind."""
    from ssamba.inference import jobs

    source = tts_files("yes", 1)[0]
    out = tmp_path / "emb"
    assert main(["embed", str(source), "--model", str(model_dir), "--out", str(out)]) == 0
    target = out / (source.name + ".npy")
    earlier = target.read_bytes()

    def torn(f, value):
        f.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jobs.np, "save", torn)
    with pytest.raises(OSError, match="No space left"):
        jobs.embed_files(ssamba.inference.Predictor(ssamba.load(model_dir)), [source], out)
    assert target.read_bytes() == earlier and sorted(p.name for p in out.iterdir()) == [target.name, "index.csv"]


def test_embed_folder_writes_npy_per_file_and_an_index(model_dir, folder, tmp_path, capsys):
    out = tmp_path / "emb"
    assert main(["embed", str(folder), "--model", str(model_dir), "--out", str(out), "--timestamps"]) == 1
    index = list(csv.DictReader((out / "index.csv").open()))
    assert len(index) == 6 and [r["status"] for r in index].count("error") == 1
    ok = [r for r in index if r["status"] == "ok"]
    # yes/clip0.wav and no/clip0.wav stay apart: output stems mirror the folders and keep the suffix
    assert (out / "yes" / "clip0.wav.npy").is_file() and (out / "no" / "clip0.wav.npy").is_file()
    assert not np.array_equal(np.load(out / "yes" / "clip0.wav.npy"), np.load(out / "no" / "clip0.wav.npy"))
    assert not (out / "no" / "broken.wav.npy").exists()
    model = ssamba.load(model_dir)
    for row in ok:
        files = row["files"].split(";")
        clip, frames, stamps = (np.load(out / f) for f in files)
        expected = model.embed(row["source"])
        np.testing.assert_allclose(clip, expected.clip, atol=1e-6)
        assert frames.shape == (int(row["frames"]), 192) and stamps.shape == (int(row["frames"]),)
    assert "broken.wav" in capsys.readouterr().err


def test_embed_safetensors_without_timestamps(model_dir, tmp_path):
    files = tts_files("down", 2)
    out = tmp_path / "emb"
    assert main(["embed", *map(str, files), "--model", str(model_dir), "--out", str(out),
                 "--format", "safetensors", "--stats", "speechcommands"]) == 0
    for f in files:
        tensors = load_file(out / (f.name + ".safetensors"))
        assert set(tensors) == {"clip"} and tensors["clip"].shape == (192,)
    expected = ssamba.load(model_dir).embed(files[0], stats="speechcommands").clip
    np.testing.assert_allclose(load_file(out / (files[0].name + ".safetensors"))["clip"], expected, atol=1e-6)


def test_embed_keeps_files_that_differ_only_in_suffix_apart(model_dir, tmp_path):
    words = tmp_path / "in"
    (words / "sub").mkdir(parents=True)
    yes, no = tts_files("yes", 1)[0], tts_files("no", 1)[0]
    shutil.copy(yes, words / "a.wav")
    write_wav(words / "a.flac", ssamba.audio.load_audio(no)[0][0].numpy(), subtype="PCM_16")
    shutil.copy(yes, words / "a.frames.wav")  # its clip file must not land on a.wav's frame matrix
    out = tmp_path / "emb"
    assert main(["embed", str(words), "--model", str(model_dir), "--out", str(out), "--timestamps"]) == 0
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(
        f"{stem}{extra}.npy" for stem in ("a.wav", "a.flac", "a.frames.wav") for extra in ("", ".frames", ".timestamps"))
    assert np.load(out / "a.wav.frames.npy").ndim == 2 and np.load(out / "a.frames.wav.npy").shape == (192,)
    assert not np.array_equal(np.load(out / "a.wav.npy"), np.load(out / "a.flac.npy"))


def test_cli_errors_name_the_problem(model_dir, tmp_path, caplog, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    good = tts_files("yes", 1)[0]
    # a folder without audio is one failed input: the other inputs are still predicted
    assert main(["predict", str(good), str(empty), "--model", str(model_dir)]) == 1
    records = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in records] == [str(good), str(empty)] and "top" in records[0]
    assert records[1]["error"].startswith(f"{empty}: folder holds no audio files")
    # MEAN,STD statistics start with a minus sign: taken as the option's value, not as an option
    assert main(["predict", str(good), "--model", str(model_dir), "--stats", "-6.845978,5.5654526"]) == 0
    [with_stats] = json.loads(capsys.readouterr().out)
    expected = ssamba.load(model_dir).predict(good, stats=(-6.845978, 5.5654526))
    assert [t["label"] for t in with_stats["top"]] == [label for label, _ in expected.top]
    assert with_stats["top"][0]["score"] == pytest.approx(expected.top[0][1], abs=1e-6)
    assert main(["predict", str(good), "--model", str(model_dir), "--stats", "-6.8,zero"]) == 2
    assert "expected a preset name or MEAN,STD" in caplog.text
    assert main(["predict", str(tmp_path), "--model", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: no such file or directory" in caplog.text


def test_mono_option_picks_the_channel_policy(model_dir, tmp_path, capsys):
    """--mono mean averages a stereo file's channels (default: its first channel, as the official pipeline)."""
    left, right = tone(1.5, freq=440.0, seed=1), tone(1.5, freq=2500.0, seed=2)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    model = ssamba.load(model_dir)
    for option, expected in ((["--mono", "mean"], (left + right) / 2), ([], left)):
        assert main(["embed", str(path), "--model", str(model_dir), "--out", str(tmp_path / f"e{len(option)}"),
                     *option]) == 0
        clip = np.load(tmp_path / f"e{len(option)}" / "stereo.wav.npy")
        np.testing.assert_allclose(clip, np.asarray(model.embed(expected.astype(np.float32)).clip), atol=1e-5, rtol=0)
    capsys.readouterr()


def test_max_frames_alone_can_be_lowered_and_counts_must_be_positive(model_dir, folder, capsys):
    """--max-frames 512 once failed because the default 1000-frame overlap did not fit: the default overlap is now
    at most half a window; --top-k 0 once returned one label without a word."""
    long = str(folder / "long.flac")  # 12 s: windows of 512 frames overlapping by 256
    assert main(["predict", long, "--model", str(model_dir), "--max-frames", "512", "--top-k", "2"]) == 0
    windowed = json.loads(capsys.readouterr().out)
    whole = json.loads(main(["predict", long, "--model", str(model_dir), "--top-k", "2"]) == 0
                       and capsys.readouterr().out)
    assert [t["label"] for t in windowed[0]["top"]] == [t["label"] for t in whole[0]["top"]]
    for option in (["--top-k", "0"], ["--batch-size", "0"], ["--max-frames", "-5"]):
        with pytest.raises(SystemExit):
            main(["predict", long, "--model", str(model_dir), *option])
        assert "must be a positive integer" in capsys.readouterr().err


def test_version(capsys):
    import torch

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ssamba {ssamba.__version__} (torch {torch.__version__})"


def test_predict_activation_option(model_dir, capsys):
    good = tts_files("yes", 1)[0]
    model = ssamba.load(model_dir)
    for activation in ("none", "sigmoid"):
        assert main(["predict", str(good), "--model", str(model_dir), "--top-k", "3", "--activation", activation]) == 0
        [record] = json.loads(capsys.readouterr().out)
        expected = model.predict(good, top_k=3, activation=activation)
        assert [t["label"] for t in record["top"]] == [label for label, _ in expected.top]
        assert [t["score"] for t in record["top"]] == pytest.approx([s for _, s in expected.top], abs=1e-6)
    softmax = model.predict(good, top_k=3).top
    assert [s for _, s in expected.top] != pytest.approx([s for _, s in softmax], abs=1e-3)  # sigmoid != default
