#!/usr/bin/env python3
"""Builds corpus/conv-*.json from the hand-written material in material/.

Deterministic (seeded; Python 3 stdlib only): rerunning it rewrites the same
bytes. The JSON files are the checked-in artifact; this script is how they
were made and how to change them (edit material/, rerun, then
`run.py --check-corpus`).

material/conv-N.txt (one dialogue):

    @dialogue conv-1
    @speakers Maria | Tom
    @seed 101
    @session 2023-01-08 19:05
    Maria: a hand-written turn. #label1 #label2
    Tom: the reply.
                                  <- a blank line ends a block; the generic
    Tom: another block.              chit-chat of filler.txt is inserted only
                                     between blocks, never inside one
    @questions
    single-hop | question? | short answer | label1, label2 | support1; support2

Turns are labelled with #words; a question's evidence is the turns of its
labels. `support` strings are what `run.py --check-corpus` verifies: every
string occurs (case-insensitively) in the text or session date of one of the
evidence turns, and every evidence turn holds at least one of them.

Each session gets an opener and a closer exchange and is padded with filler
exchanges to a length drawn between @session_turns (default 20-28).
"""

import datetime as dt
import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MATERIAL = os.path.join(HERE, "material")
CORPUS = os.path.join(HERE, "corpus")
CATEGORIES = ("single-hop", "multi-hop", "temporal", "open-domain")
MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]


def season(d):
    return {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
            6: "summer", 7: "summer", 8: "summer"}.get(d.month, "autumn")


def date_text(d):
    """LoCoMo's style: '7:05 pm on 8 January, 2023'."""
    hour = d.hour % 12 or 12
    ampm = "am" if d.hour < 12 else "pm"
    return f"{hour}:{d.minute:02d} {ampm} on {d.day} {MONTHS[d.month - 1]}, {d.year}"


def parse_filler(path):
    kinds = {"opener": [], "closer": [], "exchange": []}
    current = None
    for raw in open(path, encoding="utf-8"):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@"):
            kind = line[1:].strip()
            if kind not in kinds:
                sys.exit(f"{path}: unknown block @{kind}")
            current = []
            kinds[kind].append(current)
            continue
        role, _, text = line.partition(":")
        if role not in ("A", "B") or current is None:
            sys.exit(f"{path}: bad line {line!r}")
        current.append((role, text.strip()))
    return kinds


def parse_dialogue(path):
    d = {"sessions": [], "questions": [], "seed": 0, "session_turns": (20, 28)}
    section = None
    block = None
    for n, raw in enumerate(open(path, encoding="utf-8"), 1):
        line = raw.rstrip("\n")
        where = f"{path}:{n}"
        if line.startswith("#"):
            continue
        if line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            value = value.strip()
            if key == "dialogue":
                d["id"] = value
            elif key == "speakers":
                d["speakers"] = [s.strip() for s in value.split("|")]
            elif key == "seed":
                d["seed"] = int(value)
            elif key == "session_turns":
                lo, hi = value.split("-")
                d["session_turns"] = (int(lo), int(hi))
            elif key == "session":
                when = dt.datetime.strptime(value, "%Y-%m-%d %H:%M")
                d["sessions"].append({"date": when, "blocks": []})
                section, block = "session", None
            elif key == "questions":
                section = "questions"
            else:
                sys.exit(f"{where}: unknown directive @{key}")
            continue
        if not line.strip():
            block = None
            continue
        if section == "session":
            speaker, sep, text = line.partition(":")
            if not sep or speaker not in d["speakers"]:
                sys.exit(f"{where}: turn must start with a speaker name: {line!r}")
            labels = re.findall(r"(?:^|\s)#([\w-]+)", text)
            text = re.sub(r"\s+#[\w-]+", "", text).strip()
            if block is None:
                block = []
                d["sessions"][-1]["blocks"].append(block)
            block.append({"speaker": speaker, "text": text, "labels": labels})
        elif section == "questions":
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 5:
                sys.exit(f"{where}: a question has 5 |-separated fields: {line!r}")
            category, question, answer, labels, support = parts
            if category not in CATEGORIES:
                sys.exit(f"{where}: unknown category {category!r}")
            d["questions"].append({
                "category": category, "question": question, "answer": answer,
                "labels": [l.strip() for l in labels.split(",") if l.strip()],
                "support": [s.strip() for s in support.split(";") if s.strip()],
                "where": where,
            })
        else:
            sys.exit(f"{where}: text outside a session or the questions")
    return d


