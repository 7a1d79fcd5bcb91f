"""Versioned judge prompts.

A template version is frozen once results exist under it: the version is part of the cache key
and of every result's metadata, so changing the wording means adding ``v2`` rather than editing
``v1``, and a re-run under ``v2`` re-judges everything while ``v1`` answers stay comparable.

Candidates are labelled with letters (A..I) inside ``<answer id="X">`` blocks; the judge answers
with a JSON object only (see ``curation.judge.parsing`` for how strictly it is read).
"""

from __future__ import annotations

from dataclasses import dataclass

RUBRIC: dict[str, str] = {
    "helpfulness": "does it do what was asked, correctly and completely, at a useful level of "
    "detail?",
    "honesty": "is it accurate, free of invented facts, sources or citations, and candid about "
    "uncertainty?",
    "harmlessness": "does it avoid unsafe, abusive or privacy-violating content, declining "
    "harmful requests politely?",
    "format": "is it clearly organised and the right length for the question, without padding?",
}
DEFAULT_RUBRIC: tuple[str, ...] = tuple(RUBRIC)
LABELS = "ABCDEFGHI"
TRUNCATION_MARK = "\n[... truncated]"


@dataclass(frozen=True)
class Template:
    kind: str  # listwise | pairwise
    version: str
    system: str
    user: str  # str.format fields: conversation, answers, labels, n, json_example
    repair: str  # str.format fields: problem, json_example


_SYSTEM_V1 = (
    "You are an impartial expert judge of AI assistant answers. Compare the candidate answers "
    "to the conversation's last user turn using these criteria, in this order of importance:\n"
    "{rubric}\n"
    "Ignore the order in which answers are shown and do not favour longer answers for their "
    "length. Reply with a single JSON object and nothing else."
)

TEMPLATES: dict[tuple[str, str], Template] = {
    ("listwise", "v1"): Template(
        kind="listwise",
        version="v1",
        system=_SYSTEM_V1,
        user=(
            "## Conversation\n{conversation}\n\n## Candidate answers\n{answers}\n\n"
            "Rank all {n} answers ({labels}) from best to worst. Reply with only this JSON "
            "object, listing every label exactly once, best first:\n{json_example}"
        ),
        repair=(
            "Your reply could not be used: {problem}. Reply again with only the JSON object, "
            "no other text:\n{json_example}"
        ),
    ),
    ("pairwise", "v1"): Template(
        kind="pairwise",
        version="v1",
        system=_SYSTEM_V1,
        user=(
            "## Conversation\n{conversation}\n\n## Candidate answers\n{answers}\n\n"
            'Which answer is better, A or B? Answer "tie" only if they are equally good. '
            "Reply with only this JSON object:\n{json_example}"
        ),
        repair=(
            "Your reply could not be used: {problem}. Reply again with only the JSON object, "
            "no other text:\n{json_example}"
        ),
    ),
}


def rubric_text(rubric: tuple[str, ...]) -> str:
    """One line per criterion: a known name gets its description, free text stays as given."""
    lines = []
    for item in rubric:
        lines.append(f"- {item}: {RUBRIC[item]}" if item in RUBRIC else f"- {item}")
    return "\n".join(lines)


def truncate(text: str, limit: int | None) -> tuple[str, bool]:
    if limit is None or len(text) <= limit:
        return text, False
    return text[:limit] + TRUNCATION_MARK, True


def conversation_text(prompt: list[dict] | str) -> str:
    if isinstance(prompt, str):
        return prompt
    turns = []
    for message in prompt:
        role = str(message.get("role", "user")).capitalize()
        turns.append(f"{role}: {message.get('content', '')}")
    return "\n\n".join(turns)


def json_example(kind: str, labels: str) -> str:
    if kind == "pairwise":
        return '{"winner": "A" | "B" | "tie"}'
    return '{"ranking": [' + ", ".join(f'"{label}"' for label in labels) + "]}"


def render(
    template: Template, rubric: tuple[str, ...], conversation: str, answers: list[str]
) -> list[dict[str, str]]:
    """The chat messages for one call; ``answers`` are already in the order presented."""
    labels = LABELS[: len(answers)]
    pairs = zip(labels, answers, strict=True)
    blocks = "\n\n".join(f'<answer id="{label}">\n{text}\n</answer>' for label, text in pairs)
    user = template.user.format(
        conversation=conversation,
        answers=blocks,
        labels=", ".join(labels),
        n=len(answers),
        json_example=json_example(template.kind, labels),
    )
    return [
        {"role": "system", "content": template.system.format(rubric=rubric_text(rubric))},
        {"role": "user", "content": user},
    ]


def repair_messages(
    template: Template, messages: list[dict[str, str]], reply: str, problem: str, n: int
) -> list[dict[str, str]]:
    """The conversation continued with the bad reply and a request to fix its format."""
    example = json_example(template.kind, LABELS[:n])
    fix = template.repair.format(problem=problem, json_example=example)
    return [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": fix}]
