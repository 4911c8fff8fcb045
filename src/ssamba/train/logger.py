"""Run logs: JSONL and CSV of every logged record, TensorBoard scalars, and a final summary table (rank 0 only)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ssamba.train.tensorboard import EventWriter


class RunLogger:
    def __init__(self, out_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._csv_fields: list[str] | None = None
        self._tb: EventWriter | None = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._tb = EventWriter(self.out_dir / "tensorboard")

    def log(self, split: str, step: int, values: dict[str, float]) -> None:
        """Record ``values`` (e.g. loss, lr, metrics) for ``split`` ("train", "valid", ...) at global ``step``."""
        if not self.enabled:
            return
        record = {"split": split, "step": step, **{k: _plain(v) for k, v in values.items()}}
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._append_csv(record)
        numeric = {f"{split}/{k}": float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if self._tb is not None and numeric:
            self._tb.add_scalars(step, numeric)

    def _append_csv(self, record: dict) -> None:
        path = self.out_dir / "log.csv"
        new_columns = self._csv_fields is None or any(k not in self._csv_fields for k in record)
        if not new_columns:
            with open(path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self._csv_fields).writerow(record)
            return
        # a record with new columns: rewrite the file with the widened header (rare: new splits/metrics)
        self._csv_fields = (self._csv_fields or []) + [k for k in record if k not in (self._csv_fields or [])]
        rows = []
        if path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        rows.append(record)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._csv_fields)
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
