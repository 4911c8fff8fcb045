"""Google Speech Commands, from its native folder layout (``<word>/<speaker>_nohash_<k>.wav``,
``validation_list.txt``, ``testing_list.txt``, ``_background_noise_/``).

Splits follow the dataset's own lists (speaker-disjoint by construction); every clip in neither list is training
data. Three tasks:

* ``speechcommands`` — v0.02, KS2: the 35 words; class index = alphabetical order.
* ``speechcommands-v1`` — v0.01 as SUPERB KS1: 10 words + ``_unknown_`` (every other word) + ``_silence_``
  (1-s segments cut from ``_background_noise_``, written to ``<out>/_silence_``; every 10th segment goes to
  validation and the next to test, so no segment is shared). SUPERB tests on the separate v0.01 test archive: pass
  ``test_root`` (its folders, including ``_silence_``/``_unknown_``, are used as they are); otherwise the test split
  is ``testing_list.txt`` plus test silence.
* ``speechcommands-v1-30`` — v0.01 with its 30 words as classes (the setting of SSAMBA's v1 ``run_sc_amba.sh``).

A word folder outside the class set is an error for the word-level tasks (wrong corpus version?) unless
``classes="found"``, which uses exactly the word folders present. Canonical classes without any clip are logged.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import soundfile as sf

from ssamba.data.corpora._common import Corpus, keep_existing, require
from ssamba.data.manifest import ClassLabels, Entry

log = logging.getLogger(__name__)

V1_WORDS = ("bed", "bird", "cat", "dog", "down", "eight", "five", "four", "go", "happy", "house", "left", "marvin",
            "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up",
            "wow", "yes", "zero")
V2_WORDS = tuple(sorted(V1_WORDS + ("backward", "follow", "forward", "learn", "visual")))
#: SUPERB KS1 classes, in SUPERB's order
KS1_CLASSES = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_")
NOISE_DIR = "_background_noise_"


def _read_list(root: Path, name: str) -> set[str]:
    path = require(root / name, f"Speech Commands split list {name}")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _word_clips(root: Path) -> list[tuple[str, str]]:
    """``(word, "word/file.wav")`` for every clip of every word folder (folders starting with ``_`` excluded)."""
    clips = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        clips.extend((folder.name, f"{folder.name}/{wav.name}") for wav in sorted(folder.glob("*.wav")))
    if not clips:
        raise FileNotFoundError(f"{root}: no <word>/*.wav clips; is --root the Speech Commands folder?")
    return clips


def _split_clips(root: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(word, relpath, split)`` per clip, and list entries that name no file (reported as missing)."""
    validation, testing = _read_list(root, "validation_list.txt"), _read_list(root, "testing_list.txt")
    overlap = validation & testing
    if overlap:
        raise ValueError(f"{root}: {len(overlap)} clip(s) are in both lists, e.g. {sorted(overlap)[0]}")
    clips = _word_clips(root)
    present = {rel for _, rel in clips}
    missing = [str(root / rel) for rel in sorted((validation | testing) - present)]
    if missing:
        log.warning("%d clip(s) in the split lists do not exist, e.g. %s", len(missing), missing[0])
    split = {**{rel: "validation" for rel in validation}, **{rel: "test" for rel in testing}}
    return [(word, rel, split.get(rel, "train")) for word, rel in clips], missing


def _check_words(words: set[str], canonical: tuple[str, ...], classes: str, root: Path) -> tuple[str, ...]:
    if classes == "found":
        return tuple(sorted(words))
    if classes != "canonical":
        raise ValueError(f"classes must be 'canonical' or 'found', got {classes!r}")
    unknown = sorted(words - set(canonical))
    if unknown:
        raise ValueError(f"{root}: word folder(s) {', '.join(unknown)} are not among the {len(canonical)} classes of "
                         "this Speech Commands version (use classes='found' to take the folders as they are)")
    absent = [w for w in canonical if w not in words]
    if absent:
        log.warning("%s: %d of %d classes have no clips: %s", root, len(absent), len(canonical), ", ".join(absent))
    return canonical


