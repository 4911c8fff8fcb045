"""``hf://OWNER/REPO[@REVISION]/PATH`` references: checkpoints on the Hugging Face hub, through its own client.

The official SSAMBA checkpoints are published there (e.g. ``hf://attentionisallyouneed369/ssamba/ssamba_tiny_400.pth``).
Files go into huggingface_hub's cache (``HF_HUB_CACHE`` / ``HF_HOME`` / its default) and load like local files.
``PATH`` with a checkpoint suffix (``.pth``, ``.pt``, ...) names one file; otherwise (or an empty ``PATH``) it names
a folder saved by ``save_pretrained`` and both its files are fetched.  With ``HF_HUB_OFFLINE=1`` only the cache is
used.  ``huggingface_hub`` is an optional dependency (``pip install 'ssamba[hub]'``).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote

from ssamba.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError

logger = logging.getLogger(__name__)

SCHEME = "hf://"
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
_TRUE = ("1", "true", "yes", "on")


class HubError(CheckpointError):
    """A hub reference that cannot be resolved to a local file (offline and not cached, missing, bad hash)."""


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    path: str  # "" for the repository root
    revision: str | None

    @property
    def is_file(self) -> bool:
        return PurePosixPath(self.path).suffix.lower() in FILE_SUFFIXES

    def __str__(self) -> str:
        rev = f"@{quote(self.revision, safe='')}" if self.revision else ""
        return f"{SCHEME}{self.repo_id}{rev}/{self.path}"


def is_hub_ref(path: object) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def parse(ref: str) -> HubRef:
    """Split ``hf://OWNER/REPO[@REVISION][/PATH]``; a revision with slashes is written percent-encoded
    (``@refs%2Fpr%2F1`` for the hub's ``refs/pr/1``), as a plain slash would start the path."""
    parts = ref[len(SCHEME):].strip("/").split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise HubError(f"{ref}: expected hf://OWNER/REPO/FILE (e.g. hf://attentionisallyouneed369/ssamba/"
                       "ssamba_tiny_400.pth)")
    owner, repo = parts[0], parts[1]
    repo, _, revision = repo.partition("@")
    return HubRef(f"{owner}/{repo}", parts[2] if len(parts) == 3 else "", unquote(revision) or None)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def cache_dir() -> str | None:
    """The cache huggingface_hub uses, read from the environment at call time (``None``: its default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def resolve(ref: str, sha256: str | None = None) -> Path:
    """Download (or find in the cache) what ``ref`` names; the local file or saved-model folder.

    ``sha256`` pins the checkpoint file (the weights file of a folder): a mismatch is an error.
    """
    parsed = parse(ref)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise HubError(f"{ref}: loading from the hub needs huggingface_hub: pip install 'ssamba[hub]'") from exc
    names = [parsed.path] if parsed.is_file else [str(PurePosixPath(parsed.path) / n) for n in
                                                   (CONFIG_NAME, WEIGHTS_NAME)]
    local = [_download(hf_hub_download, parsed, name, ref) for name in names]
    if sha256 is not None:
        verify_sha256(local[-1], sha256, ref)
    return local[0] if parsed.is_file else local[0].parent


def _download(download, parsed: HubRef, name: str, ref: str) -> Path:
    is_offline = offline()
    try:
        path = download(parsed.repo_id, name, revision=parsed.revision, cache_dir=cache_dir(),
                        local_files_only=is_offline)
    except Exception as exc:  # the client raises many types (offline, HTTP, not found, validation)
        where = cache_dir() or "the default Hugging Face cache"
        if is_offline:
            reason = (f"not in {where} and HF_HUB_OFFLINE is set; download it once with network access "
                      "(unset HF_HUB_OFFLINE) or point HF_HUB_CACHE at a cache that holds it")
        else:
            reason = f"could not be downloaded and is not in {where} (no network access?)"
        raise HubError(f"{ref}: {name} {reason} [{type(exc).__name__}: {exc}]") from exc
    logger.info("%s -> %s", ref, path)
    return Path(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, ref: str | None = None) -> None:
    actual = file_sha256(path)
    if actual.lower() != expected.strip().lower():
        raise HubError(f"{ref or path}: sha256 mismatch for {path}: expected {expected}, got {actual}")
