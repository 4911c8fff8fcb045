"""`ssamba prepare`: every corpus recipe on its native layout (the real tts-commands set, synthetic trees for the
others, with the real file names and metadata formats) and the resampling cache."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _audio_helpers import TTS_COMMANDS, write_tone

from ssamba.cli import main
from ssamba.data.corpora.speechcommands import KS1_CLASSES, V2_WORDS
from ssamba.data.manifest import read_class_labels, read_csv_manifest, read_json_manifest
from ssamba.data.prepare import prepare
from ssamba.data.sequences import SequenceConfig, plan_sequences

TARGETS = {"yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"}


def _speaker(path: str) -> str:
    return Path(path).name.split("_nohash_")[0]


def _tiny(path: Path, sr: int = 16000) -> None:
    write_tone(path, seconds=0.05, sr=sr)


def test_speechcommands_v2_on_tts_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "speechcommands", "--root", str(TTS_COMMANDS), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "800 clips, 35 classes" in out and "clips per class: 20 (bed) to 60 (yes)" in out
    labels = read_class_labels(tmp_path / "class_labels_indices.csv")
    assert labels.mids == V2_WORDS and len(labels) == 35 and labels.mids[:3] == ("backward", "bed", "bird")
    splits = {s: read_json_manifest(tmp_path / f"{s}.json") for s in ("train", "validation", "test")}
    assert {s: len(e) for s, e in splits.items()} == {"train": 640, "validation": 80, "test": 80}
    for split, entries in splits.items():  # per word: 48/6/6 for targets, 16/2/2 for fillers (README)
        counts = Counter(e.labels[0] for e in entries)
        assert len(counts) == 20
        for word, n in counts.items():
            assert n == {"train": 48, "validation": 6, "test": 6}[split] * (1 if word in TARGETS else 1 / 3)
    speakers = {s: {_speaker(e.path) for e in entries} for s, entries in splits.items()}
    assert {s: len(v) for s, v in speakers.items()} == {"train": 64, "validation": 8, "test": 8}
    assert not (speakers["train"] & speakers["validation"] or speakers["train"] & speakers["test"]
                or speakers["validation"] & speakers["test"])
    listed = set((TTS_COMMANDS / "validation_list.txt").read_text().split())
    assert {str(Path(e.path).relative_to(TTS_COMMANDS)) for e in splits["validation"]} == listed
    assert all(Path(e.path).is_absolute() and Path(e.path).is_file() for e in splits["test"])
    assert len(read_csv_manifest(tmp_path / "all.csv")) == 800


def test_speechcommands_found_classes(tmp_path: Path) -> None:
    report = prepare("speechcommands", TTS_COMMANDS, tmp_path, classes="found")
    assert report.num_classes == 20 and len(read_class_labels(tmp_path / "class_labels_indices.csv")) == 20


def test_speechcommands_v1_ks1_superb_task(tmp_path: Path) -> None:
    report = prepare("speechcommands-v1", TTS_COMMANDS, tmp_path)
    assert read_class_labels(tmp_path / "class_labels_indices.csv").mids == KS1_CLASSES
    counts = {s: Counter(e.labels[0] for e in read_json_manifest(tmp_path / f"{s}.json"))
              for s in ("train", "validation", "test")}
    for split, factor in (("train", 8), ("validation", 1), ("test", 1)):
        assert all(counts[split][w] == 6 * factor for w in TARGETS)
        assert counts[split]["_unknown_"] == 20 * factor  # the 10 filler words, 2 clips each per 10 %
        assert counts[split]["_silence_"] == 12 * factor  # 6 noise files x 20 s = 120 one-second segments
    silence = [e for e in read_csv_manifest(tmp_path / "all.csv") if e.labels == ("_silence_",)]
    assert len({e.path for e in silence}) == 120 and report.split_counts["train"] == 480 + 160 + 96
    info = sf.info(silence[0].path)
    assert (info.samplerate, info.frames) == (16000, 16000)
    noise, _ = sf.read(str(TTS_COMMANDS / "_background_noise_" / "babble.wav"), dtype="int16")
    cut, _ = sf.read(str(tmp_path / "_silence_" / "babble_003.wav"), dtype="int16")
    np.testing.assert_array_equal(cut, noise[48000:64000])  # segment 3 is seconds 3..4, bit-exact


def test_speechcommands_v1_ks1_with_separate_test_set(tmp_path: Path) -> None:
    test_root = tmp_path / "speech_commands_test_set_v0.01"
    for rel in ("yes/aaaa1111_nohash_0.wav", "_unknown_/bbbb2222_nohash_0.wav", "_silence_/clip_0.wav"):
        _tiny(test_root / rel)
    prepare("speechcommands-v1", TTS_COMMANDS, tmp_path / "out", test_root=test_root)
    test = read_json_manifest(tmp_path / "out" / "test.json")
    assert sorted(e.labels[0] for e in test) == ["_silence_", "_unknown_", "yes"]
    assert all(str(test_root) in e.path for e in test)


def test_speechcommands_v1_30(tmp_path: Path) -> None:
    report = prepare("speechcommands-v1-30", TTS_COMMANDS, tmp_path)
    assert report.num_classes == 30 and sum(report.split_counts.values()) == 800


def test_speechcommands_rejects_foreign_word_folders(tmp_path: Path) -> None:
    for rel in ("yes/a_nohash_0.wav", "banana/b_nohash_0.wav"):
        _tiny(tmp_path / "sc" / rel)
    for name in ("validation_list.txt", "testing_list.txt"):
        (tmp_path / "sc" / name).write_text("")
    with pytest.raises(ValueError, match="banana"):
        prepare("speechcommands", tmp_path / "sc", tmp_path / "out")


def test_esc50(tmp_path: Path) -> None:
    root = tmp_path / "ESC-50-master"
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target, category in ((0, "dog"), (1, "rooster"), (2, "pig")):
            name = f"{fold}-{100 + target}-A-{target}.wav"
            rows.append(f"{name},{fold},{target},{category},{target == 0},{100 + target},A")
            _tiny(root / "audio" / name, sr=44100)
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    report = prepare("esc50", root, tmp_path / "out")
    out = tmp_path / "out"
    assert read_class_labels(out / "class_labels_indices.csv").mids == ("dog", "rooster", "pig")
    assert report.split_counts == {f"fold{k}": 3 for k in range(1, 6)}
    for k in range(1, 6):
        train, test = read_json_manifest(out / f"fold{k}_train.json"), read_json_manifest(out / f"fold{k}_eval.json")
        assert len(train) == 12 and len(test) == 3
        assert all(Path(e.path).name.startswith(f"{k}-") for e in test)
        assert not any(Path(e.path).name.startswith(f"{k}-") for e in train)


SEGMENTS_HEADER = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4
# YTID, start_seconds, end_seconds, positive_labels
"""


