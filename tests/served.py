"""A served tiny backbone for the server tests: the admin token, an in-process client, and Schemathesis' checks
of every route."""

from fastapi.testclient import TestClient

from softprompt.inference.bank import PromptBank
from softprompt.serve import ServeSettings, create_app

TOKEN = "s3cret-token"


def client(tiny_llama, folder, **settings):
    """An ASGI test client of a server on `tiny_llama` serving the prompt `folder`; `settings` override."""
    options = dict(admin_token=TOKEN, max_inputs=8, max_input_tokens=40, max_new_tokens=24, max_body_bytes=200_000,
                   reload_interval=0, batch_wait_ms=5)
    options.update(settings)
    return TestClient(create_app(PromptBank(tiny_llama), folder, ServeSettings(**options)))


def fuzz_every_route(schema, token: str, examples: int) -> set[tuple[str, str]]:
    """Run Schemathesis' checks (no 5xx, documented status codes, content types, headers and bodies, schema-valid
    requests accepted and invalid ones refused) on generated requests to every operation; returns the (path,
    method) of each."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

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

