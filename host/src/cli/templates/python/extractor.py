"""A memhost extractor: remembers every user sentence that starts with one of
the config's `prefixes` (default "I ") and is not already remembered."""
import json
import re

from wit_world import exports
from wit_world.exports import extraction
from wit_world.imports import types

NAME, VERSION = "{{name}}", "0.1.0"

CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "prefixes": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
    },
}


class Meta(exports.Meta):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name=NAME, version=VERSION, kind=types.PluginKind.EXTRACTOR, config_schema=json.dumps(CONFIG_SCHEMA)
        )


class Extraction(exports.Extraction):
    def extract(self, config: str, input: extraction.ExtractInput) -> list[extraction.MemoryOp]:
        prefixes = tuple(json.loads(config or "{}").get("prefixes", ["I "]))
        known = {m.text for m in input.existing}
        ops = []
        for turn in input.turns:
            if turn.role != "user":
                continue
            for sentence in re.split(r"[.!?]", turn.content):
                sentence = sentence.strip()
                text = sentence + "."
                if sentence.startswith(prefixes) and text not in known:
                    known.add(text)
                    ops.append(extraction.MemoryOp_Add(extraction.NewMemory(text=text, metadata="{}")))
        return ops
