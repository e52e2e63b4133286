"""Every answer checked against the OpenAPI document the server publishes.

:class:`Contract` finds the operation a request reached (its path template and
method), the response the document declares for the status, and validates the
body against that schema (JSON Schema 2020-12, as OpenAPI 3.1 uses) with the
document's components.  An answer fails when its status is not declared, when
the declared schema accepts anything (a route without a response model), or when
the body does not match.  :func:`watch` makes an ``httpx`` client (also a
``TestClient``) check every answer it receives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema

OPAQUE = ("application/octet-stream",)
DOCUMENTS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")  # the document itself


class ContractBroken(AssertionError):
    """An answer the OpenAPI document does not describe."""


@dataclass
class Contract:
    doc: dict[str, Any]
    checked: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.routes = [
            (re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", template) + "$"), template)
            for template in self.doc["paths"]
        ]

    def template(self, path: str) -> str | None:
        """The path template ``path`` matches; literal segments win over parameters."""
        found = [t for rx, t in self.routes if rx.match(path)]
        return max(found, key=lambda t: -t.count("{"), default=None)

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        if path in DOCUMENTS and status == 200:
            return
        template = self.template(path)
        op = self.doc["paths"].get(template, {}).get(method.lower()) if template else None
        if op is None:  # no such operation: only an error can answer
            if status < 400:
                raise ContractBroken(f"{method} {path}: {status} from an undeclared operation")
            self._validate({"$ref": "#/components/schemas/ErrorOut"}, body, method, path)
            return
        declared = op.get("responses", {}).get(str(status))
        if declared is None:
            raise ContractBroken(f"{method} {template}: status {status} is not declared")
        self.checked.append((method, template or path, status))
        content = declared.get("content")
        if not content:
            if body:
                raise ContractBroken(f"{method} {template}: {status} declares no body")
            return
        media = content_type.split(";")[0].strip()
        if media not in content:
            raise ContractBroken(f"{method} {template}: {media} not declared for {status}")
        schema = content[media].get("schema") or {}
        if not _constrains(schema):
            raise ContractBroken(f"{method} {template}: {status} has no response schema")
        if media in OPAQUE or not media.endswith("json"):
            return
        self._validate(schema, body, method, template or path)

    def _validate(self, schema: dict[str, Any], body: bytes, method: str, where: str) -> None:
        import json

        try:
            instance = json.loads(body)
        except ValueError as exc:
            raise ContractBroken(f"{method} {where}: the body is not JSON") from exc
        root = {**schema, "components": self.doc.get("components", {})}
        validator = jsonschema.Draft202012Validator(root)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            at = "/".join(str(p) for p in first.absolute_path) or "(body)"
            raise ContractBroken(f"{method} {where}: at {at}: {first.message[:300]}")


def _constrains(schema: dict[str, Any]) -> bool:
    """Does ``schema`` say anything about the body (an empty schema accepts all)?"""
    words = {"$ref", "type", "anyOf", "oneOf", "allOf", "properties", "items", "enum", "const"}
    return bool(words & set(schema))


def watch(http: httpx.Client, contract: Contract) -> None:
    """Check every answer ``http`` receives from now on."""

    def hook(resp: httpx.Response) -> None:
        resp.read()
        req = resp.request
        contract.check(
            req.method,
            req.url.path,
            resp.status_code,
            resp.headers.get("content-type", ""),
            resp.content,
        )

    http.event_hooks["response"] = [*http.event_hooks["response"], hook]
