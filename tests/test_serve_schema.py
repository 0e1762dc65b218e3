"""The HTTP API fuzzed from its own OpenAPI schema (Schemathesis), in process on a tiny backbone: generated
requests, valid and invalid, for every route; no 5xx, every error in the documented JSON shape, status codes,
content types, headers and bodies as the schema says."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from api_routes import ROUTES
from test_serve import TOKEN, _client

EXAMPLES = int(__import__("os").environ.get("FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def api_schema(tiny_llama, tmp_path_factory):
    from test_serve import _classifier, _generator

    from softprompt import save_prompt

    folder = tmp_path_factory.mktemp("schema-prompts")
    save_prompt(folder / "sentiment.safetensors", _classifier(tiny_llama, "prefix", 5, 1, ["positive=great"]))
    save_prompt(folder / "qa.safetensors", _generator(tiny_llama, 4, 3))
    with _client(tiny_llama, folder) as client:  # runs the lifespan: the batcher thread serves every call
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        yield schema


def fuzz_every_route(schema, token: str, examples: int) -> set[tuple[str, str]]:
    """Run Schemathesis' checks (no 5xx, documented status codes, content types, headers and bodies, schema-valid
    requests accepted and invalid ones refused) on generated requests to every operation; returns the (path,
    method) of each."""
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        # An upload's body is a prompt file: "a valid .safetensors file for this backbone" is more than a schema
        # says, so schema-valid random bytes are rightly refused (422); every other check still runs on it.
        excluded = [positive_data_acceptance] if (operation.path, operation.method) == ("/v1/prompts", "post") else []

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, excluded_checks=excluded)

        check()
    return {(operation.path, operation.method.lower()) for operation in operations}


def test_every_route_answers_as_its_schema_says(api_schema):
    assert fuzz_every_route(api_schema, TOKEN, EXAMPLES) == ROUTES
