"""The OpenAPI schema's names: operationIds from the routes' names, and form bodies named and typed for
the clients generated from it. (The response models themselves are in service/schemas.py; the error
bodies in service/errors.py.)"""

from __future__ import annotations

import json
from typing import Any

from fastapi.routing import APIRoute

__all__ = ["operation_id", "readable_forms"]


def operation_id(route: APIRoute) -> str:
    """A route's operationId: its name (the function's, or the `name=` it is declared with), e.g.
    submit_job; FastAPI's default adds the path and method (submit_job_v1_jobs_post)."""
    return route.name


def readable_forms(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI names a form body's schema 'Body_<operationId>': call it '<OperationId>Form'
    (Body_upload_dataset -> UploadDatasetForm), refs included. Its file fields, which FastAPI marks
    only with contentMediaType, also get `format: binary`, the mark client generators read as a file."""
    components = schema.get("components", {}).get("schemas", {})
    renames = {
        name: "".join(part.capitalize() for part in name.removeprefix("Body_").split("_")) + "Form"
        for name in components
        if name.startswith("Body_")
    }
    for old, new in renames.items():
        form = components[new] = components.pop(old)
        form["title"] = new
        for prop in form.get("properties", {}).values():
            if prop.get("type") == "string" and "contentMediaType" in prop:
                prop["format"] = "binary"
    if not renames:
        return schema
    text = json.dumps(schema)
    for old, new in renames.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    return json.loads(text)
