"""A torch ``Dataset`` over a manifest: ``(features (target_length, 128), target)`` per clip, with the official
training augmentation.

Per item, in the official order (spec §11): load (mono policy) -> resample to 16 kHz -> [mixup with a random
other clip, on mean-removed waveforms] -> fbank -> pad/cut -> [SpecAugment] -> normalise -> [noise + roll].

Randomness comes from a generator seeded by ``(seed, epoch, index)``, so an item is augmented identically whichever
DataLoader worker draws it, and differently each epoch (call :meth:`AudioDataset.set_epoch`; with
``persistent_workers=True`` the workers keep the epoch they were started with).

Bad files (unreadable, empty, NaN, missing...) in a training set are counted, logged with the path and reason, and
replaced by another random item, up to ``max_bad_files`` distinct files; past that the run fails with
:class:`TooManyBadFiles` listing them. With ``bad_files_log`` (the trainer sets it to ``<run>/bad_files.tsv``) the
count is kept in that file, shared by every DataLoader worker, epoch and process, so the limit does not depend on
``num_workers`` and the run's report lists every file; without it each dataset copy counts its own. An evaluation set
(``on_bad="raise"``) never stands another clip in for a bad one: that would put a duplicate clip and label into the
metric; the file is an error.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ssamba.audio.augment import AugmentConfig, add_noise_and_roll, freq_mask, mix_targets, mix_waveforms, \
    sample_mix_lambda, time_mask
from ssamba.audio.fbank import fbank, frame_geometry
from ssamba.audio.features import SAMPLE_RATE, FeatureConfig, fit_length, normalize
from ssamba.audio.io import AudioLoadError, MonoPolicy, load_audio
from ssamba.audio.resample import resample
from ssamba.data.manifest import ClassLabels, Entry, check_labels, read_class_labels, read_manifest

log = logging.getLogger(__name__)

LabelFormat = Literal["multi-hot", "index"]


@dataclass(frozen=True)
class DatasetConfig:
    """Everything an :class:`AudioDataset` does besides which files it reads."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: "multi-hot": float vector over the classes (soft under mixup; for BCE, and CE via argmax as officially);
    #: "index": the class index as a long scalar (single-label data, no mixup)
    label_format: LabelFormat = "multi-hot"
    mono: MonoPolicy = "first"
    seed: int = 0
    max_bad_files: int = 10
    #: "replace": a bad file is replaced by another random item (training); "raise": it is an error (evaluation)
    on_bad: Literal["replace", "raise"] = "replace"
    #: tab-separated path/reason file that counts bad files across workers, epochs and processes (see above)
    bad_files_log: str | None = None
    #: folder for cached log-mels (before padding) of un-mixed items; None disables
    feature_cache: str | None = None

    def __post_init__(self) -> None:
        if self.label_format not in ("multi-hot", "index"):
            raise ValueError(f"label_format must be 'multi-hot' or 'index', got {self.label_format!r}")
        if self.label_format == "index" and self.augment.mixup > 0:
            raise ValueError("mixup produces soft labels; use label_format='multi-hot'")
        if self.mono not in ("first", "mean"):
            raise ValueError(f"the dataset needs a mono policy ('first' or 'mean'), got {self.mono!r}")
        if self.max_bad_files < 0:
            raise ValueError(f"max_bad_files must be >= 0, got {self.max_bad_files}")
        if self.on_bad not in ("replace", "raise"):
            raise ValueError(f"on_bad must be 'replace' or 'raise', got {self.on_bad!r}")


