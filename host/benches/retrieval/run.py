#!/usr/bin/env python3
"""Retrieval-quality benchmark for a running memhost, LoCoMo-style.

Stores every turn of the dialogues in corpus/ as one memory (POST
/v1/memories), asks every question (POST /v1/retrieve, filtered to the
question's dialogue) once per retrieval mode, and scores the ranked turns
against the question's evidence turns: recall@1/5/10, MRR and client-side
latency, overall and per category. A plain Okapi BM25 over the same texts is
computed in this script as a baseline. Python 3 stdlib only.

    run.py --key mem_live_... [--url http://127.0.0.1:8080] [--label hashing]
    run.py --key … --locomo locomo10.json [--conversations conv-26,conv-30]
                                   # the public LoCoMo file instead of corpus/
    run.py --check-corpus          # validate corpus/ and print its statistics
    run.py --bm25-only             # the baseline alone, no server needed

See README.md in this directory.
"""

import argparse
import concurrent.futures
import datetime as dt
import json
import math
import os
import re
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CATEGORIES = ("single-hop", "multi-hop", "temporal", "open-domain")
KS = (1, 5, 10)
TOP = 10
NO_MODE = "default (no mode support)"
BM25_ROW = "bm25 (in script)"
BM25_K1, BM25_B = 1.2, 0.75
TURN_ID = re.compile(r"D\d+:\d+")


# ---------------------------------------------------------------- corpus

def load_corpus(path):
    files = sorted(f for f in os.listdir(path) if f.endswith(".json"))
    if not files:
        sys.exit(f"no *.json dialogues in {path}")
    convs = []
    for f in files:
        with open(os.path.join(path, f), encoding="utf-8") as fh:
            convs.append(json.load(fh))
    return convs


LOCOMO_CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}


def load_locomo(path, only=None):
    """The public LoCoMo file (a JSON array of samples: `qa`, and
    `conversation` with `speaker_a`, `speaker_b`, `session_N_date_time` and
    `session_N` turn lists) in this corpus's shape. As the issue's held-out
    run: one memory per turn ("speaker: text"; image captions left out),
    questions of categories 1-4 (5, adversarial, has no evidence to find),
    each with the evidence turns that exist (some ids in the file are
    malformed or point past a session's end); a question left without
    evidence is dropped."""
    with open(path, encoding="utf-8") as fh:
        samples = json.load(fh)
    convs = []
    for n, sample in enumerate(samples):
        cid = sample.get("sample_id") or f"locomo-{n}"
        if only and cid not in only:
            continue
        c = sample["conversation"]
        numbers = sorted(int(k.split("_")[1]) for k in c if re.fullmatch(r"session_\d+", k))
        sessions, known = [], set()
        for i in numbers:
            turns = [{"id": t["dia_id"], "speaker": t["speaker"], "text": t["text"]} for t in c[f"session_{i}"]]
            known.update(t["id"] for t in turns)
            if turns:
                sessions.append({"session": i, "date_time": c.get(f"session_{i}_date_time", ""), "turns": turns})
        questions = []
        for qa in sample["qa"]:
            category = LOCOMO_CATEGORIES.get(qa.get("category"))
            evidence = sorted({e for x in qa.get("evidence", []) for e in TURN_ID.findall(str(x))} & known)
            if category and evidence:
                questions.append({"question": qa["question"], "answer": str(qa.get("answer", "")),
                                  "category": category, "evidence": evidence})
        convs.append({"id": cid, "speakers": [c["speaker_a"], c["speaker_b"]], "sessions": sessions,
                      "questions": questions})
    return convs


def turns_of(conv):
    for s in conv["sessions"]:
        for t in s["turns"]:
            yield s, t


def memory_text(turn):
    """What is stored, and what BM25 indexes: the same string."""
    return f"{turn['speaker']}: {turn['text']}"


