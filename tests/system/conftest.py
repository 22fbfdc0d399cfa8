"""Everything here runs real processes (uvicorn, nginx, tritonclient against a live server):
marked ``system`` so that ``pytest -m "not system"`` is the fast in-process loop."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.system)
