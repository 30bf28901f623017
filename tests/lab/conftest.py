"""The lab tests run tiny models (their pairs and cache: tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def tiny_models_one_thread(one_torch_thread):
    """Every test here runs tiny models (tests/conftest.py: one_torch_thread)."""
