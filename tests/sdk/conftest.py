"""The SDK's live tests reuse the service's real-stack fixtures (Redis, a worker process, uvicorn)."""

from tests.service.conftest import LiveStack, live_stack, live_stack_env, live_stack_factory  # noqa: F401
