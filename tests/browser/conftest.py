"""The browser test reuses the service suite's real stack (Redis, worker, uvicorn)."""

from tests.service.conftest import live_stack, live_stack_env, live_stack_factory  # noqa: F401
