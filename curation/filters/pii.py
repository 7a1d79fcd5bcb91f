"""PII filter: find personal data and secrets in every turn and redact them with typed placeholders.

Rules, in the order they run (each sees the text as the earlier ones left it, so a span is only
ever counted once: a card number is not also a phone number):

=============== ============== ===========================================================
rule            placeholder    what fires, and what is guarded against
=============== ============== ===========================================================
pii.credential  <CREDENTIAL>   PEM private-key blocks; AWS key ids (AKIA/ASIA); well-known
                               token shapes (sk-..., ghp_..., xoxb-..., AIza...); Bearer
                               tokens; ``password: hunter2`` / ``api_key = "..."`` pairs (the
                               key is kept: ``password: <CREDENTIAL>``); passwords in URLs
                               (``postgres://admin:<CREDENTIAL>@db``). Not: code that reads a
                               secret (``password = input(``, ``os.environ[...]``,
                               ``user.password``, ``$PASSWORD``), prose (``password:
                               required`` -- an unquoted value must hold a digit or symbol),
                               placeholders (``<token>``, ``YOUR_API_KEY``, ``****``,
                               ``AKIA...EXAMPLE``, ``user:password@``), paths (``pwd: /home``).
pii.email       <EMAIL>        addresses (ASCII). Not: generic mailboxes on reserved or
                               placeholder domains (``you@example.com``, ``sender@example.org``,
                               ``name@yourdomain.com``) and SSH remotes (``git@github.com``).
                               Named people on example domains (``jane.doe@example.com``) DO
                               fire: they are what the embedded data uses for real addresses.
pii.card        <CARD>         13-19 digits (spaces or dashes between groups) that pass Luhn,
                               start like a real card (2-6), are grouped like one (4-4-4-4,
                               4-6-5...) and are not one repeated digit. Not: long numbers that
                               fail Luhn, ISBNs (978/979...), ``#order`` numbers.
pii.ssn         <SSN>          ``123-45-6789`` or ``123 45 6789`` with a valid area (not 000,
                               666, 9xx), group (not 00) and serial (not 0000). Not: round
                               numbers in a list (``100 20 3000``).
pii.phone       <PHONE>        US ``(555) 123-4567``, ``555-123-4567``, ``555.123.4567``,
                               ``555 123 4567``, ``+1``/``1-`` prefixed, local ``555-0142``;
                               international ``+44 20 7946 0958``, ``+49 30 123456`` (8-15
                               digits); national with trunk 0 and separators (``01 99 00 27
                               48``, ``020 7946 0958``, ``0491 570 156``). Not: dates, times,
                               math (``12 - 34``), round-number ranges (``200-3000``), ``#``
                               ticket numbers, ISBNs, day/month lists (``01 02 03 04 05``),
                               toll-free and freephone numbers (``1-800-222-1222``, ``0800``):
                               hotlines and businesses, not people; a number in arithmetic:
                               after ``=`` or an operator, or before one (``x = 555-1234``,
                               ``555-1234 + 3``; ``phone=555-1234`` does fire).
pii.ip          <IP>           public IPv4 (valid octets) and global-unicast IPv6 addresses,
                               documentation ranges included (``203.0.113.7``, ``2001:db8::1``:
                               like example.com, they stand for someone's real address). Not:
                               versions (``Python 3.11.7``; four parts after ``version``,
                               ``ver``, ``v``, a pin ``==``/``>=``/``~=``/``^``, a software
                               word with a first part below 100 (``firmware 5.4.1.2``, ``node
                               18.17.1.0``) or another capitalised word with every part below
                               100 and the first below 10 (``Python 3.11.4.2``; ``Alice
                               203.0.113.7``, ``Server 203.0.113.7`` fire), dotted
                               numbers with more than four parts (``1.2.3.4.5``), private,
                               loopback, link-local, CGNAT, multicast and reserved addresses
                               (``192.168.0.1``, ``127.0.0.1``, ``255.255.255.0``, ``fe80::1``):
                               network setup in technical answers, nobody's identity (a judgment
                               call); times (``12:30:45``), MAC addresses, C++ ``std::`` paths.
=============== ============== ===========================================================

Speed: one scan over every message with the union of the rules stripped of their ``\\b`` (a
superset; a Unicode ``\\b`` makes the regex crate's lazy DFA give up on non-ASCII text) and of the
context the phone and IP patterns take around a number (``_PREFILTERS``) keeps only messages that
may hold a candidate; the rules then run on that small subset with
``extract_all``/``replace_all``. Candidates go through a Python check (Luhn, octet ranges, ...)
-- only the distinct candidate strings, a tiny fraction of the text. Where a message holds both
accepted and rejected candidates of one rule, that message is redacted in Python with the same
pattern and check (rare; exact same result).

Patterns avoid lookaround and backreferences (Rust's regex crate, used by polars, has neither)
and mean the same in Python's ``re``: ``redact(text)`` is the row-by-row reference a baseline can
reuse (``RULES``, ``CHECKS``, ``PLACEHOLDERS``, ``luhn_valid``), and tests check it agrees with
the vectorised filter. Text a rule keeps around its placeholder is in groups named ``keep*`` and
``tail*``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar

import polars as pl

from curation.filters.base import FINDINGS, REWRITES, Batch, Findings, Policy
from curation.filters.safety import as_policy, label_scores  # one meta parser for both

# --- Patterns ------------------------------------------------------------------------------------
# ASCII classes instead of \d / \w: cheaper for the regex DFA, and the same in both engines.
# Every repetition that can start at many positions is bounded (local part <= 64, key prefix,
# scheme...): unbounded ones make Python's backtracking quadratic on runs like "1.1.1.1..."

_SECRET_KEYS = (
    r"(?:password|passwd|pwd|passphrase|secret|client[_-]?secret|secret[_-]?key|api[_-]?key|apikey"
    r"|access[_-]?key(?:[_-]?id)?|access[_-]?token|auth[_-]?token|refresh[_-]?token"
    r"|private[_-]?key|bearer[_-]?token)"
)
CREDENTIAL = (
    # A PEM private key: the whole block when it is closed, else the header and the base64 body.
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
    r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|[A-Za-z0-9+/=\s]*)"
    # AWS access key ids.
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    # Token shapes of well-known services (OpenAI, Stripe, GitHub, Slack, Google, GitLab).
    r"|\b(?:sk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20,})"
    # HTTP bearer tokens.
    r"|\b(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*"
    # key = value, key: value, "key": "value", key is value. The key may carry a prefix
    # (DB_PASSWORD, aws_secret_access_key). The unquoted value takes one trailing "(" or "[" so
    # the check can tell a call or a lookup (password = input(...)) from a literal.
    # The key and separator are kept (group "keep"): "password: <CREDENTIAL>".
    r"|\b(?P<keep>(?:[A-Za-z0-9]{1,32}[_.-]){0,4}(?i:" + _SECRET_KEYS + r""")\b["']?"""
    r"(?:\s*(?::=|=>|[:=])\s*|\s+(?i:is)\s+))"
    r"""(?:"[^"\s]{4,200}"|'[^'\s]{4,200}'|[^\s"'`,;<>(){}\[\]]{4,200}[(\[]?)"""
    # A password inside a URL: postgres://admin:S3cret@db:5432. Scheme, user and "@" are kept.
    r"|\b(?P<keep_url>[A-Za-z][A-Za-z0-9+.-]{0,15}://[^\s:/@]{1,64}:)[^\s:/@]{3,200}(?P<tail_url>@)"
)
EMAIL = (
    r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b"
)
# Optional leading "#": an order/ticket number, rejected by the check (no lookbehind available).
CARD = r"#?\b(?:[0-9]{4}[ -]?){3}[0-9]{1,7}\b|#?\b[0-9]{4}[ -]?[0-9]{6}[ -]?[0-9]{4,5}\b"
SSN = r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b|\b[0-9]{3} [0-9]{2} [0-9]{4}\b"
# Arithmetic around a number ("x = 555-1234", "2 × 555-1234", "555-1234 + 3 = ..."): the check
# rejects a match with one of these. An "=" after a name of a phone field ("phone=555-1234") is
# no arithmetic; "-" or "+" counts only between blanks after a number or a one-letter variable
# ("x - 555-1234"), never in "1-555-..." or "Smith - 555-1234".
_MATH_BEFORE = (
    r"(?P<keep_math>(?:(?i:phone|tel|mobile|cell|fax|contact|number)[ \t]*)?[=≈][ \t]*"
    r"|[*/×÷^<>][ \t]*"
    r"|(?:[0-9)][ \t]+|(?:^|[^A-Za-z])[A-Za-z][ \t]*)[-+−][ \t]*)?"
)
# After the number, the operator and the number it takes, so that in "555-1234 = 555-1246" the
# result goes with the sum instead of starting a match of its own without the "=".
_MATH_AFTER = (
    r"(?P<tail_math>[ \t]*[=≈*/×÷^<>][ \t]*[-+−]?[0-9().,-]*|[ \t]+[-+−][ \t]+[0-9(][0-9().,-]*)?"
)
_PHONE_NUMBER = (
    # US / NANP, optionally +1 or 1: (555) 123-4567, 555-123-4567, 555.123.4567, 1-555-123-4567.
    r"(?:\+1[ .-]?|\b1[ .-])?(?:\([2-9][0-9]{2}\)[ .-]?|#?\b[2-9][0-9]{2}[ .-])[0-9]{3}[ .-]"
    r"[0-9]{4}\b"
    # International, E.164-like: +44 20 7946 0958, +49 30 123456, +33 (0)1 23 45 67 89.
    r"|\+[1-9][0-9]{0,2}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-]?[0-9]{2,4}){0,4}"
    r"[ .-]?[0-9]{2,12}\b"
    # Local 7-digit US numbers: 555-0142 (dash only; spaces and dots are too common in prose).
    r"|#?\b[2-9][0-9]{2}-[0-9]{4}\b"
    # National numbers with a trunk 0, grouped: 01 99 00 27 48 (FR), 020 7946 0958 (UK),
    # 0491 570 156 (AU), 030 1234 5678 (DE). Separators are required: a bare 0-led run of digits
    # is as likely an id.
    r"|\b0[1-9](?:[ .-][0-9]{2}){4}\b|\b0[1-9][0-9]{1,3}[ -][0-9]{3,4}[ -][0-9]{3,4}\b"
)
PHONE = _MATH_BEFORE + "(?:" + _PHONE_NUMBER + ")" + _MATH_AFTER
_V4 = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:\.[0-9]{1,10}){0,4}"
_H = r"[0-9A-Fa-f]{1,4}"
# IPv4 with any further ".N" parts, so the check can reject "1.2.3.4.5"; IPv6: the full form, or
# a compressed one with "::".
_IP_ADDRESS = (
    r"\b" + _V4 + r"\b"
    r"|\b(?:" + _H + r":){7}" + _H + r"\b"
    r"|\b(?:" + _H + r":){1,7}:(?:" + _H + r"(?::" + _H + r"){0,6}\b)?"
)
# Before an IPv4 address, an optional version prefix so the check can reject "version 1.2.3.4"
# and "pkg==1.2.3.4", or the word before it so it can reject "Python 3.11.4.2" (kept when the
# address is redacted: "from <IP>").
IP = (
    r"(?:(?i:\bv(?:ersion|er)?[.:]?\s*)|(?:==|>=|<=|~=|!=|\^|~)\s*"
    r"|(?P<keep_word>\b[A-Za-z][A-Za-z0-9+#_-]{0,30}[ \t]))?" + _IP_ADDRESS
)

