"""Test-wide settings: offline hub, seeded RNGs, and the shared-data fixture (DECISIONS.md item 5)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _hf_cache(tmp_path_factory):
    """Keep `datasets`/hub caches out of the home directory."""
    os.environ.setdefault("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module of tiny models: fastest, and immune to a busy machine's cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _require_shared() -> bool:
    return os.environ.get("TEXTDIFF_REQUIRE_SHARED_DATA", "") not in ("", "0", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``. Skips when missing, fails when TEXTDIFF_REQUIRE_SHARED_DATA=1."""
    from textdiff.data.paths import shared_data_dir

    path = shared_data_dir()
    if not (path / "e2e").is_dir():
        msg = (
            f"shared data not found at {path} (set TEXTDIFF_SHARED_DATA to the folder that holds "
            "e2e/, multi30k/, tatoeba_en/, scitldr/)"
        )
        if _require_shared():
            pytest.fail(msg + " and TEXTDIFF_REQUIRE_SHARED_DATA=1 is set")
        pytest.skip(msg)
    return path
