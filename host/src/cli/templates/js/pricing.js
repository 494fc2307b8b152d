// A memhost pricing plugin: a base price per plan, units included, the rest
// billed per unit, and hard limits. The config is `config.example.json`.

// WIT `u64`/`s64` are JavaScript Numbers under jco's QuickJS backend (this
// project's `js_backend` in memhost-plugin.toml) and BigInts under
// StarlingMonkey: set BIGINT_U64 to true when you switch backends.
const BIGINT_U64 = false;
const u64 = (n) => (BIGINT_U64 ? BigInt(n) : n);

const NAME = "{{name}}";
const VERSION = "0.1.0";

const CONFIG_SCHEMA = {
  type: "object",
  required: ["plans"],
  additionalProperties: false,
  properties: {
    currency: { type: "string", minLength: 3, maxLength: 3 },
    plans: {
      type: "object",
      additionalProperties: {
        type: "object",
        additionalProperties: false,
        properties: {
          base_micros: { type: "integer", minimum: 0 },
          metrics: {
            type: "object",
            additionalProperties: {
              type: "object",
              additionalProperties: false,
              properties: {
                included: { type: "integer", minimum: 0 },
                unit_price_micros: { type: "integer", minimum: 0 },
                hard_limit: { type: "integer", minimum: 0 },
              },
            },
          },
        },
      },
    },
  },
};

// A deliberate error: throwing it answers `err(plugin-error)`.
class PluginError extends Error {
  constructor(code, message, retryable = false) {
    super(message);
    this.payload = { code, message, retryable };
  }
}

function planOf(config, plan) {
  const cfg = JSON.parse(config || "{}");
  if (!cfg.plans) throw new PluginError("invalid-config", "the config has no plans");
  const rules = cfg.plans[plan];
  if (!rules) throw new PluginError("unknown-plan", `plan \`${plan}\` is not in the config`);
  return [cfg.currency || "USD", rules];
}

export const meta = {
  describe() {
    return { name: NAME, version: VERSION, kind: "pricing", configSchema: JSON.stringify(CONFIG_SCHEMA) };
  },
};

export const pricer = {
  rate(config, input) {
    const [currency, plan] = planOf(config, input.plan);
    const lines = [];
    const base = plan.base_micros || 0;
    if (base > 0) {
      lines.push({ kind: "base", description: `${input.plan} plan`, quantity: u64(0), amount: u64(base) });
    }
    const metrics = plan.metrics || {};
    for (const usage of input.usage) {
      const rule = metrics[usage.metric];
      if (!rule) continue;
      const quantity = Number(usage.quantity);
      const included = rule.included || 0;
      const billable = Math.max(0, quantity - included);
      const price = rule.unit_price_micros || 0;
      if (billable > 0 && price > 0) {
        lines.push({
          kind: "usage",
          metric: usage.metric,
          description: `${billable} ${usage.metric} over the ${included} included`,
          quantity: u64(billable),
          amount: u64(billable * price),
        });
      }
    }
    const total = lines.reduce((sum, line) => sum + Number(line.amount), 0);
    return { currency, lines, total: u64(total) };
  },

  limits(config, plan, planSnapshot, overrides) {
    const [, rules] = planOf(config, plan);
    return Object.keys(rules.metrics || {})
      .sort()
      .map((metric) => {
        const rule = rules.metrics[metric];
        return {
          metric,
          included: u64(rule.included || 0),
          hardLimit: rule.hard_limit === undefined ? undefined : u64(rule.hard_limit),
          overageAllowed: (rule.unit_price_micros || 0) > 0,
        };
      });
  },
};
