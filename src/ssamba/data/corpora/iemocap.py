"""IEMOCAP emotion recognition (``Session1..5``), the usual 4-class setting with five leave-one-session-out folds.

Labels come from ``Session<n>/dialog/EmoEvaluation/<dialog>.txt`` lines
``[start - end]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[v, a, d]``; the audio is
``Session<n>/sentences/wav/<dialog>/<utterance>.wav``. ``exc`` (excited) is merged into ``hap``; the other labels
(frustration, surprise, ``xxx``...) are left out and counted in the log. Split = ``Session<n>``; each session is in
turn the test fold. Class order ``neu, hap, ang, sad`` (s3prl's).
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from ssamba.data.corpora._common import Corpus, keep_existing, require
from ssamba.data.manifest import ClassLabels, Entry

log = logging.getLogger(__name__)

CLASSES = ("neu", "hap", "ang", "sad")
SESSIONS = 5
MERGE = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\S+)\t")


def read_evaluation(path: Path) -> list[tuple[str, str]]:
    """``(utterance, emotion)`` pairs of one EmoEvaluation file."""
    return [(m.group(1), m.group(2)) for m in map(_LINE.match, path.read_text(errors="replace").splitlines()) if m]


def prepare(root: Path, out: Path) -> Corpus:
    sessions = sorted(p for p in root.glob("Session[1-9]") if p.is_dir())
    if not sessions:
        raise FileNotFoundError(f"{root}: no Session1..Session5 folders; is --root the IEMOCAP_full_release folder?")
    if len(sessions) != SESSIONS:
        log.warning("%s: %d session folder(s) (%s), not IEMOCAP's %d: the manifests hold %d leave-one-session-out "
                    "folds, and a recipe of %d folds (recipes/iemocap_er.yaml) will not find the others", root,
                    len(sessions), ", ".join(s.name for s in sessions), SESSIONS, len(sessions), SESSIONS)
    entries, skipped = [], Counter()
    for session in sessions:
        evaluation = require(session / "dialog" / "EmoEvaluation", "EmoEvaluation folder")
        for txt in sorted(evaluation.glob("*.txt")):
            for utterance, emotion in read_evaluation(txt):
                if emotion not in MERGE:
                    skipped[emotion] += 1
                    continue
                dialog = utterance.rsplit("_", 1)[0]
                wav = session / "sentences" / "wav" / dialog / f"{utterance}.wav"
                entries.append(Entry(str(wav), (MERGE[emotion],), session.name))
    if skipped:
        log.info("IEMOCAP: left out %d utterances outside the 4 classes: %s", sum(skipped.values()),
                 ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())))
    missing: list[str] = []
    entries = keep_existing(entries, missing)
    return Corpus("iemocap", entries, ClassLabels.from_names(CLASSES), tuple(s.name for s in sessions), missing)