def test_audioset_matches_clips_by_youtube_id_and_reports_missing(tmp_path: Path) -> None:
    root = tmp_path / "audioset"
    root.mkdir()
    (root / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/t/dd00088,"Male speech, man speaking"\n2,/m/04rlf,"Music"\n')
    (root / "balanced_train_segments.csv").write_text(SEGMENTS_HEADER + """\
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
-0Gj8-vB1q4, 30.000, 40.000, "/m/04rlf"
zz_missing0, 0.000, 10.000, "/m/04rlf"
""")
    (root / "eval_segments.csv").write_text(SEGMENTS_HEADER + """\
0BfDP_rzOBQ, 10.000, 20.000, "/m/09x0r"
Ymissing001, 10.000, 20.000, "/m/09x0r"
""")
    _tiny(root / "clips" / "Y--PJHxphWEs.wav")  # common download naming: Y + id
    _tiny(root / "clips" / "-0Gj8-vB1q4_30000.flac")  # id + start time
    _tiny(root / "eval" / "0BfDP_rzOBQ.wav")  # the plain id, in another folder
    report = prepare("audioset", root, tmp_path / "out")
    assert report.num_classes == 3 and report.split_counts == {"balanced_train": 2, "eval": 1}
    train = read_json_manifest(tmp_path / "out" / "balanced_train.json")
    assert [(Path(e.path).name, e.labels) for e in train] == [
        ("Y--PJHxphWEs.wav", ("/m/09x0r", "/t/dd00088")), ("-0Gj8-vB1q4_30000.flac", ("/m/04rlf",))]
    assert [Path(e.path).name for e in read_json_manifest(tmp_path / "out" / "eval.json")] == ["0BfDP_rzOBQ.wav"]
    missing = (tmp_path / "out" / "missing.txt").read_text().splitlines()
    assert missing == report.missing == ["balanced_train\tzz_missing0", "eval\tYmissing001"]
    labels = read_class_labels(tmp_path / "out" / "class_labels_indices.csv")
    assert labels.names[1] == "Male speech, man speaking"


def test_audioset_unquoted_labels_and_clips_twice_on_disk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hand-made segments CSV without the quotes keeps every label; two files of one YouTube id are logged."""
    (tmp_path / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n")
    (tmp_path / "eval_segments.csv").write_text(SEGMENTS_HEADER + "abcdefghijk, 0.0, 10.0, /m/a,/m/b\n")
    _tiny(tmp_path / "clips" / "abcdefghijk.flac")
    _tiny(tmp_path / "clips16k" / "abcdefghijk.wav")
    prepare("audioset", tmp_path, tmp_path / "out")
    [entry] = read_json_manifest(tmp_path / "out" / "eval.json")
    assert entry.labels == ("/m/a", "/m/b") and entry.path == str(tmp_path / "clips" / "abcdefghijk.flac")
    assert "1 YouTube id(s) match more than one file" in caplog.text and "clips16k/abcdefghijk.wav" in caplog.text


def test_audioset_rejects_labels_outside_the_class_file(tmp_path: Path) -> None:
    (tmp_path / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/09x0r,Speech\n")
    (tmp_path / "eval_segments.csv").write_text(SEGMENTS_HEADER + 'abcdefghijk, 0.0, 10.0, "/m/nope"\n')
    with pytest.raises(ValueError, match="abcdefghijk has label"):
        prepare("audioset", tmp_path, tmp_path / "out")


def test_voxceleb1(tmp_path: Path) -> None:
    root = tmp_path / "vox1"
    lines = []
    for code, rel in ((1, "id10001/1zcIwhmdeo4/00001.wav"), (1, "id10001/1zcIwhmdeo4/00002.wav"),
                      (2, "id10001/7gWzIy6yIIk/00001.wav"), (3, "id10002/C7k7C-PDvAA/00001.wav"),
                      (1, "id10003/absent00000/00001.wav")):
        lines.append(f"{code} {rel}")
        if "absent" not in rel:
            _tiny(root / "wav" / rel)
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    report = prepare("voxceleb1", root, tmp_path / "out")
    assert read_class_labels(tmp_path / "out" / "class_labels_indices.csv").mids == ("id10001", "id10002",
                                                                                    "id10003")
    assert report.split_counts == {"train": 2, "validation": 1, "test": 1}
    assert [Path(m).name for m in report.missing] == ["00001.wav"] and "absent" in report.missing[0]
    assert read_json_manifest(tmp_path / "out" / "test.json")[0].labels == ("id10002",)


def _iemocap(root: Path, sessions: range) -> None:
    for n in sessions:
        session = root / f"Session{n}"
        dialog = f"Ses0{n}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for k, emotion in enumerate(("neu", "exc", "fru", "ang", "sad", "hap")):
            utterance = f"{dialog}_F00{k}"
            lines += [f"[{k}.0100 - {k}.9000]\t{utterance}\t{emotion}\t[2.5000, 2.5000, 2.5000]",
                      f"C-E1:\t{emotion.capitalize()};\t()", ""]
            _tiny(session / "sentences" / "wav" / dialog / f"{utterance}.wav")
        (session / "dialog" / "EmoEvaluation" / "Categorical").mkdir(parents=True)
        (session / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(lines) + "\n")


def test_iemocap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    _iemocap(root, range(1, 6))
    report = prepare("iemocap", root, tmp_path / "out")
    assert "session folder(s)" not in caplog.text
    assert read_class_labels(tmp_path / "out" / "class_labels_indices.csv").mids == ("neu", "hap", "ang", "sad")
    assert report.class_counts == {"neu": 5, "hap": 10, "ang": 5, "sad": 5}  # exc merged into hap, fru left out
    assert report.split_counts == {f"Session{n}": 5 for n in range(1, 6)}
    train = read_json_manifest(tmp_path / "out" / "fold_Session3_train.json")
    test = read_json_manifest(tmp_path / "out" / "fold_Session3_eval.json")
    assert len(train) == 20 and len(test) == 5 and all("Session3" in e.path for e in test)


def test_urbansound8k(tmp_path: Path) -> None:
    root = tmp_path / "UrbanSound8K"
    rows = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    for fold in range(1, 11):
        for class_id, name in ((0, "air_conditioner"), (3, "dog_bark"), (1, "car_horn"), (2, "children_playing")):
            file = f"{1000 + fold}-{class_id}-0-0.wav"
            rows.append(f"{file},{1000 + fold},0.0,4.0,1,{fold},{class_id},{name}")
            _tiny(root / "audio" / f"fold{fold}" / file, sr=22050)
    (root / "metadata").mkdir()
    (root / "metadata" / "UrbanSound8K.csv").write_text("\n".join(rows) + "\n")
    report = prepare("urbansound8k", root, tmp_path / "out")
    assert read_class_labels(tmp_path / "out" / "class_labels_indices.csv").mids == (
        "air_conditioner", "car_horn", "children_playing", "dog_bark")
    assert len(report.split_counts) == 10 and (tmp_path / "out" / "fold10_eval.json").is_file()
    assert len(read_json_manifest(tmp_path / "out" / "fold10_train.json")) == 36
    # the 60-s sequences group clips by fold, also when a cache holds some of a fold's clips and not others
    _tiny(root / "audio" / "fold1" / "1001-0-0-1.wav", sr=16000)
    with (root / "metadata" / "UrbanSound8K.csv").open("a") as f:
        f.write("1001-0-0-1.wav,1001,0.0,4.0,1,1,0,air_conditioner\n")
    prepare("urbansound8k", root, tmp_path / "cached", cache=tmp_path / "cache")
    fold1 = read_json_manifest(tmp_path / "cached" / "fold1_eval.json")
    assert len({Path(e.path).parent for e in fold1}) == 2  # in place (16 kHz) and resampled (22.05 kHz)
    assert plan_sequences(fold1, SequenceConfig(layout="slots")) == [tuple(range(5))]  # 15 slots: one sequence


def test_librispeech_and_plain_folders(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech"
    for rel in ("train-clean-100/19/198/19-198-0000.flac", "train-clean-100/19/198/19-198-0001.flac",
                "dev-clean/84/121123/84-121123-0000.flac"):
        _tiny(root / rel)
    (root / "train-clean-100/19/198/19-198.trans.txt").write_text("19-198-0000 HELLO\n")
    report = prepare("librispeech", root, tmp_path / "ls")
    assert report.num_classes is None and report.split_counts == {"dev-clean": 1, "train-clean-100": 2}
    assert read_json_manifest(tmp_path / "ls" / "train-clean-100.json")[0].labels == ()
    subset = prepare("librispeech", root / "dev-clean", tmp_path / "dev")
    assert subset.split_counts == {"dev-clean": 1}
    folder = prepare("folder", root, tmp_path / "folder")
    assert folder.split_counts == {"all": 3} and len(read_json_manifest(tmp_path / "folder" / "all.json")) == 3


def test_folder_per_class(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    for rel in ("cat/a.wav", "cat/sub/b.flac", "dog/c.wav", "dog/.hidden.wav"):
        _tiny(root / rel)
    (root / "dog" / "notes.txt").write_text("not audio")
    prepare("folder-per-class", root, tmp_path / "out")
    entries = read_json_manifest(tmp_path / "out" / "all.json")
    assert sorted((Path(e.path).name, e.labels) for e in entries) == [("a.wav", ("cat",)), ("b.flac", ("cat",)),
                                                                     ("c.wav", ("dog",))]
    _tiny(root / "loose.wav")
    with pytest.raises(ValueError, match="loose.wav: file outside any class folder"):
        prepare("folder-per-class", root, tmp_path / "out2")


def test_missing_layout_is_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape("meta/esc50.csv")):
        prepare("esc50", tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown corpus 'esc51'"):
        prepare("esc51", tmp_path, tmp_path / "out")


@pytest.mark.parametrize("workers", [1, 2])
def test_resampling_cache_is_resumable_and_reports_failures(tmp_path: Path, workers: int) -> None:
    root = tmp_path / "corpus"
    write_tone(root / "a" / "x8k.wav", seconds=0.5, sr=8000)
    write_tone(root / "a" / "x48k.flac", seconds=0.5, sr=48000)
    write_tone(root / "b" / "x16k.wav", seconds=0.5, sr=16000)
    (root / "b" / "broken.wav").write_bytes(b"RIFF????WAVEfmt nonsense")
    cache, out = tmp_path / "cache", tmp_path / "out"
    report = prepare("folder-per-class", root, out, cache=cache, workers=workers)
    entries = {Path(e.path).name: e for e in read_json_manifest(out / "all.json")}
    assert set(entries) == {"x8k.wav", "x48k.flac.wav", "x16k.wav"}  # broken one reported, not silently kept
    assert entries["x8k.wav"].path == str(cache / "a" / "x8k.wav")
    assert entries["x16k.wav"].path == str(root / "b" / "x16k.wav")  # already 16 kHz: used in place
    assert [sf.info(e.path).samplerate for e in entries.values()] == [16000] * 3
    assert sf.info(entries["x48k.flac.wav"].path).frames == 8000
    assert report.failed[0][0].endswith("broken.wav") and "not a readable audio file" in report.failed[0][1]
    assert "broken.wav" in (out / "failed.txt").read_text()
    stamp = (cache / "a" / "x8k.wav").stat().st_mtime_ns
    prepare("folder-per-class", root, out, cache=cache, workers=workers)  # resumes: nothing rewritten
    assert (cache / "a" / "x8k.wav").stat().st_mtime_ns == stamp
    assert not list(cache.rglob("*.partial.wav"))


def test_options_a_recipe_does_not_take_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="corpus 'folder' takes no option"):
        prepare("folder", tmp_path, tmp_path / "out", classes="found")


def test_cache_keeps_sources_apart_and_is_rewritten_when_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "corpus"
    write_tone(root / "a" / "x.flac", seconds=0.5, sr=8000, freq=300.0)
    write_tone(root / "a" / "x.wav", seconds=1.0, sr=8000, freq=900.0)
    write_tone(root / "b" / "y.wav", seconds=0.5, sr=22050)
    monkeypatch.chdir(tmp_path)  # relative --cache and --out, as typed on a command line
    assert main(["prepare", "folder-per-class", "--root", "corpus", "--out", "m", "--cache", "c16k"]) == 0
    entries = {Path(e.path).name: e.path for e in read_json_manifest(tmp_path / "m" / "all.json")}
    assert set(entries) == {"x.flac.wav", "x.wav", "y.wav"}  # x.flac and x.wav: two cache files, not one
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in entries.values())
    assert sf.info(entries["x.flac.wav"]).frames == 8000 and sf.info(entries["x.wav"]).frames == 16000
    # another rate: the 16 kHz copies are not reused
    prepare("folder-per-class", root, tmp_path / "m8", cache=tmp_path / "c16k", sample_rate=22050)
    assert {sf.info(e.path).samplerate for e in read_json_manifest(tmp_path / "m8" / "all.json")} == {22050}
    # a source replaced after caching is resampled again
    stale = tmp_path / "c16k" / "b" / "y.wav"
    write_tone(root / "b" / "y.wav", seconds=0.25, sr=22050)
    prepare("folder-per-class", root, tmp_path / "m", cache=tmp_path / "c16k")
    assert sf.info(stale).samplerate == 16000 and sf.info(stale).frames == 4000


def test_cache_and_output_inside_the_root_are_not_corpus_audio(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_tone(root / "a" / "x.wav", seconds=0.2, sr=8000)
    write_tone(root / "b" / "y.wav", seconds=0.2, sr=8000)
    for _ in range(2):  # the second run finds the first run's cache and manifests below --root
        report = prepare("folder-per-class", root, root / "manifests", cache=root / "cache16k")
        assert report.num_classes == 2 and report.split_counts == {"all": 2}
    assert read_class_labels(root / "manifests" / "class_labels_indices.csv").mids == ("a", "b")


def test_folder_scan_follows_symlinks_and_reports_what_it_skips(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    root, elsewhere = tmp_path / "classes", tmp_path / "other-disk" / "cat"
    _tiny(root / "dog" / "d.wav")
    _tiny(root / ".ipynb_checkpoints" / "d-checkpoint.wav")  # a hidden folder is no class
    (root / "bird").mkdir()  # an empty class folder: reported
    for i in range(2):
        _tiny(elsewhere / f"c{i}.wav")
    (root / "cat").symlink_to(elsewhere)  # a class linked in from another disk
    (root / "dog" / "gone.wav").symlink_to(tmp_path / "no-such.wav")
    (root / "dog" / "loop").symlink_to(root)  # a symlink loop is walked once
    with caplog.at_level("WARNING"):
        report = prepare("folder-per-class", root, tmp_path / "out")
    assert report.class_counts == {"cat": 2, "dog": 1}
    assert "gone.wav: skipped, a symlink to nothing" in caplog.text
    assert "class folder(s) without audio, not made classes: bird" in caplog.text


def test_iemocap_with_sessions_missing_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _iemocap(tmp_path / "iemocap", range(1, 4))
    report = prepare("iemocap", tmp_path / "iemocap", tmp_path / "out")
    assert report.split_counts == {f"Session{n}": 5 for n in range(1, 4)}
    assert "3 session folder(s) (Session1, Session2, Session3), not IEMOCAP's 5" in caplog.text


@pytest.mark.parametrize("workers", ["1", "3"])
def test_unreadable_and_sampleless_clips_are_reported_not_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 workers: str) -> None:
    """Without --cache only headers are read, yet a corrupt, empty or sample-less clip lands in failed.txt with its
    reason instead of a manifest (where it would fail the first evaluation that meets it)."""
    root = tmp_path / "data"
    for name in ("good.wav", "also_good.flac"):
        _tiny(root / "dog" / name)
    (root / "dog" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    (root / "cat" / "empty.wav").parent.mkdir(parents=True)
    (root / "cat" / "empty.wav").write_bytes(b"")
    sf.write(str(root / "cat" / "no_samples.wav"), np.zeros((0, 1), dtype="float32"), 16000)
    assert main(["prepare", "folder-per-class", "--root", str(root), "--out", str(tmp_path / "out"),
                 "--workers", workers]) == 0
    assert "failed: 3" in capsys.readouterr().out
    kept = sorted(Path(e.path).name for e in read_json_manifest(tmp_path / "out" / "all.json"))
    assert kept == ["also_good.flac", "good.wav"]
    failed = dict(line.split("\t") for line in (tmp_path / "out" / "failed.txt").read_text().splitlines())
    reasons = {Path(path).name: why for path, why in failed.items()}
    assert set(reasons) == {"corrupt.wav", "empty.wav", "no_samples.wav"}
    assert "not a readable audio file" in reasons["corrupt.wav"] and reasons["empty.wav"] == "empty file (0 bytes)"
    assert reasons["no_samples.wav"] == "contains no audio samples"
    for path in failed:
        Path(path).unlink()
    assert main(["prepare", "folder-per-class", "--root", str(root), "--out", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "failed.txt").exists()  # the earlier run's report no longer holds
    (root / "dog" / "good.wav").write_bytes(b"")
    (root / "dog" / "also_good.flac").write_bytes(b"")
    with pytest.raises(ValueError, match=r"none of the 2 clips of corpus 'folder-per-class' is usable audio"):
        prepare("folder-per-class", root, tmp_path / "out")


def test_reports_of_an_earlier_run_do_not_survive(tmp_path: Path) -> None:
    root = tmp_path / "ESC-50-master"
    _tiny(root / "audio" / "1-100-A-0.wav")
    meta = "filename,fold,target,category,esc10,src_file,take\n1-100-A-0.wav,1,0,dog,True,100,A\n"
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text(meta + "1-101-A-0.wav,1,0,dog,True,101,A\n")
    prepare("esc50", root, tmp_path / "out")
    assert (tmp_path / "out" / "missing.txt").read_text().strip().endswith("1-101-A-0.wav")
    (root / "meta" / "esc50.csv").write_text(meta)
    prepare("esc50", root, tmp_path / "out")
    assert not (tmp_path / "out" / "missing.txt").exists()
    (root / "audio" / "1-100-A-0.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"no usable clips .*\(1 named by its metadata are missing"):
        prepare("esc50", root, tmp_path / "out")


@pytest.mark.parametrize("corpus, path, header, row, error", [
    ("esc50", "meta/esc50.csv", "filename,fold,target,category", "a.wav,one,0,dog", "line 2: fold is 'one'"),
    ("esc50", "meta/esc50.csv", "filename,fold,class,category", "a.wav,1,0,dog", r"column\(s\) target missing"),
    ("urbansound8k", "metadata/UrbanSound8K.csv", "slice_file_name,fsID,fold,classID,class", "a.wav,1,1,x,dog",
     "line 2: classID is 'x'"),
])
def test_malformed_metadata_names_file_and_line(tmp_path: Path, corpus: str, path: str, header: str, row: str,
                                                error: str) -> None:
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(f"{header}\n{row}\n")
    with pytest.raises(ValueError, match=f"{re.escape(path)}.*{error}"):
        prepare(corpus, tmp_path, tmp_path / "out")


def test_metadata_with_a_byte_order_mark(tmp_path: Path) -> None:
    root = tmp_path / "ESC-50-master"
    _tiny(root / "audio" / "1-100-A-0.wav")
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("\ufefffilename,fold,target,category\n1-100-A-0.wav,1,0,dog\n",
                                             encoding="utf-8")
    assert prepare("esc50", root, tmp_path / "out").split_counts == {"fold1": 1}


def test_relative_separate_ks1_test_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny(tmp_path / "ks1-test" / "yes" / "aaaa1111_nohash_0.wav")
    for label in ("_silence_", "_unknown_"):
        (tmp_path / "ks1-test" / label).mkdir()
    monkeypatch.chdir(tmp_path)
    prepare("speechcommands-v1", TTS_COMMANDS, "out", test_root="ks1-test")
    test = read_json_manifest(tmp_path / "out" / "test.json")
    assert [Path(e.path) for e in test] == [tmp_path / "ks1-test" / "yes" / "aaaa1111_nohash_0.wav"]


@pytest.mark.parametrize("layout", ["training folder", "foreign word", "no _silence_"])
def test_ks1_test_root_that_is_not_the_test_set_is_refused(tmp_path: Path, layout: str) -> None:
    """Labels come from the test set's folder names: the training folder given by mistake would pass its filler
    words and background noise as ``_unknown_`` test clips, so it is refused, as is any other layout."""
    test_root = tmp_path / "ks1-test"
    folders = {"foreign word": ("yes", "_silence_", "_unknown_", "bed"), "no _silence_": ("yes", "_unknown_")}
    for folder in folders.get(layout, ()):
        _tiny(test_root / folder / "aaaa1111_nohash_0.wav")
    if layout == "training folder":
        test_root = TTS_COMMANDS
    with pytest.raises(ValueError, match=f"{test_root}: not the KS1 test set"):
        prepare("speechcommands-v1", TTS_COMMANDS, tmp_path / "out", test_root=test_root)


def test_header_checks_in_threads_keep_the_entries_order(tmp_path: Path) -> None:
    from ssamba.data.manifest import Entry
    from ssamba.data.prepare import check_clips

    entries = []
    for i in range(200):
        path = tmp_path / f"{i:03d}.wav"
        if i % 7 == 3:
            path.write_bytes(b"")
        else:
            _tiny(path)
        entries.append(Entry(str(path), ("dog",)))
    kept, failed = check_clips(entries, workers=4)
    assert kept == [e for i, e in enumerate(entries) if i % 7 != 3]
    assert [p for p, _ in failed] == [e.path for i, e in enumerate(entries) if i % 7 == 3]
