"""PiiFilter on real frames: each rule's positives and near misses, redaction output, Luhn, the
ledger (counts, never the values), per-source policies, the embedded samples' PII rows, the
OpenAssistant pii label, and odd input. Python's ``re`` (``redact``, the row-by-row baseline) must
agree with the vectorised filter everywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from curation.filters.base import FINDINGS, REWRITES, Batch, Findings, Policy
from curation.filters.pii import (
    _PREFILTERS,
    CHECKS,
    PLACEHOLDERS,
    RULES,
    PiiFilter,
    card_valid,
    luhn_valid,
    redact,
    scan_messages,
)
from curation.ingest import ingest
from curation.schema import CONVERSATIONS, frame

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def conversation(
    row_id: str,
    answer: str,
    prompt: str = "Tell me about it.",
    source: str = "web",
    system: str | None = None,
    meta: str = "{}",
) -> dict:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {
        "id": row_id,
        "source": source,
        "source_id": row_id,
        "lang": "en",
        "messages": messages,
        "meta": meta,
        "provenance": None,
    }


def batch(*rows: dict) -> Batch:
    return Batch.from_conversations(frame(list(rows), CONVERSATIONS))


def run(*answers: str, f: PiiFilter | None = None) -> Findings:
    """One conversation per answer, ids r0, r1, ..."""
    return (f or PiiFilter())(batch(*[conversation(f"r{i}", a) for i, a in enumerate(answers)]))


def fired(findings: Findings, row_id: str = "r0") -> list[str]:
    return findings.ledger.filter(pl.col("row_id") == row_id)["rule"].to_list()


def rewritten(findings: Findings, row_id: str = "r0", turn: int = 1) -> str | None:
    rows = findings.rewrites.filter((pl.col("row_id") == row_id) & (pl.col("turn") == turn))
    return rows["content"].item() if rows.height else None


# --- Each rule: what fires, with the redacted text ---------------------------------------------

POSITIVES = [
    ("pii.email", "Write to jane.doe@example.com today.", "Write to <EMAIL> today."),
    ("pii.email", "Mail: Tom.Baker+news@mail.co.uk.", "Mail: <EMAIL>."),
    ("pii.phone", "Call (555) 123-4567 now.", "Call <PHONE> now."),
    ("pii.phone", "Call 555-123-4567 now.", "Call <PHONE> now."),
    ("pii.phone", "Call 555.123.4567 now.", "Call <PHONE> now."),
    ("pii.phone", "Call +1 555 123 4567 now.", "Call <PHONE> now."),
    ("pii.phone", "Call +1 (555) 013-2447 now.", "Call <PHONE> now."),
    ("pii.phone", "London: +44 20 7946 0958.", "London: <PHONE>."),
    ("pii.phone", "Berlin: +49 30 123456.", "Berlin: <PHONE>."),
    ("pii.phone", "My number is 555-0187.", "My number is <PHONE>."),
    ("pii.phone", "Call 1-555-123-4567.", "Call <PHONE>."),
    ("pii.phone", "Rappelez-moi au 01 99 00 27 48.", "Rappelez-moi au <PHONE>."),
    ("pii.phone", "UK office 020 7946 0958.", "UK office <PHONE>."),
    ("pii.phone", "Aunt Margot mobile 0491 570 156", "Aunt Margot mobile <PHONE>"),
    ("pii.card", "Card 4111 1111 1111 1111 exp 12/29", "Card <CARD> exp 12/29"),
    ("pii.card", "Card 5555-5555-5555-4444.", "Card <CARD>."),
    ("pii.card", "Amex 3782 822463 10005 ok", "Amex <CARD> ok"),
    ("pii.card", "Number 4012888888881881", "Number <CARD>"),
    ("pii.ssn", "SSN 123-45-6789.", "SSN <SSN>."),
    ("pii.ssn", "someone stole my social 371 40 2268", "someone stole my social <SSN>"),
    ("pii.ip", "Server at 93.184.216.34 is up.", "Server at <IP> is up."),
    ("pii.ip", "DNS 8.8.8.8, 1.1.1.1", "DNS <IP>, <IP>"),
    ("pii.ip", "v6 2001:4860:4860::8888 works", "v6 <IP> works"),
    ("pii.ip", "full 2606:4700:4700:0:0:0:0:1111 too", "full <IP> too"),
    # Documentation ranges are what careful writers use to stand for a real address.
    ("pii.ip", "Failed login from 198.51.100.77 port 52144", "Failed login from <IP> port 52144"),
    ("pii.ip", "Docs use 203.0.113.7 and 2001:db8::1.", "Docs use <IP> and <IP>."),
    ("pii.ip", "server=93.184.216.34", "server=<IP>"),
    # An address after a word of prose or a network word, even capitalised; the word stays.
    ("pii.ip", "connect to 203.0.113.20", "connect to <IP>"),
    ("pii.ip", "Server 203.0.113.7 is down.", "Server <IP> is down."),
    ("pii.ip", "From 198.51.100.23 we saw 40 logins.", "From <IP> we saw 40 logins."),
    # A capitalised word alone (a name, a sentence's first word) makes no version: the number
    # must look like one too (every part below 100, the first below 10), and after a software
    # word a first part of 100 or more is still an address.
    ("pii.ip", "Alice 203.0.113.7", "Alice <IP>"),
    ("pii.ip", "Contact 198.51.100.23 for access.", "Contact <IP> for access."),
    ("pii.ip", "Meet Bob at 203.0.113.7", "Meet Bob at <IP>"),
    ("pii.ip", "Jane 45.33.32.156 again", "Jane <IP> again"),
    ("pii.ip", "Contact 98.51.10.23 today", "Contact <IP> today"),
    ("pii.ip", "Release 203.0.113.7 from the blocklist.", "Release <IP> from the blocklist."),
    # A word that starts with "v" is no "v" prefix.
    ("pii.ip", "Traffic came via 203.0.113.7", "Traffic came via <IP>"),
    ("pii.ip", "VPN 198.51.100.9 is up; Visit 203.0.113.8", "VPN <IP> is up; Visit <IP>"),
    # A phone number beside words, a dash or a field name, never arithmetic.
    ("pii.phone", "call me at 555-1234", "call me at <PHONE>"),
    ("pii.phone", "John Smith - 555-1234", "John Smith - <PHONE>"),
    ("pii.phone", "phone=555-1234", "phone=<PHONE>"),
    ("pii.phone", "Call 555-1234 - ask for Bob.", "Call <PHONE> - ask for Bob."),
    ("pii.credential", "password: hunter2", "password: <CREDENTIAL>"),
    ("pii.credential", "The password is Tr0ub4dor&3 ok", "The password is <CREDENTIAL> ok"),
    ("pii.credential", 'config = {"password": "s3cret!"}', 'config = {"password": <CREDENTIAL>}'),
    ("pii.credential", "export DB_PASSWORD=hunter22", "export DB_PASSWORD=<CREDENTIAL>"),
    (
        "pii.credential",
        "psql postgres://admin:S3cr3tPass!@db.internal:5432/app",
        "psql postgres://admin:<CREDENTIAL>@db.internal:5432/app",
    ),
    (
        "pii.credential",
        "api_key=sk-proj-4f9a8b7c6d5e4f3a2b1c0d9e8f7a",
        "api_key=<CREDENTIAL>",
    ),
    ("pii.credential", "key id AKIAJ7Q3KX5WZ2M4N6PB here", "key id <CREDENTIAL> here"),
    (
        "pii.credential",
        "token ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R",
        "token <CREDENTIAL>",
    ),
    (
        "pii.credential",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "Authorization: <CREDENTIAL>",
    ),
    (
        "pii.credential",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx1y2z3w4v5u6t7s8\n"
        "-----END RSA PRIVATE KEY-----\nKeep it safe.",
        "<CREDENTIAL>\nKeep it safe.",
    ),
]


@pytest.mark.parametrize(("rule", "text", "expected"), POSITIVES)
def test_rule_fires_and_redacts(rule: str, text: str, expected: str) -> None:
    findings = run(text)
    assert fired(findings) == [rule]
    assert rewritten(findings) == expected
    assert redact(text)[0] == expected  # the Python reference agrees


# --- Near misses: none of these is PII ------------------------------------------------------------

NEGATIVES = [
    # versions (a four-part number after version/ver/v is a version, not an address)
    "Upgrade to Python 3.11.7 first.",
    "Requires version 1.2.3.4 or later.",
    "Tagged v1.2.3.4 yesterday.",
    "Release 1.2.3.4.5 is out.",
    # four parts after the name of a product or a software word, any case
    "Python 3.11.4.2 fixes it; node 18.17.1.0 too.",
    "Firmware 5.4.1.2 adds Wi-Fi 6. Qt5 5.15.2.1 is the last.",
    "Requires version 10.2.0.1; Version 10.2.0.1 ships today. Build 10.2.0.1 passed.",
    "Java 1.8.0.151 is end of life.",
    # arithmetic with a phone-shaped number: after "=" or an operator, or before one
    "x = 555-1234",
    "Solve: y = 555-1234 + 3",
    "3 × 555-1234 and 2 * 555-0199",
    "555-1234 = -679",
    "12 + 555-1234 = 555-1246",
    "a - 555-1234 is negative",
    # dates, times, math, prices, quantities
    "The meeting is on 2023-10-05 at 10:30:45.",
    "12 - 34 = -22 and 555 + 123 = 678",
    "It costs $1,234.56 or 1.234,56 EUR.",
    "Take 200-3000 mg per day; 300 400 5000 units.",
    "Numbers 01 02 03 04 05 and 100 20 3000.",
    # toll-free and freephone numbers belong to hotlines and businesses
    "Call Poison Control at 1-800-222-1222 or (888) 555-0100; UK 0800 123 4567.",
    # version pins
    "Pin it: internal-lib==1.2.3.4, other>=2.0.0.1, npm ^1.2.3.4",
    # ISBNs, numbers failing Luhn, order and ticket numbers
    "ISBN 978-0-306-40615-7 and ISBN 9780306406157.",
    "Card 4111 1111 1111 1112 is mistyped.",
    "Your order #4111111111111111 shipped; ticket #555-1234.",
    "Order number 123456789 and tracking 1Z999AA10123456784.",
    "A 16-digit id 1234567890123456 failed.",
    "0000 0000 0000 0000",
    # SSN look-alikes with invalid areas, groups or serials
    "000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000",
    # private, loopback, reserved, documentation addresses; times; MACs; C++ scopes
    "Router 192.168.1.1, localhost 127.0.0.1, subnet 10.0.0.0, mask 255.255.255.0.",
    "connect to 192.168.1.20",  # a private address: network setup, nobody's (judgment call)
    "Loopback is ::1, link-local fe80::1, multicast 224.0.0.251, CGNAT 100.64.0.1.",
    "At 12:30:45 the MAC 00:1a:2b:3c:4d:5e rebooted; std::vector<int> v; a::b",
    "Invalid 256.1.1.1 and 999.999.999.999",
    # placeholder emails, git remotes, decorators, scoped packages
    'git config user.email "you@example.com"',
    "Contact user@example.org or name@yourdomain.com.",
    "msg['From'] = 'sender@example.com'; msg['To'] = 'user@example.com'",
    "git clone git@github.com:org/repo.git",
    "@app.route('/') and npm i @types/node",
    # code that reads a secret, placeholders, prose
    'password = input("Password: ")',
    'api_key = os.environ["API_KEY"]',
    "password = getpass.getpass()",
    "DB_PASSWORD=$DB_PASSWORD",
    'api_key = "YOUR_API_KEY"',
    "password: ********",
    "Password: required. Your password is too short.",
    "Authorization: Bearer <token>",
    "Authorization: Bearer YOUR_ACCESS_TOKEN_HERE",
    "AWS docs use AKIAIOSFODNN7EXAMPLE as the key id.",
    "A PEM file starts with -----BEGIN PRIVATE KEY----- and ends with -----END PRIVATE KEY-----.",
    "The secret is consistency; the bearer of bad news.",
    "pwd: /home/user/project",
    "postgres://user:password@localhost/db and https://example.com:8080/a@b",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_near_misses_do_not_fire(text: str) -> None:
    findings = run(text)
    assert findings.ledger.is_empty(), findings.ledger
    assert findings.rewrites.is_empty()
    assert redact(text) == (text, {})


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert luhn_valid("4111 1111 1111 1111")
    assert not luhn_valid("4111 1111 1111 1112")
    assert not luhn_valid("")
    assert card_valid("4111-1111-1111-1111")
    assert not card_valid("4111-1111 1111-1111")  # mixed separators
    assert not card_valid("9780306406157")  # ISBN-13: Luhn aside, no card starts with 9
    assert not card_valid("#4111111111111111")


def test_valid_and_invalid_candidates_in_one_message() -> None:
    """A message with both: only the valid ones are redacted (the Python path for mixed rows)."""
    text = (
        "Pay with 4111 1111 1111 1111, not 4111 1111 1111 1112. Ping 8.8.8.8, not "
        "192.168.0.1. Mail jane@corp.io, not you@example.com."
    )
    findings = run(text)
    expected = (
        "Pay with <CARD>, not 4111 1111 1111 1112. Ping <IP>, not 192.168.0.1. "
        "Mail <EMAIL>, not you@example.com."
    )
    assert rewritten(findings) == expected
    assert redact(text)[0] == expected
    assert sorted(fired(findings)) == ["pii.card", "pii.email", "pii.ip"]


def test_every_turn_and_role_is_checked() -> None:
    row = conversation(
        "r0",
        answer="Sure, I'll call 555-123-4567.",
        prompt="I'm tom@mail.net, card 4111 1111 1111 1111.",
        system="Operator ip 93.184.216.34",
    )
    findings = PiiFilter()(batch(row))
    assert findings.rewrites.sort("turn").rows() == [
        ("r0", 0, "Operator ip <IP>"),
        ("r0", 1, "I'm <EMAIL>, card <CARD>."),
        ("r0", 2, "Sure, I'll call <PHONE>."),
    ]
    assert findings.ledger["rule"].to_list() == ["pii.card", "pii.email", "pii.ip", "pii.phone"]


def test_ledger_counts_and_never_copies_the_value() -> None:
    rows = [
        conversation("r0", "Mail a@corp.io or b@corp.io.", prompt="I am c@corp.io"),
        conversation("r1", "Nothing to see."),
    ]
    findings = PiiFilter()(batch(*rows))
    assert findings.ledger.schema == FINDINGS
    assert findings.rewrites.schema == REWRITES
    (row,) = findings.ledger.rows(named=True)
    assert row == {
        "row_id": "r0",
        "rule": "pii.email",
        "verdict": "rewrite",
        "reason": "3 email addresses in turns 0, 1",
        "score": 3.0,
    }
    assert "corp.io" not in " ".join(findings.ledger["reason"])
    assert findings.rewrites["content"].to_list() == ["I am <EMAIL>", "Mail <EMAIL> or <EMAIL>."]


def test_per_source_policy_and_drop() -> None:
    rows = [
        conversation("r0", "Call 555-123-4567.", source="web"),
        conversation("r1", "Call 555-123-4567.", source="hh"),
        conversation("r2", "Call 555-123-4567.", source="flan"),
    ]
    f = PiiFilter(policy=Policy("rewrite", {"hh": "drop", "flan": "flag"}))
    findings = f(batch(*rows))
    assert dict(zip(findings.ledger["row_id"], findings.ledger["verdict"], strict=True)) == {
        "r0": "rewrite",
        "r1": "drop",
        "r2": "flag",
    }
    assert findings.rewrites["row_id"].to_list() == ["r0"]  # only rewrite rows get new text
    dropped = PiiFilter(policy=Policy("drop"))(batch(*rows))
    assert set(dropped.ledger["verdict"]) == {"drop"} and dropped.rewrites.is_empty()


def test_rules_subset() -> None:
    text = "Mail a@corp.io, call 555-123-4567."
    findings = run(text, f=PiiFilter(rules=frozenset({"pii.phone"})))
    assert fired(findings) == ["pii.phone"]
    assert rewritten(findings) == "Mail a@corp.io, call <PHONE>."
    with pytest.raises(ValueError, match="unknown PII rules"):
        PiiFilter(rules=frozenset({"pii.address"}))


# --- The embedded samples ----------------------------------------------------------------------


def test_sample_pii_rows() -> None:
    oasst = ingest("oasst", [SAMPLES / "oasst_messages.jsonl"]).conversations
    flan = ingest("flan", [SAMPLES / "flan.jsonl"]).conversations
    hh = ingest("hh", [SAMPLES / "hh_rlhf.jsonl"])
    trees = ingest("oasst", [SAMPLES / "oasst_trees.jsonl"])
    # The rejected replies of HH line 51 and of the trees' line 27 live in preference pairs:
    # prompt + rejected as a conversation.
    pairs = pl.concat([hh.preferences, trees.preferences]).select(
        (pl.col("id") + "-rejected").alias("id"),
        "source",
        "source_id",
        "lang",
        pl.concat_list("prompt", "rejected").alias("messages"),
        pl.lit("{}").alias("meta"),
        "provenance",
    )
    conversations = pl.concat([oasst, flan, hh.conversations, pairs], how="vertical_relaxed")
    findings = PiiFilter()(Batch.from_conversations(conversations))
    line = conversations.select("id", pl.col("provenance").struct.field("line"), "source")
    hits = findings.ledger.join(line, left_on="row_id", right_on="id")
    redacted = " ".join(findings.rewrites["content"])
    for value in ("tom.baker@example.net", "555-0187", "maria.lopez@example.org", "555-0142"):
        assert value not in redacted
    assert "jane.doe@example.com" not in redacted and "555-0199" not in redacted
    assert "<EMAIL>" in redacted and "<PHONE>" in redacted
    # oasst_messages line 46 (root prompt), flan line 56, HH line 51, trees line 27
    by_source_line = set(zip(hits["source"], hits["line"], hits["rule"], strict=True))
    assert ("oasst", 46, "pii.email") in by_source_line
    assert ("oasst", 46, "pii.phone") in by_source_line
    assert ("oasst", 46, "pii.label") in by_source_line  # annotators' pii label 0.67
    assert ("flan", 56, "pii.email") in by_source_line
    assert ("hh", 51, "pii.phone") in by_source_line
    assert ("oasst", 27, "pii.email") in by_source_line
    # Nothing else in the embedded data looks like PII.
    assert {(s, ln) for s, ln, _ in by_source_line} == {
        ("oasst", 46),
        ("oasst", 27),
        ("flan", 56),
        ("hh", 51),
    }
    assert findings.ledger.filter(pl.col("rule") == "pii.label")["verdict"].unique().to_list() == [
        "flag"
    ]


def test_label_threshold_off_and_malformed_meta() -> None:
    meta = json.dumps({"labels": {"pii": 0.9}, "prompt_labels": {"pii": 0.1}})
    bad = json.dumps({"labels": ["pii"], "prompt_labels": {"pii": "high"}})
    rows = [
        conversation("r0", "Nothing here.", meta=meta),
        conversation("r1", "Nothing here.", meta=bad),
        conversation("r2", "Nothing here.", meta="not json"),
    ]
    findings = PiiFilter()(batch(*rows))
    assert findings.ledger.rows() == [
        ("r0", "pii.label", "flag", "OpenAssistant pii label >= 0.5: answer 0.9", 0.9)
    ]
    assert PiiFilter(label_threshold=None)(batch(*rows)).ledger.is_empty()


# --- Vectorised == row by row ------------------------------------------------------------------


def _sample_texts() -> list[str]:
    texts = []
    for path in sorted(SAMPLES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            texts += [v for v in _strings(json.loads(line)) if v]
    return texts


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_vectorised_matches_python_reference() -> None:
    texts = _sample_texts() + [t for _, t, _ in POSITIVES] + NEGATIVES
    texts += [a + " " + b for a, b in zip(texts[::7], texts[3::11], strict=False)]
    messages = pl.DataFrame({"content": texts}).with_row_index("idx")
    changed, counts = scan_messages(messages)
    new = dict(zip(changed["idx"], changed["content"], strict=True))
    by_rule: dict[tuple[int, str], int] = {
        (i, r): n for i, r, n in counts.select("idx", "rule", "n").iter_rows()
    }
    for i, text in enumerate(texts):
        expected, expected_counts = redact(text)
        assert new.get(i, text) == expected, text
        got = {r: n for (j, r), n in by_rule.items() if j == i}
        assert got == expected_counts, text


def test_prefilters_keep_every_candidate() -> None:
    # The scan over every message looks for _PREFILTERS, the rules without their \b and, for
    # phone numbers and addresses, without the arithmetic or the word they take around the
    # number: a candidate without a match of it would leave its message unredacted.
    texts = _sample_texts() + [t for _, t, _ in POSITIVES] + NEGATIVES
    texts += ["Step 3: x = 555-1234 + 3", "Python 3.11.4.2 on 203.0.113.7", "ver 1.2.3.4 v9.9.9.9"]
    seen = set()
    for rule, pattern in RULES:
        prefilter = re.compile(_PREFILTERS[rule])
        for text in texts:
            for match in re.finditer(pattern, text):
                assert prefilter.search(match.group()), (rule, match.group())
                seen.add(rule)
    assert seen == {r for r, _ in RULES}


def test_module_exports_for_baselines() -> None:
    assert [r for r, _ in RULES] == [
        "pii.credential",
        "pii.email",
        "pii.card",
        "pii.ssn",
        "pii.phone",
        "pii.ip",
    ]
    assert set(CHECKS) == set(PLACEHOLDERS) == {r for r, _ in RULES}


# --- Odd input ------------------------------------------------------------------------------------


def test_odd_input_does_not_crash() -> None:
    big = ("Lorem ipsum dolor sit amet 12345. " * 320_000)[: 10 * 1024 * 1024]
    big_with_pii = big[:5_000_000] + " jane@corp.io " + big[5_000_000:]
    texts = [
        "",
        " ",
        "😀🔥 电话 +86 10 1234 5678 ✉ 李@例子.公司 📧 ana@correo.es — Ελληνικά 93.184.216.34",
        "\u200b\u00a0\t\n",
        big,
        big_with_pii,
    ]
    findings = run(*texts)
    assert fired(findings, "r0") == [] and fired(findings, "r1") == []
    assert fired(findings, "r2") == ["pii.email", "pii.ip", "pii.phone"]
    assert rewritten(findings, "r2") == (
        "😀🔥 电话 <PHONE> ✉ 李@例子.公司 📧 <EMAIL> — Ελληνικά <IP>"
    )
    assert fired(findings, "r4") == []
    assert fired(findings, "r5") == ["pii.email"]
    assert len(rewritten(findings, "r5") or "") == len(big_with_pii) - len("jane@corp.io") + 7


def test_empty_batch() -> None:
    findings = PiiFilter()(batch())
    assert findings.ledger.is_empty() and findings.rewrites.is_empty()
    assert findings.ledger.schema == FINDINGS and findings.rewrites.schema == REWRITES