class TooManyBadFiles(RuntimeError):
    """More unreadable files than ``max_bad_files``: the data is broken, not merely noisy."""


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class AudioDataset(Dataset):
    """``(features, target)`` pairs for the entries of a manifest; see the module docstring."""

    def __init__(self, entries: Sequence[Entry], labels: ClassLabels | None = None,
                 config: DatasetConfig | None = None) -> None:
        self.entries = list(entries)
        self.labels = labels
        self.config = config or DatasetConfig()
        if not self.entries:
            raise ValueError("the manifest has no entries")
        if labels is not None:
            check_labels(self.entries, labels)
            if self.config.label_format == "index":
                multi = [e.path for e in self.entries if len(e.labels) != 1]
                if multi:
                    raise ValueError(f"{multi[0]}: label_format='index' needs exactly one label per clip")
        self.epoch = 0
        self.bad_files: dict[str, str] = {}
        # what the cached (unpadded, unnormalised) log-mel depends on besides the file itself
        feat = self.config.features
        self._cache_key = hashlib.sha1(f"{feat.short}|{feat.resample_variant}|{self.config.mono}".encode()
                                       ).hexdigest()[:10]

    @classmethod
    def from_manifest(cls, manifest: str | Path, class_labels: str | Path | None = None,
                      config: DatasetConfig | None = None) -> AudioDataset:
        """Dataset over a ``.json``/``.csv`` manifest, labels from a ``class_labels_indices.csv``."""
        labels = read_class_labels(class_labels) if class_labels is not None else None
        return cls(read_manifest(manifest), labels, config)

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Draw different augmentations in ``epoch`` (same ones whenever ``epoch`` repeats)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(item_seed(self.config.seed, self.epoch, index))
        for _ in range(len(self) + self.config.max_bad_files + 1):
            try:
                return self._item(index, generator)
            except AudioLoadError as exc:
                self._record_bad(exc)
                index = int(torch.randint(len(self), (), generator=generator))
        raise TooManyBadFiles(f"no readable clip found in {len(self) + self.config.max_bad_files + 1} attempts; "
                              f"bad files so far: {self.bad_files}")

    # -- one item -------------------------------------------------------------------------------------------

    def _item(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        entry, aug, feat = self.entries[index], self.config.augment, self.config.features
        target = self.target(entry)
        if aug.mixup > 0 and float(torch.rand((), generator=generator)) < aug.mixup:
            other = self.entries[int(torch.randint(len(self), (), generator=generator))]
            lam = sample_mix_lambda(generator, aug.mixup_alpha)
            mixed = mix_waveforms(self._waveform(entry.path), self._waveform(other.path), lam)
            logmel = fbank(mixed, SAMPLE_RATE, mean=0.0, short=feat.short)  # the mix is already mean-free
            target = mix_targets(target, self.target(other), lam)
        else:
            logmel = self._logmel(entry.path)
        return self.finish(logmel, generator), target

    def finish(self, logmel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The official steps after the fbank: pad/cut -> [SpecAugment] -> normalise -> [noise + roll]."""
        aug, feat = self.config.augment, self.config.features
        x = fit_length(logmel, feat.target_length)
        x = freq_mask(x, aug.freqm, generator) if aug.freqm else x
        x = time_mask(x, aug.timem, generator) if aug.timem else x
        x = normalize(x, feat.mean, feat.std) if feat.normalize else x
        return add_noise_and_roll(x, generator) if aug.noise else x

    def class_balance_weights(self) -> list[float]:
        """1 / (clips of its class) per clip, so that class-weighted sampling draws every class alike (SUPERB's
        keyword-spotting sampler). Defined for one label per clip only."""
        if self.labels is None:
            raise ValueError("class-balanced sampling needs labelled clips")
        multi = [e.path for e in self.entries if len(e.labels) != 1]
        if multi:
            raise ValueError(f"{multi[0]}: class-balanced sampling needs exactly one label per clip ({len(multi)} "
                             "clip(s) have none or several)")
        counts = Counter(e.labels[0] for e in self.entries)
        return [1.0 / counts[e.labels[0]] for e in self.entries]

    def target(self, entry: Entry) -> torch.Tensor:
        """Multi-hot float vector or class index; an empty tensor for unlabeled data."""
        if self.labels is None:
            return torch.zeros(0)
        if self.config.label_format == "index":
            return torch.tensor(self.labels.index(entry.labels[0]))
        target = torch.zeros(len(self.labels))
        for mid in entry.labels:
            target[self.labels.index(mid)] = 1.0
        return target

    def _waveform(self, path: str) -> torch.Tensor:
        """Mono 16-kHz samples ``(N,)``; short clips are a bad file only under the ``short="raise"`` policy."""
        waveform, sr = load_audio(path, mono=self.config.mono)
        waveform = resample(waveform, sr, SAMPLE_RATE, variant=self.config.features.resample_variant)[0]
        if self.config.features.short == "raise" and waveform.shape[0] < frame_geometry(SAMPLE_RATE)[0]:
            raise AudioLoadError(path, f"only {waveform.shape[0]} samples at 16 kHz, shorter than one fbank window")
        return waveform

    def _logmel(self, path: str) -> torch.Tensor:
        """Unpadded log-mel of one clip, through the optional on-disk cache."""
        source = Path(path)
        if self.config.feature_cache is None or not source.is_file():  # a missing file raises in _waveform
            return fbank(self._waveform(path), SAMPLE_RATE, short=self.config.features.short)
        stat = source.stat()
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"  # a rewritten file gets a new entry
        cached = Path(self.config.feature_cache) / self._cache_key / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"
        if cached.is_file():
            return torch.from_numpy(np.load(cached))
        logmel = fbank(self._waveform(path), SAMPLE_RATE, short=self.config.features.short)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.stem}.{os.getpid()}.partial.npy")
        np.save(partial, logmel.numpy())
        os.replace(partial, cached)  # atomic: concurrent workers never read half a file
        return logmel

    def _record_bad(self, exc: AudioLoadError) -> None:
        if self.config.on_bad == "raise":
            raise AudioLoadError(exc.path, f"{exc.reason} (an evaluation set does not replace unreadable clips: fix "
                                           "the file or remove it from the manifest)") from exc
        known = self._known_bad()
        if exc.path not in known:
            reason = " ".join(exc.reason.split())  # one line, no tabs
            known[exc.path] = reason
            if self.config.bad_files_log is not None:
                log_path = Path(self.config.bad_files_log)
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "a") as f:  # one short append: whole lines even from concurrent workers
                    f.write(f"{exc.path}\t{reason}\n")
            log.warning("bad audio file %d/%d skipped: %s", len(known), self.config.max_bad_files, exc)
        self.bad_files = known
        if len(known) > self.config.max_bad_files:
            listing = "\n".join(f"  {p}: {r}" for p, r in known.items())
            raise TooManyBadFiles(f"{len(known)} bad audio files, more than max_bad_files="
                                  f"{self.config.max_bad_files}:\n{listing}")

    def _known_bad(self) -> dict[str, str]:
        """The bad files seen so far: by every worker and epoch when ``bad_files_log`` is set, else by this copy."""
        if self.config.bad_files_log is None:
            return self.bad_files
        return read_bad_files(self.config.bad_files_log)


def read_bad_files(path: str | Path) -> dict[str, str]:
    """``{path: reason}`` of a ``bad_files_log`` (empty if none was written)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split("\t", 1) for line in lines if "\t" in line)
