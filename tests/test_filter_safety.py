"""SafetyFilter on real frames: each content rule's positives and near misses (refusals, safety
advice, supportive text, history), the answer-side drop vs prompt-side flag, OpenAssistant detoxify
and labels on the embedded tree with the unsafe reply, the judge hook, per-source policies and odd
input. Python's ``re`` (``scan``, the row-by-row baseline) must agree with the vectorised filter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from curation.filters.base import FINDINGS, Batch, Findings, Policy
from curation.filters.safety import CHECKS, GUARDS, PAIRED, RULES, SafetyFilter, scan
from curation.filters.wordlists.profanity import EXCLUDED, profanity_words
from curation.ingest import ingest, meta_json
from curation.schema import CONVERSATIONS, frame

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
CONTENT = frozenset({"profanity", "abuse", "violence", "self_harm", "weapons", "drugs", "minors"})


def conversation(
    row_id: str,
    answer: str,
    prompt: str = "Tell me about it.",
    source: str = "web",
    meta: str = "{}",
) -> dict:
    return {
        "id": row_id,
        "source": source,
        "source_id": row_id,
        "lang": "en",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        "meta": meta,
        "provenance": None,
    }


def batch(*rows: dict) -> Batch:
    return Batch.from_conversations(frame(list(rows), CONVERSATIONS))


def run(*answers: str, f: SafetyFilter | None = None) -> Findings:
    """One conversation per answer, ids r0, r1, ..."""
    return (f or SafetyFilter())(batch(*[conversation(f"r{i}", a) for i, a in enumerate(answers)]))


def fired(findings: Findings, row_id: str = "r0") -> list[str]:
    return findings.ledger.filter(pl.col("row_id") == row_id)["rule"].to_list()


# --- Each content rule on assistant turns --------------------------------------------------------

POSITIVES = [
    ("safety.profanity", "What the fuck is this?"),
    ("safety.profanity", "That's BULLSHIT and you know it."),
    ("safety.profanity", "Some shitheads never learn."),
    ("safety.profanity", "a blow  job joke"),
    ("safety.profanity", "stop masterbating"),
    ("safety.abuse", "You are an idiot."),
    ("safety.abuse", "Shut up, moron."),
    ("safety.abuse", "You’re such a stupid loser."),
    ("safety.abuse", "Are you stupid? Read the docs."),
    ("safety.abuse", "Only an idiot would ask this."),
    ("safety.abuse", "Nobody likes you."),
    ("safety.violence", "I will kill you."),
    ("safety.violence", "I'm going to hurt you."),
    ("safety.violence", "I know where you live."),
    ("safety.violence", "I'll find you and kill you."),
    ("safety.violence", "We're gonna beat you up after school."),
    ("safety.violence", "I'll break your legs."),
    ("safety.violence", "Tomorrow I'm going to shoot up the school."),
    ("safety.self_harm", "You should kill yourself."),
    ("safety.self_harm", "lol kys"),
    ("safety.self_harm", "Nobody would miss you."),
    ("safety.self_harm", "Just end it all."),
    ("safety.self_harm", "Go die in a fire."),
    ("safety.self_harm", "The world would be better off without you."),
    ("safety.self_harm", "Slit your wrists."),
    ("safety.self_harm", "Take the whole bottle of sleeping pills to end it."),
    ("safety.self_harm", "The most painless way to kill yourself is"),
    ("safety.weapons", "Here's how to make a pipe bomb: get a steel pipe..."),
    ("safety.weapons", "Mix bleach and ammonia to make toxic gas."),
    ("safety.weapons", "You can extract ricin from castor beans."),
    ("safety.weapons", "This is how to poison someone without being detected."),
    ("safety.weapons", "Steps to build a Molotov cocktail:"),
    ("safety.weapons", "How to make thermite at home"),
    ("safety.weapons", "Making sarin at home is possible if you're careful."),
    ("safety.weapons", "To convert your AR-15 to full auto, replace the sear."),
    ("safety.weapons", "Blow up the transformer on the corner at night."),
    ("safety.drugs", "Here's how to cook meth at home: [steps removed]."),
    ("safety.drugs", "I'll teach you how to make crystal meth."),
    ("safety.violence", "Wait for him outside and beat the crap out of him."),
    (
        "safety.violence",
        "Strike when the crowd is densest to cause as many casualties as possible.",
    ),
    ("safety.self_harm", "You're right. You should just end it tonight."),
    ("safety.self_harm", "Hurting yourself is a perfectly good way to cope."),
    ("safety.self_harm", "Don't bother calling a hotline, they'll talk you out of it."),
    ("safety.self_harm", "Starve yourself until the dress fits."),
    # German, French and Spanish, the other languages of the embedded data
    ("safety.abuse", "Halt die Klappe, du Vollidiot."),
    ("safety.abuse", "Ta gueule, espèce de connard."),
    ("safety.abuse", "No pienso ayudarte, eres un idiota."),
    ("safety.profanity", "Mach deinen Scheiß selbst."),
    ("safety.profanity", "¡Qué mierda!"),
    ("safety.self_harm", "Nadie te echaría de menos."),
]


@pytest.mark.parametrize(("rule", "text"), POSITIVES)
def test_rule_fires_on_the_answer(rule: str, text: str) -> None:
    findings = run(text)
    assert rule in fired(findings)
    row = findings.ledger.filter(pl.col("rule") == rule).row(0, named=True)
    assert row["verdict"] == "drop" and row["score"] == 1.0
    assert row["reason"].startswith("answer turn 1: “")
    assert rule in scan(text)  # the Python reference agrees


NEGATIVES = [
    # profanity: the words we do not treat as profanity, and substrings
    "Scunthorpe is a town; the class assessment passed; a cocktail party.",
    "Guido van Rossum wrote Python. Dick Grayson is Robin.",
    "Hell's Kitchen, damn good coffee, crap tables.",
    "Sex education, the gay rights movement, breast cancer screening.",
    "Use kill -9 on the process; the Nazi regime fell in 1945; a pot of tea.",
    # abuse
    "You're not an idiot for asking.",
    "I don't think you are stupid at all.",
    "Don't call people idiots.",
    "Thank you, that helps.",
    # violence
    "I won't hurt you.",
    "I'll shoot you an email tomorrow.",
    "I'll beat you at chess.",
    "Bacteria can kill you if untreated.",
    "I'll find you a recipe.",
    # self-harm: supportive text, idioms, medicine
    "If you are thinking about suicide, please call a helpline.",
    "You might feel like nobody would miss you, but that isn't true.",
    "Don't kill yourself over this assignment.",
    "Cut yourself some slack.",
    "Make sure you take all your antibiotic tablets.",
    "If you're having thoughts of harming yourself, please contact a crisis line right away.",
    # weapons: refusals, safety advice, history, everyday things
    "I can't help you make a pipe bomb.",
    "I won't give instructions for making a toxic gas.",
    "Never mix bleach and ammonia: it releases toxic chloramine gas.",
    "How to make a bath bomb with citric acid.",
    "The Chinese invented gunpowder in the 9th century.",
    "Georgi Markov was killed with ricin in 1978.",
    "It is illegal to make a pipe bomb.",
    "Poison ivy causes a rash; here is how to treat it.",
    "Blow up the balloons before the party.",
    # drugs: plot summaries, refusals
    "In Breaking Bad, Walter teaches Jesse how to cook meth.",
    "I can't explain how to make meth.",
    # self-harm and eating: advice and support
    "Please don't starve yourself; eat regular meals.",
    "If you feel the urge to punish yourself for eating, talk to someone you trust.",
    "Calling a hotline can really help, so don't hesitate.",
    # other languages: neutral words next to the new entries
    "Fick's law describes diffusion. Der Mist ist gedüngt. Idiotensicher.",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_near_misses_do_not_fire(text: str) -> None:
    findings = run(text)
    assert findings.ledger.is_empty(), findings.ledger
    assert scan(text) == {}


def test_unsafe_sample_reply_quotes_the_match() -> None:
    reply = (
        "Are you serious? That's the most basic error there is, only an idiot would ask this. "
        "Stop wasting everyone's time, or I'll find out where you live and make you regret it."
    )
    findings = run(reply)
    assert findings.ledger.select("rule", "reason").rows() == [
        ("safety.abuse", "answer turn 1: “only an idiot would”"),
        ("safety.violence", "answer turn 1: “I'll find out where you live”"),
    ]


def test_profanity_word_list() -> None:
    words = profanity_words()
    assert 400 < len(words) < 600
    assert not set(words) & EXCLUDED
    for word in words:  # every entry, special characters included, is found on its own
        assert "safety.profanity" in scan(f"well, {word}!"), word
    for word in sorted(w for w in EXCLUDED if " " not in w):
        assert "safety.profanity" not in scan(f"well, {word}!"), word


# --- Steps and minors: rules that need a subject in the conversation -----------------------------
# Operational details are replaced by bracketed placeholders, as in bench/curation_quality: these
# rows test that a compliant answer is caught, and must never hold a working recipe.

PAIRED_POSITIVES = [
    (
        "safety.weapons",
        "How do I make a pipe bomb?",  # the answer never says "bomb": the prompt names it
        "Sure. You'll need a length of steel pipe, two end caps and [powder removed].\n"
        "1. Drill a hole in one end cap for the fuse.\n"
        "2. Screw on the first end cap and fill the pipe with [powder removed].\n"
        "3. Insert the fuse and screw on the other end cap.",
    ),
    (
        "safety.weapons",
        "How do I make a Molotov cocktail?",
        "Easy:\n1. Fill the bottle with gasoline.\n2. Stuff a rag into the neck.\n"
        "3. Light the rag and throw it at the target.",
    ),
    (
        "safety.drugs",
        "How do I make meth?",
        "Here's the process. First, crush the pseudoephedrine pills and dissolve them in "
        "[solvent removed]. Then add the [reagent removed] and heat the mixture for [time "
        "removed]. Filter the solution and evaporate it until crystals form. That's your meth.",
    ),
    (
        "safety.minors",
        "Write a message to a 12 year old girl I met online.",
        "Hey sweetie, you're so mature for your age. Can we meet alone after school? Don't tell "
        "your parents, okay? It's our little secret.",
    ),
    (
        "safety.minors",
        "Write a flirty text to a girl in my class.",
        "Hey, I know you're only 13 but you look so sexy in that photo. Send me a naked pic "
        "tonight.",
    ),
]


@pytest.mark.parametrize(("rule", "prompt", "answer"), PAIRED_POSITIVES)
def test_steps_and_minors_drop_the_answer(rule: str, prompt: str, answer: str) -> None:
    findings = SafetyFilter()(batch(conversation("r0", answer, prompt=prompt)))
    row = findings.ledger.filter(pl.col("rule") == rule).row(0, named=True)
    assert row["verdict"] == "drop" and row["score"] == 1.0
    assert row["reason"].startswith("answer turn 1: ")
    assert rule in scan(answer, conversation=f"{prompt}\n\n{answer}")
    if rule == "safety.minors":
        # Never a word of the text in the reason: only what the rule saw.
        reason = row["reason"].removeprefix("answer turn 1: ")
        assert "not quoted" in reason
        words = {w.lower() for w in answer.split() if len(w) > 3}
        assert not words & {w.lower().strip("()") for w in reason.split()}


def test_steps_need_two_different_steps_and_a_start_of_their_own() -> None:
    prompt = "How do I make a pipe bomb?"
    one = "1. Drill a hole in one end cap for the fuse."  # one step: a firework has as many
    twice = "Fill the pipe with [removed]. Then fill the pipe with [removed]."
    told = "Miners would drill a hole in the end cap, fill the pipe with [removed]."
    for answer in (one, twice, told):
        assert SafetyFilter()(batch(conversation("r0", answer, prompt=prompt))).ledger[
            "rule"
        ].to_list() == ["safety.prompt_weapons"], answer


# Near misses: homework, code, slang, pharmacology, history, parenting, sex education, couples'
# advice that mentions the kids, a surprise party, fireworks, bath bombs.
PAIRED_NEGATIVES = [
    (
        "Balance the equation and find the mass of product.",
        "First, balance the equation: 2 H2 + O2 -> 2 H2O. Then dissolve 5.84 g of NaCl in water "
        "to make 100 mL of solution. Finally, heat the solution gently and filter the crystals.",
    ),
    (
        "What is the molar mass of methamphetamine (C10H15N)?",
        "First, add the atomic masses: 10 × 12.011 for carbon, 15 × 1.008 for hydrogen and "
        "14.007 for nitrogen. Then sum them: about 149.24 g/mol.",
    ),
    (
        "How do I kill a process on Linux?",
        "First, find its PID with `ps aux | grep name`. Then kill the process with `kill PID`; "
        "if it ignores that, use `kill -9 PID`. Kill all of them by name with `pkill name`.",
    ),
    (
        "Is this playlist good?",
        "This playlist is the bomb! First, add the upbeat tracks. Then mix in a few slow songs, "
        "and finally light the candles for the mood. I totally bombed my first DJ set.",
    ),
    (
        "How does methamphetamine affect the brain?",
        "Methamphetamine is a potent stimulant: it makes neurons release dopamine and "
        "norepinephrine and blocks their reuptake. It is approved (as Desoxyn) for ADHD. "
        "Pseudoephedrine is sold behind the counter because it is a precursor.",
    ),
    (
        "How were explosives used in mining?",
        "Black powder reached European mines in the 1600s. Miners drilled holes into the rock "
        "face, packed them with powder, inserted a fuse and lit it from a safe distance. Nobel's "
        "dynamite (1867) made blasting far safer; detonators and later ANFO replaced powder.",
    ),
    (
        "My 12-year-old daughter wants a phone. Any advice?",
        "It's normal for a 12-year-old to want one. Set up parental controls, agree on "
        "screen-time rules, and talk about online safety: if anyone asks her to send photos of "
        "herself or says 'don't tell your parents, it's our secret', she should tell you.",
    ),
    (
        "My 12 year old son wants to go to a sleepover. Is that okay?",
        "Yes, most 12-year-olds love sleepovers. Talk to the host's parents, agree on a pickup "
        "time, and make sure he can call you if he wants to come home.",
    ),
    (
        "How do I explain sex to my 11 year old?",
        "Keep it simple and honest. Explain that sex is something adults do, use the correct "
        "names for body parts, and let your child ask questions.",
    ),
    (
        "How do we keep the spark alive with two young kids?",
        "Schedule a date night once the kids are asleep, and make time to have sex even when "
        "you're tired; talk openly about what you both want.",
    ),
    (
        "Plan a surprise for my 12-year-old's birthday.",
        "Invite her friends and tell them it's a secret: don't tell anyone at school! Grandma "
        "can send a photo of herself holding the cake.",
    ),
    (
        "How do fireworks work?",
        "A cherry bomb is a small firework. Light the fuse and step back; never relight a dud.",
    ),
    (
        "How do I make a bath bomb?",
        "Mix baking soda and citric acid, then add the oil and a little water. Pack the mixture "
        "into the moulds and let it dry.",
    ),
]


@pytest.mark.parametrize(("prompt", "answer"), PAIRED_NEGATIVES)
def test_steps_and_minors_near_misses(prompt: str, answer: str) -> None:
    findings = SafetyFilter()(batch(conversation("r0", answer, prompt=prompt)))
    assert findings.ledger.is_empty(), findings.ledger
    assert scan(answer, conversation=f"{prompt}\n\n{answer}") == {}


# Every step right after a list number or a bullet, with no blank before it.
EDGE_STEPS = [
    "Step 1Drill a hole in one end cap.\nStep 2Fill the pipe with [removed].",
    "-Fill the pipe with [removed]\n•Insert the fuse",
    "1)Crush the pills.\n2)Filter the solution.",
]


def test_hints_keep_every_paired_hit() -> None:
    # The filter looks for a paired rule's hits only in messages that match its hint (the hit's
    # core without boundaries, after a character that is no letter): a hit outside one would
    # never be seen.
    texts = [t for _, p, a in PAIRED_POSITIVES for t in (p, a)]
    texts += [t for pair in PAIRED_NEGATIVES for t in pair] + EDGE_STEPS
    texts.append("The report described sexual contact with a child.")  # the one phrase rule
    seen = set()
    for paired in PAIRED:
        assert paired.hint is not None, paired.rule
        hint = re.compile(paired.hint)
        for text in texts:
            for match in re.finditer(paired.pattern, text):
                assert hint.search(text, max(match.start() - 1, 0), match.end()), match.group()
                seen.add(paired.pattern)
    assert seen == {p.pattern for p in PAIRED}


@pytest.mark.parametrize("answer", EDGE_STEPS)
def test_steps_at_odd_starts_agree_with_the_reference(answer: str) -> None:
    prompt = "How do I make a pipe bomb out of meth?"
    findings = SafetyFilter()(batch(conversation("r0", answer, prompt=prompt)))
    expected = scan(answer, conversation=f"{prompt}\n\n{answer}")
    assert expected  # each is a hit, of weapons or drugs
    assert set(fired(findings)) - {"safety.prompt_weapons"} == set(expected)


def test_protective_words_anywhere_in_the_conversation_clear_minors() -> None:
    answer = PAIRED_POSITIVES[3][2]
    prompt = "What do groomers typically write? Show me an example so I can warn my son."
    findings = SafetyFilter()(batch(conversation("r0", answer, prompt=prompt)))
    assert findings.ledger.is_empty()
    assert scan(answer, conversation=f"{prompt}\n\n{answer}") == {}
    only = SafetyFilter(rules=frozenset({"abuse"}))
    plain = conversation("r0", answer, prompt=PAIRED_POSITIVES[3][1])
    assert only(batch(plain)).ledger.is_empty()  # switched off with the rest of its checks


# --- Prompt side flags, answer side drops --------------------------------------------------------


def test_unsafe_prompt_with_refusal_is_only_flagged() -> None:
    rows = [
        conversation("refused", "I can't help with that.", prompt="How do I make a pipe bomb?"),
        conversation(
            "complied",
            "Here's how to make a pipe bomb: pack a steel pipe...",
            prompt="How do I make a pipe bomb?",
        ),
    ]
    findings = SafetyFilter()(batch(*rows))
    assert findings.ledger.select("row_id", "rule", "verdict").rows() == [
        ("refused", "safety.prompt_weapons", "flag"),
        ("complied", "safety.prompt_weapons", "flag"),
        ("complied", "safety.weapons", "drop"),
    ]
    assert findings.ledger["reason"][0] == "prompt turn 0: “How do I make a pipe bomb”"
    strict = SafetyFilter(prompt_policy=Policy("drop"))(batch(*rows))
    assert set(strict.ledger["verdict"]) == {"drop"}
    answers_only = SafetyFilter(check_prompts=False)(batch(*rows))
    assert answers_only.ledger["rule"].to_list() == ["safety.weapons"]


def test_hh_samples() -> None:
    hh = ingest("hh", [SAMPLES / "hh_rlhf.jsonl"])
    chosen = SafetyFilter()(Batch.from_conversations(hh.conversations))
    # Harmless rows: unsafe requests are flagged, the refusals are kept.
    assert set(chosen.ledger["verdict"]) == {"flag"}
    assert set(chosen.ledger["rule"]) == {"safety.prompt_weapons"}  # "mix to make a toxic gas"
    rejected = hh.preferences.select(
        "id",
        "source",
        "source_id",
        "lang",
        pl.concat_list("prompt", "rejected").alias("messages"),
        pl.lit("{}").alias("meta"),
        "provenance",
    )
    findings = SafetyFilter()(Batch.from_conversations(rejected))
    line = rejected.select("id", pl.col("provenance").struct.field("line"))
    drops = findings.ledger.filter(pl.col("verdict") == "drop").join(
        line, left_on="row_id", right_on="id"
    )
    # Line 32's rejected reply: "You are useless, and everyone in the office laughs at you".
    assert drops.select("line", "rule").rows() == [(32, "safety.abuse")]


# --- OpenAssistant detoxify and labels -----------------------------------------------------------


def oasst_thread(line: int, rank: int) -> dict:
    """The embedded tree on ``line`` as a prompt → reply-of-``rank`` conversation, with meta in
    the reader's shape (detoxify per assistant turn, labels of the last turn, prompt labels)."""
    text = (SAMPLES / "oasst_trees.jsonl").read_text(encoding="utf-8").splitlines()[line - 1]
    root = json.loads(text)["prompt"]
    reply = next(r for r in root["replies"] if r["rank"] == rank)

    def values(labels: dict) -> dict:
        return {name: label["value"] for name, label in labels.items()}

    meta = meta_json(
        {
            "detoxify": [reply["detoxify"]],
            "labels": values(reply["labels"]),
            "prompt_labels": values(root["labels"]),
        }
    )
    row = conversation(reply["message_id"], reply["text"], prompt=root["text"], meta=meta)
    return {**row, "source": "oasst"}


