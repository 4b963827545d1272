"""What a fresh machine needs: every third-party import is a declared dependency, torch's floor fits the code,
CI installs into a virtual environment of its own."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# import name -> distribution name, where they differ
DIST = {'PIL': 'pillow', 'sentencepiece': 'sentencepiece', 'yaml': 'pyyaml'}


def _dependencies():
    text = (ROOT / 'pyproject.toml').read_text()
    block = re.search(r'^dependencies = \[(.*?)^\]', text, re.S | re.M).group(1)
    return re.findall(r'^\s*"([^"]+)"', block, re.M)


def _imported_modules():
    mods = set()
    for f in [*ROOT.glob('common/*.py'), *ROOT.glob('ulmfit/*.py'), *ROOT.glob('vision/*.py')]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods.add(node.module.split('.')[0])
    return mods - set(sys.stdlib_module_names) - {'common', 'ulmfit', 'vision'}


def test_every_third_party_import_is_a_declared_dependency():
    declared = {re.split(r'[<>=!~ \[]', d)[0].lower() for d in _dependencies()}
    missing = sorted(DIST.get(m, m).lower() for m in _imported_modules() if DIST.get(m, m).lower() not in declared)
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


def test_torch_floor_has_the_apis_awd_lstm_calls():
    # torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) appeared in torch 2.4.
    src = (ROOT / 'ulmfit' / 'awd_lstm.py').read_text()
    assert 'torch.get_autocast_dtype(' in src or "torch.is_autocast_enabled('" in src
    torch_dep = next(d for d in _dependencies() if re.match(r'torch\b', d))
    floor = tuple(int(x) for x in re.search(r'>=\s*(\d+)\.(\d+)', torch_dep).groups())
    assert floor >= (2, 4), torch_dep


def test_ci_builds_its_own_virtual_environment():
    ci = (ROOT / '.ci' / 'run').read_text()
    assert re.search(r'-m venv\b.*\.venv-ci', ci), 'CI must create a fresh .venv-ci'
    assert 'torch==' in ci and '.venv-ci/bin/python' in ci
    assert re.search(r'make .*PYTHON=', ci), 'make must run with the CI virtual environment\'s python'
    assert '/.venv-ci/' in (ROOT / '.gitignore').read_text().split()


def test_console_scripts_name_the_main_functions():
    import importlib

    block = re.search(r'^\[project\.scripts\]\n(.*?)^\[', (ROOT / 'pyproject.toml').read_text(), re.S | re.M).group(1)
    scripts = dict(re.findall(r'^([\w-]+) = "([^"]+)"', block, re.M))
    assert set(scripts) == {'ulmfit', 'ulmfit-vision'}
    for target in scripts.values():
        module, fn = target.split(':')
        assert getattr(importlib.import_module(module), fn)(['--help']) == 0