def check_corpus(convs):
    """Structural and evidence checks. Returns a list of errors (empty: fine)."""
    errors = []
    seen_convs = set()
    for conv in convs:
        cid = conv.get("id", "?")
        err = lambda msg: errors.append(f"{cid}: {msg}")  # noqa: E731
        if cid in seen_convs:
            err("duplicate dialogue id")
        seen_convs.add(cid)
        speakers = conv.get("speakers", [])
        if len(speakers) != 2:
            err("needs exactly two speakers")
        sessions = conv.get("sessions", [])
        if not 10 <= len(sessions) <= 20:
            err(f"{len(sessions)} sessions, expected 10-20")
        turns = {}
        last = None
        for i, s in enumerate(sessions, 1):
            if s.get("session") != i:
                err(f"session {i} is numbered {s.get('session')}")
            try:
                when = dt.datetime.fromisoformat(s["date_time"])
            except (KeyError, ValueError):
                err(f"session {i}: bad date_time")
                continue
            if last and when <= last:
                err(f"session {i}: dates must increase")
            last = when
            for j, t in enumerate(s.get("turns", []), 1):
                tid = f"D{i}:{j}"
                if t.get("id") != tid:
                    err(f"turn {t.get('id')} should be {tid}")
                if t.get("speaker") not in speakers:
                    err(f"{tid}: unknown speaker {t.get('speaker')!r}")
                if not t.get("text", "").strip():
                    err(f"{tid}: empty text")
                if t.get("date_time") != s["date_time"]:
                    err(f"{tid}: date_time differs from its session's")
                turns[tid] = (t, s)
        if not 300 <= len(turns) <= 500:
            err(f"{len(turns)} turns, expected 300-500")
        questions = conv.get("questions", [])
        if len(questions) < 60:
            err(f"{len(questions)} questions, expected at least 60")
        seen_q = set()
        for n, q in enumerate(questions, 1):
            where = f"question {n} ({q.get('question', '')[:50]!r})"
            if q.get("category") not in CATEGORIES:
                err(f"{where}: category {q.get('category')!r}")
            if not q.get("question", "").strip() or not str(q.get("answer", "")).strip():
                err(f"{where}: empty question or answer")
            if q.get("question") in seen_q:
                err(f"{where}: asked twice")
            seen_q.add(q.get("question"))
            ev = q.get("evidence") or []
            if not ev:
                err(f"{where}: no evidence")
            missing = [e for e in ev if e not in turns]
            if missing:
                err(f"{where}: evidence {missing} does not exist")
                continue
            # The answer is really there: every support string occurs in an
            # evidence turn (its text or its session's date), and every
            # evidence turn holds one.
            support = q.get("support") or []
            if not support:
                err(f"{where}: no support strings to verify the evidence with")
            hay = {e: (memory_text(turns[e][0]) + " | " + turns[e][1]["date_time_text"]).lower() for e in ev}
            for sup in support:
                if not any(sup.lower() in h for h in hay.values()):
                    err(f"{where}: {sup!r} is in none of its evidence turns {ev}")
            for e, h in hay.items():
                if not any(sup.lower() in h for sup in support):
                    err(f"{where}: evidence {e} holds none of {support}")
    return errors


# Only for the overlap statistic of --check-corpus (BM25 uses no stop words).
FUNCTION_WORDS = set("""a about after all also am an and any are as at be been before being but by can
could did do does during each for from had has have he her hers him his how i if in into is it its just
like me more most my of on or our out over she so some than that the their them then there these they
this those to up us was we were what when where which while who whom why will with would you your""".split())


def content_tokens(text, names):
    return {t for t in tokens(text) if t not in FUNCTION_WORDS and t not in names and len(t) > 1}


def corpus_stats(convs):
    by_cat = {c: 0 for c in CATEGORIES}
    turns = questions = sessions = ev_total = cross_session = no_overlap = 0
    overlap = []
    for conv in convs:
        sessions += len(conv["sessions"])
        turns += sum(len(s["turns"]) for s in conv["sessions"])
        text = {t["id"]: memory_text(t) for _, t in turns_of(conv)}
        names = {n.lower() for n in conv["speakers"]}
        for q in conv["questions"]:
            questions += 1
            by_cat[q["category"]] += 1
            ev_total += len(q["evidence"])
            if len({e.split(":")[0] for e in q["evidence"]}) > 1:
                cross_session += 1
            qt = content_tokens(q["question"], names)
            et = set().union(*(content_tokens(text[e], names) for e in q["evidence"] if e in text))
            shared = len(qt & et) / len(qt) if qt else 0.0
            overlap.append(shared)
            no_overlap += not (qt & et)
    return {"dialogues": len(convs), "sessions": sessions, "turns": turns, "questions": questions,
            "per_category": by_cat, "evidence_per_question": round(ev_total / max(questions, 1), 2),
            "questions_with_evidence_across_sessions": cross_session,
            # Lexical overlap of questions with their evidence (content words,
            # speaker names left out): how much keyword matching can find.
            "question_words_found_in_evidence": round(statistics.fmean(overlap), 3) if overlap else None,
            "questions_sharing_no_content_word_with_evidence": no_overlap}


