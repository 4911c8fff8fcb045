"""Manifests: which audio files make up a data set and what their labels are.

Two on-disk conventions are read and written:

* SSAST/AST JSON ``{"data": [{"wav": PATH, "labels": "mid1,mid2"}, ...]}`` plus ``class_labels_indices.csv``
  (``index,mid,display_name``), the format of the official recipes;
* a simple CSV with a header ``path,label[,split]`` (several labels joined by ``,`` inside one quoted field).

Relative paths are resolved against the manifest's directory when read.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Entry:
    """One clip: its path, zero or more label ids (``mid``), and optionally the split or fold it belongs to."""

    path: str
    labels: tuple[str, ...] = ()
    split: str | None = None


@dataclass(frozen=True)
class ClassLabels:
    """The ordered class set: output index ``i`` of a model is ``mids[i]`` (shown as ``names[i]``)."""

    mids: tuple[str, ...]
    names: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.mids) != len(self.names):
            raise ValueError(f"{len(self.mids)} mids but {len(self.names)} display names")
        index = {mid: i for i, mid in enumerate(self.mids)}
        if len(index) != len(self.mids):
            dupes = sorted({m for m in self.mids if self.mids.count(m) > 1})
            raise ValueError(f"duplicate class ids: {', '.join(dupes)}")
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> ClassLabels:
        """Classes whose id is their name (every corpus except AudioSet)."""
        names = tuple(names)
        return cls(names, names)

    def __len__(self) -> int:
        return len(self.mids)

    def __contains__(self, mid: object) -> bool:
        return mid in self._index

    def index(self, mid: str) -> int:
        """Output index of ``mid``; KeyError names the unknown id."""
        try:
            return self._index[mid]
        except KeyError:
            raise KeyError(f"label {mid!r} is not one of the {len(self)} classes") from None


def split_labels(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _resolve(path: str, base: Path) -> str:
    return path if Path(path).is_absolute() else str(base / path)


def read_json_manifest(path: str | Path) -> list[Entry]:
    """Entries of an SSAST/AST JSON manifest (a ``split`` key, if present, is kept)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        items = payload["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an SSAST/AST manifest ({{'data': [...]}} expected): {exc}") from exc
    entries = []
    for i, item in enumerate(items):
        if "wav" not in item:
            raise ValueError(f"{path}: entry {i} has no 'wav' key")
        entries.append(Entry(_resolve(item["wav"], path.parent), split_labels(item.get("labels", "")),
                             item.get("split")))
    return entries


def write_json_manifest(entries: Iterable[Entry], path: str | Path) -> Path:
    """Write entries as ``{"data": [{"wav", "labels"[, "split"]}]}`` (labels comma-joined, ``""`` when unlabeled).
    The split (fold) is kept so that readers can group by it (UrbanSound8K's 60-s sequences); SSAST ignores it."""
    path = Path(path)
    data = [{"wav": e.path, "labels": ",".join(e.labels), **({"split": e.split} if e.split is not None else {})}
            for e in entries]
    path.write_text(json.dumps({"data": data}, indent=1) + "\n")
    return path


def hold_out(entries: Sequence[Entry], ratio: float, seed: int) -> tuple[list[Entry], list[Entry]]:
    """``(kept, held_out)``: a seeded random ``ratio`` of the entries held out (at least one, never all), both parts
    in the entries' order. s3prl's ``valid_ratio``: a dev split drawn from the training data to select the model."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"the held-out ratio must be in (0, 1), got {ratio}")
    count = min(max(round(len(entries) * ratio), 1), len(entries) - 1)
    if count < 1:
        raise ValueError(f"{len(entries)} entries cannot be split into two non-empty parts")
    chosen = set(np.random.default_rng(seed).permutation(len(entries))[:count].tolist())
    return ([e for i, e in enumerate(entries) if i not in chosen], [e for i, e in enumerate(entries) if i in chosen])


def read_csv_manifest(path: str | Path) -> list[Entry]:
    """Entries of a ``path,label[,split]`` CSV (``label`` may be empty for unlabeled audio; other columns are
    ignored)."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{path}: CSV manifest needs a header with a 'path' column (path,label[,split])")
        misnamed = sorted({"labels", "class", "category", "target"} & set(reader.fieldnames))
        if "label" not in reader.fieldnames and misnamed:  # every clip would be read as unlabeled
            raise ValueError(f"{path}: no 'label' column but {', '.join(misnamed)}; the header is path,label[,split] "
                             "(other columns are ignored)")
        return [Entry(_resolve(row["path"], path.parent), split_labels(row.get("label") or ""),
                      row.get("split") or None) for row in reader]


def write_csv_manifest(entries: Iterable[Entry], path: str | Path, with_split: bool = True) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"] if with_split else ["path", "label"])
        for e in entries:
            row = [e.path, ",".join(e.labels)]
            writer.writerow(row + [e.split or ""] if with_split else row)
    return path


def read_manifest(path: str | Path) -> list[Entry]:
    """Read a ``.json`` or ``.csv`` manifest by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return read_json_manifest(path)
    if suffix == ".csv":
        return read_csv_manifest(path)
    raise ValueError(f"{path}: unknown manifest format (expected .json or .csv)")


def read_class_labels(path: str | Path) -> ClassLabels:
    """``class_labels_indices.csv``: rows ``index,mid,display_name`` (any order; indices must be 0..n-1)."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"index", "mid", "display_name"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: class label file lacks column(s) {', '.join(sorted(missing))}")
        rows = sorted(((int(r["index"]), r["mid"], r["display_name"]) for r in reader))
    if [r[0] for r in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: class indices are not 0..{len(rows) - 1}")
    return ClassLabels(tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def write_class_labels(labels: ClassLabels, path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        for i, (mid, name) in enumerate(zip(labels.mids, labels.names)):
            writer.writerow([i, mid, name])
    return path


def check_labels(entries: Sequence[Entry], labels: ClassLabels) -> None:
    """Raise naming the first file whose label is not in ``labels``, or that has no label at all (it would train
    as an all-negative target, or as class 0 under cross-entropy), rather than failing mid-epoch."""
    for e in entries:
        if not e.labels:
            raise ValueError(f"{e.path}: no label, but the data is used with {len(labels)} classes (every clip of a "
                             "labelled task needs at least one)")
        for mid in e.labels:
            if mid not in labels:
                raise ValueError(f"{e.path}: label {mid!r} is not one of the {len(labels)} classes")