def _word_task(root: Path, name: str, canonical: tuple[str, ...], classes: str) -> Corpus:
    clips, missing = _split_clips(root)
    names = _check_words({word for word, _, _ in clips}, canonical, classes, root)
    entries = [Entry(str(root / rel), (word,), split) for word, rel, split in clips]
    return Corpus(name, entries, ClassLabels.from_names(names), (), missing)


def prepare_v2(root: Path, out: Path, classes: Literal["canonical", "found"] = "canonical") -> Corpus:
    """KS2: Speech Commands v0.02, 35 classes."""
    return _word_task(root, "speechcommands", V2_WORDS, classes)


def prepare_v1_30(root: Path, out: Path, classes: Literal["canonical", "found"] = "canonical") -> Corpus:
    """Speech Commands v0.01 with its 30 words as classes."""
    return _word_task(root, "speechcommands-v1-30", V1_WORDS, classes)


def cut_silence(noise_dir: Path, out_dir: Path, seconds: float = 1.0) -> list[Entry]:
    """Cut every background-noise file into consecutive ``seconds``-long segments written to ``out_dir``.

    Segment ``k`` of a file goes to validation if ``k % 10 == 0``, to test if ``k % 10 == 1``, else to train, so
    each split gets about its usual share and no audio is in two splits. Existing segments are rewritten (cheap).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for wav in sorted(noise_dir.glob("*.wav")):
        info = sf.info(str(wav))
        length = int(round(seconds * info.samplerate))
        data, sr = sf.read(str(wav), dtype="float32", always_2d=True)
        for k in range(data.shape[0] // length):
            target = out_dir / f"{wav.stem}_{k:03d}.wav"
            sf.write(str(target), data[k * length:(k + 1) * length], sr, subtype=info.subtype)
            split = "validation" if k % 10 == 0 else "test" if k % 10 == 1 else "train"
            entries.append(Entry(str(target), ("_silence_",), split))
    if not entries:
        raise FileNotFoundError(f"{noise_dir}: no background noise longer than {seconds} s to cut _silence_ from")
    return entries


def _ks1_label(word: str) -> str:
    return word if word in KS1_CLASSES[:10] or word in ("_silence_", "_unknown_") else "_unknown_"


def _ks1_test_folders(root: Path, test_root: Path) -> list[Path]:
    """The label folders of KS1's separate test set, refused when ``test_root`` is not that set: its clips are
    labelled by folder, so the training folder (or a v0.02 one) given by mistake would pass its 20 other words, and
    its background noise, as ``_unknown_`` test clips."""
    if not test_root.is_dir():
        raise FileNotFoundError(f"{test_root}: the KS1 test set (--test-root) is not a directory")
    folders = sorted(p for p in test_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = {p.name for p in folders}
    if test_root == root.resolve() or not names <= set(KS1_CLASSES) or not {"_silence_", "_unknown_"} <= names:
        raise ValueError(f"{test_root}: not the KS1 test set (speech_commands_test_set_v0.01: one folder per class of "
                         f"{', '.join(KS1_CLASSES)}); it has folder(s) {', '.join(sorted(names)) or 'none'}")
    return folders


def prepare_v1(root: Path, out: Path, test_root: Path | None = None) -> Corpus:
    """SUPERB KS1: 10 words + ``_unknown_`` + ``_silence_``."""
    clips, missing = _split_clips(root)
    silence = cut_silence(require(root / NOISE_DIR, f"{NOISE_DIR} folder"), out / "_silence_")
    entries = [Entry(str(root / rel), (_ks1_label(word),), split) for word, rel, split in clips]
    if test_root is not None:
        test_root = Path(test_root).resolve()  # manifests hold absolute paths
        entries = [e for e in entries if e.split != "test"]
        silence = [e for e in silence if e.split != "test"]
        test = [Entry(str(wav), (_ks1_label(folder.name),), "test")
                for folder in _ks1_test_folders(root, test_root) for wav in sorted(folder.glob("*.wav"))]
        if not test:
            raise FileNotFoundError(f"{test_root}: no <label>/*.wav clips in the KS1 test set")
        entries += keep_existing(test, missing)
    return Corpus("speechcommands-v1", entries + silence, ClassLabels.from_names(KS1_CLASSES), (), missing)
