"""The daemon's JSON-RPC edge: typed parameters, the method registry, the socket server.

    params.py     what a parameter may be (Spec, Param): checked before any handler runs
    registry.py   methods declared where they are defined, gathered, answered
    server.py     the Unix socket: connections, batches, limits
    reference.py  docs/protocol.md's method reference, rendered from the registry
"""

from dataeraid.rpc.params import Param as Param
from dataeraid.rpc.registry import Method as Method
from dataeraid.rpc.registry import Methods as Methods
from dataeraid.rpc.registry import Registry as Registry
from dataeraid.rpc.server import Connection as Connection
from dataeraid.rpc.server import check_private_directory as check_private_directory
from dataeraid.rpc.server import open_listener as open_listener
from dataeraid.rpc.server import serve as serve
