"""One-time resampling of a corpus into a cache directory: parallel, resumable, failures reported.

Files already at the target rate are used in place (their header is read, not their samples). The others are
resampled with the reference kernel that SSAMBA's preparation scripts used (``transforms.Resample``) and written as
float WAV (nothing re-quantised) to ``<cache>/<path relative to the corpus root>`` with ``.wav`` appended to any
other suffix (``x.flac`` -> ``x.flac.wav``, so ``x.flac`` and ``x.wav`` cannot collide). A file is written under a
temporary name and renamed when complete, so an interrupted run resumes where it stopped and never sees half-written
output. A cached file is reused only if it is at the requested rate and newer than its source. The cache folder
holds a marker file, so that a cache inside a corpus root is not scanned as corpus audio on the next run.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from ssamba.audio.io import AudioLoadError, audio_info, check_audio, load_audio, save_audio
from ssamba.audio.resample import resample
from ssamba.data.corpora._common import CACHE_MARKER
from ssamba.data.manifest import Entry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheResult:
    entries: list[Entry]  # entries pointing at the cached (or untouched) files
    resampled: int  # files written in this run
    reused: int  # files already in the cache from an earlier run
    failures: list[tuple[str, str]]  # (path, reason) of files that could not be resampled; not in ``entries``


def cache_path(path: Path, root: Path, cache: Path) -> Path:
    """Where ``path`` goes in ``cache``: mirrored below ``root``, else under ``_external/<hash>/``."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path("_external") / hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12] / path.name
    return cache / (rel if rel.suffix.lower() == ".wav" else rel.with_name(rel.name + ".wav"))


def _single_thread() -> None:
    torch.set_num_threads(1)  # the pool already uses every core


def _reusable(source: Path, target: Path, rate: int) -> bool:
    """Whether an earlier run's ``target`` holds ``source`` at ``rate``: a cache from another rate, or one older
    than a replaced source, is written again."""
    if not target.is_file():
        return False
    try:
        return audio_info(target)[0] == rate and target.stat().st_mtime >= source.stat().st_mtime
    except AudioLoadError:
        return False  # a damaged cache file is written again


def _convert(job: tuple[str, str, int]) -> tuple[str, str, str | None]:
    """Worker: ``(source, target, rate)`` -> ``(source, status, error)``; status is resampled/reused/in-place."""
    source, target, rate = job
    try:
        if _reusable(Path(source), Path(target), rate):
            return source, "reused", None
        if check_audio(source)[0] == rate:
            return source, "in-place", None
        waveform, sr = load_audio(source, mono=None)
        out = resample(waveform, sr, rate, variant="transform")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        partial = Path(target).with_name(Path(target).name + ".partial.wav")
        save_audio(partial, out, rate)
        os.replace(partial, target)
        return source, "resampled", None
    except AudioLoadError as exc:
        return source, "failed", exc.reason
    except (OSError, RuntimeError, ValueError) as exc:
        return source, "failed", f"{type(exc).__name__}: {exc}"


def resample_to_cache(entries: list[Entry], root: Path, cache: Path, sample_rate: int = 16000,
                      workers: int = 1) -> CacheResult:
    """Make every entry's audio available at ``sample_rate``, resampling into ``cache`` where needed."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / CACHE_MARKER).write_text("resampled copies written by `ssamba prepare --cache`: not corpus audio\n")
    jobs = [(e.path, str(cache_path(Path(e.path), root, cache)), sample_rate) for e in entries]
    results: dict[str, tuple[str, str | None]] = {}
    progress = tqdm(total=len(jobs), desc=f"resampling to {sample_rate} Hz", unit="file", disable=None)
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # forking a process that holds torch threads can hang
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_single_thread) as pool:
            for source, status, error in pool.map(_convert, jobs, chunksize=16):
                results[source] = (status, error)
                progress.update()
    else:
        for job in jobs:
            source, status, error = _convert(job)
            results[source] = (status, error)
            progress.update()
    progress.close()
    kept, failures, counts = [], [], {"resampled": 0, "reused": 0}
    for entry, (_, target, _) in zip(entries, jobs):
        status, error = results[entry.path]
        if status == "failed":
            log.error("%s: cannot resample: %s", entry.path, error)
            failures.append((entry.path, error or "unknown"))
            continue
        counts[status] = counts.get(status, 0) + 1
        kept.append(entry if status == "in-place" else replace(entry, path=target))
    return CacheResult(kept, counts["resampled"], counts["reused"], failures)
