"""virtkitd's REST API (FastAPI: the OpenAPI 3 document at ``/openapi.json`` is generated from this code).

VMs defined in the inventory and started through ``virtkit run -d`` (the builder), and every VM running on
the host found through its control socket, so VMs keep running when the daemon stops and are found again
when it starts; containers, images, pools and switches as the CLI sees them. Errors are always
``{"error": {"code", "message", "field"}}``. On the Unix socket (mode 0600) a caller is trusted as admin;
on TCP it shows a token (``Authorization: Bearer vkt_...``) whose scope is read, operate or admin."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from virtkit.daemon.db import SCOPES, DaemonError, Inventory
from virtkit.daemon.pages import Page, paged
from virtkit.errors import ConfigError, VirtkitError

NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"
MAX_BODY = 1 << 20


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", "field"}}`` with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


async def _cached_or_scan(running: LiveView) -> dict[str, dict[str, Any]]:
    """The running VMs: the cached answer inline when it is fresh enough, else a scan on a worker thread
    (the event loop never waits on a VM's socket)."""
    vms = running.peek(LIVE_TTL)
    if vms is not None:
        return vms
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(running.get, LIVE_TTL)


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "field": field}}, status_code=status)


class ErrorDetail(BaseModel):
    """What went wrong: a code for scripts, a message for people, the field at fault (if one is)."""

    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every error answer."""

    error: ErrorDetail


#: the error answers any call may get, documented once for all
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in (
        (400, "malformed request (not JSON)"), (401, "no token, or not a valid one (TCP)"),
        (403, "the token's scope or VM does not allow it"), (404, "no such VM or path"),
        (409, "the VM's state does not allow it, or the name is taken"),
        (412, "the ETag in If-Match is stale"), (413, "body over 1 MiB"), (422, "a field is wrong"),
        (428, "If-Match is missing"), (500, "a bug (the daemon keeps serving)"))}


class VMDefine(BaseModel):
    """A VM definition: a name, a machine config (what ``virtkit run --dump-config json`` prints), a
    restart policy."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME, description="letters, digits, '_', '.', '-'")
    config: dict[str, Any]
    restart: Literal["no", "always"] = Field("no", description=(
        "always: started again when its process ends, until stopped through the API"))


class VMUpdate(BaseModel):
    """Fields of a definition to change (the VM's ETag in If-Match)."""

    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] | None = None
    restart: Literal["no", "always"] | None = None


class VM(BaseModel):
    """A VM as the daemon sees it: its definition (if defined here) and its live state."""

    name: str
    state: str = Field(description="running, paused, stopped, ... (stopped: no process)")
    defined: bool
    restart: str | None = None
    config: dict[str, Any] | None = None
    pid: int | None = None
    version: int | None = None
    live: dict[str, Any] | None = Field(None, description=(
        "a running VM's status as its control socket tells it (what virtkit ps shows)"))


class Who(BaseModel):
    """The caller: a token's name and scope (and the VM or pool it is bound to), or the trusted Unix socket."""

    name: str
    scope: str
    vm: str | None = None
    pool: str | None = None

    def bound(self) -> str | None:
        """The one VM or pool this caller may act on (None: any)."""
        return self.vm or self.pool


#: what a token bound to one VM or pool may call besides its object's own paths (lists show it alone)
BOUND_LISTS = {"vm": ("/vms", "/events", "/tasks", "/whoami"), "pool": ("/pools", "/tasks", "/whoami")}


def _within(who: Who, request: Request) -> bool:
    """Whether a bound token's request stays on its VM or pool: a path naming it (``{name}`` for a VM,
    ``{pool}`` for a pool), a task about it, or a list that shows it alone."""
    params = request.path_params
    if who.vm is not None:
        if "name" in params:
            return params["name"] == who.vm
        if "pool" in params or "switch" in params or "cid" in params or "snap" in params:
            return False
        return request.url.path in BOUND_LISTS["vm"] or request.url.path.startswith("/tasks/")
    if "pool" in params:
        return params["pool"] == who.pool
    if params:
        return "tid" in params
    return request.url.path in BOUND_LISTS["pool"]