# ------------------------------------------------------------------ BM25

def tokens(text):
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """Plain Okapi BM25: lowercase alphanumeric tokens, no stemming, no stop
    words; idf = ln(1 + (N - df + 0.5) / (df + 0.5)); each distinct query
    term counted once. Only documents sharing a term are ranked; ties keep
    corpus order."""

    def __init__(self, docs):
        self.ids = [d[0] for d in docs]
        self.tf = []
        df = {}
        for _, text in docs:
            counts = {}
            for tok in tokens(text):
                counts[tok] = counts.get(tok, 0) + 1
            self.tf.append(counts)
            for tok in counts:
                df[tok] = df.get(tok, 0) + 1
        self.len = [sum(c.values()) for c in self.tf]
        n = len(docs)
        self.avgdl = sum(self.len) / max(n, 1)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def rank(self, query, k=TOP):
        terms = [t for t in dict.fromkeys(tokens(query)) if t in self.idf]
        scored = []
        for i, counts in enumerate(self.tf):
            s = 0.0
            norm = BM25_K1 * (1 - BM25_B + BM25_B * self.len[i] / self.avgdl)
            for t in terms:
                f = counts.get(t)
                if f:
                    s += self.idf[t] * f * (BM25_K1 + 1) / (f + norm)
            if s > 0:
                scored.append((-s, i))
        scored.sort()
        return [self.ids[i] for _, i in scored[:k]]


# ------------------------------------------------------------------ HTTP

class ApiError(Exception):
    def __init__(self, status, body):
        self.status, self.body = status, body
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.code = err.get("code", "")
        self.message = err.get("message", str(body)[:300])
        self.field = (err.get("details") or {}).get("field", "")
        super().__init__(f"HTTP {status} {self.code}: {self.message}")


class Client:
    def __init__(self, url, key, timeout=120):
        self.url, self.key, self.timeout = url.rstrip("/"), key, timeout
        self.waited_429 = 0.0
        self.lock = threading.Lock()

    def call(self, method, path, body=None):
        """Returns (data, seconds of the successful attempt). Retries 429 after
        Retry-After, and transient failures (503, connection errors) a few
        times; raises ApiError otherwise."""
        data = None if body is None else json.dumps(body).encode()
        transient = 0
        for _ in range(1000):
            req = urllib.request.Request(self.url + path, data=data, method=method)
            req.add_header("Authorization", f"Bearer {self.key}")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                    elapsed = time.perf_counter() - start
                    return json.loads(raw).get("data"), elapsed
            except urllib.error.HTTPError as e:
                raw = e.read()
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = {"error": {"message": raw[:300].decode(errors="replace")}}
                if e.code == 429:
                    wait = e.headers.get("Retry-After")
                    try:
                        wait = float(wait)
                    except (TypeError, ValueError):
                        wait = float(((parsed.get("error") or {}).get("details") or {}).get("retry_after", 1))
                    wait = max(wait, 0.05)
                    with self.lock:
                        self.waited_429 += wait
                    time.sleep(wait)
                    continue
                if e.code in (502, 503, 504) and transient < 5:
                    transient += 1
                    time.sleep(0.5 * 2 ** transient)
                    continue
                raise ApiError(e.code, parsed) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if transient < 5:
                    transient += 1
                    time.sleep(0.5 * 2 ** transient)
                    continue
                raise SystemExit(f"cannot reach {self.url}: {e}")
        raise SystemExit(f"{method} {path}: still rate limited after 1000 attempts")


