"""Restricted APIs (Triton's ``--http-restricted-api`` / ``--grpc-restricted-protocol``).

``API[,API...]:KEY=VALUE``: requests to those API groups must carry header (HTTP) or metadata (gRPC)
``KEY: VALUE``; others are refused with PERMISSION_DENIED.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kiln.errors import InvalidArgumentError, PermissionDeniedError

APIS = frozenset(
    {"health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
     "trace", "logging"}
)  # fmt: skip


@dataclass(frozen=True)
class Restrictions:
    rules: dict[str, tuple[str, str]]  # api -> (header key, value)

    @classmethod
    def parse(cls, specs: Sequence[str], flag: str) -> Restrictions:
        rules: dict[str, tuple[str, str]] = {}
        for spec in specs:
            apis, sep, kv = spec.partition(":")
            key, eq, value = kv.partition("=")
            if not sep or not eq or not key or not apis:
                raise InvalidArgumentError(f"{flag} '{spec}': expected API[,API...]:KEY=VALUE")
            for api in apis.split(","):
                if api not in APIS:
                    raise InvalidArgumentError(
                        f"{flag}: unknown API '{api}' (known: {', '.join(sorted(APIS))})"
                    )
                if api in rules:
                    raise InvalidArgumentError(f"{flag}: API '{api}' is restricted twice")
                rules[api] = (key.lower(), value)
        return cls(rules)

    def check(self, api: str, lookup: Callable[[str], str | None]) -> None:
        rule = self.rules.get(api)
        if rule is None:
            return
        key, value = rule
        given = lookup(key)
        if given is None or not hmac.compare_digest(given.encode(), value.encode()):
            raise PermissionDeniedError(
                f"this API ({api}) is restricted: the request must carry '{key}' with the key"
            )


NO_RESTRICTIONS = Restrictions({})
