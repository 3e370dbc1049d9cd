"""Every public module's ``__all__`` names things that exist, and the package re-exports resolve."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import fabric
import shm_layouts
import workers

MODULES = sorted(
    {
        f"{pkg.__name__}.{m.name}"
        for pkg in (fabric, shm_layouts, workers)
        for m in pkgutil.iter_modules(pkg.__path__)
    }
    | {"fabric", "shm_layouts", "workers"}
)


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert name.rsplit(".", 1)[-1].startswith("_") or name in ("workers.loop",), f"{name} has no __all__"
        return
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"


def test_the_package_api_resolves():
    for n in fabric.__all__:
        assert getattr(fabric, n) is not None
