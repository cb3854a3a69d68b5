"""Tasks for a private Docker registry on a bare IP address: ``fab --list``.

This file only wires the task collection; each module of ``tasks/`` owns one concern.
"""

from invoke.collection import Collection

from tasks import (
    checks,
    clients,
    logins,
    operations,
    registry,
    rotation,
    storage,
    users,
)
from tasks.remote import DEFAULT_KNOWN_HOSTS, DEFAULT_WORKERS

namespace = Collection(
    registry.setup_registry,
    clients.trust_clients,
    clients.untrust_clients,
    checks.check_clients,
    operations.status,
    operations.check_expiry,
    operations.rotate_cert,
    rotation.rotate_ca,
    operations.logs,
    operations.restart,
    operations.teardown,
    users.add_user,
    users.remove_user,
    logins.login_clients,
    storage.garbage_collect,
    storage.backup,
    storage.restore,
)
namespace.configure(
    {
        # Our own settings, overridable in fabric.yaml or with `fab -f FILE`.
        "fleet": {
            "known_hosts": DEFAULT_KNOWN_HOSTS,
            "strict_host_keys": False,
            "workers": DEFAULT_WORKERS,
        },
        # A host that drops packets silently would otherwise hang the run.
        "timeouts": {"connect": 10},
    }
)
