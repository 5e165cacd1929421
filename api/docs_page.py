"""GET /docs: the OpenAPI document as one readable HTML page; no scripts, nothing fetched from elsewhere."""
import json
import re
from html import escape

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;color:#1d2330;max-width:62em;margin:2em auto;padding:0 1em}
h2{border-bottom:2px solid #d8dde6;padding-bottom:.2em;margin-top:2em}
h3{margin:0 0 .3em;font-size:1.05em}h4{margin:.9em 0 .3em;font-size:.95em;color:#4a5568}
section.op,section.schema{border:1px solid #d8dde6;border-radius:6px;padding:.8em 1em;margin:1em 0}
table{border-collapse:collapse;width:100%;font-size:.92em}
td,th{text-align:left;vertical-align:top;padding:.25em .5em;border-bottom:1px solid #eef0f4}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f5f7fa;border:1px solid #e2e6ee;border-radius:4px;padding:.6em;overflow-x:auto}
.m{display:inline-block;min-width:4.2em;text-align:center;border-radius:3px;color:#fff;font:bold .8em monospace;
padding:.15em .3em}.get{background:#2f7d4f}.post{background:#2b5fad}.delete{background:#b03a2e}
.put,.patch{background:#8a5a00}.who{color:#4a5568}.req{color:#b03a2e;font-size:.85em}.muted{color:#6b7280}
"""


def _text(value: str) -> str:
    """Escaped prose, with `backticks` shown as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(value))


def _anchor(method: str, path: str) -> str:
    return method + "-" + re.sub(r"[^a-zA-Z0-9]+", "-", path).strip("-")


def _ref_name(schema: dict) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[1] if ref else None


def _type(schema: dict) -> str:
    """A compact type expression: `integer`, `string (date-time)`, `UsageEvent[]`, `"a" | "b"`, `X | null`."""
    name = _ref_name(schema)
    if name:
        return f"<a href='#schema-{name}'>{name}</a>"
    if "anyOf" in schema:
        return " | ".join(_type(option) for option in schema["anyOf"])
    if "const" in schema:
        return escape(json.dumps(schema["const"]))
    if "enum" in schema:
        return " | ".join(escape(json.dumps(value)) for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return _type(schema.get("items", {})) + "[]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map of string → " + _type(schema["additionalProperties"])
    return kind + (f" ({schema['format']})" if "format" in schema else "")


def _bounds(schema: dict) -> list[str]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is None and "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + 1  # our bounded numbers are integers
    if low is None and high is None:
        return []
    return [f"{'…' if low is None else f'{low:,}'} to {'…' if high is None else f'{high:,}'}"]


def _rules(schema: dict) -> list[str]:
    for option in schema.get("anyOf", []):  # a nullable value's rules are on its non-null branch
        if option.get("type") != "null":
            schema = option | {k: v for k, v in schema.items() if k != "anyOf"}
    rules = _bounds(schema)
    if "minLength" in schema or "maxLength" in schema:
        rules.append(f"length {schema.get('minLength', 0)} to {schema.get('maxLength', '…')}")
    if "minItems" in schema or "maxItems" in schema:
        rules.append(f"{schema.get('minItems', 0)} to {schema.get('maxItems', '…')} items")
    if "pattern" in schema:
        rules.append(f"pattern <code>{escape(schema['pattern'])}</code>")
    if schema.get("default") is not None:
        rules.append(f"default <code>{escape(json.dumps(schema['default']))}</code>")
    return rules + ([_text(schema["description"])] if schema.get("description") else [])


def _row(name: str, required: bool, *cells: str) -> str:
    flag = " <span class=req>required</span>" if required else ""
    return f"<tr><td><code>{escape(name)}</code>{flag}</td>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _fields(schema: dict, components: dict, titled: bool = True) -> str:
    """An object's fields as a table; any other schema as its type expression."""
    name = _ref_name(schema)
    target = components.get(name, {}) if name else schema
    if not target.get("properties"):
        return f"<p><code>{_type(schema)}</code></p>"
    required = set(target.get("required", []))
    rows = "".join(_row(field, field in required, f"<code>{_type(prop)}</code>", "; ".join(_rules(prop)))
                   for field, prop in target["properties"].items())
    head = (f"<a href='#schema-{name}'>{name}</a> " if name and titled else "") + (
        "<span class=muted>No other fields.</span>" if target.get("additionalProperties") is False else "")
    title = f"<p>{head}</p>" if head else ""
    return f"{title}<table><tr><th>field</th><th>type</th><th>rules</th></tr>{rows}</table>"


def example(schema: dict, components: dict, depth: int = 0) -> object:
    """The schema's own example, else a value made from its types and bounds."""
    name = _ref_name(schema)
    if name:
        return example(components[name], components, depth)
    if schema.get("examples"):
        return schema["examples"][0]
    if "anyOf" in schema:
        return example(next(o for o in schema["anyOf"] if o.get("type") != "null"), components, depth)
    if "const" in schema or "enum" in schema:
        return schema.get("const", (schema.get("enum") or [None])[0])
    kind = schema.get("type")
    if kind == "object" and depth < 4:
        return {field: example(prop, components, depth + 1) for field, prop in schema.get("properties", {}).items()
                if field in schema.get("required", [])}
    if kind == "array":
        return [example(schema.get("items", {}), components, depth + 1)]
    if kind == "integer":
        return schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
    if kind == "string":
        return "2026-01-01T00:00:00Z" if schema.get("format") == "date-time" else "text"
    return True if kind == "boolean" else {}


def _parameters(op: dict) -> str:
    if not op.get("parameters"):
        return ""
    described = [(p, p["schema"] | ({"description": p["description"]} if p.get("description") else {}))
                 for p in op["parameters"]]
    rows = "".join(_row(p["name"], p.get("required", False), p["in"], f"<code>{_type(schema)}</code>",
                        "; ".join(_rules(schema))) for p, schema in described)
    return f"<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>rules</th></tr>{rows}</table>"


def _body(op: dict, components: dict) -> str:
    if "requestBody" not in op:
        return ""
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    sample = escape(json.dumps(example(schema, components), indent=2))
    return (f"<h4>Request body <span class=muted>application/json</span></h4>{_fields(schema, components)}"
            f"<h4>Example request body</h4><pre class=example>{sample}</pre>")


def _responses(op: dict, components: dict) -> str:
    ok, problems = [], []
    for status, answer in op["responses"].items():
        media = next(iter(answer.get("content", {}).items()), None)
        if media and media[0] == "application/problem+json":
            problems.append(status)
            continue
        shape = _fields(media[1]["schema"], components) if media else "<p class=muted>No body.</p>"
        ok.append(f"<p><b>{status}</b> {escape(answer['description'])}</p>{shape}")
    if problems:
        ok.append(f"<p><b>{', '.join(problems)}</b> <code>application/problem+json</code> "
                  "<a href='#schema-ProblemShape'>ProblemShape</a></p>")
    return "<h4>Responses</h4>" + "".join(ok)


def _operation(path: str, method: str, op: dict, components: dict) -> str:
    who = op.get("x-who", "")
    notes = op.get("description", "").removeprefix(f"Who: {who}.").strip()
    auth = " · <code>Authorization: Bearer &lt;key&gt;</code>" if op.get("security") else " · no key needed"
    return (f"<section class=op id='{_anchor(method, path)}' data-endpoint='{method.upper()} {escape(path)}'>"
            f"<h3><span class='m {method}'>{method.upper()}</span> <code>{escape(path)}</code></h3>"
            f"<p>{_text(op['summary'])}</p><p class=who><b>Who:</b> {escape(who)}{auth}</p>"
            f"{f'<p>{_text(notes)}</p>' if notes else ''}{_parameters(op)}{_body(op, components)}"
            f"{_responses(op, components)}</section>")


def render(document: dict) -> str:
    components = document["components"]["schemas"]
    endpoints = [(path, method, op) for path, methods in document["paths"].items() for method, op in methods.items()]
    index = "".join(f"<tr><td><span class='m {m}'>{m.upper()}</span></td><td><a href='#{_anchor(m, p)}'>"
                    f"<code>{escape(p)}</code></a></td><td>{_text(op['summary'])}</td><td>{escape(op.get('x-who', ''))}"
                    "</td></tr>" for p, m, op in endpoints)
    conventions = "".join(f"<p>{_text(part)}</p>" for part in document["info"]["description"].split("\n\n"))
    schemas = "".join(f"<section class=schema id='schema-{name}'><h3>{name}</h3>"
                      f"{_fields({'$ref': f'#/components/schemas/{name}'}, components, titled=False)}</section>"
                      for name in sorted(components))
    title, version = escape(document["info"]["title"]), escape(document["info"]["version"])
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>{title} API</title><style>{STYLE}</style></head><body>"
            f"<h1>{title} API <small class=muted>{version}</small></h1>"
            "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
            f"<h2>Endpoints</h2><table><tr><th></th><th>path</th><th>what</th><th>who</th></tr>{index}</table>"
            f"<h2>Conventions</h2>{conventions}<h2>Endpoints in detail</h2>"
            + "".join(_operation(p, m, op, components) for p, m, op in endpoints)
            + f"<h2>Schemas</h2>{schemas}</body></html>")
