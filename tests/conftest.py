"""Test-wide JAX settings: silent rank broadcasting fails loudly (e.g. (n,) - (n, 1))."""
import os
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
# CLI runs inside tests use a throw-away compilation cache, never the user's.
os.environ.setdefault("JAXCALC_CACHE_DIR", tempfile.mkdtemp(prefix="jaxcalc-test-cache-"))

# The suite compiles hundreds of small programs and runs each a few times: XLA's CPU backend
# without its LLVM optimisation passes compiles them about a quarter faster (measured on the
# suite's slowest files), and the numbers the tests check do not depend on it. Subprocess tests
# that build their own XLA_FLAGS add JAXCALC_TEST_XLA_FLAGS. Not for timing: benchmarks/ runs
# with XLA's defaults.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("JAXCALC_TEST_XLA_FLAGS", FAST_COMPILE)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {os.environ['JAXCALC_TEST_XLA_FLAGS']}".strip()

import jax  # noqa: E402  (after XLA_FLAGS is set)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run a test body with float64 enabled: ``def test_x(x64): ...``."""
    with jax.enable_x64(True):
        yield
