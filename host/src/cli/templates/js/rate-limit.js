// A memhost rate-limit plugin: one per-minute limit per key, by plan. The
// config is `config.example.json`. (QuickJS backend: `u64` are Numbers.)

// WIT `u64`/`s64` are JavaScript Numbers under jco's QuickJS backend (this
// project's `js_backend` in memhost-plugin.toml) and BigInts under
// StarlingMonkey: set BIGINT_U64 to true when you switch backends.
const BIGINT_U64 = false;
const u64 = (n) => (BIGINT_U64 ? BigInt(n) : n);

const NAME = "{{name}}";
const VERSION = "0.1.0";

const CONFIG_SCHEMA = {
  type: "object",
  additionalProperties: false,
  properties: {
    per_minute: { type: "object", additionalProperties: { type: "integer", minimum: 1 } },
    default_per_minute: { type: "integer", minimum: 1 },
  },
};

export const meta = {
  describe() {
    return { name: NAME, version: VERSION, kind: "rate-limit", configSchema: JSON.stringify(CONFIG_SCHEMA) };
  },
};

export const limiter = {
  rules(config, request) {
    const cfg = JSON.parse(config || "{}");
    const perMinute = cfg.per_minute || {};
    const limit = perMinute[request.plan] ?? cfg.default_per_minute ?? 10;
    return [
      { name: "per-minute", scope: "key", algorithm: "sliding-window", limit: u64(limit), windowMs: u64(60000), burst: u64(0), cost: u64(1) },
    ];
  },
};
