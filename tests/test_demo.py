"""The main job: ``ssamba demo --quick`` in a fresh folder beats chance widely and writes its report and plots."""
from __future__ import annotations

import json

from ssamba.cli import main


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    chance = results["chance"]
    assert len(results["classes"]) >= 10
    pretrained = next(r for r in results["rows"] if r["model"].endswith("pretrained"))
    assert pretrained["test acc"] >= 3 * chance, results["rows"]
    for name in ("report.md", "training_curves.png", "confusion_matrix.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list(out.glob("*tokens*.png")) or list((out / "efficiency").glob("*.png"))
    assert "| model |" in capsys.readouterr().out
