"""A memhost alert channel: POSTs each alert as JSON to the config's `url`
(the server must allow its host in `plugins.http_allow_hosts`)."""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import notifier
from wit_world.imports import http_outbound, types

NAME, VERSION = "{{name}}", "0.1.0"

CONFIG_SCHEMA = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": {"url": {"type": "string", "pattern": "^https?://"}},
}


def fail(code: str, message: str, retryable: bool):
    return Err(types.PluginError(code=code, message=message, retryable=retryable))


class Meta(exports.Meta):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name=NAME, version=VERSION, kind=types.PluginKind.ALERT_CHANNEL, config_schema=json.dumps(CONFIG_SCHEMA)
        )


class Notifier(exports.Notifier):
    def deliver(self, config: str, alert: notifier.Alert) -> None:
        url = json.loads(config or "{}").get("url")
        if not url:
            raise fail("invalid-config", "the config needs a `url`", False)
        body = json.dumps({
            "id": alert.id, "org_id": alert.org_id, "rule": alert.rule, "severity": alert.severity.name.lower(),
            "title": alert.title, "message": alert.message, "data": json.loads(alert.data or "{}"),
            "occurred_at": alert.occurred_at,
        }).encode()
        request = http_outbound.Request(method="POST", url=url, headers=[("content-type", "application/json")],
                                        body=body)
        try:
            response = http_outbound.send(request)
        except Err as e:
            raise fail("network", str(e.value), True)
        if 200 <= response.status < 300:
            return
        raise fail("http", f"status {response.status}", response.status == 429 or response.status >= 500)
