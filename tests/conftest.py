import os
import sys
from pathlib import Path

# A stray hub call must fail fast, never hang (set before transformers is imported).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_archs.py

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    from vattr_bench.models import load_model

    return load_model("vattr-tiny")
