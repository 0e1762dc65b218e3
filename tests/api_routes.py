"""The server's API as the serve guide documents it: a route that drops out of the schema (or off the API docs
page) fails the tests that compare against this set."""

ROUTES = {("/healthz", "get"), ("/metrics", "get"), ("/v1/prompts", "get"), ("/v1/prompts", "post"),
          ("/v1/prompts/{name}", "delete"), ("/v1/models", "get"), ("/v1/classify", "post"),
          ("/v1/completions", "post"), ("/v1/chat/completions", "post")}
