"""`flowrl annotate serve`: the pairwise-preference page and its JSON API (FastAPI + uvicorn).

JSON API (every error: a 4xx status and {"error": "<one line>"}):
    GET  /api/next?annotator=NAME   -> {"pair": {"pair_id", "prompt", "image_a", "image_b" (URLs),
                                        "shown_order": "ab"|"ba" (left first)} | null, "progress"}
    POST /api/label  {"annotator", "pair_id", "preferred": "a"|"b"|"tie"|"skip", "shown_order"}
                                    -> {"label": the appended row, "progress"}   (on disk when answered)
    POST /api/undo   {"annotator"}  -> {"undone": the removed row | null, "progress"}
    GET  /api/stats                 -> counts, tie rate, agreement, pairs, labels_file
    GET  /images/<path>             -> an image of the pair folder (paths outside it: 403)
    GET  /                          -> the page (flowrl/serve/static/annotate.html; no CDN, no build)
progress = {"done": this annotator's labels, "left": pairs still open to them, "total", "labels"}.
"""

import threading
import time
from pathlib import Path
from typing import Optional

from flowrl.serve.label_store import LabelError, LabelStore

STATIC = Path(__file__).parent / "static"


def _body_fields(body, *keys: str) -> list:
    if not isinstance(body, dict):
        raise LabelError(f"the request body must be a JSON object with the keys {list(keys)}")
    missing = [k for k in keys if k not in body]
    if missing:
        raise LabelError(f"missing {missing} in the request body (needs {list(keys)})")
    return [body[k] for k in keys]


def create_app(store: LabelStore):
    """The FastAPI app over one LabelStore."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    app = FastAPI(title="flowrl annotate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(LabelError)
    async def _label_error(request, exc: LabelError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def _json(request: Request):
        try:
            return await request.json()
        except ValueError:
            raise LabelError("the request body is not valid JSON") from None

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse((STATIC / "annotate.html").read_text())

    @app.get("/api/next")
    def next_pair(annotator: str = ""):
        pair = store.next_pair(annotator)
        return {"pair": pair, "progress": store.progress(annotator)}

    @app.post("/api/label")
    async def label(request: Request):
        ann, pid, pref, order = _body_fields(await _json(request), "annotator", "pair_id", "preferred",
                                             "shown_order")
        row = store.label(ann, str(pid), pref, order)
        return {"label": row, "progress": store.progress(ann)}

    @app.post("/api/undo")
    async def undo(request: Request):
        (ann,) = _body_fields(await _json(request), "annotator")
        row = store.undo(ann)
        return {"undone": row, "progress": store.progress(ann)}

    @app.get("/api/stats")
    def stats():
        return store.stats()

    @app.get("/images/{rel:path}")
    def image(rel: str):
        return FileResponse(store.image_path(rel), headers={"Cache-Control": "max-age=3600"})

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
    def unknown(rest: str):
        raise LabelError(f"no API endpoint /api/{rest}; see flowrl/serve/annotate_app.py", 404)

    return app


def check_host(host: str) -> None:
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"--host {host!r}: the annotation server only listens on 127.0.0.1 "
                         f"(tunnel with ssh -L to share it)")


def serve(root: Path, port: int = 8765, host: str = "127.0.0.1", labels: Optional[Path] = None,
          overlap: float = 0.0, overlap_annotators: int = 2) -> None:
    """Serve the pair folder `root` until interrupted."""
    import uvicorn
    check_host(host)
    store = LabelStore(root, labels, overlap, overlap_annotators)
    print(f"[flowrl] annotate: http://{host}:{port}/  ({len(store.order)} pairs, labels -> "
          f"{store.labels_path})", flush=True)
    uvicorn.run(create_app(store), host=host, port=port, log_level="warning")


class BackgroundServer:
    """The app served by uvicorn in a daemon thread of this process (the online trainer's)."""

    def __init__(self, store: LabelStore, port: int, host: str = "127.0.0.1"):
        import uvicorn
        check_host(host)
        config = uvicorn.Config(create_app(store), host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://{host}:{port}"
        for _ in range(300):                      # up within 30 s, or say why not
            if self.server.started:
                return
            if not self.thread.is_alive():
                break
            time.sleep(0.1)
        raise OSError(f"the annotation server could not listen on {host}:{port} (port in use?); "
                      f"set another algorithm.port")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
