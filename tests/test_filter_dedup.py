"""DedupFilter on real frames: exact and near duplicates across sources, the kept row named,
the embedded sample's planted pairs, precision on non-duplicates, determinism across runs,
chunkings and processes, a datasketch cross-check, and weird input."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curation.filters.base import FINDINGS, Batch, Policy
from curation.filters.dedup import (
    EMPTY,
    DedupFilter,
    band_pairs,
    components,
    lsh_params,
    normalise,
    one_permutation,
    shift_order,
    splitmix64,
    splitmix_stream,
    word_hashes,
)
from curation.ingest import ReadOptions
from curation.readers.flan import read_flan
from curation.readers.generic import read_jsonl
from curation.readers.oasst import read_oasst
from curation.schema import CONVERSATIONS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"


def conversations(*convs: dict) -> pl.DataFrame:
    rows = [
        {
            "id": c["id"],
            "source": c.get("source", "test"),
            "source_id": c["id"],
            "lang": "en",
            "messages": [{"role": r, "content": t} for r, t in c["messages"]],
            "meta": "{}",
            "provenance": {"file": "test", "line": i + 1, "ids": []},
        }
        for i, c in enumerate(convs)
    ]
    return pl.DataFrame(rows, schema=CONVERSATIONS)


def qa(row_id: str, prompt: str, answer: str, **extra) -> dict:
    return {"id": row_id, "messages": [("user", prompt), ("assistant", answer)], **extra}


def run(dedup: DedupFilter, frame: pl.DataFrame) -> pl.DataFrame:
    ledger = dedup(Batch.from_conversations(frame)).ledger
    assert ledger.schema == FINDINGS
    return ledger


def by_row(ledger: pl.DataFrame) -> dict[str, dict]:
    return {r["row_id"]: r for r in ledger.to_dicts()}


def at_line(frame: pl.DataFrame, line: int) -> str:
    return frame.filter(pl.col("provenance").struct.field("line") == line)["id"].item()


def random_text(rng: random.Random, words: int, vocab: int = 5000) -> str:
    return " ".join(f"w{rng.randrange(vocab)}" for _ in range(words))


def edit(rng: random.Random, text: str, changes: int, vocab: int = 5000) -> str:
    words = text.split()
    for pos in rng.sample(range(len(words)), changes):
        words[pos] = f"x{rng.randrange(vocab)}"
    return " ".join(words)


def shingle_jaccard(a: str, b: str, dedup: DedupFilter | None = None) -> float:
    """The filter's shingle rules in plain Python: the truth its estimate is checked against."""
    dedup = dedup or DedupFilter()
    norm = pl.Series([a, b]).to_frame("t").select(normalise(pl.col("t")))["t"].to_list()

    def shingles(t: str) -> set:
        w = t.split(" ")
        if len(w) >= dedup.min_words():
            return {tuple(w[i : i + dedup.shingle]) for i in range(len(w) - dedup.shingle + 1)}
        n = dedup.char_shingle
        return {t[i : i + n] for i in range(max(1, len(t) - n + 1))}

    sa, sb = shingles(norm[0]), shingles(norm[1])
    return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def flan() -> pl.DataFrame:
    return read_flan([SAMPLES / "flan.jsonl"], ReadOptions()).conversations


@pytest.fixture(scope="module")
def oasst() -> pl.DataFrame:
    return read_oasst([SAMPLES / "oasst_trees.jsonl"], ReadOptions()).conversations


# --- exact ------------------------------------------------------------------------------------


def test_exact_duplicate_in_flan_keeps_the_first_and_names_it(flan):
    first, second = at_line(flan, 47), at_line(flan, 114)
    rows = by_row(run(DedupFilter(near=False), flan))
    assert first not in rows
    assert rows[second]["rule"] == "duplicate.exact"
    assert rows[second]["verdict"] == "drop"
    assert rows[second]["reason"] == f"exact duplicate of {first} (same normalised text)"
    assert rows[second]["score"] == 1.0
    assert len(rows) == 1