def start_vm_process(name: str, config: dict[str, Any]) -> None:
    """``virtkit run -d --name NAME --config FILE`` (the builder, a detached VM with its control socket) in
    the daemon's environment; DaemonError with virtkit's message when it does not start."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    try:
        p = subprocess.run([sys.executable, "-m", "virtkit.cli", "run", "-d", "--name", name, "--config", f.name],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    finally:
        Path(f.name).unlink(missing_ok=True)
    if p.returncode != 0:
        raise DaemonError(p.stderr.strip().removeprefix("virtkit: error: ")[-2000:])


def restarter(inv: Inventory, running: LiveView, stop: Any, period: float = 1.0) -> None:
    """The restart policy (a thread of the daemon): a VM defined with ``restart: always`` that the user
    started and did not stop through the API is started again when its process is gone (the running VMs
    from the API's shared view: no scan of its own)."""
    while not stop.wait(period):
        try:
            names = running.get(period)
            for d in inv.vms():
                if d["restart"] == "always" and d["wanted"] == "running" and d["name"] not in names:
                    print(f"virtkitd: VM {d['name']} is not running: restarting it (restart: always)",
                          file=sys.stderr, flush=True)
                    start_vm_process(d["name"], d["config"])
        except Exception as err:  # noqa: BLE001 (one bad VM must not end the policy for the others)
            print(f"virtkitd: restart policy: {err}", file=sys.stderr, flush=True)


LIVE_TTL = 0.5  # seconds a list of running VMs may be reused by reads


class Guard:
    """ASGI middleware (plain ASGI: Starlette's BaseHTTPMiddleware costs a third of a small request): bodies
    over MAX_BODY refused before they are read, a bug answered as a 500 with its name (the daemon keeps
    serving; the traceback goes to its log), and every mutating call written to the audit log."""

    def __init__(self, app: Any, inv: Inventory) -> None:
        self.app, self.inv = app, inv

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        size = headers.get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            await _error(413, "too_large", f"request bodies are at most {MAX_BODY} bytes")(scope, receive, send)
            return
        status = [500]
        started = [False]

        async def watch(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                started[0] = True
            await send(msg)

        try:
            await self.app(scope, receive, watch)
        except Exception as err:  # noqa: BLE001 (a bug must not take the daemon down)
            import traceback

            traceback.print_exc()  # (into the daemon's log)
            status[0] = 500
            if not started[0]:
                await _error(500, "internal", f"{type(err).__name__}: {err}")(scope, receive, send)
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            self.inv.audit(scope.get("state", {}).get("who", "unknown"), scope["method"], scope["path"], status[0])


class LiveView:
    """The running VMs (their control sockets' status replies), rescanned when asked for a fresher view
    than the last; concurrent callers wait for one scan and share it."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.at = 0.0
        self.vms: dict[str, dict[str, Any]] = {}

    def peek(self, max_age: float) -> dict[str, dict[str, Any]] | None:
        """The last scan if it is at most ``max_age`` old, else None (no waiting)."""
        return self.vms if time.monotonic() - self.at <= max_age else None

    def get(self, max_age: float) -> dict[str, dict[str, Any]]:
        """The running VMs, scanned at most ``max_age`` seconds ago."""
        from virtkit.machine import control

        asked = time.monotonic()
        with self.lock:
            if self.at < asked - max_age:  # (one done while we waited for the lock may be fresh enough)
                self.vms = {v["name"]: v for v in control.list_vms()}
                self.at = time.monotonic()
            return self.vms


def create_app(inv: Inventory, trusted: bool, running: LiveView | None = None, tasks: Any = None,
               scanner: Any = None) -> FastAPI:
    """The API for one listener: ``trusted`` (the Unix socket) or token-checked (TCP); ``running``: the view
    of running VMs and ``tasks`` the long operations (both shared by the listeners)."""
    from virtkit.daemon import resources
    from virtkit.daemon.inventory import Scanner
    from virtkit.daemon.tasks import Tasks

    running = running or LiveView()
    tasks = tasks or Tasks(inv)
    scanner = scanner or Scanner(inv, running)
    app = FastAPI(title="virtkitd", version="1", description=__doc__, docs_url=None, redoc_url=None,
                  responses=ERRORS)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.code, err.message, err.field)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == "json_invalid":
            why = first.get("ctx", {}).get("error", "")
            return _error(400, "malformed_json", f"the request body is not valid JSON ({why})".replace(" ()", ""))
        field = ".".join(str(x) for x in first.get("loc", ()))
        return _error(422, "invalid", f"{field}: {first.get('msg', 'invalid request')}", field or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "error")
        return _error(err.status_code, code, str(err.detail))

    app.add_middleware(Guard, inv=inv)

    # (async: a plain def dependency is run on the thread pool, two thread hops per request for a dict lookup)
    async def caller(request: Request, authorization: str | None = Header(default=None)) -> Who:
        if trusted:
            request.state.who = "unix-socket"
            return Who(name="unix-socket", scope="admin")
        if authorization is None and request.url.path == "/events" and request.query_params.get("token"):
            authorization = "Bearer " + request.query_params["token"]  # (a browser's EventSource sends no headers)
        if not authorization or not authorization.startswith("Bearer "):
            request.state.who = "anonymous"
            raise ApiError(401, "unauthorized", "this listener needs a token: Authorization: Bearer vkt_...")
        tok = inv.check_token(authorization[7:].strip())
        if tok is None:
            request.state.who = "bad-token"
            raise ApiError(401, "unauthorized", "the token is not valid (revoked, or mistyped)")
        request.state.who = f"token:{tok['name']}"
        return Who(name=tok["name"], scope=tok["scope"], vm=tok["vm"], pool=tok["pool"])

    def need(scope: str) -> Any:
        async def check(request: Request, who: Who = Depends(caller)) -> Who:
            if SCOPES.index(who.scope) < SCOPES.index(scope):
                raise ApiError(403, "forbidden", f"token {who.name!r} has scope {who.scope}; this needs {scope}")
            if who.bound() is not None and not _within(who, request):
                what = f"VM {who.vm!r}" if who.vm else f"pool {who.pool!r}"
                raise ApiError(403, "forbidden", f"token {who.name!r} may only act on {what}")
            return who
        return check

    # -- helpers ----------------------------------------------------------------------------------------
    def live() -> dict[str, dict[str, Any]]:
        """The running VMs by name, asked now (what a mutation decides on; reads use the shared scan)."""
        return running.get(0.0)

    def view(name: str, d: dict[str, Any] | None, running: dict[str, Any] | None) -> VM:
        return VM(name=name, state=running.get("state", "running") if running else "stopped",
                  defined=d is not None, restart=d["restart"] if d else None, config=d["config"] if d else None,
                  pid=running.get("pid") if running else None, version=d["version"] if d else None,
                  live=running)

    def ctl(vm: str, op: str, /, wait: float = 10, **args: Any) -> dict[str, Any]:
        from virtkit.machine import control

        try:
            return control.request(vm, op, wait=wait, **args)
        except VirtkitError as err:
            raise ApiError(409, "conflict", str(err)) from None

    def check_config(config: dict[str, Any], name: str) -> dict[str, Any]:
        from virtkit.boards import find_board
        from virtkit.machine.config import MachineConfig
        from virtkit.machine.engine import engine_module

        try:
            cfg = MachineConfig.from_dict(dict(config, name=name), "config")
            find_board(cfg.board)  # (what the builder would refuse at start, refused at definition)
            engine_module(cfg.engine)
        except (ConfigError, VirtkitError) as err:
            field = str(err).split(":", 1)[0]
            raise ApiError(422, "invalid", str(err), field if field.startswith("config") else "config") from None
        out = cfg.to_dict()
        out.pop("name", None)
        return out

    # -- VMs ----------------------------------------------------------------------------------------------
    listed: dict[tuple, tuple[dict, bytes]] = {}  # GET /vms answers by query, with the scan they show

    @app.get("/vms", response_model=Page, summary="List VMs (defined here or running on the host)",
             description=f"Live states are at most {LIVE_TTL} s old.")
    async def list_vms(state: str | None = Query(None, description="only VMs in this state"),
                       limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=1_000_000_000),
                       who: Who = Depends(need("read"))) -> Response:
        run = await _cached_or_scan(running)
        key = (inv.generation, who.vm, state, limit, offset)
        scan, hit = listed.get(key, (None, None))
        if scan is not run or hit is None:  # (the same answer until a scan or a definition changes)
            defs = {d["name"]: d for d in inv.vms()}
            rows = [view(n, defs.get(n), run.get(n)) for n in sorted(set(defs) | set(run))]
            if who.vm is not None:
                rows = [r for r in rows if r.name == who.vm]
            if state is not None:
                rows = [r for r in rows if r.state == state]
            hit = paged(rows, limit, offset).model_dump_json().encode()
            if len(listed) > 64:
                listed.clear()
            listed[key] = (run, hit)
        return Response(hit, media_type="application/json")

    @app.post("/vms", response_model=VM, status_code=201, summary="Define a VM from a machine config")
    def define_vm(body: VMDefine, who: Who = Depends(need("admin"))) -> VM:
        config = check_config(body.config, body.name)
        try:
            d = inv.define(body.name, config, body.restart)
        except DaemonError as err:
            raise ApiError(409, "conflict", str(err), "name") from None
        inv.made("vm", body.name)
        return view(body.name, d, None)

    def get_def(name: str) -> dict[str, Any]:
        d = inv.vm(name)
        if d is None:
            raise ApiError(404, "not_found", f"no VM {name!r} is defined here")
        return d

    @app.get("/vms/{name}", response_model=VM, summary="One VM (its ETag is the definition's version)")
    async def get_vm(name: str, response: Response, who: Who = Depends(need("read"))) -> VM:
        d, run = inv.vm(name), (await _cached_or_scan(running)).get(name)
        if d is None and run is None:
            raise ApiError(404, "not_found", f"no VM {name!r}")
        if d is not None:
            response.headers["ETag"] = f'"{d["version"]}"'
        return view(name, d, run)

    @app.put("/vms/{name}", response_model=VM, summary="Change a definition (If-Match: its ETag)")
    def update_vm(name: str, body: VMUpdate, response: Response, if_match: str | None = Header(default=None),
                  who: Who = Depends(need("admin"))) -> VM:
        d = get_def(name)
        if if_match is None:
            raise ApiError(428, "precondition_required", "send If-Match with the ETag from GET /vms/{name}")
        changes: dict[str, Any] = {}
        if body.config is not None:
            changes["config"] = check_config(body.config, name)
        if body.restart is not None:
            changes["restart"] = body.restart
        try:
            version = int(if_match.strip('"W/'))
        except ValueError:
            raise ApiError(412, "precondition_failed", f"If-Match {if_match!r} is not an ETag of this VM") from None
        new = inv.update(name, version, **changes) if changes else d
        if new is None or not changes and version != d["version"]:
            raise ApiError(412, "precondition_failed", "the definition changed since that ETag: GET it again")
        response.headers["ETag"] = f'"{new["version"]}"'
        return view(name, new, live().get(name))

    @app.delete("/vms/{name}", status_code=204, summary="Remove a definition (the VM must be stopped)")
    def delete_vm(name: str, who: Who = Depends(need("admin"))) -> Response:
        get_def(name)
        if name in live():
            raise ApiError(409, "conflict", f"VM {name!r} is running: stop it first")
        inv.undefine(name)
        inv.forget("vm", name)
        return Response(status_code=204)

    @app.post("/vms/{name}/start", response_model=VM, summary="Start a defined VM (virtkit run -d)")
    def start_vm(name: str, who: Who = Depends(need("operate"))) -> VM:
        d = get_def(name)
        if name in live():
            raise ApiError(409, "conflict", f"VM {name!r} is running already")
        try:
            start_vm_process(name, d["config"])
        except DaemonError as err:
            raise ApiError(409, "start_failed", str(err)) from None
        inv.set_wanted(name, "running")
        return view(name, d, live().get(name))

    def gone(name: str, seconds: float) -> bool:
        """Whether VM ``name`` stopped running within ``seconds``."""
        for _ in range(int(seconds / 0.05)):
            if name not in live():
                return True
            time.sleep(0.05)
        return False

    def lifecycle(op: str, scope: str) -> Any:
        def action(name: str, timeout: float = Query(10, gt=0, le=3600, description=(
                       "stop: seconds the guest gets to power off before the VM is killed")),
                   catch_up: bool = Query(False, description="resume: deliver the timer ticks missed while paused"),
                   who: Who = Depends(need(scope))) -> VM:
            if name not in live():
                raise ApiError(409, "conflict", f"VM {name!r} is not running")
            ending = op in ("stop", "kill") and inv.vm(name) is not None
            if ending:  # said before the VM ends, so the restart policy never sees it gone while still wanted
                inv.set_wanted(name, "stopped")
            try:
                if op == "stop":
                    ctl(name, op, wait=timeout + 40, timeout=timeout)
                elif op == "resume" and catch_up:
                    ctl(name, op, wait=40, catch_up=True)
                else:
                    ctl(name, op, wait=40)
            except ApiError:
                # a VM that ends may close the connection before its reply leaves: gone means stopped
                if op not in ("stop", "kill") or not gone(name, 5):
                    if ending:
                        inv.set_wanted(name, "running")
                    raise
            if op in ("stop", "kill"):
                gone(name, 10)
            return view(name, inv.vm(name), live().get(name))
        return action

    for op, doc in (("stop", "Stop (the guest is powered off)"), ("kill", "Kill the VM's process"),
                    ("pause", "Pause every vCPU"), ("resume", "Resume")):
        app.post(f"/vms/{{name}}/{op}", response_model=VM, summary=doc)(lifecycle(op, "operate"))

    @app.get("/vms/{name}/stats", summary="Engine and device counters of a running VM")
    def vm_stats(name: str, who: Who = Depends(need("read"))) -> dict[str, Any]:
        if name not in live():
            raise ApiError(409, "conflict", f"VM {name!r} is not running")
        return ctl(name, "stats")

    @app.websocket("/vms/{name}/console")
    async def console(ws: WebSocket, name: str, write: bool = False, force: bool = False,
                      token: str | None = None) -> None:
        """The VM's serial console over a WebSocket: binary frames both ways (what xterm.js speaks).
        ``write=true`` asks for the keyboard (one typist, any number of viewers; operate scope); on TCP the
        token comes as ``?token=`` or a Bearer header (a browser cannot set headers on a WebSocket)."""
        import asyncio

        from virtkit.machine import control

        async def refuse(code: int, reason: str) -> None:
            await ws.accept()  # (then closed with a reason a browser or script can read)
            await ws.close(code=code, reason=reason[:120])

        who = "unix-socket"
        if not trusted:
            auth = ws.headers.get("authorization", "")
            tok = inv.check_token(token or (auth[7:].strip() if auth.startswith("Bearer ") else ""))
            need_scope = "operate" if write else "read"
            if tok is None or SCOPES.index(tok["scope"]) < SCOPES.index(need_scope) or tok["pool"] is not None or (
                    tok["vm"] is not None and tok["vm"] != name):
                await refuse(4403, "a token with the scope for this console is needed")
                return
            who = f"token:{tok['name']}"
        path = control.socket_path(name)
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
        except OSError:
            await refuse(4404, f"no running VM named {name!r}")
            return
        writer.write(json.dumps({"op": "console", "write": write, "force": force}).encode() + b"\n")
        await writer.drain()
        try:
            reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
        except (TimeoutError, ValueError):
            reply = {"ok": False, "error": "the VM did not answer"}
        if not reply.get("ok"):
            writer.close()
            await refuse(4409, str(reply.get("error", "console refused")))
            return
        await ws.accept()
        if write:
            inv.audit(who, "WEBSOCKET", f"/vms/{name}/console?write=true", 101)

        async def vm_to_ws() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(data)
            await ws.close(code=1000, reason="the VM stopped")

        async def ws_to_vm() -> None:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                data = msg.get("bytes") or (msg.get("text") or "").encode()
                if data and write:  # (a viewer's keystrokes go nowhere, as on the control socket)
                    writer.write(data)
                    await writer.drain()

        tasks = [asyncio.create_task(vm_to_ws()), asyncio.create_task(ws_to_vm())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (WebSocketDisconnect, OSError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            writer.close()

    resources.register(app, resources.Ctx(inv=inv, tasks=tasks, need=need, live=live, ctl=ctl, api_error=ApiError,
                                          start_vm=start_vm_process, gone=gone, scanner=scanner))

    # -- the rest of the inventory -----------------------------------------------------------------------
    @app.get("/containers", response_model=Page, summary="Containers (virtkit container ps -a)")
    def containers(status: Literal["created", "running", "paused", "restarting", "exited"] | None = Query(
                       None, description="only containers in this state"),
                   image: str | None = Query(None, max_length=255, description="only containers of this image"),
                   limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=1_000_000_000),
                   who: Who = Depends(need("read"))) -> Page:
        from virtkit.containers.frontend import Containers

        rows = [c for c in Containers().all() if (status is None or c.get("status") == status)
                and (image is None or c.get("image") == image)]
        return paged(rows, limit, offset)

    @app.get("/images", response_model=Page, summary="Container images")
    def images(limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=1_000_000_000),
               who: Who = Depends(need("read"))) -> Page:
        from virtkit.containers.images import Store

        rows = Store().images()
        return paged(rows, limit, offset)

    @app.get("/pools", response_model=Page, summary="Storage pools (virtkit pool list)")
    def pools(limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=1_000_000_000),
              who: Who = Depends(need("read"))) -> Page:
        from virtkit.storage.pool import pool_statuses

        statuses = pool_statuses()
        if who.pool is not None:  # (a pool-bound token sees its pool alone)
            statuses = [t for t in statuses if t[0] == who.pool]
        rows = [{"name": entry, "state": "error", "error": err} if st is None else
                {k: st[k] for k in ("name", "state", "size", "used", "free", "open_volumes")}
                | {"volumes": [v["name"] if isinstance(v, dict) else v for v in st["volumes"]]}
                for entry, st, err in statuses]
        return paged(rows, limit, offset)

    @app.get("/switches", response_model=Page, summary="Virtual switches")
    def switches(limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=1_000_000_000),
                 who: Who = Depends(need("read"))) -> Page:
        from virtkit.network import control as net

        rows = net.list_switches()
        return paged(rows, limit, offset)

    @app.get("/audit", summary="The audit log of mutating calls, newest first")
    def audit(limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=1_000_000_000),
              who: Who = Depends(need("admin"))) -> dict[str, Any]:
        return {"items": inv.audit_log(limit, offset)}

    static = Path(__file__).with_name("static")
    if (static / "vendor" / "xterm" / "xterm.js").exists():
        from fastapi.staticfiles import StaticFiles

        app.mount("/ui", StaticFiles(directory=static, html=True), name="ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        """The OpenAPI document rendered by Swagger UI (vendored with the web console's assets, no CDN)."""
        if not (static / "vendor" / "swagger-ui" / "swagger-ui-bundle.js").exists():
            return _error(503, "no_docs_page", "the docs page's assets are not installed: run scripts/vendor-web.sh "
                          "(npm) in the source tree; the document itself is at /openapi.json")
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="virtkitd API",
                                   swagger_js_url="/ui/vendor/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/ui/vendor/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="data:,")

    @app.get("/", include_in_schema=False)
    def root(request: Request) -> Response:
        """The web console (its front-end assets are fetched by ``make test`` or scripts/vendor-web.sh)."""
        if not (static / "vendor" / "xterm" / "xterm.js").exists():
            return _error(503, "no_web_console", "the web console's assets are not installed: run "
                          "scripts/vendor-web.sh (npm) in the source tree")
        from fastapi.responses import RedirectResponse

        query = request.url.query
        return RedirectResponse("/ui/" + (f"?{query}" if query else ""))  # (a ?token= goes along)

    @app.get("/events", summary="A stream of VM state changes (Server-Sent Events)",
             response_class=Response, responses={200: {"content": {"text/event-stream": {}},
                                                        "description": "event: vm, data: a VM as GET /vms/{name}"}})
    async def events(request: Request, token: str | None = Query(None, description=(
                         "the token, for clients that cannot send headers (a browser's EventSource)")),
                     who: Who = Depends(need("read"))) -> Response:
        """``event: vm`` with the VM (as ``GET /vms/{name}``) whenever one appears, changes state or goes;
        ``event: task`` with the task (as ``GET /tasks/{id}``) whenever one started since changes; a comment
        every 15 s keeps proxies from closing the stream. Changes are seen within 0.5 s."""
        import asyncio

        from fastapi.responses import StreamingResponse

        async def stream() -> Any:
            last: dict[str, str] = {}
            seqs: dict[str, int] = {}
            opened = time.time()
            quiet = 0.0
            first = True
            while not await request.is_disconnected():
                run = await _cached_or_scan(running)
                defs = {d["name"]: d for d in inv.vms()}
                now = {n: view(n, defs.get(n), run.get(n)) for n in set(defs) | set(run)
                       if who.vm is None or n == who.vm}
                sent = False
                for name in sorted(set(now) | set(last)):
                    vm = now.get(name) or VM(name=name, state="gone", defined=False)
                    if last.get(name) != vm.state or first:
                        yield f"event: vm\ndata: {vm.model_dump_json()}\n\n"
                        sent = True
                last = {n: v.state for n, v in now.items()}
                if who.vm is None:  # tasks: each change of one started since the stream opened
                    for t in inv.tasks(100, 0, None, opened)[0][::-1]:
                        if seqs.get(t["id"]) != t["seq"]:
                            seqs[t["id"]] = t["seq"]
                            yield f"event: task\ndata: {json.dumps(t)}\n\n"
                            sent = True
                first = False
                quiet = 0.0 if sent else quiet + LIVE_TTL
                if quiet >= 15:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                await asyncio.sleep(LIVE_TTL)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/whoami", response_model=Who, summary="The caller's identity and scope")
    def whoami(who: Who = Depends(caller)) -> Who:
        return who

    return app
