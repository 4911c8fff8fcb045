"""Manifests: the SSAST/AST JSON + class_labels_indices.csv convention and the simple CSV, both directions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssamba.data.manifest import ClassLabels, Entry, check_labels, read_class_labels, read_csv_manifest, \
    read_json_manifest, read_manifest, write_class_labels, write_csv_manifest, write_json_manifest

ENTRIES = [Entry("/data/a.wav", ("/m/09x0r", "/t/dd00088"), "eval"), Entry("/data/b.flac", ("/m/04rlf",), "eval"),
           Entry("/data/c.wav", (), "eval")]


def test_json_is_the_ast_format_and_round_trips(tmp_path: Path) -> None:
    path = write_json_manifest(ENTRIES, tmp_path / "eval.json")
    assert json.loads(path.read_text()) == {"data": [  # SSAST reads wav and labels; the split is ours
        {"wav": "/data/a.wav", "labels": "/m/09x0r,/t/dd00088", "split": "eval"},
        {"wav": "/data/b.flac", "labels": "/m/04rlf", "split": "eval"}, {"wav": "/data/c.wav", "labels": "", "split": "eval"}]}
    assert read_json_manifest(path) == ENTRIES
    unsplit = write_json_manifest([Entry(e.path, e.labels) for e in ENTRIES], tmp_path / "plain.json")
    assert "split" not in unsplit.read_text()


def test_relative_paths_resolve_against_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"data": [{"wav": "clips/x.wav", "labels": "dog"}]}))
    (tmp_path / "m.csv").write_text("path,label\nclips/y.wav,cat\n")
    assert read_manifest(tmp_path / "m.json") == [Entry(str(tmp_path / "clips/x.wav"), ("dog",))]
    assert read_manifest(tmp_path / "m.csv") == [Entry(str(tmp_path / "clips/y.wav"), ("cat",))]


def test_csv_round_trips_multi_labels_and_splits(tmp_path: Path) -> None:
    path = write_csv_manifest(ENTRIES, tmp_path / "all.csv")
    assert path.read_text().splitlines()[:2] == ["path,label,split", '/data/a.wav,"/m/09x0r,/t/dd00088",eval']
    assert read_csv_manifest(path) == ENTRIES
    plain = write_csv_manifest(ENTRIES, tmp_path / "plain.csv", with_split=False)
    assert read_csv_manifest(plain) == [Entry(e.path, e.labels) for e in ENTRIES]


def test_class_labels_with_commas_in_names_round_trip(tmp_path: Path) -> None:
    labels = ClassLabels(("/m/09x0r", "/m/05zppz"), ("Speech", "Male speech, man speaking"))
    path = write_class_labels(labels, tmp_path / "class_labels_indices.csv")
    assert path.read_text().splitlines() == ["index,mid,display_name", "0,/m/09x0r,Speech",
                                             '1,/m/05zppz,"Male speech, man speaking"']
    back = read_class_labels(path)
    assert back == labels and back.index("/m/05zppz") == 1 and len(back) == 2 and "/m/09x0r" in back


def test_official_style_label_file_in_any_row_order(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text('index,mid,display_name\n1,/m/0b,"B, b"\n0,/m/0a,A\n')
    assert read_class_labels(path) == ClassLabels(("/m/0a", "/m/0b"), ("A", "B, b"))


@pytest.mark.parametrize(("text", "message"), [("index,mid\n0,a\n", "lacks column"),
                                               ("index,mid,display_name\n0,a,A\n2,b,B\n", "not 0..1"),
                                               ("index,mid,display_name\n0,a,A\n1,a,B\n", "duplicate class ids: a")])
def test_bad_label_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_class_labels(tmp_path / "l.csv")


def test_bad_manifests_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="x.json: not an SSAST/AST manifest"):
        read_manifest(tmp_path / "x.json")
    (tmp_path / "y.csv").write_text("file,label\na.wav,b\n")
    with pytest.raises(ValueError, match="y.csv: CSV manifest needs a header with a 'path' column"):
        read_manifest(tmp_path / "y.csv")
    with pytest.raises(ValueError, match="unknown manifest format"):
        read_manifest(tmp_path / "z.txt")


def test_unknown_labels_are_caught_before_training() -> None:
    labels = ClassLabels.from_names(["dog", "cat"])
    check_labels([Entry("a.wav", ("dog",))], labels)
    with pytest.raises(ValueError, match="b.wav: label 'cow' is not one of the 2 classes"):
        check_labels([Entry("a.wav", ("dog",)), Entry("b.wav", ("cow",))], labels)
    with pytest.raises(KeyError, match="cow"):
        labels.index("cow")


def test_csv_with_a_misnamed_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,labels\nclips/y.wav,cat\n")
    with pytest.raises(ValueError, match="no 'label' column but labels; the header is path,label"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label,duration\nclips/y.wav,cat,1.0\n")  # extra columns: ignored
    assert read_manifest(tmp_path / "m.csv") == [Entry(str(tmp_path / "clips/y.wav"), ("cat",))]