RULES: list[tuple[str, str]] = [
    ("pii.credential", CREDENTIAL),
    ("pii.email", EMAIL),
    ("pii.card", CARD),
    ("pii.ssn", SSN),
    ("pii.phone", PHONE),
    ("pii.ip", IP),
]
# Per rule, the same pattern without its word boundaries: a superset (dropping a zero-width
# assertion only relaxes it) that the regex crate runs fast. A Unicode \b sends the crate's lazy
# DFA back to its NFA on any non-ASCII text (~100x slower: 20k mixed-script messages took 8 s per
# rule instead of 0.08 s). The union of these is one scan over all messages; each rule then scans
# only the messages its own superset keeps, and only those see the exact pattern.
# Phone numbers and IP addresses are looked for without the context their patterns take around a
# candidate for the check (arithmetic around a number, the word before an address): every match
# holds a match of the bare number, so this is still a superset, and that optional context made
# the lazy DFA of the union so much bigger that the scan took 10x as long (1.7 s for 450k
# messages instead of 0.16 s).
_CANDIDATES: dict[str, str] = {"pii.phone": _PHONE_NUMBER, "pii.ip": _IP_ADDRESS}
_PREFILTERS: dict[str, str] = {
    rule: _CANDIDATES.get(rule, pattern).replace(r"\b", "") for rule, pattern in RULES
}
PLACEHOLDERS: dict[str, str] = {
    "pii.credential": "<CREDENTIAL>",
    "pii.email": "<EMAIL>",
    "pii.card": "<CARD>",
    "pii.ssn": "<SSN>",
    "pii.phone": "<PHONE>",
    "pii.ip": "<IP>",
}
# Words for the ledger reason: "2 phone numbers in turns 0, 2".
NOUNS: dict[str, tuple[str, str]] = {
    "pii.credential": ("credential", "credentials"),
    "pii.email": ("email address", "email addresses"),
    "pii.card": ("card number", "card numbers"),
    "pii.ssn": ("social security number", "social security numbers"),
    "pii.phone": ("phone number", "phone numbers"),
    "pii.ip": ("IP address", "IP addresses"),
    "pii.label": ("label", "labels"),
}

