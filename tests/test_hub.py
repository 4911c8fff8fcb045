"""``ssamba.load("hf://OWNER/REPO/FILE")`` offline (``HF_HUB_OFFLINE=1``) against a cache laid out as
huggingface_hub lays it out (``models--OWNER--REPO/{blobs,refs,snapshots}``), with real fixture checkpoints."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch
from _inference_helpers import FINETUNE, PRETRAIN

import ssamba
from ssamba import hub
from ssamba.hub import HubError

pytest.importorskip("huggingface_hub")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> None:
    """Place ``files`` (name in the repo -> local file) in ``cache`` as a download of ``repo_id`` at ``commit``:
    content-addressed blobs, a snapshot of symlinks to them, and ``refs/main`` naming the commit."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    for name, source in files.items():
        data = source.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return ssamba.load(PRETRAIN).save_pretrained(tmp_path_factory.mktemp("converted"))  # our format


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, converted) -> Path:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_to_cache(cache, "attentionisallyouneed369/ssamba", {"ssamba_tiny_ft.pth": FINETUNE})
    add_to_cache(cache, "someone/ssamba-tiny-converted",
                 {f"tiny/{n}": converted / n for n in ("config.json", "model.safetensors")})
    return cache


def test_official_pth_from_the_cache_loads_like_the_local_file(offline_cache):
    model = ssamba.load("hf://attentionisallyouneed369/ssamba/ssamba_tiny_ft.pth")
    local = ssamba.load(FINETUNE)
    assert model.config == local.config and callable(model.predict)
    state, expected = model.state_dict(), local.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    same = ssamba.load("hf://attentionisallyouneed369/ssamba@main/ssamba_tiny_ft.pth")
    assert torch.equal(same.encoder.pos_embed, model.encoder.pos_embed)


def test_a_saved_folder_in_a_repository(offline_cache, converted):
    model = ssamba.load("hf://someone/ssamba-tiny-converted/tiny")
    assert model.config.task == "pretrain"
    assert torch.equal(model.encoder.pos_embed, ssamba.load(converted).encoder.pos_embed)


def test_sha256_pinning(offline_cache):
    digest = hashlib.sha256(FINETUNE.read_bytes()).hexdigest()
    ssamba.load("hf://attentionisallyouneed369/ssamba/ssamba_tiny_ft.pth", sha256=digest)
    with pytest.raises(HubError, match="sha256 mismatch"):
        ssamba.load("hf://attentionisallyouneed369/ssamba/ssamba_tiny_ft.pth", sha256="0" * 64)
    with pytest.raises(HubError, match="sha256 mismatch"):
        ssamba.load(FINETUNE, sha256="0" * 64)  # local files can be pinned too


def test_offline_and_not_cached_is_a_clear_error(offline_cache):
    with pytest.raises(HubError) as info:
        ssamba.load("hf://attentionisallyouneed369/ssamba/ssamba_base_400.pth")
    message = str(info.value)
    assert message.startswith("hf://attentionisallyouneed369/ssamba/ssamba_base_400.pth: ssamba_base_400.pth")
    assert "HF_HUB_OFFLINE is set" in message and str(offline_cache) in message
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        ssamba.load("hf://nobody/nothing/model.pth")


def test_references_are_parsed_strictly():
    ref = hub.parse("hf://o/r@v1.0/sub/dir/file.pth")
    assert (ref.repo_id, ref.revision, ref.path, ref.is_file) == ("o/r", "v1.0", "sub/dir/file.pth", True)
    assert hub.parse("hf://o/r").path == "" and not hub.parse("hf://o/r/folder").is_file
    pr = hub.parse("hf://o/r@refs%2Fpr%2F1/m.pth")  # a revision with slashes, percent-encoded
    assert (pr.revision, pr.path) == ("refs/pr/1", "m.pth") and str(pr) == "hf://o/r@refs%2Fpr%2F1/m.pth"
    with pytest.raises(HubError, match="expected hf://OWNER/REPO/FILE"):
        hub.parse("hf://only-owner")


def test_missing_client_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(HubError, match=r"pip install 'ssamba\[hub\]'"):
        ssamba.load("hf://o/r/file.pth")
