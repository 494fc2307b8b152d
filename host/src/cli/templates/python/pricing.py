"""A memhost pricing plugin: a base price per plan, units included, the rest
billed per unit, and hard limits. The config is `config.example.json`."""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import pricer
from wit_world.imports import log, types

NAME, VERSION = "{{name}}", "0.1.0"

CONFIG_SCHEMA = {
    "type": "object",
    "required": ["plans"],
    "additionalProperties": False,
    "properties": {
        "currency": {"type": "string", "minLength": 3, "maxLength": 3},
        "plans": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "base_micros": {"type": "integer", "minimum": 0},
                    "metrics": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "included": {"type": "integer", "minimum": 0},
                                "unit_price_micros": {"type": "integer", "minimum": 0},
                                "hard_limit": {"type": "integer", "minimum": 0},
                            },
                        },
                    },
                },
            },
        },
    },
}


def fail(code: str, message: str):
    """A deliberate error: the host reports it with this code."""
    return Err(types.PluginError(code=code, message=message, retryable=False))


def plan_of(config: str, plan: str) -> tuple[str, dict]:
    cfg = json.loads(config or "{}")
    plans = cfg.get("plans")
    if not plans:
        raise fail("invalid-config", "the config has no plans")
    if plan not in plans:
        raise fail("unknown-plan", f"plan `{plan}` is not in the config")
    return cfg.get("currency", "USD"), plans[plan]


class Meta(exports.Meta):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name=NAME, version=VERSION, kind=types.PluginKind.PRICING, config_schema=json.dumps(CONFIG_SCHEMA)
        )


class Pricer(exports.Pricer):
    def rate(self, config: str, input: pricer.RatingInput) -> pricer.Invoice:
        currency, plan = plan_of(config, input.plan)
        lines = []
        base = plan.get("base_micros", 0)
        if base:
            lines.append(pricer.InvoiceLine(kind=pricer.LineKind.BASE, metric=None, reference=None,
                                            description=f"{input.plan} plan", quantity=0, amount=base))
        metrics = plan.get("metrics", {})
        for usage in input.usage:
            rule = metrics.get(usage.metric)
            if rule is None:
                continue
            billable = max(0, usage.quantity - rule.get("included", 0))
            price = rule.get("unit_price_micros", 0)
            if billable and price:
                lines.append(pricer.InvoiceLine(
                    kind=pricer.LineKind.USAGE, metric=usage.metric, reference=None,
                    description=f"{billable} {usage.metric} over the {rule.get('included', 0)} included",
                    quantity=billable, amount=billable * price))
        log.log(log.Level.DEBUG, f"{len(lines)} lines for plan {input.plan}")
        return pricer.Invoice(currency=currency, lines=lines, total=sum(line.amount for line in lines))

    def limits(self, config: str, plan: str, plan_snapshot, overrides: str) -> list[pricer.MetricLimit]:
        _, rules = plan_of(config, plan)
        return [
            pricer.MetricLimit(metric=metric, included=rule.get("included", 0), hard_limit=rule.get("hard_limit"),
                               overage_allowed=rule.get("unit_price_micros", 0) > 0)
            for metric, rule in sorted(rules.get("metrics", {}).items())
        ]
