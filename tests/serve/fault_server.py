"""Test-only: `flowrl serve-reward`'s app behind a fault injector, as a real server process.

    python tests/serve/fault_server.py PORT REWARD

POST /_faults with a JSON list queues faults; each /compute (or Flow-GRPO POST /) request takes the
next one: "ok", "400", "500", "slow:SECONDS", "malformed" (the real answer cut in half), "count" (one score
missing), "nan" (first score NaN), "die" (the process exits at once, as if killed), "pickle_class"
(Flow-GRPO: scores pickled as a numpy array). A Flow-GRPO-style endpoint answers at POST /:
a pickled {"images": [JPEG bytes], ...} in, a pickled {"scores": [kB of each JPEG]} out.
"""
import asyncio
import json
import os
import pickle
import sys


def make_app(reward: str):
    from flowrl.serve.reward_app import build_app
    from flowrl.serve.reward_protocol import restricted_loads
    inner, _ = build_app([reward])
    queue = []

    async def respond(send, status, body, ctype="application/json"):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def read(receive):
        body, more = b"", True
        while more:
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
        return body

    async def real_answer(scope, receive):
        sent = {}

        async def capture(msg):
            if msg["type"] == "http.response.start":
                sent["status"] = msg["status"]
            else:
                sent["body"] = sent.get("body", b"") + msg.get("body", b"")
        await inner(scope, receive, capture)
        return sent["status"], sent["body"]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        if scope["path"] == "/_faults":
            queue[:] = json.loads(await read(receive))
            return await respond(send, 200, b"{}")
        if scope["method"] != "POST" or scope["path"] not in ("/compute", "/"):
            return await inner(scope, receive, send)
        fault = queue.pop(0) if queue else "ok"
        if fault == "die":
            os._exit(3)
        if fault in ("400", "500"):
            return await respond(send, int(fault), b'{"detail": "injected fault"}')
        if fault.startswith("slow:"):
            await asyncio.sleep(float(fault[5:]))
        if scope["path"] == "/":
            data = restricted_loads(await read(receive))
            scores = [len(b) / 1000 for b in data["images"]]
            if fault == "pickle_class":
                import numpy as np
                scores = np.array(scores)
            return await respond(send, 200, pickle.dumps({"scores": scores}), "application/octet-stream")
        status, body = await real_answer(scope, receive)
        if status == 200 and fault in ("malformed", "count", "nan"):
            data = json.loads(body)
            if fault == "count":
                data["scores"] = data["scores"][:-1]
            if fault == "nan":
                data["scores"][0] = float("nan")
            body = json.dumps(data).encode()[: len(body) // 2 if fault == "malformed" else None]
        return await respond(send, status, body)

    return app


if __name__ == "__main__":
    import uvicorn
    port, reward = int(sys.argv[1]), sys.argv[2]
    app = make_app(reward)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
