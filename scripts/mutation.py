"""Mutation audit of flowrl's maths: apply one-line mutants, run the relevant tests, count the killed.

    python scripts/mutation.py                      # the default sample (5 per module), 1 thread
    python scripts/mutation.py --list               # print the mutants, run nothing
    python scripts/mutation.py --module flowrl/sampling/sde.py --max-per-module 0   # all of one module

Mutants are made from the AST of each maths module (flowrl/sampling/sde.py, advantages, losses, every
module in flowrl/algorithms/, diversity, entropy, divergence): an arithmetic operator swapped, a
comparison loosened or flipped, a unary minus dropped, a numeric constant changed, a reduction or
a min/max swapped, a clamp/detach call removed, a boolean keyword flipped. Each mutant changes ONE
source line inside a function body. Not mutated (not maths): docstrings, argument checks
(`if ...: raise`), raise/assert/print, f-strings and values that are only logged (`x.item()`). They are applied
in a temporary copy of the tree (the worktree is never modified); the module's tests (MODULE_TESTS, or
tests/<pkg>/test_<name>.py) run with -x, -p no:cacheprovider, one thread and a timeout. A mutant is
killed when the tests fail (or time out). The mutants named in issue #11 (NAMED) always run. Survivors are listed with the reason they are equivalent
(EQUIVALENT) or flagged "NOT EXPLAINED". The last line reads `killed K of N mutants`.
Not part of the test suite (slow: ~10 s per mutant); tests/test_mutation_script.py checks the generator.
"""
from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]

FIXED_MODULES = ["flowrl/sampling/sde.py", "flowrl/algorithms/advantages.py", "flowrl/algorithms/losses.py",
                 "flowrl/metrics/diversity.py", "flowrl/metrics/entropy.py", "flowrl/sampling/divergence.py"]
SKIP_ALGORITHM_FILES = {"__init__.py", "base.py",   # no maths: the protocol defaults
                        "human_online.py"}          # orchestration (pairs to a web page, waiting)

# module -> the fast test files that should catch its mutants (default: tests/<pkg>/test_<name>.py)
MODULE_TESTS: Dict[str, List[str]] = {
    "flowrl/sampling/sde.py": ["tests/sampling/test_sde.py", "tests/algorithms/test_grpo.py"],
    "flowrl/algorithms/advantages.py": ["tests/algorithms/test_advantages.py", "tests/algorithms/test_ddpo.py"],
    "flowrl/algorithms/losses.py": ["tests/algorithms/test_advantages.py", "tests/algorithms/test_grpo.py"],
    "flowrl/algorithms/preferences.py": ["tests/algorithms/test_dpo.py"],
    "flowrl/algorithms/grpo.py": ["tests/algorithms/test_grpo.py", "tests/algorithms/test_grpo_zero_weight.py",
                                  "tests/algorithms/test_grpo_guard.py"],
    "flowrl/algorithms/forward_process.py": ["tests/algorithms/test_awm.py", "tests/algorithms/test_dgpo.py"],
    "flowrl/sampling/divergence.py": ["tests/sampling/test_divergence.py"],
}

# whole-trainer tests are left out of the per-mutant runs (minutes each on 2 CPU cores); the unit
# tests with hand-computed values are what must catch a wrong formula
DESELECT = "not trainer and not resumed_run and not dpo_trains_on_the_file"

# Survivors that are equivalent: (module, original line stripped, mutated line stripped) -> why.
EQUIVALENT: Dict[tuple, str] = {
    ("flowrl/algorithms/orw.py",
     'self._generator.manual_seed(mix_seed(int(gathered["group_ids"][0]), rank_slice.start, 17))',
     'self._generator.manual_seed(mix_seed(int(gathered["group_ids"][0]), rank_slice.start, 18))'):
        "equivalent: 17 is an arbitrary salt that makes this noise stream distinct from the trainer's "
        "others (3, 5, 7, 9, 11, 13, 19, 21, 23 elsewhere); 18 is unused, as fresh, rank-distinct and resumable",
    ("flowrl/sampling/divergence.py",
     "g = _vjp(y, xg, z, retain=create_graph or k < num_probes - 1, create=create_graph)",
     "g = _vjp(y, xg, z, retain=create_graph or (k <= num_probes - 1), create=create_graph)"):
        "equivalent: retaining the graph after the last probe only keeps memory alive a little longer; "
        "every value and gradient is the same",
}