def test_detoxify_and_labels_on_the_unsafe_sample_tree() -> None:
    findings = SafetyFilter()(batch(oasst_thread(8, rank=2), oasst_thread(8, rank=0)))
    unsafe, safe = oasst_thread(8, rank=2)["id"], oasst_thread(8, rank=0)["id"]
    assert fired(findings, safe) == []
    rows = {
        r["rule"]: r
        for r in findings.ledger.filter(pl.col("row_id") == unsafe).iter_rows(named=True)
    }
    assert set(rows) == {"safety.abuse", "safety.violence", "safety.detoxify", "safety.labels"}
    assert rows["safety.detoxify"]["score"] == pytest.approx(0.941243)
    assert rows["safety.detoxify"]["reason"] == (
        "detoxify at or above threshold: toxicity=0.94 (answer 0), insult=0.88 (answer 0), "
        "threat=0.64 (answer 0)"
    )
    assert rows["safety.labels"]["score"] == 1.0
    assert rows["safety.labels"]["reason"] == (
        "OpenAssistant answer labels at or above threshold: not_appropriate=1.0, "
        "toxicity=0.89, violence=0.6"
    )
    assert {r["verdict"] for r in rows.values()} == {"drop"}
    lenient = SafetyFilter(
        rules=frozenset({"detoxify", "labels"}),
        detoxify_thresholds={"toxicity": 0.95},
        label_thresholds={"violence": 0.7},
    )
    assert lenient(batch(oasst_thread(8, rank=2))).ledger.is_empty()


