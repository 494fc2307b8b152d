# Reference all-MiniLM-L6-v2 forward in numpy (HF BertModel + mean pooling + L2 norm).
import json, sys, numpy as np
from tokenizers import Tokenizer
from safetensors.numpy import load_file
D = sys.argv[1]
tok = Tokenizer.from_file(D + "/tokenizer.json")
tok.no_padding(); tok.enable_truncation(256)
W = load_file(D + "/model.safetensors")
def ln(x, p):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-12) * W[p + ".weight"] + W[p + ".bias"]
def lin(x, p): return x @ W[p + ".weight"].T + W[p + ".bias"]
from math import erf
verf = np.vectorize(erf)
def gelu(x): return 0.5 * x * (1 + verf(x / np.sqrt(2)))
def embed(text):
    ids = tok.encode(text).ids
    n = len(ids)
    x = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:n] + W["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    for l in range(6):
        p = f"encoder.layer.{l}."
        q = lin(x, p + "attention.self.query").reshape(n, 12, 32).transpose(1, 0, 2)
        k = lin(x, p + "attention.self.key").reshape(n, 12, 32).transpose(1, 0, 2)
        v = lin(x, p + "attention.self.value").reshape(n, 12, 32).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(32)
        s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, 384)
        x = ln(lin(a, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = gelu(lin(x, p + "intermediate.dense"))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    e = x.mean(0)
    return ids, e / np.linalg.norm(e)
texts = json.load(open(sys.argv[2]))
out = []
for t in texts:
    ids, e = embed(t)
    out.append({"text": t, "ids": ids, "embedding": [round(float(v), 6) for v in e]})
json.dump(out, open(sys.argv[3], "w"))
E = np.array([o["embedding"] for o in out])
print(np.round(E @ E.T, 4))
