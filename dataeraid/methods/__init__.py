"""Every RPC method of the daemon, one module per concern, gathered in :data:`REGISTRY`.

    daemon.py     daemon.ping, daemon.status
    auth.py       auth.status, auth.reload
    projects.py   project.*, collection.*
    transfers.py  upload.start, download.start
    jobs.py       job.*
    assets.py     asset.*, relationship.*
    events.py     events.*
    watches.py    watch.*

Handlers check nothing the registry checks (types, ranges, ids, paths: their
``Param`` specs), then hand work to the services: the queue, the scheduler, the
event bus and the remote.
"""

from dataeraid.methods import assets, auth, daemon, events, jobs, projects, transfers, watches
from dataeraid.methods._call import Call as Call
from dataeraid.methods._call import Services as Services
from dataeraid.rpc import Registry

REGISTRY = Registry([daemon.methods, auth.methods, projects.methods, transfers.methods, jobs.methods,
                     assets.methods, events.methods, watches.methods])