def list_memories(client, conv_id):
    out, cursor = [], None
    while True:
        q = {"limit": "100", "metadata.conversation": conv_id}
        if cursor:
            q["cursor"] = cursor
        page, _ = client.call("GET", "/v1/memories?" + urllib.parse.urlencode(q))
        out.extend(page.get("memories", []))
        cursor = page.get("next_cursor")
        if not cursor or not page.get("has_more", True):
            return out


def ingest(client, convs, args):
    """Stores every turn; returns {memory id: (dialogue id, turn id)}."""
    id_map = {}
    if args.skip_ingest:
        for conv in convs:
            mems = list_memories(client, conv["id"])
            for m in mems:
                md = m.get("metadata") or {}
                id_map[m["id"]] = (md.get("conversation"), md.get("turn"))
            want = sum(1 for _ in turns_of(conv))
            got = len({md for md in id_map.values() if md[0] == conv["id"]})
            if got != want:
                print(f"warning: {conv['id']}: {got} distinct turns stored, corpus has {want}", file=sys.stderr)
        return id_map, 0.0
    for conv in convs:
        if args.reset:
            client.call("DELETE", "/v1/memories?" + urllib.parse.urlencode(
                {"confirm": "true", "metadata.conversation": conv["id"]}))
        existing, _ = client.call("GET", "/v1/memories?" + urllib.parse.urlencode(
            {"limit": "1", "metadata.conversation": conv["id"]}))
        if existing.get("memories"):
            sys.exit(f"{conv['id']} already has memories in this org: pass --skip-ingest to reuse them "
                     f"or --reset to delete them first")
    # Each dialogue's turns in order, one after another, as a chat client
    # writes them; dialogues in parallel (--concurrency at a time).
    def bodies(conv):
        for s, t in turns_of(conv):
            yield t["id"], {
                "text": memory_text(t),
                "metadata": {"conversation": conv["id"], "session": s["session"], "turn": t["id"],
                             "speaker": t["speaker"], "date": s["date_time"]},
            }
    total = sum(1 for conv in convs for _ in turns_of(conv))
    start = time.perf_counter()
    done = [0]
    lock = threading.Lock()

    def store(conv):
        stored = []
        for tid, body in bodies(conv):
            data, _ = client.call("POST", "/v1/memories", body)
            stored.append((data["id"], conv["id"], tid))
            with lock:
                done[0] += 1
                if done[0] % 250 == 0 or done[0] == total:
                    print(f"  stored {done[0]}/{total} turns", file=sys.stderr)
        return stored

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(args.concurrency, 1)) as pool:
        for stored in pool.map(store, convs):
            for mem_id, conv_id, tid in stored:
                id_map[mem_id] = (conv_id, tid)
    return id_map, time.perf_counter() - start


# --------------------------------------------------------------- scoring

def score_one(ranked, evidence):
    ev = set(evidence)
    out = {f"recall@{k}": len(ev & set(ranked[:k])) / len(ev) for k in KS}
    out["mrr"] = next((1 / (i + 1) for i, t in enumerate(ranked[:TOP]) if t in ev), 0.0)
    return out


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summarize(per_q):
    def mean(rows, key):
        return statistics.fmean(r["scores"][key] for r in rows) if rows else None
    keys = [f"recall@{k}" for k in KS] + ["mrr"]
    overall = {k: mean(per_q, k) for k in keys}
    overall["questions"] = len(per_q)
    cats = {}
    for c in CATEGORIES:
        rows = [r for r in per_q if r["category"] == c]
        cats[c] = {k: mean(rows, k) for k in keys}
        cats[c]["questions"] = len(rows)
    lat = [r["latency_ms"] for r in per_q if r.get("latency_ms") is not None]
    latency = {"p50": percentile(lat, 50), "p95": percentile(lat, 95),
               "mean": statistics.fmean(lat) if lat else None} if lat else None
    return {"overall": overall, "per_category": cats, "latency_ms": latency}


def all_questions(convs):
    for conv in convs:
        for n, q in enumerate(conv["questions"]):
            yield conv, n, q


def run_bm25(convs):
    per_q = []
    for conv in convs:
        index = BM25([(t["id"], memory_text(t)) for _, t in turns_of(conv)])
        for n, q in enumerate(conv["questions"]):
            ranked = index.rank(q["question"])
            per_q.append({"conversation": conv["id"], "index": n, "category": q["category"],
                          "question": q["question"], "evidence": q["evidence"], "ranked": ranked,
                          "scores": score_one(ranked, q["evidence"]), "latency_ms": None})
    return per_q


