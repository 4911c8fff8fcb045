"""Every key and shape of the official state dicts (../shared/reference/official_keys.json) maps onto our presets."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED

from ssamba.loading import MODEL_CLASSES
from ssamba.models.checkpoint import (
    DROPPED_OFFICIAL_KEYS, Geometry, config_from_official, official_key_to_ours, ours_to_official_key,
    strip_module_prefix,
)
from ssamba.models.config import ModelConfig, preset

KEYS = json.loads((SHARED / "reference" / "official_keys.json").read_text())
ENTRIES = [k for k in KEYS if not k.startswith("_")]


def build(entry: dict):
    """Our model for an official entry's configuration, on the meta device (shapes only, no memory)."""
    cfg = entry["config"]
    arch = "ssast" if "timm_version" in cfg else "ssamba"
    (fdim, tdim), (fstride, tstride) = cfg["input"], cfg["stride"]
    enc = preset(arch, cfg["model_size"], input_fdim=fdim, input_tdim=tdim, fstride=fstride, tstride=tstride)
    task = "classify" if "label_dim" in cfg else "pretrain"
    with torch.device("meta"):
        return MODEL_CLASSES[task](ModelConfig(encoder=enc, task=task, label_dim=cfg.get("label_dim", 0)))


@pytest.mark.parametrize("name", ENTRIES)
def test_every_official_key_has_our_parameter_with_the_same_shape(name):
    entry = KEYS[name]
    ours = {k: tuple(v.shape) for k, v in build(entry).state_dict().items()}
    covered = set()
    for item in entry["keys"]:
        mapped = official_key_to_ours(item["key"])
        if mapped is None:
            assert item["key"].removeprefix("module.") in DROPPED_OFFICIAL_KEYS
            continue
        assert mapped in ours, f"{item['key']} -> {mapped} missing from our model"
        assert ours[mapped] == tuple(item["shape"]), item["key"]
        assert ours_to_official_key(mapped) == item["key"]
        covered.add(mapped)
    assert covered == set(ours), f"our parameters without an official counterpart: {set(ours) - covered}"
    assert len(entry["keys"]) == entry["num_keys"]


@pytest.mark.parametrize("name", ENTRIES)
def test_architecture_is_inferred_from_official_shapes(name):
    entry = KEYS[name]
    state = {}
    for item in entry["keys"]:
        if item["key"].endswith("p_input_fdim") or item["key"].endswith("p_input_tdim"):
            idx = 0 if item["key"].endswith("fdim") else 1
            state[item["key"]] = torch.tensor(entry["config"]["input"][idx])
        else:
            state[item["key"]] = torch.empty(item["shape"], device="meta")
    cfg = entry["config"]
    geometry = Geometry(input_tdim=cfg["input"][1], fstride=cfg["stride"][0], tstride=cfg["stride"][1])
    inferred = config_from_official(strip_module_prefix(state), geometry)
    expected = build(entry).config
    assert inferred.to_dict() == expected.to_dict()
    # without a declared geometry the official fine-tuning convention (stride 10) is recovered from the shapes
    if "label_dim" in cfg:
        guessed = config_from_official(strip_module_prefix(state))
        assert guessed.encoder.grid == expected.encoder.grid and guessed.encoder.fstride == 10


def test_parameter_counts_match_spec():
    """Spec §1 counts (float elements, official incl. the unused 1000-way head) minus what we drop."""
    for name in ENTRIES:
        entry = KEYS[name]
        dropped = sum(torch.Size(i["shape"]).numel() for i in entry["keys"]
                      if official_key_to_ours(i["key"]) is None and i["dtype"] == "float32")
        ours = sum(p.numel() for p in build(entry).parameters())
        assert ours == entry["num_float_elements"] - dropped, name