def test_exact_duplicates_across_sources(flan):
    """The same FLAN rows arriving again from another source (a mirror with its own ids) are
    dropped, each naming the first occurrence, which is in the first source."""
    mirror = flan.with_columns(pl.lit("mirror").alias("source"), (pl.col("id") + "m").alias("id"))
    frame = pl.concat([flan, mirror])
    rows = by_row(run(DedupFilter(near=False), frame))
    first_of_114 = at_line(flan, 47)
    for original in flan["id"]:
        row = rows[original + "m"]
        expected = first_of_114 if original == at_line(flan, 114) else original
        assert row["reason"] == f"exact duplicate of {expected} (same normalised text)"
    assert set(rows) == {i + "m" for i in flan["id"]} | {at_line(flan, 114)}


def test_normalised_key_sees_through_case_punctuation_and_spacing():
    frame = conversations(
        qa("a", "What is the capital of France?", "Paris."),
        qa("b", "what is the capital of france", "paris"),
        qa("c", "WHAT   is the capital, of France?!\n", "  Paris!"),
        qa("d", "What is the capital of France? Paris.", ""),  # turns split differently
        qa("e", "What is 2 + 2?", "4"),
        qa("f", "What is 2 - 2?", "4"),  # "+" is a symbol and stays; "-" is punctuation
    )
    rows = by_row(run(DedupFilter(near=False), frame))
    assert set(rows) == {"b", "c"}
    assert all("duplicate of a " in rows[r]["reason"] for r in ("b", "c"))


