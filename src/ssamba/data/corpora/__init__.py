"""One recipe per corpus layout: ``RECIPES[name](root, out, **options) -> Corpus``."""
from __future__ import annotations

from collections.abc import Callable

from ssamba.data.corpora import (audioset, esc50, folders, iemocap, speechcommands, synthetic, urbansound8k,
                                  voxceleb1)
from ssamba.data.corpora._common import Corpus

Recipe = Callable[..., Corpus]

RECIPES: dict[str, Recipe] = {
    "esc50": esc50.prepare,
    "speechcommands": speechcommands.prepare_v2,
    "speechcommands-v1": speechcommands.prepare_v1,
    "speechcommands-v1-30": speechcommands.prepare_v1_30,
    "audioset": audioset.prepare,
    "voxceleb1": voxceleb1.prepare,
    "iemocap": iemocap.prepare,
    "urbansound8k": urbansound8k.prepare,
    "librispeech": folders.prepare_librispeech,
    "folder": folders.prepare_folder,
    "folder-per-class": folders.prepare_folder_per_class,
    "synthetic": synthetic.prepare,
}

#: corpora generated into ``out`` rather than read from a download folder: they take no ``root``
GENERATED: frozenset[str] = frozenset({"synthetic"})

__all__ = ["Corpus", "GENERATED", "RECIPES", "Recipe"]