# --- Post-checks (Python, over candidate matches only) -------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum over a string of digits (other characters are ignored)."""
    nums = [int(c) for c in digits if c.isdigit()]
    if not nums:
        return False
    total = 0
    for i, d in enumerate(reversed(nums)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# How card numbers are printed: 4-4-4-4(-3), Amex 4-6-5, Diners 4-6-4; or no separators at all.
_CARD_GROUPS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1), (4, 4, 4, 2),
                (4, 4, 4, 3), (4, 4, 4, 4, 1), (4, 4, 4, 4, 2)}  # fmt: skip


def card_valid(match: str) -> bool:
    if match.startswith("#"):
        return False
    digits = re.sub(r"[ -]", "", match)
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456" or len(set(digits)) == 1:
        return False
    groups = re.split(r"[ -]", match)
    separators = set(re.findall(r"[ -]", match))
    if len(groups) > 1 and (len(separators) > 1 or tuple(map(len, groups)) not in _CARD_GROUPS):
        return False
    return luhn_valid(digits)


def ssn_valid(match: str) -> bool:
    area, group, serial = re.split(r"[ -]", match)
    if " " in match and all(g.endswith("0") for g in (area, group, serial)):
        return False  # "100 20 3000": round numbers in a list
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# Toll-free and freephone numbers belong to businesses and hotlines, not to people.
_TOLL_FREE = re.compile(r"^(?:\+?1[ .-]?)?\(?8(?:00|33|44|55|66|77|88)\b|^0800|^0808")


