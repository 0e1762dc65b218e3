"""The HTTP API fuzzed from its own OpenAPI schema (Schemathesis), in process on a tiny backbone: generated
requests, valid and invalid, for every route; no 5xx, every error in the documented JSON shape, status codes,
content types, headers and bodies as the schema says."""

import pytest
import schemathesis
import served
import tiny
from api_routes import ROUTES

EXAMPLES = int(__import__("os").environ.get("FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def api_schema(tiny_llama, tmp_path_factory):

    from softprompt import save_prompt

    folder = tmp_path_factory.mktemp("schema-prompts")
    save_prompt(folder / "sentiment.safetensors", tiny.classifier(tiny_llama, "prefix", 5, 1, ["positive=great"]))
    save_prompt(folder / "qa.safetensors", tiny.generator(tiny_llama, 4, 3))
    with served.client(tiny_llama, folder) as client:  # runs the lifespan: the batcher thread serves every call
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        yield schema


def test_every_route_answers_as_its_schema_says(api_schema):
    assert served.fuzz_every_route(api_schema, served.TOKEN, EXAMPLES) == ROUTES
