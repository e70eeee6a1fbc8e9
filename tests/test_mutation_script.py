"""The mutant generator of scripts/mutation.py on a toy source string (the audit itself is not run
in the suite: it is slow)."""
import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("mutation", Path(__file__).parents[1] / "scripts" / "mutation.py")
mutation = importlib.util.module_from_spec(_spec)
sys.modules["mutation"] = mutation      # dataclasses look their module up in sys.modules
_spec.loader.exec_module(mutation)

TOY = '''"""Module docstring: a + b is not mutated."""


def f(x, eps=0.5):
    """Docstring 1 - 2."""
    if eps < 0:
        raise ValueError(f"eps {eps + 1}")
    y = (x - 1.0) * 2
    print(y + 1)
    return y.clamp(-eps, eps).mean(), y.sum().item() / 3
'''


def test_generator_mutates_only_maths_lines_one_line_each():
    ms = mutation.generate(TOY, "toy.py")
    lines = TOY.splitlines()
    assert {m.lineno for m in ms} == {8, 10}            # no docstring, check, raise, print; only code
    got = {m.mutated.strip() for m in ms}
    assert "y = ((x + 1.0)) * 2" in got                  # binop swapped
    assert "y = (x - 2.0) * 2" in got                    # constant changed
    assert "y = ((x - 1.0) / 2)" in got                  # the outer binop
    assert "return y.mean(), y.sum().item() / 3" in got  # clamp dropped
    assert "return y.clamp(eps, eps).mean(), y.sum().item() / 3" in got   # unary minus dropped
    assert "return y.clamp(-eps, eps).sum(), y.sum().item() / 3" in got   # reduction swapped
    assert not any("y.mean().item()" in g for g in got)  # the logged value is left alone
    for m in ms:                                         # each mutant is one changed line of valid code
        new = mutation.apply(TOY, m).splitlines()
        assert [i for i, (a, b) in enumerate(zip(lines, new)) if a != b] == [m.lineno - 1]
        compile(mutation.apply(TOY, m), "toy", "exec")


def test_apply_refuses_a_stale_mutant():
    m = mutation.generate(TOY, "toy.py")[0]
    with pytest.raises(AssertionError, match="source changed"):
        mutation.apply(TOY.replace("(x - 1.0) * 2", "(x - 1.0) * 3"), m)


def test_every_maths_module_has_tests():
    root = Path(__file__).parents[1]
    mods = mutation.maths_modules(root)
    assert "flowrl/sampling/sde.py" in mods and "flowrl/algorithms/grpo.py" in mods
    assert all(mutation.tests_for(m, root) for m in mods)