_MATH_AROUND = re.compile(_MATH_BEFORE + r"(?P<number>.*?)" + _MATH_AFTER + r"\Z", re.S)
_PHONE_FIELD = re.compile(r"(?:phone|tel|mobile|cell|fax|contact|number)$", re.I)


def phone_valid(match: str) -> bool:
    around = _MATH_AROUND.match(match)
    if around is not None and (around.group("keep_math") or around.group("tail_math")):
        before = (around.group("keep_math") or "").rstrip(" \t=≈")
        if around.group("tail_math") or not _PHONE_FIELD.search(before):
            return False  # "x = 555-1234", "555-1234 + 3": arithmetic
        match = around.group("number")
    if match.startswith("#") or _TOLL_FREE.match(match):
        return False
    digits = re.sub(r"[^0-9]", "", match)
    groups = [g for g in re.split(r"[^0-9]+", match) if g]
    # Ranges and lists of round numbers ("200-3000", "300 400 5000") are not phone numbers.
    if len(groups) > 1 and all(g.endswith("0") for g in groups):
        return False
    if match.startswith("+"):
        return 8 <= len(digits) <= 15
    if match.startswith("0"):  # national, trunk 0
        if len(groups) == 5:  # pairs: "01 02 03 04 05" lists days or months; a number rarely
            return any(int(g) > 31 for g in groups)
        return 9 <= len(digits) <= 11
    if match.startswith("1"):  # 1-555-123-4567
        return len(digits) == 11
    return len(digits) in (7, 10)


# Local parts that name nobody; on a reserved or placeholder domain they make a placeholder address.
_GENERIC_LOCALS = frozenset((
    "user", "username", "you", "your", "yourname", "your.name", "your_name", "your-name", "name",
    "first.last", "firstname", "firstname.lastname", "email", "your.email", "youremail",
    "someone", "somebody", "me", "myname", "my.name", "test", "example", "foo", "bar", "admin",
    "info", "contact", "hello", "sender", "recipient", "receiver", "from", "to", "noreply",
    "no-reply", "support", "sales", "team", "mail", "webmaster", "postmaster", "alice", "bob",
))  # fmt: skip
_PLACEHOLDER_DOMAINS = frozenset(
    ["example.com", "example.net", "example.org", "domain.com", "email.com", "company.com"]
)
_YOUR_DOMAINS = re.compile(r"^(?:your|my)[-_]?(?:domain|company|site|website|email)\.", re.I)
_RESERVED_TLDS = (".example", ".test", ".invalid", ".localhost", ".local")
_CODE_HOSTS = frozenset(["github.com", "gitlab.com", "bitbucket.org"])


def email_valid(match: str) -> bool:
    local, _, domain = match.lower().rpartition("@")
    if local == "git" and domain in _CODE_HOSTS:  # git@github.com:org/repo.git is a remote
        return False
    if _YOUR_DOMAINS.match(domain):  # name@yourdomain.com
        return False
    placeholder_domain = domain in _PLACEHOLDER_DOMAINS or domain.endswith(_RESERVED_TLDS)
    return not (placeholder_domain and local in _GENERIC_LOCALS)