def test_exact_key_ignores_system_turns_but_not_roles():
    frame = conversations(
        {"id": "a", "messages": [("system", "Be terse."), ("user", "Hi"), ("assistant", "Hello")]},
        {"id": "b", "messages": [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello")]},
        {"id": "c", "messages": [("user", "Hi"), ("user", "Hello")]},
    )
    rows = by_row(run(DedupFilter(near=False), frame))
    assert set(rows) == {"b"}


# --- near: the embedded sample's pairs ---------------------------------------------------------


def test_sample_near_pairs_are_judged_by_their_real_similarity(flan, oasst):
    """README: flan 86/91 ("What's the largest planet in the solar system?" / "What is the
    largest planet in our solar system?") and oasst 16/22 are near-duplicate prompts. At 14-15
    words they are shingled by characters; flan's pair has true Jaccard 0.74, just above the
    default 0.7. The one-permutation estimate at seed 0 is 0.80 (over seeds 0-11 its mean is
    0.737, standard deviation 0.027, smallest 0.703; the 128-permutation MinHash this replaced
    landed at 0.70 for seed 0, a hair below): reported at 0.7, not at 0.85. OASST's pair has the
    same question but different answers (Jaccard 0.12): never a duplicate."""
    f86, f91 = at_line(flan, 86), at_line(flan, 91)
    texts = {
        r["id"]: " ".join(m["content"] for m in r["messages"]) for r in flan.iter_rows(named=True)
    }
    assert shingle_jaccard(texts[f86], texts[f91]) == pytest.approx(0.74, abs=0.01)
    rows = by_row(run(DedupFilter(), flan))
    assert rows[f91]["rule"] == "duplicate.near"
    assert rows[f91]["reason"] == f"near duplicate of {f86} (estimated Jaccard 0.8)"
    assert rows[f91]["score"] == pytest.approx(0.74, abs=0.1)
    assert f91 not in by_row(run(DedupFilter(threshold=0.85), flan))

    o16, o22 = at_line(oasst, 16), at_line(oasst, 22)
    for threshold in (0.7, 0.5):
        assert not {o16, o22} & set(run(DedupFilter(threshold=threshold), oasst)["row_id"])


def test_answer_guard_keeps_templated_tasks_apart(flan):
    """NIv2 rows share a long definition and differ in a one-word input and answer ("early" ->
    "late", "full" -> "empty"): word 3-gram Jaccard 0.75 over prompt and answer. Only the
    answer guard keeps them apart."""
    antonyms = flan.filter(
        pl.col("messages").list.first().struct.field("content").str.contains("opposite meaning")
    )
    assert antonyms.height >= 5
    assert run(DedupFilter(), antonyms).is_empty()
    unguarded = run(DedupFilter(answer_threshold=None), antonyms)
    assert unguarded.height >= antonyms.height // 2


# --- near: planted pairs, precision, clusters --------------------------------------------------


def test_planted_near_duplicates_found_and_kept_row_named():
    rng = random.Random(1)
    originals = [qa(f"o{i}", random_text(rng, 60), random_text(rng, 20)) for i in range(50)]
    copies = []
    for i in range(0, 50, 5):  # two words of eighty changed: Jaccard about 0.86
        prompt, answer = originals[i]["messages"][0][1], originals[i]["messages"][1][1]
        copies.append(qa(f"n{i}", edit(rng, prompt, 2), answer))
    frame = conversations(*originals, *copies)
    rows = by_row(run(DedupFilter(), frame))
    assert set(rows) == {c["id"] for c in copies}
    for copy in copies:
        kept = "o" + copy["id"][1:]
        row = rows[copy["id"]]
        assert row["rule"] == "duplicate.near"
        assert row["reason"].startswith(f"near duplicate of {kept} (estimated Jaccard 0.")
        truth = shingle_jaccard(
            " ".join(t for _, t in copy["messages"]),
            " ".join(t for _, t in originals[int(copy["id"][1:])]["messages"]),
        )
        assert row["score"] == pytest.approx(truth, abs=0.15)


def test_non_duplicates_are_not_merged():
    """Precision: 3000 random conversations, many sharing a prompt template or an answer."""
    rng = random.Random(2)
    template = "Read the passage and answer the question that follows it in one word. "
    convs = []
    for i in range(3000):
        kind = i % 3
        if kind == 0:
            convs.append(qa(f"r{i}", random_text(rng, 40), random_text(rng, 15)))
        elif kind == 1:  # shared template, own passage
            convs.append(qa(f"r{i}", template + random_text(rng, 12), random_text(rng, 1)))
        else:  # the same one-word answer, own question
            convs.append(qa(f"r{i}", random_text(rng, 10), "yes"))
    assert run(DedupFilter(), conversations(*convs)).is_empty()


def test_exact_pass_runs_first_and_near_names_the_kept_row():
    rng = random.Random(3)
    base = qa("a", random_text(rng, 60), random_text(rng, 10))
    prompt, answer = base["messages"][0][1], base["messages"][1][1]
    frame = conversations(
        base,
        qa("b", prompt.upper(), answer),  # exact copy of a
        qa("c", edit(rng, prompt, 1), answer),  # near copy of a (and of b)
    )
    rows = by_row(run(DedupFilter(), frame))
    assert rows["b"]["rule"] == "duplicate.exact"
    assert rows["c"]["rule"] == "duplicate.near"
    assert rows["c"]["reason"].startswith("near duplicate of a ")
    assert len(rows) == 2  # b is reported once, as exact


def test_chained_cluster_names_the_first_row_and_the_link():
    """a ~ b ~ c with a and c further apart than the threshold: one cluster kept at a."""
    rng = random.Random(4)
    words = random_text(rng, 200).split()
    a = " ".join(words)
    b = " ".join(words[:178] + [f"y{i}" for i in range(22)])
    c = " ".join(words[:156] + [f"y{i}" for i in range(44)])
    assert shingle_jaccard(a, b) > 0.75 and shingle_jaccard(b, c) > 0.75
    assert shingle_jaccard(a, c) < 0.65
    frame = conversations(qa("a", a, "ok"), qa("b", b, "ok"), qa("c", c, "ok"))
    rows = by_row(run(DedupFilter(), frame))
    assert set(rows) == {"b", "c"}
    assert rows["c"]["reason"].startswith("near duplicate of a (estimated Jaccard 0.")
    assert "linked through b" in rows["c"]["reason"]
    assert rows["c"]["score"] < 0.7 <= rows["b"]["score"]


def test_policies_per_pass_and_source():
    rng = random.Random(5)
    prompt, answer = random_text(rng, 60), random_text(rng, 10)
    frame = conversations(
        qa("a", prompt, answer),
        qa("b", prompt, answer, source="flan"),
        qa("c", edit(rng, prompt, 1), answer, source="flan"),
        qa("d", edit(rng, prompt, 1), answer, source="oasst"),
    )
    dedup = DedupFilter(
        policy=Policy("drop"), near_policy=Policy("drop", per_source={"flan": "flag"})
    )
    verdicts = {r: v["verdict"] for r, v in by_row(run(dedup, frame)).items()}
    assert verdicts == {"b": "drop", "c": "flag", "d": "drop"}
    # A YAML config can only give a verdict string.
    verdicts = {
        r: v["verdict"] for r, v in by_row(run(DedupFilter(near_policy="flag"), frame)).items()
    }
    assert verdicts == {"b": "drop", "c": "flag", "d": "flag"}
    with pytest.raises(ValueError):
        DedupFilter(near_policy="delete")


# --- determinism ------------------------------------------------------------------------------


def sample_frame() -> pl.DataFrame:
    parts = [
        read_flan([SAMPLES / "flan.jsonl"], ReadOptions()),
        read_flan([SAMPLES / "synthetic_flan.jsonl"], ReadOptions(source="synthetic_flan")),
        read_oasst([SAMPLES / "oasst_trees.jsonl"], ReadOptions()),
        read_jsonl([SAMPLES / "synthetic_chat.jsonl"], ReadOptions(source="synthetic_chat")),
    ]
    rng = random.Random(6)
    planted = []
    for i in range(40):
        prompt = random_text(rng, 50)
        planted += [qa(f"p{i}", prompt, "ok"), qa(f"q{i}", edit(rng, prompt, 1), "ok")]
    return pl.concat([p.conversations for p in parts] + [conversations(*planted)])


def test_same_verdicts_across_runs_chunkings_and_threads():
    frame = sample_frame()
    reference = run(DedupFilter(), frame)
    assert reference.filter(pl.col("rule") == "duplicate.near").height >= 40
    assert run(DedupFilter(), frame).equals(reference)
    assert run(DedupFilter(chunk_rows=7, threads=1), frame).equals(reference)
    assert run(DedupFilter(chunk_rows=100_000, threads=3), frame).equals(reference)


def test_signatures_are_the_same_in_another_process():
    """No Python hash(): a fresh interpreter with another PYTHONHASHSEED gives the same
    signatures and word hashes, and they match the values pinned here."""
    code = (
        "import json, polars as pl\n"
        "from curation.filters.dedup import DedupFilter, word_hashes\n"
        "t = pl.DataFrame({'text': ['the quick brown fox jumps over the lazy dog', 'ab']})\n"
        "s = DedupFilter().signatures(t)\n"
        "print(json.dumps([s[:4].tolist(), [int(h) for h in word_hashes(['hello', 'é'])]]))"
    )
    results = []
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        )
        results.append(json.loads(done.stdout))
    assert results[0] == results[1]
    here = DedupFilter().signatures(
        pl.DataFrame({"text": ["the quick brown fox jumps over the lazy dog", "ab"]})
    )
    assert results[0][0] == here[:4].tolist()
    assert results[0][1] == [int(h) for h in word_hashes(["hello", "é"])]
    assert results[0][1] == PINNED_WORD_HASHES


# Pinned: a change here changes every verdict that depends on near-duplicate detection, and
# should be a deliberate, documented one. Changed with the move to one-permutation MinHash
# (which changed every near verdict anyway): words are hashed from their UTF-8 bytes in 8-byte
# blocks, read straight from the texts' Arrow buffers, instead of a polynomial over code points
# (was [11701543417060715223, 16367853663313409170]).
PINNED_WORD_HASHES = [15883307105708941207, 12213114911819052007]


# --- cross-check against datasketch -----------------------------------------------------------


def test_candidates_agree_with_datasketch():
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(7)
    texts = [random_text(rng, rng.randint(30, 80), vocab=3000).split() for _ in range(300)]
    for _ in range(200):
        source = list(texts[rng.randrange(300)])
        rate = rng.choice([0.02, 0.05, 0.1, 0.2])
        texts.append([f"w{rng.randrange(3000)}" if rng.random() < rate else w for w in source])
    dedup = DedupFilter()
    bands, rows = dedup.banding()
    sig = dedup.signatures(pl.DataFrame({"text": [" ".join(t) for t in texts]}))
    ours = set(band_pairs(sig, bands, rows).iter_rows())

    lsh = datasketch.MinHashLSH(threshold=dedup.threshold, num_perm=128, params=(bands, rows))
    sketches = []
    shingles = [{" ".join(t[k : k + 3]) for k in range(len(t) - 2)} for t in texts]
    for i, s in enumerate(shingles):
        m = datasketch.MinHash(num_perm=128, seed=1)
        m.update_batch([x.encode() for x in s])
        lsh.insert(i, m)
        sketches.append(m)
    theirs = {
        (min(i, j), max(i, j)) for i, m in enumerate(sketches) for j in lsh.query(m) if j != i
    }
    assert len(ours & theirs) / len(ours | theirs) > 0.7  # LSH is random: high, not exact
    high = {
        (i, j)
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
        if len(shingles[i] & shingles[j]) / len(shingles[i] | shingles[j]) >= 0.8
    }
    assert len(high) > 50
    assert high <= ours and high <= theirs


# --- parts ------------------------------------------------------------------------------------


def test_banding_and_derived_word_limit():
    dedup = DedupFilter()
    bands, rows = dedup.banding()
    assert bands * rows <= 128
    # A pair at the threshold becomes a candidate with high probability.
    assert 1 - (1 - 0.7**rows) ** bands > 0.75
    assert 1 - (1 - 0.8**rows) ** bands > 0.97
    assert dedup.min_words() == 19
    assert DedupFilter(bands=16, rows=8).banding() == (16, 8)
    assert DedupFilter(bands=32).banding() == (32, 4)
    assert lsh_params(0.9, 64)[0] * lsh_params(0.9, 64)[1] <= 64
    with pytest.raises(ValueError):
        DedupFilter(bands=20, rows=10)
    with pytest.raises(ValueError):
        DedupFilter(threshold=0.0)


def test_components_label_each_node_with_the_smallest_index():
    label = components(7, np.array([5, 1, 3, 6]), np.array([6, 3, 4, 2]))
    assert label.tolist() == [0, 1, 2, 1, 1, 2, 2]


def test_word_hashes_depend_on_the_word_only():
    assert word_hashes(["ab", "ba", "ab"]).tolist()[0] == word_hashes(["ab"]).tolist()[0]
    assert len(set(word_hashes(["ab", "ba", "a", "b", "abc", "😀", ""]).tolist())) == 7


def _mix(x: int) -> int:
    """splitmix64 of one value, in plain Python."""
    m = 2**64 - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _word_hash(word: str) -> int:
    """``word_hashes`` as documented, in plain Python: 8-byte little-endian blocks."""
    data = word.encode("utf-8")
    h = _mix(int.from_bytes(data[:8], "little") ^ _mix(len(data)))
    for q in range(8, len(data), 8):
        h = _mix(h ^ int.from_bytes(data[q : q + 8], "little"))
    return h


def _reference_signature(hashes: list[int], k: int, shifts: np.ndarray) -> list[int]:
    """One-permutation MinHash with the documented densification, one set, plain Python."""
    bins = [int(EMPTY)] * k
    for h in hashes:
        b = ((h >> 32) * k) >> 32
        bins[b] = min(bins[b], (h & 0xFFFFFFFF) >> 1)
    out = list(bins)
    for i in range(k):
        if bins[i] == EMPTY:
            out[i] = next(bins[(i + s) % k] for s in shifts if bins[(i + s) % k] != EMPTY)
    return out


def test_word_hashes_follow_the_documented_blocks():
    words = ["a", "hello", "abcdefgh", "abcdefghi", "x" * 17, "é", "naïve", "😀", "中文", ""]
    assert word_hashes(words).tolist() == [_word_hash(w) for w in words]


@pytest.mark.parametrize("k", [128, 100])
def test_one_permutation_matches_the_reference(k):
    """Dense steps, the per-bin tail and the non-power-of-two bin mapping all agree with the
    plain definition; sets from 1 to 2000 hashes, so some rows are nearly all empty bins."""
    rng = np.random.default_rng(3)
    sizes = [1, 2, 3, 10, 40, 56, 130, 2000] * 3
    row = np.repeat(np.arange(len(sizes)), sizes)
    hashes = splitmix64(rng.integers(0, 2**63, row.size, dtype=np.uint64))
    shifts = shift_order(np.uint64(99), k)
    assert sorted(shifts.tolist()) == list(range(1, k))
    sig = one_permutation(hashes, row, len(sizes), k, shifts)
    assert sig.shape == (k, len(sizes)) and not (sig == EMPTY).any()
    for r in range(len(sizes)):
        expected = _reference_signature(hashes[row == r].tolist(), k, shifts)
        assert sig[:, r].tolist() == expected


def test_one_permutation_estimates_jaccard_without_bias():
    """Over 300 seeds, the share of equal values is centred on the true Jaccard, with a spread
    no wider than that of 128 independent permutations (sqrt(J(1 - J)/128) = 0.041)."""
    rng = np.random.default_rng(4)
    for size, shared in ((20, 17), (56, 46), (400, 329)):
        truth = shared / (2 * size - shared)
        estimates = []
        for seed in range(300):
            elements = rng.integers(0, 2**63, 2 * size - shared, dtype=np.uint64)
            salt = splitmix_stream(seed, 2)
            hashes = splitmix64(elements ^ salt[0])
            both = np.concatenate([hashes[:size], hashes[size - shared :]])
            row = np.repeat([0, 1], size)
            sig = one_permutation(both, row, 2, 128, shift_order(salt[1], 128))
            estimates.append((sig[:, 0] == sig[:, 1]).mean())
        assert np.mean(estimates) == pytest.approx(truth, abs=0.01)
        assert np.std(estimates) <= 1.1 * np.sqrt(truth * (1 - truth) / 128)


def test_signature_of_a_text_is_that_of_its_shingle_hashes():
    """The whole word path against the documented definitions: word hashes from UTF-8 blocks,
    a 3-gram is splitmix64(sum of word hash * multiplier), then one-permutation MinHash."""
    dedup = DedupFilter()
    text = " ".join(["naïve", "words", "abcdefghijklmnopq", "😀"] * 6 + ["end"])
    words = text.split(" ")
    params = splitmix_stream(dedup.seed, dedup.shingle + 2)
    mult = [int(m) | 1 for m in params[: dedup.shingle]]
    hashes = [_word_hash(w) for w in words]
    shingles = [
        _mix(sum(h * m for h, m in zip(hashes[p : p + 3], mult, strict=True)) % 2**64)
        for p in range(len(words) - 2)
    ]
    sig = dedup.signatures(pl.DataFrame({"text": [text]}))
    shifts = shift_order(params[dedup.shingle + 1], dedup.num_perm)
    assert sig[:, 0].tolist() == _reference_signature(shingles, dedup.num_perm, shifts)


def test_parts_of_a_row_read_as_joined_by_spaces():
    """Turns are shingled without joining them first: across turns, for word and character
    shingles alike, a row's signature is that of its turns joined by single spaces."""
    rng = random.Random(10)
    rows = [
        [random_text(rng, rng.randint(1, 30)) for _ in range(rng.randint(1, 4))] for _ in range(60)
    ]
    rows += [["é"], ["ab", "c"], ["x" * 40, "y"]]
    dedup = DedupFilter(chunk_rows=7)
    parts = pl.Series([p for r in rows for p in r])
    part_row = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    joined = dedup.signatures(pl.DataFrame({"text": [" ".join(r) for r in rows]}))
    assert np.array_equal(dedup._signatures(parts, part_row, len(rows)), joined)


def test_exact_pass_hash_path_agrees_with_key_strings(monkeypatch):
    """The hashed grouping finds what grouping the key strings finds; and when every key
    shares one hash, the turn-by-turn check fails and the string grouping decides."""
    frame = sample_frame()
    copies = frame.sample(40, seed=11).with_columns(pl.col("id") + "c")
    frame = pl.concat([frame, copies])
    dedup = DedupFilter(near=False)
    rows, turns = dedup.turns(Batch.from_conversations(frame))
    hashed = dedup._exact_pairs(turns)
    strings = dedup._exact_by_key_strings(rows, turns)
    assert hashed is not None and hashed.height >= 40
    assert hashed.sort("idx").equals(strings.sort("idx"))
    reference = run(dedup, frame)

    def one_hash(self, *args, **kwargs):
        return pl.Series(np.zeros(self.len(), dtype=np.uint64))

    monkeypatch.setattr(pl.Series, "hash", one_hash)
    assert dedup._exact_pairs(turns) is None
    assert run(dedup, frame).equals(reference)


def test_message_order_does_not_matter():
    """Messages in batch order take the fast path, shuffled ones the join: same verdicts."""
    batch = Batch.from_conversations(sample_frame())
    reference = DedupFilter()(batch).ledger
    shuffled = Batch(
        messages=batch.messages.sample(fraction=1.0, shuffle=True, seed=12), rows=batch.rows
    )
    assert DedupFilter()(shuffled).ledger.equals(reference)


def test_band_pairs_split_keys_shared_by_different_values():
    """Rows 0 and 1 have different band values with the same 32-bit band key; row 2 copies
    row 0; rows 3-22 share one band (a large bucket: linear pairs)."""
    bands, rows = 1, 2
    mult = (splitmix_stream(0x5EED, rows) >> np.uint64(32)).astype(np.uint32) | np.uint32(1)
    a, b = np.uint32(12345), np.uint32(67890)
    with np.errstate(over="ignore"):
        x = [a, b]
        y = [a + mult[1], b - mult[0]]
        assert x[0] * mult[0] + x[1] * mult[1] == y[0] * mult[0] + y[1] * mult[1]
    columns = [x, y, x] + [[7, 7]] * 20 + [[1000 + r, 5] for r in range(5)]
    sig = np.array(columns, dtype=np.uint32).T.copy()
    pairs = set(band_pairs(sig, bands, rows).iter_rows())
    large = {(3, r) for r in range(4, 23)} | {(r - 1, r) for r in range(4, 23)}
    assert pairs == {(0, 2)} | large


# --- weird input ------------------------------------------------------------------------------


def test_weird_input_does_not_crash():
    huge = "x" * 10_000_000  # 10 MB without a space: one word, so character shingles
    huge_words = ("lorem ipsum dolor sit amet " * 400_000)[:10_000_000]
    frame = conversations(
        qa("e1", "", ""),
        qa("e2", "", ""),
        qa("p1", "!!!", "..."),  # punctuation only: empty after normalising
        qa("p2", "???", "…"),
        qa("huge", "Repeat x.", huge),
        qa("huge2", "Repeat x.", huge[:-1] + "y"),
        qa("words", "Lorem?", huge_words),
        qa("emoji1", "🎉", "😀"),
        qa("emoji2", "🎉", "🙃"),
        qa("mixed", "中文 العربية русский", "English 😀 mixed"),
        {"id": "system_only", "messages": [("system", "Be brief.")]},
        {"id": "no_messages", "messages": []},
    )
    rows = by_row(run(DedupFilter(), frame))
    # Empty texts are never duplicates; different emoji are different texts.
    assert not {"e1", "e2", "p1", "p2", "emoji1", "emoji2", "system_only", "no_messages"} & set(
        rows
    )
    assert rows["huge2"]["reason"].startswith("near duplicate of huge ")
    assert run(DedupFilter(), conversations()).is_empty()
    assert run(DedupFilter(), conversations(qa("only", "a", "b"))).is_empty()


def test_answer_guard_counts_two_empty_answers_as_equal():
    rng = random.Random(8)
    prompt = random_text(rng, 60)
    frame = conversations(
        {"id": "a", "messages": [("user", prompt)]},
        {"id": "b", "messages": [("user", edit(rng, prompt, 1))]},
    )
    assert set(by_row(run(DedupFilter(), frame))) == {"b"}


def test_reason_matches_kept_row_regex():
    rng = random.Random(9)
    prompt = random_text(rng, 60)
    ledger = run(
        DedupFilter(), conversations(qa("k", prompt, "x"), qa("d", edit(rng, prompt, 1), "x"))
    )
    (reason,) = ledger["reason"]
    assert re.fullmatch(r"near duplicate of k \(estimated Jaccard 0\.\d+\)", reason)