# Mutants named in issue #11 (they survived the whole suite once) plus two on the Flow-GRPO forms:
# always run, on top of the random draw. (module, exact text in one line, replacement)
NAMED = [
    ("flowrl/algorithms/losses.py", "1.0 - clip_range", "1.0 - 2 * clip_range"),
    ("flowrl/algorithms/grpo.py", "sde_mean_std(x, v_ref, s, s_next, st.noise_level,",
     "sde_mean_std(x, v_ref, s, s_next, 2 * st.noise_level,"),
    ("flowrl/algorithms/orw.py", "xt = (1 - s) * x1 + s * x0", "xt = (1 - s) * x0 + s * x1"),
    ("flowrl/sampling/divergence.py", "ests.std(0, unbiased=True) / math.sqrt(num_probes)",
     "ests.std(0, unbiased=True)"),
    ("flowrl/algorithms/ddpo.py", "adv = adv.clamp(-self.adv_clip_max, self.adv_clip_max)", "adv = adv"),
    ("flowrl/algorithms/dpo.py", "(v.float() - (noise - x0).float())", "(v.float() - (x0 - noise).float())"),
    ("flowrl/sampling/sde.py", "log_prob = -(d ** 2).mean(", "log_prob = -(d ** 2).sum("),
    ("flowrl/sampling/sde.py", "scale = scale / torch.sqrt(", "scale = scale * torch.sqrt("),
]

SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
              ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq}
SWAP_NAME = {"mean": "sum", "sum": "mean", "max": "min", "min": "max", "maximum": "minimum",
             "minimum": "maximum", "exp": "expm1", "log": "log1p", "sqrt": "rsqrt", "softmax": "log_softmax",
             "log_softmax": "softmax", "logsumexp": "amax", "std": "var", "var": "std"}
DROP_CALL = {"clamp", "clamp_min", "clamp_max", "clip", "detach", "abs", "sqrt", "exp"}


@dataclass
class Mutant:
    module: str        # path relative to the repository root
    lineno: int        # 1-based
    original: str      # the source line
    mutated: str       # the mutated line
    kind: str          # what was changed

    def key(self) -> tuple:
        return (self.module, self.original.strip(), self.mutated.strip())

    def describe(self) -> str:
        return f"{self.module}:{self.lineno} [{self.kind}]  {self.original.strip()}  ->  {self.mutated.strip()}"


