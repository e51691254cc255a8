"""``auth.*``: who the daemon acts for."""

from __future__ import annotations

from typing import Any

from dataeraid.methods._call import Call, ask_repository
from dataeraid.rpc import Methods

methods = Methods("auth")


@methods.add("auth.status", "The logged-in user and the token's expiry, as the repository says.",
             result="`{\"server_url\", \"user_id\", \"user_email\", \"scopes\", \"expires_at\"}`; never the token.",
             errors=("auth_required", "auth_expired", "unavailable"))
async def auth_status(call: Call) -> dict[str, Any]:
    creds = call.svc.auth.require()
    me = await ask_repository("checking the token", call.svc.remote.me)
    return {"server_url": creds.server_url, "user_id": me.get("user_id"), "user_email": me.get("email"),
            "scopes": me.get("scopes", []), "expires_at": me.get("token_expires_at")}


@methods.add("auth.reload",
             "Re-reads the credentials file (`dataerai auth login` and `logout` call it); jobs in "
             "`waiting_for_auth` try again at once. Emits a durable `auth.reloaded` event naming them.",
             result="`{\"logged_in\", \"server_url\"}`.")
async def auth_reload(call: Call) -> dict[str, Any]:
    svc = call.svc
    waiting = [j["job_id"] for j in await svc.jobs.list_all(["waiting_for_auth"])]
    creds = svc.auth.reload()
    result = {"logged_in": creds is not None, "server_url": creds.server_url if creds else None}
    # Durable, so a client that follows events learns why its waiting jobs move again.
    await svc.bus.commit(lambda c, emit: emit("auth.reloaded", None, {**result, "waiting_jobs": waiting}))
    return result
