"""Test-wide JAX settings: silent rank broadcasting fails loudly (e.g. (n,) - (n, 1))."""
import os
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
# CLI runs inside tests use a throw-away compilation cache, never the user's.
os.environ.setdefault("JAXCALC_CACHE_DIR", tempfile.mkdtemp(prefix="jaxcalc-test-cache-"))

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run a test body with float64 enabled: ``def test_x(x64): ...``."""
    with jax.enable_x64(True):
        yield
