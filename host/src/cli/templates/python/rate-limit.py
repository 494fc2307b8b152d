"""A memhost rate-limit plugin: one per-minute limit per key, by plan. The
config is `config.example.json`."""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import limiter
from wit_world.imports import types

NAME, VERSION = "{{name}}", "0.1.0"

CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "per_minute": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "default_per_minute": {"type": "integer", "minimum": 1},
    },
}


class Meta(exports.Meta):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name=NAME, version=VERSION, kind=types.PluginKind.RATE_LIMIT, config_schema=json.dumps(CONFIG_SCHEMA)
        )


class Limiter(exports.Limiter):
    def rules(self, config: str, request: limiter.RequestClass) -> list[limiter.Rule]:
        try:
            cfg = json.loads(config or "{}")
        except ValueError as e:
            raise Err(types.PluginError(code="invalid-config", message=str(e), retryable=False))
        limit = cfg.get("per_minute", {}).get(request.plan, cfg.get("default_per_minute", 10))
        return [limiter.Rule(name="per-minute", scope=limiter.Scope.KEY, algorithm=limiter.Algorithm.SLIDING_WINDOW,
                             limit=limit, window_ms=60_000, burst=0, cost=1)]
