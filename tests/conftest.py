"""Shared fixtures; keeps torch to the machine's cores and caches under tests/.cache."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GIFINDEX_CACHE_DIR", os.path.join(os.path.dirname(__file__), ".cache"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from gifindex.config import SignatureConfig  # noqa: E402


@pytest.fixture
def tiny_config() -> SignatureConfig:
    return SignatureConfig(resolution=16, num_probes=3, steps=4, proj_dim=32, seed=3)
