import pytest

from ktstr.pytest_plugin import require_vm_host

pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(config, items):
    vm = []
    for item in items:
        if "/tests/vm/" in str(item.path):
            item.add_marker(pytest.mark.vm)
            vm.append(item)
    # A host that cannot boot VMs fails the session (unless --ktstr-allow-skip).
    require_vm_host(config, vm)
