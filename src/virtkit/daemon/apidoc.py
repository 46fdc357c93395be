"""``python -m virtkit.daemon.apidoc > docs/api.md``: the API reference, written from the OpenAPI document
the code generates (a test checks that docs/api.md is up to date)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any


def openapi() -> dict[str, Any]:
    """The OpenAPI document of the TCP listener (an empty inventory in a scratch directory)."""
    from virtkit.daemon.app import create_app
    from virtkit.daemon.db import Inventory

    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Inventory(Path(tmp) / "x.db"), trusted=False).openapi()


def markdown(doc: dict[str, Any]) -> str:
    """The document as a Markdown page: one section per endpoint."""
    out = [f"# {doc['info']['title']} REST API (version {doc['info']['version']})", "",
           "Generated from the OpenAPI document (`GET /openapi.json` on a running daemon) by "
           "`python -m virtkit.daemon.apidoc > docs/api.md`; do not edit by hand.", "",
           doc["info"].get("description", "").strip(), "",
           "Errors are always `{\"error\": {\"code\", \"message\", \"field\"}}`. On TCP every call needs "
           "`Authorization: Bearer vkt_...` (`virtkit daemon token create NAME --scope read|operate|admin`).", ""]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            out += [f"## `{method.upper()} {path}`", "", op.get("summary", ""), ""]
            params = [p for p in op.get("parameters", []) if p["name"] != "authorization"]
            if params:
                out.append("| parameter | in | type | default | |")
                out.append("| --- | --- | --- | --- | --- |")
                for p in params:
                    sch = p.get("schema", {})
                    kind = sch.get("type") or "/".join(x.get("type", "") for x in sch.get("anyOf", []))
                    out.append(f"| `{p['name']}` | {p['in']} | {kind} | {sch.get('default', '')} | "
                               f"{p.get('description', '')} |")
                out.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                out += [f"Body: `{body.get('$ref', '').rsplit('/', 1)[-1] or body.get('type')}`", ""]
            codes = ", ".join(f"{c} {r.get('description', '')}" for c, r in op.get("responses", {}).items())
            out += [f"Responses: {codes}", ""]
    out += ["## Schemas", ""]
    for name, sch in doc.get("components", {}).get("schemas", {}).items():
        out += [f"### {name}", "", sch.get("description", "").strip(), ""]
        for field, f in sch.get("properties", {}).items():
            kind = f.get("type") or "/".join(x.get("type", "") for x in f.get("anyOf", [])) or "object"
            req = " (required)" if field in sch.get("required", []) else ""
            out.append(f"- `{field}`: {kind}{req} {f.get('description', '')}".rstrip())
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(openapi()))
