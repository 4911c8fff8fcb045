"""Batch jobs behind ``ssamba predict`` and ``ssamba embed``: many files in, results written as they come (each
embedding file atomically: a killed job never leaves a torn one), every failure listed in the report (and the
index) while the other files go on."""
from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import torch

from ssamba.atomic import atomic_write
from ssamba.inference.inputs import as_sources, audio_files
from ssamba.inference.predictor import Activation, Embedding, Prediction, Predictor

INDEX_NAME = "index.csv"
#: what ``embed_files`` appends to a stem besides the format's suffix: the clip file has none
_EXTRA_NAMES = (".frames", ".timestamps")


@dataclass
class JobReport:
    """How many inputs were processed and which failed (source, error)."""

    total: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.total - len(self.failures)


def predict_files(predictor: Predictor, inputs: Iterable[str | Path], out: TextIO, *, top_k: int = 5,
                  fmt: Literal["json", "csv"] = "json", per_second: bool = False,
                  activation: Activation = "auto") -> JobReport:
    """Top-k labels of every file (folders expanded) written to ``out`` as JSON (a list of objects) or CSV rows
    ``source,second,rank,label,score,error`` (``second`` empty for the clip)."""
    if fmt not in ("json", "csv"):
        raise ValueError(f"format must be json or csv, got {fmt!r}")
    sources, _ = as_sources(audio_files(inputs), mono=predictor.mono)
    report = JobReport(len(sources))
    writer = csv.writer(out) if fmt == "csv" else None
    if writer:
        writer.writerow(["source", "second", "rank", "label", "score", "error"])
    records = []
    for pred in predictor.iter_predict(sources, top_k, per_second, activation):
        if pred.error:
            report.failures.append((pred.source, pred.error))
        if writer:
            _csv_rows(writer, pred)
        else:
            records.append(_json_record(pred))
    if not writer:
        json.dump(records, out, indent=1)
        out.write("\n")
    return report


def _json_record(pred: Prediction) -> dict:
    rec: dict = {"source": pred.source}
    if pred.error:
        rec["error"] = pred.error
        return rec
    rec["duration_s"] = pred.duration_s
    rec["top"] = [{"label": lab, "score": round(s, 6)} for lab, s in pred.top]
    if pred.per_second is not None:
        rec["per_second"] = [[{"label": lab, "score": round(s, 6)} for lab, s in sec] for sec in pred.per_second]
    return rec


def _csv_rows(writer, pred: Prediction) -> None:
    if pred.error:
        writer.writerow([pred.source, "", "", "", "", pred.error])
        return
    for rank, (label, score) in enumerate(pred.top, 1):
        writer.writerow([pred.source, "", rank, label, f"{score:.6f}", ""])
    for second, top in enumerate(pred.per_second or []):
        for rank, (label, score) in enumerate(top, 1):
            writer.writerow([pred.source, second, rank, label, f"{score:.6f}", ""])


def output_stems(paths: list[Path]) -> dict[str, Path]:
    """A relative output stem per source path: its path below the inputs' common folder, suffix kept (so
    ``dog/a.wav``, ``cat/a.wav`` and ``dog/a.flac`` stay apart: ``dog/a.wav.npy``, ...).  Two different files that
    would still write the same output (e.g. ``a.wav`` and ``a.wav.frames`` with ``--timestamps``) are an error
    before anything runs, never a silent overwrite."""
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved])) if resolved else Path(".")
    stems = {str(p): r.relative_to(root) for p, r in zip(paths, resolved)}
    owner: dict[Path, str] = {}
    for source, stem in stems.items():
        for name in (stem.name, *(stem.name + extra for extra in _EXTRA_NAMES)):
            other = owner.setdefault(stem.with_name(name), source)
            if Path(other).resolve() != Path(source).resolve():
                raise ValueError(f"{source} and {other} would write the same output file "
                                 f"{stem.with_name(name)}; rename one or embed them separately")
    return stems


def embed_files(predictor: Predictor, inputs: Iterable[str | Path], out_dir: str | Path, *,
                timestamps: bool = False, fmt: Literal["npy", "safetensors"] = "npy") -> JobReport:
    """Embeddings of every file (folders expanded) into ``out_dir``, ``STEM`` being the file's path below the
    inputs' common folder (:func:`output_stems`): ``STEM.npy`` (clip embedding) plus ``STEM.frames.npy`` and
    ``STEM.timestamps.npy`` with ``timestamps``; or one ``STEM.safetensors`` holding
    ``clip`` (and ``frames``, ``timestamps_ms``).  ``index.csv`` lists every input with its files or its error."""
    if fmt not in ("npy", "safetensors"):
        raise ValueError(f"format must be npy or safetensors, got {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = audio_files(inputs)
    stems = output_stems(paths)
    sources, _ = as_sources(paths, mono=predictor.mono)
    report = JobReport(len(sources))
    with open(out_dir / INDEX_NAME, "w", newline="") as index:
        writer = csv.writer(index)
        writer.writerow(["source", "status", "files", "duration_s", "frames", "error"])
        for emb in predictor.iter_embed(sources, timestamps):
            if emb.error:
                report.failures.append((emb.source, emb.error))
                writer.writerow([emb.source, "error", "", "", "", emb.error])
                continue
            files = _write_embedding(emb, out_dir / stems[emb.source], fmt)
            frames = "" if emb.frames is None else emb.frames.shape[0]
            writer.writerow([emb.source, "ok", ";".join(str(f.relative_to(out_dir)) for f in files),
                             f"{emb.duration_s:.3f}", frames, ""])
            index.flush()
    return report


def _write_embedding(emb: Embedding, stem: Path, fmt: str) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"clip": emb.clip}
    if emb.frames is not None:
        arrays.update(frames=emb.frames, timestamps_ms=emb.timestamps_ms)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        return [atomic_write(stem.with_name(stem.name + ".safetensors"), lambda tmp: save_file(tensors, tmp))]
    names = {"clip": "", "frames": _EXTRA_NAMES[0], "timestamps_ms": _EXTRA_NAMES[1]}
    return [atomic_write(stem.with_name(stem.name + names[key] + ".npy"), functools.partial(_save_npy, value=value))
            for key, value in arrays.items()]


def _save_npy(path: str, value: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: given a name, np.save would append ".npy" to the temporary's
        np.save(f, value)
