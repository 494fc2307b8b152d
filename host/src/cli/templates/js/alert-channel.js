// A memhost alert channel: POSTs each alert as JSON to the config's `url`
// (the server must allow its host in `plugins.http_allow_hosts`).
import { send } from "memhost:plugin/http-outbound@0.2.0";

const NAME = "{{name}}";
const VERSION = "0.1.0";

const CONFIG_SCHEMA = {
  type: "object",
  required: ["url"],
  additionalProperties: false,
  properties: { url: { type: "string", pattern: "^https?://" } },
};

class PluginError extends Error {
  constructor(code, message, retryable = false) {
    super(message);
    this.payload = { code, message, retryable };
  }
}

// UTF-8 bytes of a string. QuickJS has no TextEncoder (StarlingMonkey does).
function utf8(text) {
  const bytes = [];
  for (const ch of text) {
    const c = ch.codePointAt(0);
    if (c < 0x80) bytes.push(c);
    else if (c < 0x800) bytes.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else bytes.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return new Uint8Array(bytes);
}

export const meta = {
  describe() {
    return { name: NAME, version: VERSION, kind: "alert-channel", configSchema: JSON.stringify(CONFIG_SCHEMA) };
  },
};

export const notifier = {
  deliver(config, alert) {
    const url = JSON.parse(config || "{}").url;
    if (!url) throw new PluginError("invalid-config", "the config needs a `url`");
    const body = JSON.stringify({
      id: alert.id,
      org_id: alert.orgId,
      rule: alert.rule,
      severity: alert.severity,
      title: alert.title,
      message: alert.message,
      data: JSON.parse(alert.data || "{}"),
      occurred_at: alert.occurredAt,
    });
    let response;
    try {
      response = send({
        method: "POST",
        url,
        headers: [["content-type", "application/json"]],
        body: utf8(body),
      });
    } catch (e) {
      throw new PluginError("network", String(e.payload ?? e), true);
    }
    if (response.status >= 200 && response.status < 300) return;
    const retryable = response.status === 429 || response.status >= 500;
    throw new PluginError("http", `status ${response.status}`, retryable);
  },
};