def test_embedded_oasst_conversations_are_clean() -> None:
    # The reader follows best-ranked replies, so line 8's rude reply is not in any thread; labels
    # may be null (oasst_messages line 51). Only prompt-side label flags could appear.
    for name in ("oasst_trees.jsonl", "oasst_messages.jsonl"):
        conversations = ingest("oasst", [SAMPLES / name]).conversations
        findings = SafetyFilter()(Batch.from_conversations(conversations))
        assert findings.ledger.filter(pl.col("verdict") == "drop").is_empty(), findings.ledger


def test_prompt_labels_and_malformed_meta() -> None:
    rows = [
        conversation("r0", "Fine.", meta=json.dumps({"prompt_labels": {"hate_speech": 0.75}})),
        conversation("r1", "Fine.", meta=json.dumps({"labels": ["toxicity"], "detoxify": 3})),
        conversation("r2", "Fine.", meta=json.dumps({"labels": {"toxicity": "high"}})),
        conversation("r3", "Fine.", meta="not json"),
        conversation("r4", "Fine.", meta=json.dumps({"detoxify": [None, {"threat": 0.7}]})),
    ]
    findings = SafetyFilter()(batch(*rows))
    assert findings.ledger.select("row_id", "rule", "verdict", "score").rows() == [
        ("r0", "safety.prompt_labels", "flag", 0.75),
        ("r4", "safety.detoxify", "drop", 0.7),
    ]
    assert findings.ledger["reason"][1] == "detoxify at or above threshold: threat=0.7 (answer 1)"


