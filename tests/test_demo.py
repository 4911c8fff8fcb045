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
    assert (out / ".ssamba-demo").is_file()  # a later demo here may replace these run folders


def test_demo_never_deletes_folders_it_did_not_write(tmp_path, caplog):
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "weeks_of_work.pt").write_bytes(b"precious")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "holds pretrain, not written by `ssamba demo`" in caplog.text
    assert (tmp_path / "pretrain" / "weeks_of_work.pt").read_bytes() == b"precious"