class FillerDeck:
    """Draws filler blocks without replacement (reshuffling when empty)."""

    def __init__(self, blocks, rng):
        self.blocks, self.rng, self.deck = blocks, rng, []

    def draw(self, parity=None):
        if not self.deck:
            self.deck = list(range(len(self.blocks)))
            self.rng.shuffle(self.deck)
        if parity is not None:
            for i, b in enumerate(self.deck):
                if len(self.blocks[b]) % 2 == parity:
                    return self.blocks[self.deck.pop(i)]
        return self.blocks[self.deck.pop()]


def cast(block, first, other, slots):
    """A filler block spoken with role A = first."""
    names = {"A": first, "B": other}
    out = []
    for role, text in block:
        speaker = names[role]
        out.append({"speaker": speaker, "text": text.format(A=first, B=other, **slots), "labels": []})
    return out


def build(d, filler):
    rng = random.Random(d["seed"])
    decks = {k: FillerDeck(v, rng) for k, v in filler.items()}
    a, b = d["speakers"]
    other = {a: b, b: a}
    sessions = []
    label_ids = {}
    for s_no, sess in enumerate(d["sessions"], 1):
        when = sess["date"]
        slots = {"season": season(when), "weekday": when.strftime("%A"),
                 "daypart": "morning" if when.hour < 12 else "afternoon" if when.hour < 18 else "evening"}
        blocks = sess["blocks"]
        written = sum(len(bl) for bl in blocks)
        lo, hi = d["session_turns"]
        target = max(rng.randint(lo, hi), written + 4)
        # Gaps: before block i (i >= 1). Filler goes into randomly chosen gaps.
        gaps = {i: [] for i in range(1, len(blocks))}
        first_speaker = blocks[0][0]["speaker"]
        opener = cast(decks["opener"].draw(), first_speaker, other[first_speaker], slots)
        last_speaker = blocks[-1][-1]["speaker"]
        closer = cast(decks["closer"].draw(), other[last_speaker], last_speaker, slots)
        count = written + len(opener) + len(closer)
        while count < target and gaps:
            i = rng.choice(sorted(gaps))
            prev = gaps[i][-1]["speaker"] if gaps[i] else blocks[i - 1][-1]["speaker"]
            nxt = blocks[i][0]["speaker"]
            # Alternate speakers: start with whoever did not speak last and,
            # if possible, end with whoever does not speak next.
            parity = 0 if other[prev] == nxt else 1
            ex = cast(decks["exchange"].draw(parity), other[prev], prev, slots)
            gaps[i].extend(ex)
            count += len(ex)
        turns = list(opener)
        for i, bl in enumerate(blocks):
            turns.extend(gaps.get(i, []))
            turns.extend(bl)
        turns.extend(closer)
        out_turns = []
        for t_no, t in enumerate(turns, 1):
            tid = f"D{s_no}:{t_no}"
            for label in t["labels"]:
                if label in label_ids:
                    sys.exit(f"{d['id']}: label #{label} used twice")
                label_ids[label] = tid
            out_turns.append({"id": tid, "speaker": t["speaker"], "text": t["text"],
                              "date_time": when.isoformat()})
        sessions.append({"session": s_no, "date_time": when.isoformat(),
                         "date_time_text": date_text(when), "turns": out_turns})
    questions = []
    for q in d["questions"]:
        missing = [l for l in q["labels"] if l not in label_ids]
        if missing:
            sys.exit(f"{q['where']}: unknown evidence label(s) {missing}")
        ev = sorted({label_ids[l] for l in q["labels"]},
                    key=lambda t: tuple(int(x) for x in t[1:].split(":")))
        questions.append({"question": q["question"], "answer": q["answer"],
                          "category": q["category"], "evidence": ev, "support": q["support"]})
    unused = set(label_ids) - {l for q in d["questions"] for l in q["labels"]}
    if unused:
        print(f"{d['id']}: note: labels not used by any question: {sorted(unused)}", file=sys.stderr)
    return {"id": d["id"], "speakers": d["speakers"], "sessions": sessions, "questions": questions}


def main():
    filler = parse_filler(os.path.join(MATERIAL, "filler.txt"))
    os.makedirs(CORPUS, exist_ok=True)
    names = sorted(f for f in os.listdir(MATERIAL) if re.fullmatch(r"conv-\d+\.txt", f))
    for name in names:
        d = parse_dialogue(os.path.join(MATERIAL, name))
        conv = build(d, filler)
        path = os.path.join(CORPUS, d["id"] + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(conv, f, indent=1, ensure_ascii=False)
            f.write("\n")
        turns = sum(len(s["turns"]) for s in conv["sessions"])
        print(f"{path}: {len(conv['sessions'])} sessions, {turns} turns, {len(conv['questions'])} questions")


if __name__ == "__main__":
    main()
