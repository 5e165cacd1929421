"""The client's models are generated from the app's current OpenAPI document: regenerate after changing it."""
import importlib.util

from tests.processes import ROOT

CLIENT = ROOT / "client"


def _regenerate_module():
    spec = importlib.util.spec_from_file_location("regenerate", CLIENT / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_models_are_what_the_current_document_generates(api, tmp_path):
    document = api.client.simulate_get("/openapi.json").json
    output = tmp_path / "models.py"
    _regenerate_module().generate(document, output)
    assert output.read_text() == (CLIENT / "billing_client" / "models.py").read_text(), (
        "the OpenAPI document changed: run `.venv/bin/python client/regenerate.py` and commit the models")