def _docstring_lines(tree: ast.AST) -> set:
    """Line numbers of docstrings (module, classes, functions): never mutated."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str):
                out.update(range(first.lineno, first.end_lineno + 1))
    return out


def _in_function_lines(tree: ast.AST) -> set:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in node.body:
                out.update(range(stmt.lineno, stmt.end_lineno + 1))
    return out


def _out_of_scope(tree: ast.AST) -> set:
    """ids of nodes that are not maths: argument checks (`if ...: raise`), raise/assert/print,
    f-strings, and values only logged (`expr.item()`). Their mutants are not generated."""
    out = set()

    def drop(n):
        out.update(id(d) for d in ast.walk(n))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and all(isinstance(b, ast.Raise) for b in node.body):
            drop(node.test)
        elif isinstance(node, (ast.Raise, ast.Assert, ast.JoinedStr)):
            drop(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            drop(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "item":
            drop(node.func.value)
    return out


def _alternatives(node: ast.AST) -> Iterator[tuple]:
    """(kind, replacement node) for one AST node."""
    if isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
        yield "binop", ast.BinOp(node.left, SWAP_BINOP[type(node.op)](), node.right)
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAP_CMP:
        yield "compare", ast.Compare(node.left, [SWAP_CMP[type(node.ops[0])]()], node.comparators)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        yield "unary", node.operand
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        v = node.value
        yield "constant", ast.Constant(v + 1 if isinstance(v, int) else (v * 2 if v else 1.0))
    elif isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else (f.id if isinstance(f, ast.Name) else None)
        if name in SWAP_NAME:
            new_f = (ast.Attribute(f.value, SWAP_NAME[name], ast.Load()) if isinstance(f, ast.Attribute)
                     else ast.Name(SWAP_NAME[name], ast.Load()))
            yield "call", ast.Call(new_f, node.args, node.keywords)
        if name in DROP_CALL:
            if isinstance(f, ast.Attribute) and not (isinstance(f.value, ast.Name) and f.value.id in ("torch", "math")):
                yield "drop-call", f.value          # x.clamp(a, b) -> x
            elif node.args:
                yield "drop-call", node.args[0]     # torch.clamp(x, ...) -> x
    elif isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, bool):
        yield "keyword", ast.keyword(node.arg, ast.Constant(not node.value.value))


def _segment(node: ast.AST):
    """(lineno, col, end_col) of a single-line node, or None."""
    if getattr(node, "lineno", None) is None or node.lineno != getattr(node, "end_lineno", None):
        return None
    return node.lineno, node.col_offset, node.end_col_offset


def generate(source: str, module: str = "<string>") -> List[Mutant]:
    """Every one-line mutant of `source` (function bodies only, docstrings excluded), in source order.
    col offsets are UTF-8 byte offsets, so lines are edited as bytes."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    skip, inside, excluded = _docstring_lines(tree), _in_function_lines(tree), _out_of_scope(tree)
    out, seen = [], set()
    for node in ast.walk(tree):
        seg = _segment(node)
        if seg is None or seg[0] in skip or seg[0] not in inside or id(node) in excluded:
            continue
        lineno, col, end = seg
        raw = lines[lineno - 1].encode()
        for kind, new in _alternatives(node):
            text = ast.unparse(ast.fix_missing_locations(new))
            if kind in ("binop", "compare"):
                text = f"({text})"
            mutated = (raw[:col] + text.encode() + raw[end:]).decode()
            if mutated == lines[lineno - 1]:
                continue
            try:
                ast.parse("".join(lines[:lineno - 1] + [mutated] + lines[lineno:]))
            except SyntaxError:
                continue
            m = Mutant(module, lineno, lines[lineno - 1].rstrip("\n"), mutated.rstrip("\n"), kind)
            if m.key() not in seen:
                seen.add(m.key())
                out.append(m)
    return sorted(out, key=lambda m: (m.lineno, m.kind, m.mutated))


def named_mutants(module: str, source: str) -> List[Mutant]:
    """The NAMED mutants of `module` (each must match exactly one line of `source`)."""
    lines, out = source.splitlines(), []
    for mod, old, new in NAMED:
        if mod != module:
            continue
        hits = [i for i, line in enumerate(lines) if old in line]
        if len(hits) != 1:
            raise SystemExit(f"named mutant {old!r} matches {len(hits)} lines of {module}; update NAMED")
        line = lines[hits[0]]
        out.append(Mutant(module, hits[0] + 1, line, line.replace(old, new), "named"))
    return out


def apply(source: str, m: Mutant) -> str:
    lines = source.splitlines(keepends=True)
    assert lines[m.lineno - 1].rstrip("\n") == m.original, "source changed since the mutant was made"
    lines[m.lineno - 1] = m.mutated + ("\n" if lines[m.lineno - 1].endswith("\n") else "")
    return "".join(lines)


def maths_modules(root: Path = ROOT) -> List[str]:
    algos = sorted(f"flowrl/algorithms/{p.name}" for p in (root / "flowrl/algorithms").glob("*.py")
                   if p.name not in SKIP_ALGORITHM_FILES)
    return list(dict.fromkeys(FIXED_MODULES[:3] + algos + FIXED_MODULES[3:]))


def tests_for(module: str, root: Path = ROOT) -> List[str]:
    if module in MODULE_TESTS:
        return MODULE_TESTS[module]
    p = Path(module)
    guess = Path("tests") / p.parent.name / f"test_{p.stem}.py"
    return [str(guess)] if (root / guess).exists() else []


