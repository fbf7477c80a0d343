"""Run optax's own loss tests against ``jaxcalc.losses`` (a compatibility count, not a speed benchmark).

optax ships its test modules inside the installed package (``optax/losses/_regression_test.py``,
``_classification_test.py``). This script imports them from there (nothing is copied into jaxcalc), points
the module they test (``_regression`` / ``_classification``) at ``jaxcalc.losses``, and runs the test
classes of the losses both libraries have. It prints how many cases pass and each failure's first line.

    python benchmarks/optax_cases.py            # "N of M optax cases pass"

jaxcalc's own suite runs the same cases in ``tests/test_losses_optax_compat.py`` (written for jaxcalc,
with the cases that conflict with jaxcalc's value checks named there).
"""
from __future__ import annotations

import re
import sys
import types
import unittest

SHARED = ("squared_error", "l2_loss", "huber_loss", "softmax_cross_entropy",
          "softmax_cross_entropy_with_integer_labels", "sigmoid_binary_cross_entropy")
CLASSES = {
    "optax.losses._regression_test": ("SquaredErrorTest", "L2LossTest", "HuberLossTest"),
    "optax.losses._classification_test": ("SoftmaxCrossEntropyTest", "SoftmaxCrossEntropyWithIntegerLabelsTest",
                                          "SigmoidCrossEntropyTest"),
}


def main() -> int:
    import importlib

    import optax

    from jaxcalc import losses

    target = types.SimpleNamespace(**{n: getattr(losses, n) for n in SHARED if hasattr(losses, n)})
    missing = [n for n in SHARED if not hasattr(losses, n)]
    suite = unittest.TestSuite()
    for module_name, classes in CLASSES.items():
        module = importlib.import_module(module_name)
        for attr in ("_regression", "_classification"):
            if hasattr(module, attr):
                setattr(module, attr, target)
        for cls in classes:
            suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(getattr(module, cls)))
    result = unittest.TestResult()
    suite.run(result)
    bad = result.failures + result.errors
    for test, trace in bad:
        lines = [line for line in trace.strip().splitlines()
                 if line.strip() and not line.startswith(("For simp", "----"))]
        last = next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)), lines[-1])
        print(f"FAIL {test.id().split('.', 3)[-1]}: {last[:160]}")
    passed = result.testsRun - len(bad)
    print(f"\noptax {optax.__version__}: {passed} of {result.testsRun} optax loss cases pass against jaxcalc.losses"
          + (f" (jaxcalc lacks {', '.join(missing)})" if missing else ""))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
