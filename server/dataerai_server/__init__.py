"""dataerai-server: the reference repository behind the Dataerai daemon.

The HTTP contract it serves is ``docs/http-api.md``; how it is built and why is
``docs/server.md``. The modules, from the edge inwards:

- ``cli``: the ``dataerai-server`` command (``run``, ``users add``).
- ``serve``: the listening socket, Uvicorn on uvloop, the ready file, signals.
- ``app``: the Starlette routes; request parsing (``validation``), the one
  error boundary (``errors``), authentication (``auth``), signed URLs (``signing``).
- ``projects``, ``assets``, ``uploads``: what the routes do, over
- ``db``/``models``/``migrations``: the database, and ``storage``: the bytes.
"""

# One version for the three distributions, kept in the SDK this one pins at exactly it.
from dataerai._version import __version__ as __version__