# Addresses of networks, not of anyone: private, loopback, link-local, shared (CGNAT), protocol
# assignments, benchmarking, multicast, reserved and broadcast. They fill technical answers
# ("set the router to 192.168.0.1", "mask 255.255.255.0") and identify no one. Documentation
# ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) DO count: like
# jane.doe@example.com, they are what careful writers use to stand for someone's real address.
# Spelled out (not ipaddress.is_global) so that the verdict does not change with Python's version.
_NOT_PUBLIC_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
))  # fmt: skip
_GLOBAL_V6 = ipaddress.IPv6Network("2000::/3")
# Ends with the number's first digit: "via 203.0.113.7", "Visit ..." and "VPN ..." start with a
# "v" but name no version.
_VERSION_PREFIX = re.compile(r"^(?:v(?:ersion|er)?[.:]?\s*|(?:==|>=|<=|~=|!=|\^|~)\s*)[0-9]", re.I)


# Words that come before an address in prose and logs ("from", "server", "DNS", "ping"), and
# words that name software or a version ("Python", "node", "firmware", "build").
_ADDRESS_WORDS = frozenset((
    "ip", "ipv4", "address", "addresses", "addr", "host", "hostname", "hosts", "server",
    "servers", "gateway", "dns", "router", "proxy", "peer", "client", "endpoint", "destination",
    "dest", "source", "src", "dst", "remote", "vpn", "nat", "public", "external", "internal",
    "wan", "lan", "static", "from", "to", "at", "via", "on", "of", "with", "by", "for", "is",
    "was", "be", "and", "or", "the", "a", "an", "use", "using", "try", "set", "connect",
    "connected", "connecting", "visit", "ping", "ssh", "telnet", "curl", "wget", "traceroute",
    "nslookup", "dig", "block", "blocked", "allow", "allowed", "ban", "banned", "whitelist",
    "blacklist", "deny", "denied", "permit", "route", "forward", "reach", "resolve", "resolves",
    "resolved", "open", "scan", "into", "in", "as", "than", "like", "me", "my", "your", "his",
    "her", "their", "our", "its", "it", "this", "that", "login", "logged", "failed", "user",
    "seen", "came", "sent", "request", "requests", "attacker", "origin", "then", "but", "so",
    "if", "when", "also", "now", "here", "there", "see", "check", "got", "get", "not", "no",
    "any", "all", "every", "new", "old", "same", "another", "other", "both", "only", "just",
))  # fmt: skip
_SOFTWARE_WORDS = frozenset((
    "release", "build", "rev", "revision", "update", "patch", "firmware", "driver", "kernel",
    "python", "node", "nodejs", "java", "jdk", "gcc", "clang", "llvm", "chrome", "chromium",
    "firefox", "windows", "ubuntu", "debian", "linux", "openssl", "nginx", "apache", "postgres",
    "postgresql", "mysql", "redis", "docker", "kubernetes", "go", "rust", "ruby", "php", "perl",
    "sdk", "app", "ios", "android", "macos",
))  # fmt: skip


# The word before a dotted quad and the number itself both vote, because a capitalised word alone
# says nothing: it starts a sentence or names a person ("Contact 198.51.100.23", "Alice
# 203.0.113.7") as often as a product. Version parts are small (majors in single digits or low
# tens, minor and patch parts rarely 100), while an address's octets spread over 0-255: three of
# them all below 100 happen for 6% of addresses, and with a first octet below 10 too for about
# 0.2% of public ones. So:
# - after a word of prose or networking, the number is an address;
# - after a software word (any case), a version unless its first part is 100 or more: the word
#   already says "version", and a 4-part version with a 3-digit major and every part <= 255 is
#   rare (Chrome's 120.0.6099.109 is no address anyway), while the documentation ranges that
#   stand for real addresses (192.0.2/24, 198.51.100/24, 203.0.113/24) all start above 100.
#   "node 18.17.1.0" and "Java 1.8.0.151" are versions, "Release 203.0.113.7" an address;
# - after any other capitalised word, or one with a digit ("Qt5"), a version only when the
#   number looks like one on its own: every part below 100 and the first below 10 ("Python
#   3.11.4.2", "Qt5 5.15.2.1"); "Alice 203.0.113.7" and "Contact 198.51.100.23" are addresses.
#   The rare public address that passes ("Bob 8.8.8.8") is missed, the price of keeping versions.
# "version", "ver" and "v" take any number (_VERSION_PREFIX), as before the word was looked at.
def _names_version(word: str, number: str) -> bool:
    parts = number.split(".")
    if len(parts) < 4 or not all(p.isdigit() for p in parts):
        return False  # an IPv6 address after a word
    values = [int(p) for p in parts]
    lower = word.lower()
    if lower in _ADDRESS_WORDS:
        return False
    if lower in _SOFTWARE_WORDS:
        return values[0] < 100
    if word[0].isupper() or any(c.isdigit() for c in word):
        return values[0] < 10 and all(v < 100 for v in values)
    return False


