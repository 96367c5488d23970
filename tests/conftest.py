import os

import pytest

from ktstr.pytest_plugin import require_vm_host

pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(config, items):
    # The whole catalog sweep is opt-in (KTSTR_CATALOG=1); its sample is not.
    if not os.environ.get("KTSTR_CATALOG"):
        swept = [i for i in items if i.get_closest_marker("catalog")]
        if swept:
            config.hook.pytest_deselected(items=swept)
            items[:] = [i for i in items if not i.get_closest_marker("catalog")]
    vm = []
    for item in items:
        if "/tests/vm/" in str(item.path):
            item.add_marker(pytest.mark.vm)
            vm.append(item)
    # A host that cannot boot VMs fails the session (unless --ktstr-allow-skip).
    require_vm_host(config, vm)
