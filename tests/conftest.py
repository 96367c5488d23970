import pytest

pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/vm/" in str(item.path):
            item.add_marker(pytest.mark.vm)