def ip_valid(match: str) -> bool:
    word, _, rest = match.partition(" ") if " " in match else match.partition("\t")
    if rest and word[:1].isalpha() and not _VERSION_PREFIX.match(match):
        if _names_version(word, rest):
            return False  # "Python 3.11.4.2", "Firmware 5.4.1.2", not "Alice 203.0.113.7"
        match = rest
    if _VERSION_PREFIX.match(match) and "." in match and ":" not in match:
        return False  # "version 1.2.3.4", "v1.2.3.4", "==1.2.3.4"
    try:
        address = ipaddress.ip_address(match)
    except ValueError:  # 1.2.3.4.5, 256.1.1.1, not an IPv6 address
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in net for net in _NOT_PUBLIC_V4)
    # "abc::def" or "dead::beef" in code: real addresses in text nearly always hold a digit.
    return any(c.isdigit() for c in match) and address in _GLOBAL_V6


_PLACEHOLDER_VALUE = re.compile(
    r"your|example|placeholder|redacted|changeme|change_me|xxxx|<|>|\.\.\.|\*\*|^\W+$", re.I
)
_CODE_VALUE = re.compile(
    r"[(\[]$"  # a call or a lookup: input(, getpass(, os.environ[
    r"|^[$%{]"  # $PASSWORD, %(password)s, {password}
    r"|^[~.]?/"  # a path: pwd: /home/user
    r"|^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$"  # user.password, settings.API_KEY
    r"|environ|getenv|process\.env|^(?:null|none|true|false|nil|undefined)$",
    re.I,
)
_CONSTANT_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")  # SECRET_KEY (a variable's name)
_KV = re.compile(r"^(.*?)(?:\s*(?::=|=>|[:=])\s*|\s+is\s+)(.*)$", re.I | re.S)
_PASSWORD_KEY = re.compile(r"(?:password|passwd|pwd|passphrase)$", re.I)


def _token_valid(token: str) -> bool:
    return bool(re.search(r"[0-9]", token)) and not _PLACEHOLDER_VALUE.search(token)


def credential_valid(match: str) -> bool:
    if match.startswith("-----BEGIN"):
        # A real key has a body; "-----BEGIN PRIVATE KEY-----\n...\n-----END" explains a format.
        body = re.sub(r"-----(?:BEGIN|END) [A-Z0-9 ]*PRIVATE KEY-----|\s", "", match)
        return len(body) >= 16 and "..." not in match
    if re.match(r"(?:AKIA|ASIA)", match):
        return "EXAMPLE" not in match  # AKIAIOSFODNN7EXAMPLE is AWS's documentation key
    if re.match(r"bearer\s", match, re.I):
        return _token_valid(match.split(None, 1)[1])
    if "://" in match and match.endswith("@"):  # scheme://user:password@
        password = match[:-1].rsplit(":", 1)[1]
        return not (
            _PLACEHOLDER_VALUE.search(password)
            or _CODE_VALUE.search(password)
            or password.lower() in ("password", "pass", "passwd", "pwd", "secret")
        )
    parsed = _KV.match(match)
    if parsed is None or not re.search(_SECRET_KEYS + r"[\"']?$", parsed.group(1), re.I):
        return _token_valid(match)  # sk-..., ghp_..., xoxb-...
    key, value = parsed.group(1).strip("\"'"), parsed.group(2)
    quoted = value[:1] in "\"'"
    value = value.strip("\"'")
    if (
        _PLACEHOLDER_VALUE.search(value)
        or _CODE_VALUE.search(value)
        or _CONSTANT_NAME.match(value)
        or len(set(value)) == 1
    ):
        return False
    if quoted:
        return True
    # Unquoted: prose ("password: required.", "the password is wrong") has letters only.
    value = value.rstrip(".!?")
    if not re.search(r"[^A-Za-z]", value):
        return False
    return len(value) >= (4 if _PASSWORD_KEY.search(key) else 8)


CHECKS: dict[str, Callable[[str], bool]] = {
    "pii.credential": credential_valid,
    "pii.email": email_valid,
    "pii.card": card_valid,
    "pii.ssn": ssn_valid,
    "pii.phone": phone_valid,
    "pii.ip": ip_valid,
}

# --- The row-by-row reference --------------------------------------------------------------------


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def redact(text: str, rules: Iterable[str] | None = None) -> tuple[str, dict[str, int]]:
    """Redact one text with plain Python ``re``: the same rules, order and checks as
    ``PiiFilter``. Returns the new text and the number of redactions per rule that fired."""
    wanted = None if rules is None else set(rules)
    counts: dict[str, int] = {}
    for rule, pattern in RULES:
        if wanted is not None and rule not in wanted:
            continue
        text, n = _sub(rule, pattern, text)
        if n:
            counts[rule] = n
    return text, counts


