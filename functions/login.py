"""Log in and get a token: the start of queue-run's authenticated flow.

``POST /fn/login`` with ``{"user": "alice"}`` -> ``{"token": "<JWT>", "user": "alice"}``. The
token is signed with the server secret and expires in an hour; its ``uid`` claim binds every
WebSocket connection opened with it to that user.

This demo trusts whatever name it is given. A real app checks a password or an OAuth code
here before calling ``cloud.get_token``.

Try it::

    curl -s -X POST localhost:8000/fn/login -H 'content-type: application/json' \\
         -d '{"user": "alice"}'                      # copy the token, then:
    wscat -c "ws://localhost:8000/__websocket__?token=$TOKEN"
"""

from laf_py import FunctionContext, HTTPError, cloud

methods = ["POST"]


def main(ctx: FunctionContext) -> dict[str, str]:
    body = ctx.body if isinstance(ctx.body, dict) else {}
    user = body.get("user")
    if not isinstance(user, str) or not user.strip():
        raise HTTPError(400, 'send {"user": "<name>"}')
    token = cloud.get_token({"uid": user.strip()}, expires_in=3600)
    return {"token": token, "user": user.strip()}