def retrieve_body(conv, q, mode):
    body = {"context": q["question"], "max_memories": TOP, "relevance_threshold": 0,
            "filters": {"conversation": conv["id"]}}
    if mode is not None:
        body["mode"] = mode
    return body


def mode_unknown(e):
    """A 400 that says the server does not know the `mode` field at all."""
    return e.status == 400 and e.field == "mode" and "unknown field" in e.message


def probe_modes(client, convs, modes):
    """Which requested modes the server takes: ([(row name, mode to send)],
    modes it does not know the field for, mode values it refuses)."""
    conv, _, q = next(all_questions(convs))
    runs, fell_back, refused = [], [], []
    for mode in modes:
        try:
            client.call("POST", "/v1/retrieve", retrieve_body(conv, q, mode))
            runs.append((mode, mode))
        except ApiError as e:
            if mode_unknown(e):
                fell_back.append(mode)
            elif e.status == 400:
                print(f"warning: the server refuses mode {mode!r} ({e.message}); skipping it", file=sys.stderr)
                refused.append(mode)
            else:
                raise
    if fell_back:
        print(f"note: the server does not know `mode` (asked for {', '.join(fell_back)}); "
              f"measuring its default retrieval once as {NO_MODE!r}", file=sys.stderr)
        client.call("POST", "/v1/retrieve", retrieve_body(conv, q, None))
        runs.append((NO_MODE, None))
    return runs, fell_back, refused


def run_server(client, convs, id_map, mode, concurrency):
    stats = {"foreign": 0, "unmapped": 0}
    mode_box = [mode]

    def ask(item):
        conv, n, q = item
        try:
            data, secs = client.call("POST", "/v1/retrieve", retrieve_body(conv, q, mode_box[0]))
        except ApiError as e:
            if mode_box[0] is None or not mode_unknown(e):
                raise
            mode_box[0] = None  # the server stopped knowing `mode`: retry once without
            data, secs = client.call("POST", "/v1/retrieve", retrieve_body(conv, q, None))
        ranked = []
        for m in data.get("memories", []):
            where = id_map.get(m["id"])
            if where is None:
                md = m.get("metadata") or {}
                where = (md.get("conversation"), md.get("turn"))
                stats["unmapped"] += 1
            if where[0] != conv["id"]:
                stats["foreign"] += 1
                continue
            if where[1] not in ranked:
                ranked.append(where[1])
        return {"conversation": conv["id"], "index": n, "category": q["category"], "question": q["question"],
                "evidence": q["evidence"], "ranked": ranked[:TOP], "scores": score_one(ranked, q["evidence"]),
                "latency_ms": secs * 1000}

    items = list(all_questions(convs))
    if concurrency <= 1:
        per_q = [ask(i) for i in items]
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
            per_q = list(pool.map(ask, items))
    if stats["foreign"]:
        print(f"warning: {stats['foreign']} results came from another dialogue despite the filter", file=sys.stderr)
    return per_q, mode_box[0] != mode


# ---------------------------------------------------------------- output

def fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def print_tables(rows, stats):
    print()
    print(f"{stats['dialogues']} dialogues, {stats['turns']} turns, {stats['questions']} questions "
          f"({', '.join(f'{c} {n}' for c, n in stats['per_category'].items())})")
    print()
    print("| run | recall@1 | recall@5 | recall@10 | MRR | p50 ms | p95 ms | questions |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        o, lat = r["summary"]["overall"], r["summary"]["latency_ms"] or {}
        print(f"| {r['name']} | {fmt(o['recall@1'])} | {fmt(o['recall@5'])} | {fmt(o['recall@10'])} | "
              f"{fmt(o['mrr'])} | {fmt(lat.get('p50'), 1)} | {fmt(lat.get('p95'), 1)} | {o['questions']} |")
    print()
    print("recall@5 per category:")
    print()
    counts = rows[0]["summary"]["per_category"] if rows else {}
    print("| run | " + " | ".join(f"{c} ({counts[c]['questions']})" for c in CATEGORIES) + " |")
    print("|---|" + "---:|" * len(CATEGORIES))
    for r in rows:
        cats = r["summary"]["per_category"]
        print(f"| {r['name']} | " + " | ".join(fmt(cats[c]["recall@5"]) for c in CATEGORIES) + " |")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("MEMHOST_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--key", default=os.environ.get("MEMHOST_API_KEY"), help="API key (read and write scopes; "
                    "delete too for --reset); default $MEMHOST_API_KEY")
    ap.add_argument("--modes", default="hybrid,vector,keyword", help="comma list of retrieval modes to ask for")
    ap.add_argument("--label", default="server", help="name of the server's embedder, shown in the table")
    ap.add_argument("--corpus", default=os.path.join(HERE, "corpus"), help="directory of conv-*.json")
    ap.add_argument("--locomo", metavar="FILE", help="the public LoCoMo data file (locomo10.json) instead of --corpus; "
                    "its structure is not checked as the corpus's is")
    ap.add_argument("--conversations", help="with --locomo: comma list of sample ids to use (default all)")
    ap.add_argument("--concurrency", type=int, default=8,
                    help="dialogues ingested at once (each one's turns in order, one at a time)")
    ap.add_argument("--query-concurrency", type=int, default=1,
                    help="retrieve threads (default 1: latencies of one request at a time)")
    ap.add_argument("--skip-ingest", action="store_true", help="reuse the memories already stored")
    ap.add_argument("--reset", action="store_true", help="delete the dialogues' memories before ingesting")
    ap.add_argument("--json-out", metavar="FILE", help="write every number (and each question's ranking) here")
    ap.add_argument("--check-corpus", action="store_true", help="validate the corpus, print statistics, exit")
    ap.add_argument("--bm25-only", action="store_true", help="only the in-script BM25 baseline (no server)")
    args = ap.parse_args()

    if args.locomo:
        only = set(args.conversations.split(",")) if args.conversations else None
        convs = load_locomo(args.locomo, only)
        errors = []
    else:
        convs = load_corpus(args.corpus)
        errors = check_corpus(convs)
    stats = corpus_stats(convs)
    if args.check_corpus:
        for e in errors:
            print("error:", e)
        print(json.dumps(stats, indent=1))
        print("corpus OK" if not errors else f"{len(errors)} error(s)")
        sys.exit(1 if errors else 0)
    if errors:
        sys.exit(f"the corpus has {len(errors)} error(s); run with --check-corpus to see them")

    rows = []
    meta = {"generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "corpus": stats, "label": args.label}
    if not args.bm25_only:
        if not args.key:
            sys.exit("--key (or MEMHOST_API_KEY) is required")
        client = Client(args.url, args.key)
        meta["url"] = args.url
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        print(f"{'finding the stored' if args.skip_ingest else 'ingesting'} {stats['turns']} turns "
              f"({args.url}) ...", file=sys.stderr)
        id_map, secs = ingest(client, convs, args)
        meta["ingest"] = {"memories": len(id_map), "seconds": round(secs, 2), "skipped": args.skip_ingest,
                          "waited_for_429_s": round(client.waited_429, 2)}
        if not args.skip_ingest:
            print(f"  {len(id_map)} memories in {secs:.1f}s", file=sys.stderr)
        runs, fell_back, refused = probe_modes(client, convs, modes)
        meta["modes"] = {"requested": modes, "no_mode_support": fell_back, "refused": refused}
        for name, mode in runs:
            print(f"querying: {name} ...", file=sys.stderr)
            per_q, fell_back = run_server(client, convs, id_map, mode, args.query_concurrency)
            if fell_back:
                name, mode = NO_MODE, None
            rows.append({"name": f"{args.label} / {name}", "mode_requested": None if name == NO_MODE else name,
                         "mode_sent": mode, "summary": summarize(per_q), "questions": per_q})
    per_q = run_bm25(convs)
    rows.append({"name": BM25_ROW, "mode_requested": None, "mode_sent": None, "summary": summarize(per_q),
                 "questions": per_q, "bm25": {"k1": BM25_K1, "b": BM25_B}})
    print_tables(rows, stats)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({**meta, "runs": rows}, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
