"""``ssamba prepare CORPUS --root DIR --out DIR``: build manifests from a corpus's native download layout.

Written to ``out``:

* ``all.csv`` — every clip as ``path,label,split`` (and ``all.json`` when the corpus has no splits);
* ``<split>.json`` — one SSAST/AST manifest per split (``train``, ``validation``, ``test``, ``fold3``, ...);
* for cross-validation corpora, ``fold<k>_train.json`` / ``fold<k>_eval.json`` for every fold ``k``;
* ``class_labels_indices.csv`` — for labeled corpora;
* ``missing.txt`` / ``failed.txt`` — files the metadata names but the disk lacks / that are not readable audio (or
  could not be resampled); neither is in the manifests.
"""
from __future__ import annotations

import inspect
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ssamba.audio.io import AudioLoadError, check_audio
from ssamba.data.cache import resample_to_cache
from ssamba.data.corpora import GENERATED, RECIPES, Corpus
from ssamba.data.manifest import Entry, write_class_labels, write_csv_manifest, write_json_manifest

log = logging.getLogger(__name__)


@dataclass
class PrepareReport:
    """What ``prepare`` produced: counts per split and class, and every file it could not use."""

    corpus: str
    out: Path
    split_counts: dict[str, int]
    class_counts: dict[str, int]
    num_classes: int | None
    missing: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _fold_name(fold: str) -> str:
    return fold if fold.startswith("fold") else f"fold_{fold}"


def write_corpus(corpus: Corpus, out: Path) -> list[Path]:
    """Write the manifests of ``corpus`` into ``out`` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    files = [write_csv_manifest(corpus.entries, out / "all.csv")]
    if corpus.labels is not None:
        files.append(write_class_labels(corpus.labels, out / "class_labels_indices.csv"))
    splits = corpus.splits()
    for split in splits:
        files.append(write_json_manifest([e for e in corpus.entries if e.split == split], out / f"{split}.json"))
    if not splits:
        files.append(write_json_manifest(corpus.entries, out / "all.json"))
    for fold in corpus.folds:
        name = _fold_name(fold)
        files.append(write_json_manifest([e for e in corpus.entries if e.split != fold], out / f"{name}_train.json"))
        files.append(write_json_manifest([e for e in corpus.entries if e.split == fold], out / f"{name}_eval.json"))
    return files


def check_clips(entries: list[Entry], workers: int = 1) -> tuple[list[Entry], list[tuple[str, str]]]:
    """The entries whose file reads as audio with samples (headers only: :func:`check_audio`), and the others with
    the reason, so that a damaged clip is reported in ``failed.txt`` now instead of failing a later evaluation.

    Reading a header is waiting on the disk (a network filesystem's round trip per file dominates for VoxCeleb1's
    150k clips), so ``workers`` threads read them; the entries keep their order whatever the workers."""
    def reason(entry: Entry) -> str | None:
        try:
            check_audio(entry.path)
        except AudioLoadError as exc:
            return exc.reason
        return None

    kept, failed = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = pool.map(reason, entries, chunksize=64)
        for entry, why in tqdm(zip(entries, reasons), total=len(entries), desc="checking audio headers",
                               unit="file", disable=None):
            if why is None:
                kept.append(entry)
            else:
                log.error("%s: left out: %s", entry.path, why)
                failed.append((entry.path, why))
    return kept, failed


def prepare(corpus: str, root: str | Path | None, out: str | Path, *, cache: str | Path | None = None,
            sample_rate: int = 16000, workers: int = 1, **options: Any) -> PrepareReport:
    """Build the manifests of ``corpus`` (a key of :data:`RECIPES`) found at ``root`` into ``out``.

    With ``cache``, clips not at ``sample_rate`` are first resampled into that folder (once, in ``workers``
    processes, resumable) and the manifests point there; without, ``workers`` threads check every clip's header.
    ``options`` go to the recipe (e.g. ``test_root``).
    Generated corpora (:data:`GENERATED`, e.g. ``synthetic``) take ``root=None`` and write their audio into ``out``.
    """
    if corpus not in RECIPES:
        raise ValueError(f"unknown corpus {corpus!r}; known: {', '.join(RECIPES)}")
    if root is None:
        if corpus not in GENERATED:
            raise ValueError(f"corpus {corpus!r} needs --root, its download folder "
                             f"(only {', '.join(sorted(GENERATED))} is generated without one)")
        Path(out).mkdir(parents=True, exist_ok=True)
        root = out
    root, out = Path(root).resolve(), Path(out).resolve()  # manifests hold absolute paths
    cache = Path(cache).resolve() if cache is not None else None
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus root is not a directory")
    accepted = set(inspect.signature(RECIPES[corpus]).parameters) - {"root", "out"}
    unexpected = sorted(set(options) - accepted)
    if unexpected:
        raise ValueError(f"corpus {corpus!r} takes no option(s) {', '.join(unexpected)}"
                         + (f" (it accepts: {', '.join(sorted(accepted))})" if accepted else ""))
    result = RECIPES[corpus](root, out, **options)
    if not result.entries:
        raise FileNotFoundError(f"{root}: no usable clips for corpus {corpus!r}"
                                + (f" ({len(result.missing)} named by its metadata are missing, e.g. "
                                   f"{result.missing[0]})" if result.missing else ""))
    if cache is not None:
        cached = resample_to_cache(result.entries, root, cache, sample_rate, workers)
        result.entries, failed = cached.entries, cached.failures
        log.info("cache %s: %d resampled, %d reused, %d failed", cache, cached.resampled, cached.reused, len(failed))
    else:
        result.entries, failed = check_clips(result.entries, workers)
    if not result.entries:
        raise ValueError(f"{root}: none of the {len(failed)} clips of corpus {corpus!r} is usable audio, e.g. "
                         f"{failed[0][0]}: {failed[0][1]}")
    files = write_corpus(result, out)
    for name, lines in (("missing.txt", result.missing), ("failed.txt", [f"{p}\t{why}" for p, why in failed])):
        report = out / name
        if lines:
            report.write_text("".join(f"{line}\n" for line in lines))
            files.append(report)
        else:
            report.unlink(missing_ok=True)  # an earlier run's report no longer holds
    return PrepareReport(result.name, out, dict(Counter(e.split or "all" for e in result.entries)),
                         dict(Counter(label for e in result.entries for label in e.labels)),
                         len(result.labels) if result.labels is not None else None, result.missing, failed, files)

