"""The method registry: each method's name, parameters, help and handler, declared where
the handler is defined (``dataeraid/methods/*.py``), checked here before it runs.

A module makes one :class:`Methods` table and decorates its handlers with
``methods.add(...)``; :class:`Registry` gathers the tables. The protocol reference
(docs/protocol.md) is rendered from the registry (``dataeraid.rpc.reference``) and a
test fails when the two differ, so the documentation cannot drift from the code.

Every caller error is ``invalid_argument`` naming the parameter, raised by the specs
before the handler runs. A handler raises ``DataeraiError`` for what it refuses; any
other exception is a bug: it is logged and answered as ``internal``, and the
connection goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dataerai.protocol import Request, Response, RpcError

from dataeraid import log
from dataeraid.errors import DataeraiError
from dataeraid.rpc.params import Param, bind

_log = log.get("dataeraid.rpc")

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    """One RPC method. ``help`` is Markdown: a first sentence, then what it does.

    ``errors`` are the codes it may answer besides ``invalid_argument`` and ``internal``.
    ``waits``: it may take long (``job.wait``) and is cancelled when its client hangs up.
    ``heavy``: its answer may be large (listings); such calls share a small budget per
    connection and across the daemon, so one client cannot fill the daemon's memory.
    """

    name: str
    handler: Handler
    params: tuple[Param, ...]
    help: str
    result: str
    errors: tuple[str, ...] = ()
    waits: bool = False
    heavy: bool = False

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        return bind(self.name, self.params, params)


@dataclass
class Methods:
    """The methods of one concern (one module), in the order they are declared."""

    concern: str
    methods: list[Method] = field(default_factory=list)

    def add(self, name: str, help: str, *params: Param, result: str, errors: Iterable[str] = (),
            waits: bool = False, heavy: bool = False) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.methods.append(Method(name, handler, params, help, result, tuple(errors), waits, heavy))
            return handler

        return register


class Registry:
    """Every method of the daemon, by name."""

    def __init__(self, tables: Iterable[Methods]) -> None:
        self.tables = list(tables)
        self.methods: dict[str, Method] = {}
        for table in self.tables:
            for method in table.methods:
                assert method.name not in self.methods, f"{method.name} is declared twice"
                self.methods[method.name] = method

    async def answer(self, context: Any, request: Request) -> Response:
        """Check the request's parameters, run its handler with ``context``, and answer.

        Never raises (but for cancellation): whatever goes wrong is an error answer.
        """
        method = self.methods.get(request.method)
        if method is None:
            shown = request.method[:100].encode("utf-8", "backslashreplace").decode()
            return Response(request.id, error=RpcError("method_not_found", f"no method {shown!r}"))
        try:
            result = await method.handler(context, **method.bind(request.params))
        except DataeraiError as exc:
            return Response(request.id, error=RpcError(exc.code, exc.message, exc.data))
        except Exception as exc:
            _log.exception("handler crashed", method=request.method)
            return Response(request.id, error=RpcError("internal", f"{request.method} failed: {type(exc).__name__}"))
        return Response(request.id, result=result)
