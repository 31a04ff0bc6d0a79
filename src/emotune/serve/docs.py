"""``GET /docs``: the API's documentation as one self-contained HTML page rendered from the OpenAPI schema.

FastAPI's default docs page loads Swagger UI's scripts from a CDN, so it is blank without network (and
would run third-party code on the server's origin). This page is built on the server from the same schema
(``/openapi.json``): every operation with its summary, description, request body, responses and a
``curl`` example, and every schema's fields; no script, no external resource.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

METHOD_ORDER = ("get", "post", "put", "patch", "delete")

CSS = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 960px; padding: 1.5rem; color: #1d232b; }
h1 { margin-bottom: .2rem; } .version { color: #667; font-size: .9rem; }
.op { border: 1px solid #d6dbe1; border-radius: 6px; margin: 1rem 0; padding: .6rem 1rem; }
.method { display: inline-block; min-width: 3.5rem; font-weight: 700; color: #fff; border-radius: 4px;
          text-align: center; padding: 0 .4rem; margin-right: .5rem; }
.get { background: #2b7bb9; } .post { background: #2f9e5a; } .put, .patch { background: #c58a1c; }
.delete { background: #c0392b; }
code, pre { font-family: ui-monospace, monospace; font-size: .85rem; }
pre { background: #f4f6f8; padding: .6rem; border-radius: 4px; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; } td, th { text-align: left; padding: .2rem .5rem;
                                                          border-bottom: 1px solid #eceff2; vertical-align: top; }
"""


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: dict[str, Any]) -> str:
    """A short type description of a JSON schema: ``string``, ``array of string``, ``ErrorBody``..."""
    if not isinstance(schema, dict):
        return "any"
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " or ".join(_type(s) for s in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return escape(str(kind))


def _fields(schema: dict[str, Any]) -> str:
    props = schema.get("properties") or {}
    if not props:
        return f"<p>{_type(schema)}</p>"
    required = set(schema.get("required") or ())
    rows = "".join(
        f"<tr><td><code>{escape(name)}</code>{' (required)' if name in required else ''}</td>"
        f"<td>{_type(prop)}</td><td>{escape(str(prop.get('description', prop.get('title', ''))))}</td></tr>"
        for name, prop in props.items())
    return f"<table><tr><th>field</th><th>type</th><th>description</th></tr>{rows}</table>"


def _example(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    """A small example value for a request body schema."""
    if depth > 5 or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return _example(components.get(_ref_name(schema["$ref"]), {}), components, depth + 1)
    if "examples" in schema and schema["examples"]:
        return schema["examples"][0]
    if "example" in schema:
        return schema["example"]
    if "properties" in schema:
        required = set(schema.get("required") or ())
        return {k: _example(v, components, depth + 1) for k, v in schema["properties"].items() if k in required}
    return {"string": "text", "integer": 1, "number": 1.0, "boolean": True, "array": []}.get(schema.get("type"))


def docs_html(spec: dict[str, Any]) -> str:
    """The docs page of an OpenAPI schema (a dict, as ``app.openapi()`` returns)."""
    info = spec.get("info", {})
    components = (spec.get("components") or {}).get("schemas") or {}
    parts = [f"<h1>{escape(str(info.get('title', 'API')))}</h1>",
             f'<div class="version">version {escape(str(info.get("version", "")))} &middot; '
             f'schema: <a href="/openapi.json">/openapi.json</a></div>',
             f"<p>{escape(str(info.get('description', '')))}</p>", "<h2>Endpoints</h2>"]
    for path, ops in (spec.get("paths") or {}).items():
        for method in sorted(ops, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
            op = ops[method]
            anchor = f"{method}-{path}".replace("/", "-").strip("-")
            parts.append(f'<div class="op" id="{escape(anchor)}"><h3><span class="method {escape(method)}">'
                         f"{escape(method.upper())}</span><code>{escape(path)}</code> "
                         f"{escape(str(op.get('summary', '')))}</h3>")
            if op.get("description"):
                parts.append(f"<p>{escape(str(op['description']))}</p>")
            body = ((op.get("requestBody") or {}).get("content") or {}).get("application/json")
            curl = f"curl -s localhost:8000{path}"
            if body:
                schema = body.get("schema", {})
                parts.append(f"<h4>Request body (<code>application/json</code>)</h4>{_fields(schema)}")
                example = json.dumps(_example(schema, components))
                curl = (f"curl -s localhost:8000{path} -H 'Content-Type: application/json' "
                        f"-d '{example}'")
            parts.append(f"<h4>Example</h4><pre>{escape(curl)}</pre>")
            rows = []
            for status, resp in (op.get("responses") or {}).items():
                schema = ((resp.get("content") or {}).get("application/json") or {}).get("schema")
                rows.append(f"<tr><td><code>{escape(str(status))}</code></td>"
                            f"<td>{escape(str(resp.get('description', '')))}</td>"
                            f"<td>{_type(schema) if schema else ''}</td></tr>")
            if rows:
                parts.append("<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>body</th></tr>"
                             + "".join(rows) + "</table>")
            parts.append("</div>")
    if components:
        parts.append("<h2>Schemas</h2>")
        for name, schema in components.items():
            parts.append(f'<div class="op" id="schema-{escape(name)}"><h3>{escape(name)}</h3>'
                         f"{_fields(schema)}</div>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(str(info.get('title', 'API')))} API docs</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body>" + "".join(parts) + "</body></html>")