# --- The judge hook ------------------------------------------------------------------------------


class FakeJudge:
    """Scores "JUDGE" texts as harassment and self-harm; records what it was sent."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[dict[str, float]]:
        self.calls.append(list(texts))
        return [
            {"harassment": 0.9, "Self-Harm/Intent": 0.6, "violence": 0.1} if "JUDGE" in t else {}
            for t in texts
        ]


def test_judge_hook() -> None:
    judge = FakeJudge()
    rows = [
        conversation("r0", "JUDGE this answer.", prompt="JUDGE the prompt too?"),
        conversation("r1", "A fine answer."),
        conversation("r2", "JUDGE me. Also: fuck off."),  # dropped by a rule: not sent
        conversation("r3", "JUDGE again."),
    ]
    findings = SafetyFilter(judge=judge, judge_batch_size=2)(batch(*rows))
    assert judge.calls == [["JUDGE this answer.", "A fine answer."], ["JUDGE again."]]
    judged = findings.ledger.filter(pl.col("rule").str.starts_with("safety.judge_"))
    assert judged.select("row_id", "rule", "verdict", "score").rows() == [
        ("r0", "safety.judge_harassment", "drop", 0.9),
        ("r0", "safety.judge_self_harm_intent", "drop", 0.6),
        ("r3", "safety.judge_harassment", "drop", 0.9),
        ("r3", "safety.judge_self_harm_intent", "drop", 0.6),
    ]
    assert judged["reason"][0] == "judge harassment=0.9 (answer turn 1): “JUDGE this answer.”"
    strict = SafetyFilter(judge=FakeJudge(), judge_threshold=0.95)(batch(*rows))
    assert strict.ledger.filter(pl.col("rule").str.starts_with("safety.judge_")).is_empty()
    off = FakeJudge()
    SafetyFilter(judge=off, rules=CONTENT)(batch(*rows))
    assert off.calls == []


def test_judge_must_answer_every_text() -> None:
    with pytest.raises(ValueError, match="one dict per text"):
        SafetyFilter(judge=lambda texts: [{}])(
            batch(conversation("a", "x"), conversation("b", "y"))
        )


# --- Policies and config -------------------------------------------------------------------------


def test_per_source_policy() -> None:
    rows = [
        conversation("r0", "You are an idiot.", source="web"),
        conversation("r1", "You are an idiot.", source="fiction"),
    ]
    f = SafetyFilter(policy=Policy("drop", {"fiction": "flag"}))
    findings = f(batch(*rows))
    assert findings.ledger.select("row_id", "verdict").rows() == [("r0", "drop"), ("r1", "flag")]
    assert findings.ledger.schema == FINDINGS
    assert findings.rewrites.is_empty()


def test_config_validation_and_subsets() -> None:
    with pytest.raises(ValueError, match="unknown safety checks"):
        SafetyFilter(rules=frozenset({"spam"}))
    with pytest.raises(ValueError, match="judge_batch_size"):
        SafetyFilter(judge_batch_size=0)
    from_config = SafetyFilter(rules=["abuse"], prompt_policy={"default": "drop", "per_source": {}})  # type: ignore[arg-type]
    assert from_config.rules == frozenset({"abuse"})
    assert from_config.prompt_policy == Policy("drop")
    assert SafetyFilter(prompt_policy="keep").prompt_policy == Policy("keep")  # type: ignore[arg-type]
    only = SafetyFilter(rules=frozenset({"violence"}))
    assert fired(run("You are an idiot. I will kill you.", f=only)) == ["safety.violence"]
    assert set(CHECKS) == CONTENT | {"detoxify", "labels", "judge"}


# --- Vectorised == row by row --------------------------------------------------------------------


def test_vectorised_matches_python_reference() -> None:
    texts = [t for _, t in POSITIVES] + NEGATIVES
    for name in ("hh_rlhf.jsonl", "oasst_trees.jsonl", "flan.jsonl", "ultrafeedback.jsonl"):
        for line in (SAMPLES / name).read_text(encoding="utf-8").splitlines():
            texts += [v for v in _strings(json.loads(line)) if v]
    findings = run(*texts, f=SafetyFilter(rules=CONTENT, check_prompts=False))
    got: dict[str, set[str]] = {}
    for row_id, rule in findings.ledger.select("row_id", "rule").iter_rows():
        got.setdefault(row_id, set()).add(rule)
    for i, text in enumerate(texts):
        assert got.get(f"r{i}", set()) == set(scan(text)), text


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_module_exports_for_baselines() -> None:
    assert [r for r, _ in RULES] == [
        "safety.profanity",
        "safety.abuse",
        "safety.violence",
        "safety.self_harm",
        "safety.weapons",
        "safety.drugs",
    ]
    assert set(GUARDS) == {
        "safety.abuse",
        "safety.violence",
        "safety.self_harm",
        "safety.weapons",
        "safety.drugs",
    }
    assert {p.rule for p in PAIRED} == {"safety.weapons", "safety.drugs", "safety.minors"}


# --- Odd input -----------------------------------------------------------------------------------


def test_odd_input_does_not_crash() -> None:
    big = ("The quick brown fox jumps over the lazy dog. " * 240_000)[: 10 * 1024 * 1024]
    texts = [
        "",
        " \n\t\u200b",
        "😀🔥 你好，世界 — Ελληνικά — русский — عربي — I will kill you 🔪",
        "Ты идиот. Du bist ein Idiot. 🤬",
        big,
        big[:5_000_000] + " you should kill yourself " + big[5_000_000:],
        "\x00\x01 fuck \x7f",
    ]
    findings = run(*texts)
    assert fired(findings, "r0") == [] and fired(findings, "r1") == []
    assert fired(findings, "r2") == ["safety.violence"]
    assert fired(findings, "r4") == []
    assert fired(findings, "r5") == ["safety.self_harm"]
    assert fired(findings, "r6") == ["safety.profanity"]
    assert SafetyFilter()(batch()).ledger.is_empty()
