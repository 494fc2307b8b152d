// A memhost extractor: remembers every user sentence that starts with one
// of the config's `prefixes` (default "I ") and is not already remembered.

const NAME = "{{name}}";
const VERSION = "0.1.0";

const CONFIG_SCHEMA = {
  type: "object",
  additionalProperties: false,
  properties: {
    prefixes: { type: "array", minItems: 1, items: { type: "string", minLength: 1 } },
  },
};

export const meta = {
  describe() {
    return { name: NAME, version: VERSION, kind: "extractor", configSchema: JSON.stringify(CONFIG_SCHEMA) };
  },
};

export const extraction = {
  extract(config, input) {
    const prefixes = JSON.parse(config || "{}").prefixes || ["I "];
    const known = new Set(input.existing.map((m) => m.text));
    const ops = [];
    for (const turn of input.turns) {
      if (turn.role !== "user") continue;
      for (const part of turn.content.split(/[.!?]/)) {
        const sentence = part.trim();
        const text = `${sentence}.`;
        if (prefixes.some((p) => sentence.startsWith(p)) && !known.has(text)) {
          known.add(text);
          ops.push({ tag: "add", val: { text, metadata: "{}" } });
        }
      }
    }
    return ops;
  },
};