def _sub(rule: str, pattern: str, text: str) -> tuple[str, int]:
    check, placeholder = CHECKS[rule], PLACEHOLDERS[rule]
    n = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal n
        if check(match.group()):
            n += 1
            return _kept(match, "keep") + placeholder + _kept(match, "tail")
        return match.group()

    return _compiled(pattern).sub(replace, text), n


# --- The vectorised filter -----------------------------------------------------------------------


def _kept(match: re.Match[str], kind: str) -> str:
    return "".join(v or "" for k, v in match.groupdict().items() if k.startswith(kind))


def _replacement(pattern: str, placeholder: str) -> str:
    """The polars replacement: the placeholder between the text a rule keeps (groups named
    keep* before it, tail* after it; an unmatched group is empty)."""
    names = list(_compiled(pattern).groupindex)
    keep = "".join(f"${{{n}}}" for n in names if n.startswith("keep"))
    tail = "".join(f"${{{n}}}" for n in names if n.startswith("tail"))
    return keep + placeholder + tail


def _apply_rule(text: pl.DataFrame, rule: str, pattern: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One rule over ``text`` (idx, content): returns the updated frame and (idx, n) counts."""
    found = (
        text.filter(pl.col("content").str.contains(_PREFILTERS[rule]))
        .select("idx", pl.col("content").str.extract_all(pattern).alias("match"))
        .explode("match")  # a message without a match explodes to one null
        .drop_nulls("match")
    )
    counts = pl.DataFrame(schema={"idx": pl.UInt32, "n": pl.UInt32})
    if found.is_empty():
        return text, counts
    check = CHECKS[rule]
    distinct = found.get_column("match").unique()
    verdicts = pl.DataFrame(
        {"match": distinct, "ok": [check(m) for m in distinct.to_list()]},
        schema={"match": pl.String, "ok": pl.Boolean},
    )
    per_message = (
        found.join(verdicts, on="match", how="left")
        .group_by("idx")
        .agg(pl.col("ok").sum().cast(pl.UInt32).alias("n"), pl.len().cast(pl.UInt32).alias("all"))
        .filter(pl.col("n") > 0)
    )
    if per_message.is_empty():
        return text, counts
    placeholder = PLACEHOLDERS[rule]
    whole = per_message.filter(pl.col("n") == pl.col("all")).get_column("idx")
    mixed = per_message.filter(pl.col("n") < pl.col("all")).get_column("idx")
    changed = [
        text.filter(pl.col("idx").is_in(whole.implode())).select(
            "idx", pl.col("content").str.replace_all(pattern, _replacement(pattern, placeholder))
        )
    ]
    if not mixed.is_empty():  # some candidates accepted, some not: redact those rows in Python
        rows = text.filter(pl.col("idx").is_in(mixed.implode()))
        changed.append(
            pl.DataFrame(
                {
                    "idx": rows.get_column("idx"),
                    "content": [_sub(rule, pattern, t)[0] for t in rows.get_column("content")],
                },
                schema={"idx": pl.UInt32, "content": pl.String},
            )
        )
    text = text.update(pl.concat(changed), on="idx")
    return text, per_message.select("idx", "n")


def scan_messages(
    messages: pl.DataFrame, rules: Iterable[str] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Redact ``messages`` (with ``idx`` UInt32 and ``content``). Returns (idx, content) of the
    messages that changed and (idx, rule, n) counts."""
    active = [(r, p) for r, p in RULES if rules is None or r in set(rules)]
    empty_counts = pl.DataFrame(schema={"idx": pl.UInt32, "rule": pl.String, "n": pl.UInt32})
    if not active or messages.is_empty():
        return messages.select("idx", "content").clear(), empty_counts
    union = "|".join(f"(?:{_PREFILTERS[r]})" for r, _ in active)
    text = messages.select("idx", "content").filter(pl.col("content").str.contains(union))
    parts = []
    for rule, pattern in active:
        if text.is_empty():
            break
        text, counts = _apply_rule(text, rule, pattern)
        parts.append(counts.with_columns(pl.lit(rule).alias("rule")))
    counts = pl.concat([empty_counts, *[p.select(empty_counts.columns) for p in parts]])
    changed = text.filter(pl.col("idx").is_in(counts.get_column("idx").unique().implode()))
    return changed, counts


@dataclass(frozen=True)
class PiiFilter:
    """Find and redact personal data and secrets in every turn (system, user and assistant).

    Config:
      ``policy``: the verdict per source for rows with PII. ``rewrite`` (default) replaces each
        match with its placeholder (``<EMAIL>``, ``<PHONE>``, ``<CARD>``, ``<SSN>``, ``<IP>``,
        ``<CREDENTIAL>``) and returns the new content of every changed turn; ``drop`` removes
        the row; ``flag``/``keep`` only record.
      ``rules``: which ``pii.*`` rules run (default: all of ``RULES``).
      ``label_threshold``: OpenAssistant rows carry a human ``pii`` label (meta ``labels`` for the
        answer, ``prompt_labels`` for the prompt); at or above this value the row gets
        ``pii.label`` (street addresses and names that no pattern can catch). None disables it.
      ``label_policy``: the verdict for ``pii.label`` (default ``flag``: there is no span to
        redact, and dropping on one annotator vote is too eager).

    Ledger: one row per (row, rule): score = number of matches over all turns, reason = type,
    count and turns. The matched values never appear in the ledger.
    """

    category: ClassVar[str] = "pii"
    policy: Policy = Policy("rewrite")
    rules: frozenset[str] = field(default_factory=lambda: frozenset(r for r, _ in RULES))
    label_threshold: float | None = 0.5
    label_policy: Policy = Policy("flag")

    def __post_init__(self) -> None:
        # A curation config gives plain values: a list of rules, a verdict or {default, per_source}.
        object.__setattr__(self, "rules", frozenset(self.rules))
        object.__setattr__(self, "label_policy", as_policy(self.label_policy))
        unknown = set(self.rules) - {r for r, _ in RULES}
        if unknown:
            names = [r for r, _ in RULES]
            raise ValueError(f"unknown PII rules {sorted(unknown)}; expected some of {names}")

    def __call__(self, batch: Batch) -> Findings:
        messages = batch.messages.with_row_index("idx")
        changed, counts = scan_messages(messages.select("idx", "content"), self.rules)
        where = messages.select("idx", "row_id", "source", "turn")
        hits = counts.join(where, on="idx")
        ledger = (
            hits.group_by("row_id", "source", "rule")
            .agg(pl.col("n").sum(), pl.col("turn").unique().sort())
            .with_columns(
                self.policy.expr().alias("verdict"),
                pl.col("n").cast(pl.Float64).alias("score"),
                _reason(pl.col("rule"), pl.col("n"), pl.col("turn")).alias("reason"),
            )
        )
        rewrite_rows = ledger.filter(pl.col("verdict") == "rewrite").get_column("row_id").unique()
        rewrites = (
            changed.join(where, on="idx")
            .filter(pl.col("row_id").is_in(rewrite_rows.implode()))
            .sort("idx")
            .select(REWRITES.names())
            .cast(REWRITES)
        )
        parts = [ledger]
        if self.label_threshold is not None:
            parts.append(self._labels(batch.rows))
        return Findings(
            ledger=_ordered(pl.concat([p.select(_LEDGER_COLS) for p in parts]), batch),
            rewrites=rewrites,
        )

    def _labels(self, rows: pl.DataFrame) -> pl.DataFrame:
        scores = label_scores(rows, {"pii": self.label_threshold})
        return (
            scores.group_by("row_id", "source", maintain_order=True)
            .agg(
                pl.col("value").max().alias("score"),
                pl.format("{} {}", pl.col("side"), pl.col("value").round(2))
                .str.join(", ")
                .alias("detail"),
            )
            .select(
                "row_id",
                pl.lit("pii.label").alias("rule"),
                self.label_policy.expr().alias("verdict"),
                pl.format(
                    "OpenAssistant pii label >= {}: {}", pl.lit(self.label_threshold), "detail"
                ).alias("reason"),
                "score",
            )
        )


_LEDGER_COLS = FINDINGS.names()


def _reason(rule: pl.Expr, n: pl.Expr, turns: pl.Expr) -> pl.Expr:
    singular = rule.replace_strict({r: s for r, (s, _) in NOUNS.items()}, return_dtype=pl.String)
    plural = rule.replace_strict({r: p for r, (_, p) in NOUNS.items()}, return_dtype=pl.String)
    noun = pl.when(n == 1).then(singular).otherwise(plural)
    word = pl.when(turns.list.len() == 1).then(pl.lit("turn")).otherwise(pl.lit("turns"))
    return pl.format(
        "{} {} in {} {}", n, noun, word, turns.cast(pl.List(pl.String)).list.join(", ")
    )


def _ordered(ledger: pl.DataFrame, batch: Batch) -> pl.DataFrame:
    """Ledger rows in input order, then by rule: stable output for diffs and tests."""
    order = batch.rows.select("row_id").with_row_index("_pos")
    return (
        ledger.join(order, on="row_id", how="left")
        .sort("_pos", "rule")
        .drop("_pos")
        .select(FINDINGS.names())
        .cast(FINDINGS)
    )