def select(mutants: List[Mutant], k: int, seed: int) -> List[Mutant]:
    """k mutants per module, drawn reproducibly (all when k <= 0 or fewer exist)."""
    if k <= 0 or len(mutants) <= k:
        return mutants
    return sorted(random.Random(seed).sample(mutants, k), key=lambda m: m.lineno)


def copy_tree(dst: Path) -> None:
    for name in ("flowrl", "tests", "config", "scripts"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.py", "setup.cfg", "pytest.ini", "pyproject.toml"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, dst / name)


def _preload() -> None:
    """Import the heavy dependencies once, in this process, WITHOUT flowrl: every test run is a
    fork of it (os.fork), so each mutant pays for importing flowrl, not torch (seconds on a busy box)."""
    os.environ.update(PYTHONDONTWRITEBYTECODE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1",
                      MKL_NUM_THREADS="1")
    import pytest  # noqa: F401
    import torch
    torch.set_num_threads(1)
    for name in ("numpy", "scipy.optimize", "ml_collections", "accelerate"):
        try:
            __import__(name)
        except ImportError:
            pass


def run_tests(tree: Path, tests: Sequence[str], timeout: float) -> str:
    """'pass', 'fail' or 'timeout' for the tests in the copy `tree`, run in a forked child."""
    pid = os.fork()
    if pid == 0:                                      # child: a fresh flowrl from the copy
        code = 3
        try:
            os.chdir(tree)
            sys.path.insert(0, str(tree))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest
            import torch
            torch.manual_seed(0)                      # unseeded tests draw the same numbers every run
            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-k", DESELECT, *tests]))
        finally:
            os._exit(code)
    deadline = time.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "pass" if os.waitstatus_to_exitcode(status) == 0 else "fail"
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--module", action="append", help="only this module (repeatable)")
    ap.add_argument("--max-per-module", type=int, default=5, help="mutants drawn per module (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=400.0, help="seconds per mutant's test run")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = ap.parse_args(argv)
    plan = []
    for module in args.module or maths_modules():
        tests = tests_for(module)
        if not tests:
            print(f"skip {module}: no test file (add it to MODULE_TESTS)")
            continue
        source = (ROOT / module).read_text()
        named = named_mutants(module, source)
        drawn = [m for m in select(generate(source, module), args.max_per_module, args.seed)
                 if m.key() not in {n.key() for n in named}]
        plan += [(m, tests) for m in named + drawn]
    if args.list:
        for m, tests in plan:
            print(m.describe())
        print(f"{len(plan)} mutants")
        return 0
    results = []
    _preload()
    with tempfile.TemporaryDirectory(prefix="flowrl-mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        for tests in dict.fromkeys(tuple(t) for _, t in plan):
            t0 = time.time()
            base = run_tests(tree, tests, args.timeout)
            if base == "fail":                        # once more: a flaky test is not a broken one
                base = run_tests(tree, tests, args.timeout)
            print(f"unmutated {base} {time.time() - t0:5.1f}s  {' '.join(tests)}", flush=True)
            if base != "pass":
                print(f"the unmutated tests {'time out' if base == 'timeout' else 'fail'}: {' '.join(tests)}; "
                      f"fix them first (or raise --timeout)")
                return 2
        for i, (m, tests) in enumerate(plan, 1):
            target = tree / m.module
            original = target.read_text()
            t0 = time.time()
            target.write_text(apply(original, m))
            try:
                outcome = run_tests(tree, tests, args.timeout)
            finally:
                target.write_text(original)
            status = {"pass": "survived", "fail": "killed", "timeout": "timeout"}[outcome]
            results.append((m, status))
            print(f"[{i}/{len(plan)}] {status:8s} {time.time() - t0:5.1f}s  {m.describe()}", flush=True)
    survivors = [m for m, s in results if s == "survived"]
    timeouts = sum(s == "timeout" for _, s in results)
    if timeouts:
        print(f"{timeouts} mutants timed out (counted as killed: an infinite loop or a stuck test)")
    print(f"\nsurvivors ({len(survivors)}):")
    for m in survivors:
        print(f"  {m.describe()}\n      {EQUIVALENT.get(m.key(), 'NOT EXPLAINED: add a test that kills it')}")
    killed = len(results) - len(survivors)
    print(f"killed {killed} of {len(results)} mutants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
