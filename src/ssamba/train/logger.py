"""Run logs: JSONL and CSV of every logged record and TensorBoard scalars (rank 0 only); ``format_table`` renders
results for the log."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable, TextIO

from ssamba.atomic import atomic_write
from ssamba.train.tensorboard import EventWriter, truncate_events

CSV, JSONL, TENSORBOARD = "log.csv", "log.jsonl", "tensorboard"


class RunLogger:
    """Appends to the run's logs; a resumed run first drops what was logged after its checkpoint (``truncate``)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._csv_fields: list[str] | None = None  # read from the file's header on first use
        self._tb: EventWriter | None = None  # opened on first use, after a possible ``truncate``

    def log(self, split: str, step: int, values: dict[str, float]) -> None:
        """Record ``values`` (e.g. loss, lr, metrics) for ``split`` ("train", "valid", ...) at global ``step``."""
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"split": split, "step": step, **{k: _plain(v) for k, v in values.items()}}
        with open(self.out_dir / JSONL, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._append_csv(record)
        numeric = {f"{split}/{k}": float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if numeric:
            if self._tb is None:
                self._tb = EventWriter(self.out_dir / TENSORBOARD)
            self._tb.add_scalars(step, numeric)

    def truncate(self, step: int) -> None:
        """Drop every record after ``step`` from all logs: a run resumed from a checkpoint at ``step`` logs the
        steps after it again, and the logs must read like an uninterrupted run's."""
        if not self.enabled:
            return
        self.close()
        jsonl = self.out_dir / JSONL
        if jsonl.is_file():
            lines = jsonl.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if _complete(line) and json.loads(line)["step"] <= step]
            if kept != lines:
                _replace(jsonl, lambda f: f.write("".join(kept)))
        fields, rows = _read_csv(self.out_dir / CSV)
        kept_rows = [r for r in rows if r.get("step") not in (None, "") and int(r["step"]) <= step]
        if kept_rows != rows:
            _write_csv(self.out_dir / CSV, fields, kept_rows)
        if (self.out_dir / TENSORBOARD).is_dir():
            truncate_events(self.out_dir / TENSORBOARD, step)
        self._csv_fields = None

    def _append_csv(self, record: dict) -> None:
        path = self.out_dir / CSV
        if self._csv_fields is None:  # a resumed run (or a second logger) continues the file's columns
            self._csv_fields = _read_csv(path)[0]
        new = [k for k in record if k not in self._csv_fields]
        if not new:
            with open(path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self._csv_fields, restval="").writerow(record)
            return
        # a record with new columns (rare: new splits/metrics): rewrite the file under the union of the columns
        fields, rows = _read_csv(path)
        self._csv_fields = fields + [k for k in self._csv_fields + new if k not in fields]
        _write_csv(path, self._csv_fields, [*rows, record])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _complete(line: str) -> bool:
    """A whole JSON line (a killed run can leave a torn last one)."""
    if not line.endswith("\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Through a temporary file and an atomic rename: a run killed mid-rewrite keeps its old log."""
    def write(f: TextIO) -> None:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    _replace(path, write)


def _replace(path: Path, write: Callable[[TextIO], object]) -> None:
    """Rewrite ``path`` with what ``write`` writes to the open file, atomically."""
    def fill(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            write(f)

    atomic_write(path, fill)


def _plain(value):
    return float(value) if hasattr(value, "item") else value


def format_table(rows: list[dict[str, object]]) -> str:
    """A Markdown table of ``rows`` (same keys), numbers to 4 significant digits."""
    if not rows:
        return ""
    keys = list(rows[0])
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
