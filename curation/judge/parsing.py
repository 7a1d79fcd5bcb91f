"""Strict reading of the judge's JSON replies.

Strict means: the reply is one JSON object (a surrounding markdown code fence is tolerated,
because many chat models add one even when told not to), with the expected field and nothing
ambiguous in it. JSON buried in prose is not fished out: a model that answers in prose gets
one repair prompt and is then counted as unparseable, which is what the quality report needs
to see.
"""

from __future__ import annotations

import json
import re

_FENCE = re.compile(r"^```(?:json|JSON)?\s*\n(.*?)\n?```$", re.DOTALL)


class ParseError(ValueError):
    """The reply cannot be used; the message says why, for the repair prompt and the meta."""


def _object(reply: str) -> dict:
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text:
        raise ParseError("the reply was empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParseError(
            f"the reply is not a JSON object ({error.msg} at char {error.pos})"
        ) from None
    if not isinstance(value, dict):
        raise ParseError(f"expected a JSON object, got a JSON {type(value).__name__}")
    return value


def parse_ranking(reply: str, labels: str) -> list[str]:
    """The labels best first; every label of ``labels`` exactly once."""
    value = _object(reply)
    if "ranking" not in value:
        raise ParseError('the JSON object has no "ranking" field')
    ranking = value["ranking"]
    if not isinstance(ranking, list) or not all(isinstance(x, str) for x in ranking):
        raise ParseError('"ranking" must be a list of label strings')
    ranking = [x.strip().strip("[]()").upper() for x in ranking]
    unknown = [x for x in ranking if x not in labels]
    if unknown:
        raise ParseError(f'"ranking" has unknown label(s) {unknown}; labels are {list(labels)}')
    if len(set(ranking)) != len(ranking):
        raise ParseError('"ranking" repeats a label')
    missing = [x for x in labels if x not in ranking]
    if missing:
        raise ParseError(f'"ranking" is missing label(s) {missing}')
    return ranking


def parse_winner(reply: str) -> str:
    """ "A", "B" or "tie"."""
    value = _object(reply)
    if "winner" not in value:
        raise ParseError('the JSON object has no "winner" field')
    winner = value["winner"]
    if not isinstance(winner, str):
        raise ParseError('"winner" must be "A", "B" or "tie"')
    normalised = winner.strip().strip("[]()")
    if normalised.lower() == "tie":
        return "tie"
    if normalised.upper() in ("A", "B"):
        return normalised.upper()
    raise ParseError(f'"winner" must be "A", "B" or "tie", got {winner!r}')
