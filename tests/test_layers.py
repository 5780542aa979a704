"""The package's layers (docs/architecture.md): each imports only those beneath it, with no
import cycle, and reading Gaia files never imports PyTorch; imports inside functions count."""

import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_import_contracts_hold():
    cli = pytest.importorskip("importlinter.cli", reason="pip install import-linter")
    config = os.path.join(ROOT, "pyproject.toml")
    assert cli.lint_imports(config_filename=config, no_cache=True, no_logo=True) == 0


def test_no_module_is_past_about_500_lines():
    src = os.path.join(ROOT, "src", "xpsvae")
    long = {}
    for folder, _, names in os.walk(src):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    lines = sum(1 for _ in f)
                if lines > 520:
                    long[os.path.relpath(path, src)] = lines
    assert not long, f"modules past ~500 lines (split them by concern): {long}"


def test_the_public_api_lists_what_it_exports():
    import xpsvae
    for name in xpsvae.__all__:
        assert getattr(xpsvae, name) is not None, name
    assert set(xpsvae.__all__) - {"__version__"} == set(xpsvae._EXPORTS)
