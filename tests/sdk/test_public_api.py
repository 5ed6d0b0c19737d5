"""The curated public surface stays honest: everything in ``__all__`` exists, every module
says what it holds."""

from __future__ import annotations

import importlib
import pkgutil

import sdk


def test_all_names_exist_and_are_unique() -> None:
    for name in sdk.__all__:
        assert hasattr(sdk, name), name
    assert len(set(sdk.__all__)) == len(sdk.__all__)
    public = {name for name in vars(sdk) if not name.startswith("_")}
    submodules = {info.name for info in pkgutil.iter_modules(sdk.__path__)}
    assert public - submodules - {"annotations"} == set(sdk.__all__)


def test_every_module_has_a_docstring_and_stays_small() -> None:
    for module_info in pkgutil.walk_packages(sdk.__path__, "sdk."):
        module = importlib.import_module(module_info.name)
        assert module.__doc__ and module.__doc__.strip(), module_info.name
        source = module.__file__
        assert source is not None
        with open(source, encoding="utf-8") as handle:
            assert sum(1 for _ in handle) <= 600, module_info.name
