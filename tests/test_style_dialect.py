"""One dialect across the repo: no type hints in function signatures (parameters or return), anywhere.

What a function takes and returns is said in its docstring when the name doesn't say it. Annotations on variables
(dataclass fields, NamedTuple fields) are not signatures and stay."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ('common', 'ulmfit', 'vision', 'bench', 'tests')


def _python_files():
    files = [f for d in SOURCES for f in sorted((ROOT / d).rglob('*.py'))]
    return files + [f for f in [ROOT / 'conftest.py'] if f.exists()]


def _annotated_signatures(tree):
    "Yield (line, name) of every def and async def with an annotated parameter or return."
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        a = node.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *[p for p in (a.vararg, a.kwarg) if p]]
        if any(p.annotation for p in params) or node.returns:
            yield node.lineno, node.name


def test_the_walk_finds_the_packages():
    names = {f.relative_to(ROOT).parts[0] for f in _python_files()}
    assert set(SOURCES) <= names


def test_no_function_signature_carries_type_hints():
    found = [
        f"{f.relative_to(ROOT)}:{line} {name}"
        for f in _python_files()
        for line, name in _annotated_signatures(ast.parse(f.read_text(), filename=str(f)))
    ]
    assert not found, "type hints in signatures (the house dialect has none):\n" + "\n".join(found)
