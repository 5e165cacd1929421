"""Regenerate billing_client/models.py from the service's OpenAPI document with datamodel-code-generator.

    .venv/bin/python client/regenerate.py                       # the app of this checkout, built in process
    .venv/bin/python client/regenerate.py --source http://127.0.0.1:8000/openapi.json
    .venv/bin/python client/regenerate.py --source openapi.json --output /tmp/models.py
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
MODELS = HERE / "billing_client" / "models.py"
HEADER = "# Generated from the service's GET /openapi.json by client/regenerate.py: do not edit."
# Pinned with the generator's version in the service's test extra: another version may write other text.
OPTIONS = ["--input-file-type", "openapi", "--output-model-type", "pydantic_v2.BaseModel",
           "--target-python-version", "3.11", "--base-class", "billing_client._base.Model",
           "--snake-case-field", "--use-annotated", "--field-constraints", "--use-union-operator",
           "--use-standard-collections", "--collapse-root-models", "--collapse-constrained-root-models-as-annotated",
           "--enum-field-as-literal", "all", "--use-double-quotes", "--disable-timestamp",
           "--formatters", "builtin", "--ignore-pyproject", "--custom-file-header", HEADER]


def prepared(document: dict) -> dict:
    """The document as the models want it: the service's `...Shape` response names without the suffix
    (Balance, Operation), no titles (pydantic repeats each field's name in one), and no
    `additionalProperties: false`, so that the client accepts fields a newer service adds."""
    schemas = document["components"]["schemas"]
    names = {name: name.removesuffix("Shape") for name in schemas}
    for schema in schemas.values():
        schema.pop("title", None)
        if schema.get("additionalProperties") is False:
            del schema["additionalProperties"]
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
    text = re.sub(r'"#/components/schemas/(\w+)"', lambda m: f'"#/components/schemas/{names[m[1]]}"',
                  json.dumps(document))
    renamed = json.loads(text)
    renamed["components"]["schemas"] = {names[k]: v for k, v in renamed["components"]["schemas"].items()}
    return renamed


def generate(document: dict, output: Path) -> None:
    """Write the models of this document to `output`."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "openapi.json"
        source.write_text(json.dumps(prepared(document), indent=1))
        subprocess.run([sys.executable, "-m", "datamodel_code_generator", "--input", str(source),
                        "--output", str(output), *OPTIONS], check=True)


def served_document() -> dict:
    """GET /openapi.json of this checkout's app, built in process (no database is touched)."""
    sys.path.insert(0, str(HERE.parent))
    from falcon import testing

    from api.app import create_app
    from domain.services.context import Config, Context
    from domain.services.registry import Services

    services = Services(Context(uow=lambda: None, enqueue=lambda *_, **__: False, config=Config()))
    return testing.TestClient(create_app(services, "unused", {})).simulate_get("/openapi.json").json


def load(source: str | None) -> dict:
    if source is None:
        return served_document()
    if source.startswith(("http://", "https://")):
        return httpx.get(source, timeout=30).raise_for_status().json()
    return json.loads(Path(source).read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="a URL or file of the document (default: this checkout's app)")
    parser.add_argument("--output", type=Path, default=MODELS)
    args = parser.parse_args(argv)
    generate(load(args.source), args.output)


if __name__ == "__main__":
    main()
