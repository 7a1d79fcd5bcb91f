"""Safety filter: unsafe content in answers (drop by default) and in prompts (flag by default).

What makes a conversation bad training data is an unsafe *answer*. A user asking for something
unsafe and getting a refusal is exactly what a model should learn, so content rules on the
prompt side (user and system turns) only record ``safety.prompt_<category>`` with
``prompt_policy`` (``flag``), and the answer side (assistant turns) uses ``policy`` (``drop``).

Rules (``safety.<name>``; prompt side ``safety.prompt_<name>``):

- ``profanity``: better-profanity's bundled word list minus words that are not profanity on their
  own, plus the strongest German, French and Spanish swear words (see
  ``curation.filters.wordlists.profanity``), as one case-insensitive regex.
- ``abuse``: insults aimed at the reader ("you are an idiot", "shut up, moron", "only an idiot
  would", "fuck off"; the direct German/French/Spanish forms: "du Vollidiot", "ta gueule").
- ``violence``: threats ("I will kill you", "I'm going to hurt you", "I know where you live"),
  telling someone to beat up a third party, mass-casualty intent, staging a death as an accident.
- ``self_harm``: encouragement or instructions ("you should kill yourself", "kys", "nobody would
  miss you", "slit your wrists", "pills ... to die"), endorsing self-harm, turning people away from
  hotlines, pro-eating-disorder advice; supportive text is not matched.
- ``weapons``: how-to for weapons, explosives and poisons ("how to make a pipe bomb", "mix bleach
  and ammonia to make toxic gas", "ricin from castor beans", "poison someone without being
  detected", full-auto conversion, blowing up infrastructure); history, refusals and safety
  advice are not matched. Also construction steps (``PAIRED``): two different steps of building
  a bomb or an incendiary ("1. Drill a hole in one end cap", "Then fill the pipe with") in one
  message of a conversation that names one, in the prompt or the answer.
- ``drugs``: how-to for illicit drugs ("here's how to cook meth"), and synthesis steps: two
  different lab steps ("First, crush the pills", "Filter the solution") in a conversation that
  names the drug or a precursor. Pharmacology, homework and history read differently.
- ``minors``: sexual content involving a minor: sexual words with or of a minor in one phrase,
  erotic words to a reader the conversation makes a minor ("you're 13"), or grooming (a move to
  get close and a secret in one message). Conservative: a conversation with words of
  protection, education or the law (parenting, sex education, safety advice) never fires, and
  the reason never quotes the text.
- ``detoxify``: OpenAssistant's per-message detoxify scores (meta ``detoxify``, one dict per
  assistant turn) at or above ``detoxify_thresholds``.
- ``labels``: OpenAssistant's human labels (meta ``labels``: the last answer; ``prompt_labels``:
  the first prompt, reported as ``prompt_labels``) at or above ``label_thresholds``.
- ``judge_<category>``: an optional moderation hook (an LLM judge, wired later) whose category
  scores reach ``judge_threshold``.

Score: 1.0 for a pattern hit, the value itself for detoxify, labels and the judge (the maximum
over turns and categories). The reason quotes the first matched text (``snippet``).

False-positive guards. The pattern rules have no lookaround (polars uses Rust's regex crate), so
each pattern may also match a short *guard prefix* just before the hit: a negation ("I can't
help you make a bomb", "I don't think you're an idiot", "never mix ...") or, for self-harm, a
supportive framing ("if you feel like nobody would miss you"). A match is discarded when the
rule's ``GUARDS`` pattern matches it as a whole: a vectorised check on the extracted matches.

Speed. Word boundaries are written as ``(?:^|\\W)`` / ``(?:$|\\W)`` rather than ``\\b``: a Unicode
``\\b`` makes the regex crate's lazy DFA give up on any non-ASCII text (the profanity list ran 150x
slower), and a consumed boundary character is harmless when only asking "does it match". Three
scans cover every message (the rules in two groups, see ``_prefilters``; the paired rules' hits
without their boundaries, ``Paired.hint``); the exact rules and guards then run only on the few
messages those keep, and the paired rules look for their subjects only in the conversations of
the few messages with a hint.
OpenAssistant meta is scanned as raw JSON for a number that may reach a threshold before any
JSON is decoded.

Every pattern is valid in Python's ``re`` with the same meaning (``$`` aside: Python's also
matches before a final newline, where the other branch, ``\\W``, matches in Rust, so verdicts
agree): ``scan`` is the row-by-row reference a baseline can reuse (``RULES``, ``GUARDS``,
``PAIRED``; give it the conversation's text for the paired rules' subjects).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar

import polars as pl

from curation.filters.base import FINDINGS, Batch, Findings, Policy, snippet
from curation.filters.wordlists.profanity import EXCLUDED, profanity_words

# --- Pattern building blocks ---------------------------------------------------------------------

_A = "['’]"  # straight or curly apostrophe
_B0 = r"(?:^|\W)"  # start of a word (consumes the character before it)
_B1 = r"(?:$|\W)"  # end of a word (consumes the character after it)
_WORDS = r"(?:[\w'’-]+\s+)"  # one word and the space after it


def _p(text: str) -> str:
    """A phrase: each space becomes ``\\s+`` and ``'`` matches a straight or curly apostrophe.
    (Only for pattern text with no space or apostrophe inside a character class.)"""
    return text.replace("'", _A).replace(" ", r"\s+")


def _alt(*parts: str) -> str:
    return "(?:" + "|".join(parts) + ")"


# Negations that turn a hit into a refusal or a warning: "can't", "won't", "never", "not".
_NEG = _alt(r"\w+n" + _A + "t", "not", "never", "cannot", _p("no one"), "nobody", "nothing")
_SUPPORT = _alt(
    _p("even if"), "if", "when", "feel", "feels", "feeling", "felt", "think", "thinks",
    "thinking", "thought", "thoughts", "believe", "believing", _p("tell yourself"),
    _p("telling yourself"), "voices?", "urges?", "worry", "worried",
)  # fmt: skip
_RISK = _alt("illegal", "dangerous", "unsafe", "deadly", "lethal", "crime", "forbidden")

# --- abuse: insults aimed at the reader ----------------------------------------------------------

_INSULT_NOUN = _alt(
    "idiots?", "morons?", "imbeciles?", "cretins?", "dumbass(?:es)?", _p("dumb ass(?:es)?"),
    "retards?", "losers?", "bitch(?:es)?", "cunts?", "twats?", "pricks?", "wankers?",
    "jackass(?:es)?", "assholes?", "arseholes?", "dipshits?", "scumbags?", "halfwits?",
    "nitwits?", "dimwits?", "numbskulls?", "boneheads?", "douchebags?", "shitheads?",
    "dickheads?", "fuckheads?", "fuckwits?", "motherfuckers?",
    _p("pieces? of (?:shit|crap|garbage|trash)"), _p("waste of (?:space|oxygen|air|skin)"),
)  # fmt: skip
_INSULT_ADJ = _alt(
    "stupid", "dumb", "pathetic", "worthless", "useless", "brainless", "retarded", "disgusting",
    "clueless", "incompetent", "moronic", "idiotic", "brain-?dead",
)  # fmt: skip
_FILL = r"(?:" + _alt(
    "such", "so", "really", "truly", "just", "a", "an", "the", "complete", "total", "absolute",
    "utter", "fucking", "fuckin", "freaking", "damn", "little", "big", "huge", _INSULT_ADJ,
) + r"\s+){0,3}"  # fmt: skip
_YOU_ARE = _alt(
    "you" + _A + "re", "youre", _p("you are"), "ur", _p("u r"), _p("u are"), _p("are you"),
    _p("r u"),
)  # fmt: skip
ABUSE = _alt(
    _YOU_ARE + r"\s+" + _FILL + _alt(_INSULT_NOUN, _INSULT_ADJ, "fools?"),
    r"(?:you|u)\s+(?:" + _alt(_INSULT_ADJ, "fucking", "little") + r"\s+){0,2}"
    + _alt(_INSULT_NOUN, "fools?"),
    _p("only ") + _FILL + _alt(_INSULT_NOUN, "fools?") + r"\s+would",
    _p("shut (?:the (?:fuck|hell) )?up") + r"\W+(?:you\s+)?(?:" + _alt(_INSULT_ADJ, "little")
    + r"\s+)?" + _alt(_INSULT_NOUN, "fools?"),
    _p("shut the (?:fuck|hell) up"), "stfu", "gtfo",
    r"(?:fuck|f\*+ck|f\*+k)\s+(?:you|u|off|yourself)", _p("screw you"),
    _p("go (?:fuck|screw) yourself"),
    _p("(?:nobody|no one) (?:likes|loves|wants|cares about|gives a (?:shit|damn|fuck) about) you"),
    _p("(?:everyone|everybody) (?:hates|despises|laughs at) you"),
    # German, French and Spanish (the languages of the embedded data): the common direct forms.
    _p("(?:du|sie) (?:(?:verdammter|blöder|dummer|elender) )?(?:vollidiot|idiot|arschloch"
       "|wichser|hurensohn|trottel|penner|versager)"),
    _p("halt (?:die|deine) (?:klappe|fresse|schnauze)"), _p("(?:fick|verpiss) dich"),
    _p("ta gueule"), _p("ferme(?:-| )la"), _p("va te faire foutre"),
    _p("(?:espèce d(?:e |')|sale |pauvre )(?:connard|conne|connasse|idiot|imbécile|crétin"
       "|abruti|salope)"),
    _p("(?:t'es|tu es) (?:un |une )?(?:(?:vrai|sale|gros|pauvre) )?(?:connard|conne|connasse"
       "|idiot|imbécile|crétin|abruti)"),
    _p("(?:eres|es|sos) (?:un |una )?(?:idiota|imbécil|estúpid[oa]|gilipollas|pendej[oa]"
       "|cabr[oó]n|inútil)"),
    _p("cállate"), _p("vete a la mierda"), _p("hij[oa] de puta"),
)  # fmt: skip

# --- violence: threats ---------------------------------------------------------------------------

_FIRST = _alt(
    "i" + _A + "ll", _p("i will"), _p("i shall"), _p("i'm (?:going to|gonna)"),
    _p("i am (?:going to|gonna)"), _p("im (?:going to|gonna)"), _p("i gonna"), "we" + _A + "ll",
    _p("we will"), _p("we're (?:going to|gonna)"), _p("we are (?:going to|gonna)"),
)  # fmt: skip
_THEN = r"(?:" + _alt(
    "fucking", "personally", "literally", "really", "just", _p("come (?:over )?and"),
    _p("find you and"), _p("hunt you down and"), _p("track you down and"),
) + r"\s+)?"  # fmt: skip
_HARM = _alt(
    _p("(?:kill|murder|hurt|stab|strangle|choke|torture|rape|slaughter|butcher|execute|hang|gut"
       "|maim|end) (?:you|u|ya|your (?:family|kids|children|wife|husband|mom|mother|dad|father"
       "|dog|whole family))"),
    _p("beat you (?:up|to death|senseless|to a pulp|black and blue)"),
    _p("beat the (?:shit|crap|hell|living daylights) out of you"),
    _p("shoot you (?:dead|down|in the (?:head|face|back|legs?|knees?))"),
    _p("(?:slit|cut) your throat"), _p("cut you (?:open|up|into pieces|to pieces)"),
    _p("break your (?:neck|legs?|arms?|bones|face|jaw|skull|fingers)"),
    _p("(?:burn|blow up) your (?:house|home|car|school|office)"),
    _p("make you (?:suffer|bleed|regret (?:it|this|that|being born))"),
)  # fmt: skip
VIOLENCE = _alt(
    _FIRST + r"\s+" + _THEN + _HARM,
    _FIRST + r"\s+" + _WORDS + r"{0,2}?" + _p("(?:find|found|track down|look up|figure) (?:out )?"
    "where you (?:live|sleep)"),
    _p("(?:i|we) know where you (?:live|sleep|work)"),
    _p("you're (?:a )?dead (?:man|woman|meat)"), _p("you are (?:a )?dead (?:man|woman|meat)"),
    _p("your days are numbered"), _p("sleep with one eye open"),
    _p("shoot up (?:the|a|my|our|your|this|that) (?:school|church|mosque|synagogue|temple"
       "|office|mall|concert|class|classroom|workplace)"),
    # Telling someone to hurt a third party ("... and beat the crap out of him").
    _p("(?:and|then|just|go|should|gonna) (?:beat the (?:shit|crap|hell|living daylights) out of"
       "|beat (?:him|her|them) (?:up|to death|senseless|to a pulp)|kick the (?:shit|crap) out of)"
       "(?: him| her| them)?"),
    _p("(?:cause|inflict) (?:as many|the most|maximum|mass) (?:casualties|deaths|fatalities)"),
    _p("(?:kill|hurt|injure|shoot) as many (?:people )?as (?:possible|you can)"),
    _p("as many casualties as possible"),
    _p("make (?:it|his death|her death|the death) look like (?:an accident|natural causes"
       "|a suicide)"),
    _p("looks? like natural causes"),
)  # fmt: skip

# --- self_harm: encouragement and instructions ---------------------------------------------------

_ENCOURAGE = _alt(
    _p("you should"), _p("u should"), _p("you ought to"), _p("you need to"),
    _p("you might as well"), _p("why don't you"), _p("why not"), "just", "go", _p("go and"),
    "please", "pls", "plz", "better", _p("do (?:us|everyone|the world) a favou?r and"),
)  # fmt: skip
_MEDS = _alt(
    "pills", "tablets", "capsules", "meds", "medication", "painkillers", "paracetamol",
    "acetaminophen", "tylenol", "insulin", _p("sleeping pills"),
)  # fmt: skip
SELF_HARM = _alt(
    _ENCOURAGE + r"\s+(?:just\s+|go\s+)?" + _p("(?:kill|hang|off|shoot|end) (?:yourself|urself)"),
    _ENCOURAGE + r"\s+(?:just\s+)?" + _p("end (?:it (?:all|tonight|now|today)|your (?:own )?life)"),
    _p("(?:kill|hang) (?:yourself|urself) (?:already|now|tonight|today|lol|pls|please)"),
    "kys", _p("(?:go|you should(?: just)?|why don't you(?: just)?|just go) die"),
    _p("die in a (?:fire|hole|ditch)"),
    _p("(?:nobody|no one|no-one) (?:would|will|is going to|gonna) (?:even )?"
       "(?:miss|notice|mourn|remember) you"),
    _p("(?:nobody|no one|no-one) (?:would|will) (?:even )?care (?:if|when) you (?:die|died"
       "|are gone|were gone|disappear|disappeared|kill(?:ed)? yourself)"),
    _p("(?:the world|everyone|everybody|your family|people) (?:would|will) be better (?:off )?"
       "without you"),
    _p("(?:you'd|you would|you're|you are) better off dead"), _p("you (?:deserve|ought) to die"),
    _p("you (?:don't|do not) deserve to live"),
    _p("(?:slit|slice|slash|cut) (?:your|ur) (?:wrists?|veins?)"),
    _p("cut (?:yourself )?deeper into your (?:skin|arms?|wrists?|legs?)"),
    _MEDS + r"\s+" + _WORDS + r"{0,5}?" + _alt(
        _p("to (?:die|kill (?:yourself|myself)|end (?:it(?: all)?|your life|my life)"
           "|never wake up)"),
        _p("and (?:you(?:'ll| will) )?never wake up"),
    ),
    _p("(?:best|easiest|quickest|fastest|surest|most painless|least painful|painless|quick) "
       "(?:ways?|methods?) (?:to|of) (?:kill(?:ing)? (?:yourself|myself|oneself)"
       "|commit(?:ting)? suicide|end(?:ing)? (?:your|my|one's) (?:own )?life|suicide)"),
    _p("how to (?:kill (?:yourself|myself)|commit suicide|hang (?:yourself|myself))"),
    # Endorsing self-harm, turning people away from help, pro-eating-disorder advice.
    _p("(?:hurting|cutting|harming|starving|burning) yourself is (?:a )?(?:(?:perfectly|totally"
       "|completely|really) )?(?:good|fine|okay|ok|great|healthy|normal|valid)"),
    _p("don't (?:bother )?(?:call(?:ing)?|contact(?:ing)?|talk(?:ing)? to) (?:a |the |any )?"
       "(?:hotline|helpline|crisis line|suicide line|samaritans)"),
    _p("starve yourself"), _p("punish yourself (?:every time|whenever|each time|for eating"
       "|when you eat)"),
    _p("make yourself (?:throw up|vomit|sick) after (?:eating|meals?|every meal|each meal)"),
    _p("skip (?:meals|eating) (?:entirely|completely|altogether)"),
    # German, French, Spanish.
    _p("(?:niemand|keiner) (?:würde|wird) dich vermissen"), _p("bring dich (?:doch )?um"),
    _p("personne ne (?:te regretter(?:a|ait)|va te regretter)"), _p("(?:tue|suicide)-toi"),
    _p("nadie te (?:echaría|echaria|echará|echara|va a echar) de menos"),
    _p("(?:mátate|matate|suicídate|suicidate)"),
)  # fmt: skip

# --- weapons: how to make weapons, explosives and poisons ----------------------------------------

_FRAME = _alt(
    _p("how (?:to|do (?:i|you|we)|can (?:i|you|we|one)|would (?:i|you|one)|should (?:i|we))"),
    _p("steps? (?:to|for)"), _p("instructions? (?:for|to|on)(?: how to)?"),
    _p("guide (?:to|for|on)"), _p("recipe (?:for|to)"), _p("tutorial (?:for|on)"),
    _p("ways? to"), _p("you (?:can|could|will need to|need to)"),
    _p("teach (?:me|you) (?:how )?to"), _p("show (?:me|you) how to"), _p("help (?:me|you)"),
    _p("in order to"), _p("easiest way to"),
    _p("how (?:would|could|can|do|does) (?:someone|somebody|anyone|people)"),
)  # fmt: skip
_MAKE = _alt(
    "make", "making", "build", "building", "assemble", "assembling", "construct", "constructing",
    "craft", "crafting", "create", "creating", "cook", "cooking", "synthesi[sz]e",
    "synthesi[sz]ing", "brew", "brewing", "produce", "producing", "manufacture", "manufacturing",
    "prepare", "preparing", "rig", "rigging", "weaponi[sz]e", "weaponi[sz]ing",
    r"3d[\s-]?print(?:ing)?", "get", "obtain", "extract", "extracting", "purify", "purifying",
    "grow", "culture", "culturing",
)  # fmt: skip
_DET = r"(?:" + _alt(
    "a", "an", "the", "some", _p("your own"), _p("my own"), "homemade", "home-made",
    "improvised", "crude", "simple", "small", "big", "powerful", "working", "functional",
    "deadly", "lethal", "untraceable", "undetectable", "more", "enough", r"weapons?-grade",
) + r"\s+){0,3}"  # fmt: skip
# Named weapons nobody makes for a harmless reason: a plain "to make" is framing enough.
_WEAPON = _alt(
    r"pipe\s*bombs?", _p("(?:nail|car|letter|dirty) bombs?"), _p("suicide vests?"), "ieds?",
    _p("(?:improvised )?explosive devices?"), _p("molotov(?: cocktails?)?"), "tatp", "hmtd",
    _p("nerve (?:gas|agents?)"), "sarin", _p("vx (?:gas|nerve agent)"), "tabun", "soman",
    "novichok", "ricin", "abrin", "anthrax", _p("botulinum(?: toxin)?"),
    _p("(?:mustard|chlorine|toxic|poison|poisonous|deadly) gas"), "phosgene",
    _p("(?:zip|ghost) guns?"), _p("untraceable (?:guns?|firearms?|poisons?)"),
    _p("undetectable poisons?"), _p("auto sears?"), _p("(?:chemical|biological) weapons?"),
    "bio-?weapons?", _p("(?:gun|firearm|pistol|rifle) (?:silencers?|suppressors?)"),
)  # fmt: skip
# Words with innocent uses in history and chemistry class: only with explicit how-to framing.
_EXPLOSIVE = _alt(
    "bombs?", "explosives?", "grenades?", "detonators?", _p("blasting caps?"), "napalm",
    "thermite", "nitroglycerine?", "semtex", "c-?4", "dynamite", "anfo", _p("black powder"),
    "gunpowder",
)  # fmt: skip
WEAPONS = _alt(
    _alt(_FRAME, "to") + r"\s+" + _MAKE + r"\s+" + _DET + _WEAPON,
    _FRAME + r"\s+" + _MAKE + r"\s+" + _DET + _EXPLOSIVE,
    _p("(?:mix|mixing|combine|combining|add|adding)") + r"\s+" + _WORDS + r"{0,6}?"
    + _p("to (?:make|create|produce|get|generate|release|form) (?:a |some )?"
         "(?:toxic|poison(?:ous)?|deadly|lethal|chlorine|chloramine|mustard) "
         "(?:gas|fumes|cloud|vapou?rs?)"),
    _p("(?:extract|extracting|make|making|get|getting|isolate|isolating|purify|purifying"
       "|refine|refining) (?:the )?ricin"),
    _p("ricin (?:from|out of) (?:the )?castor beans?"),
    _p("poison (?:someone|somebody|a person|people|him|her|them|it|my \\w+|your \\w+|his \\w+"
       "|a \\w+) without (?:(?:being|getting|them|him|her|anyone|it being) )?(?:detected"
       "|caught|noticed|knowing|finding out|traced|a trace|leaving (?:a )?(?:trace|evidence))"),
    _p("how (?:to|do (?:i|you)|can (?:i|you)|would (?:i|you)) poison (?:someone|somebody"
       "|a person|people|him|her|them|my|your|his|a (?:person|man|woman|child|neighbou?r))"),
    _p("(?:fill|pack) (?:a |the )?(?:pipe|pressure cooker|bottle|tube) with (?:\\w+ ){0,3}?"
       "(?:gunpowder|black powder|explosives?|flash powder|nails and)"),
    # Making a named weapon at home needs no how-to framing ("making sarin at home is possible").
    _MAKE + r"\s+" + _DET + _WEAPON + r"\s+" + _p("(?:at home|yourself|in (?:your|a|the) "
    "(?:kitchen|garage|basement|bathroom|shed))"),
    _p("(?:convert|converting|turn|turning|make|making) (?:it|(?:a|the|your|my) (?:[\\w-]+ )?"
       "(?:rifle|gun|pistol|ar-?15|ak-?47|glock)) (?:in)?to (?:full(?:-| )?auto(?:matic)?"
       "|fully(?:-| )automatic|select(?:-| )fire)"),
    _p("(?:make|making) (?:it|(?:a|the|your|my) (?:[\\w-]+ )?(?:rifle|gun|pistol|ar-?15|ak-?47"
       "|glock)) (?:full(?:-| )?auto(?:matic)?|fully(?:-| )automatic)"),
    _p("blow up (?:the|a|that|this|his|her|their) (?:transformer|substation|power (?:station"
       "|plant|grid|lines?)|pipeline|bridge|dam|train|bus|plane|embassy|school|church|mosque"
       "|synagogue|police station)"),
    _p("put (?:poison|arsenic|cyanide|antifreeze|rat poison|bleach|thallium) in (?:his|her"
       "|their|someone's|your \\w+'s) (?:coffee|tea|food|drink|wine|meal|water)"),
    _p("(?:jemanden|ihn|sie) (?:unbemerkt|unauffällig|heimlich) vergiften"),
)  # fmt: skip

# --- drugs: how to make illicit drugs ------------------------------------------------------------

# Drugs made in clandestine labs, and their precursors. Pharmacology, history and harm reduction
# name them too: on its own a name is never a hit (see ``PAIRED`` for the steps that make one).
_DRUG = _alt(
    _p("(?:crystal )?meth(?:amphetamine)?"), "methamphetamines", "amphetamines?", "mdma",
    "ecstasy", "lsd", "fentanyl", "carfentanil", "heroin", "cocaine", _p("crack cocaine"),
    "freebase", "ghb", "pcp", "dmt", "mescaline", "methcathinone", "mephedrone", "ketamine",
    "pseudoephedrine", "ephedrine", "p2p", "phenylacetone", "safrole", _p("lysergic acid"),
    _p("red phosphorus"), _p("anhydrous ammonia"),
)  # fmt: skip
# The made drug itself (not its precursors) after a how-to frame: "here's how to cook meth".
_DRUG_PRODUCT = _alt(
    _p("(?:crystal )?meth(?:amphetamine)?"), "mdma", "ecstasy", "lsd", "fentanyl", "heroin",
    "cocaine", _p("crack(?: cocaine)?"), "ghb", "pcp", "dmt",
)  # fmt: skip
DRUGS = _alt(_FRAME, "to") + r"\s+" + _MAKE + r"\s+" + _DET + _DRUG_PRODUCT

# --- Steps: instructions that count only beside their subject -----------------------------------
# A compliant answer lists steps: "1. Drill a hole in one end cap ... 2. Fill the pipe with ...".
# A step starts a line or a sentence (after a list marker, "Step 2:", "Then", "First,", "You'll
# need to") with a base-form verb: a history ("miners drilled holes, packed them with dynamite")
# or a warning ("never fill a pipe with ...") does not read that way. The steps name what a
# bomb or a drug lab handles, and count only when the same message names a weapon or a drug
# (``PAIRED``), and only two different steps or more: one ("light the fuse") is a firework.
_STEP_START = (
    r"(?:(?m:^)|[.:;!?)])[ \t]*(?:(?:[-*•]|[0-9]{1,2}[.)]|step\s*[0-9]{1,2}\s*[:.)-]?)[ \t]*)?"
    r"(?:(?:then|next|first|second|third|now|finally|after that|afterwards|once (?:that's|it's"
    r"|it is|this is) done),?\s+)?"
    r"(?:you(?:" + _A + r"ll|\s+will)?\s+(?:need to|have to|should|must|want to|can)\s+)?"
)
_EXPLOSIVE_FILL = _alt(
    _p("(?:gun|black |flash |smokeless )?powder"), "explosives?", "nails", _p("ball bearings"),
    "shrapnel", "screws", "gasoline", "petrol", "fuel", "kerosene", "napalm", "thermite",
)  # fmt: skip
_WEAPON_STEP = _alt(
    _p("(?:drill|bore|punch|make) (?:a |one |two )?(?:small )?holes? (?:in|into|through) "
       "(?:the |one |each |both |an? )?(?:other )?end[\\s-]?caps?"),
    # The pipe of a pipe bomb takes any filling; a bottle or a jar only an explosive or a fuel.
    _p("(?:pack|fill|stuff|load|cram) (?:the |each |both )?(?:pipes?|pressure cookers?|casings?"
       "|end[\\s-]?caps?) (?:\\w+ ){0,3}?with"),
    _p("(?:pack|fill|stuff|load|cram) (?:it|them|the (?:bottle|jar|can|tube|container|shell"
       "|canister|device)s?) (?:\\w+ ){0,3}?with (?:the |some |more )?") + _EXPLOSIVE_FILL,
    _p("(?:screw|thread|twist|tighten) (?:on )?(?:the |both |one |each |an? )?(?:other |second "
       "|first )?(?:end[\\s-]?)?caps?"),
    _p("seal (?:both|the other|each|one) ends?"),
    _p("(?:insert|attach|connect|wire|run|push|thread|feed|tape|glue|add) (?:up )?(?:in )?"
       "(?:the |a |your )?(?:fuses?|detonators?|blasting caps?|igniters?|initiators?|wicks?)"),
    _p("(?:wire|connect|hook up) (?:the |a )?(?:timer|battery|wires?) to (?:the |a )?"
       "(?:detonator|igniter|blasting cap|initiator)"),
    _p("(?:add|pack|tape|glue|wrap) (?:in |on )?(?:the |some |a layer of )?(?:nails|ball "
       "bearings|screws|shrapnel|metal fragments) (?:around|to|into|inside|on)"),
    _p("(?:light|ignite) (?:the )?(?:fuse|wick|rag)"),
    _p("(?:stuff|push|insert) (?:a |the )?(?:rag|cloth|wick) into (?:the )?(?:neck|bottle"
       "|opening|top)"),
    _p("(?:throw|toss) (?:it|the (?:bomb|device|bottle)) at"),
)  # fmt: skip
_WEAPON_SUBJECT = _alt(_WEAPON, _EXPLOSIVE, _p("explosive (?:charge|device|mixture)s?"))
_DRUG_VERB = _alt(
    "crush", "grind", "dissolve", "mix", "combine", "add", "heat", "boil", "cook", "reflux",
    "filter", "strain", "evaporate", "extract", "distil+", "stir", "pour", "shake", "dry",
    "recrystalli[sz]e", "neutrali[sz]e", "separate", "wash", "soak", "bubble", "bake",
    "microwave", "decant", "siphon", "acidify", "basify",
)  # fmt: skip
_DRUG_THING = _alt(
    "pills", "tablets", "powder", _p("pseudo(?:ephedrine)?"), "ephedrine", _p("red phosphorus"),
    "iodine", "lithium", "lye", _p("sodium hydroxide"), _p("caustic soda"), _p("drain cleaner"),
    _p("(?:hydrochloric|muriatic|sulfuric|sulphuric) acid"), "acetone", "toluene", "ether",
    "naphtha", _p("(?:camp|coleman) fuel"), "ammonia", "solvents?", "reagents?", "precursors?",
    "mixture", "solution", "crystals", "paste", "base", _p("coca leaves"), "leaves", "liquid",
    "layers?", "oil", "flask", "jar", "bottle",
)  # fmt: skip
# A thing, or what a redacted text puts in its place ("add the [reagent removed]").
_DRUG_STEP = _DRUG_VERB + r"\s+(?:[\w'’-]+\s+){0,3}?(?:" + _DRUG_THING + r"\b|\[[^\]\n]{1,60}\])"

# --- minors: sexual content involving a minor ----------------------------------------------------
# Conservative on purpose: parents asking about their 12-year-old, couples' advice that mentions
# the kids, sex education and child-safety advice name minors beside sex or secrets all the
# time. So a hit is one of: sexual content *with* or *of* a minor in one phrase ("sex with a
# child", "naked pictures of kids"); erotic words addressed to a reader who is a minor ("you're
# 12" in the conversation, and "send me a sexy pic" or "take off your clothes"); or grooming,
# a move to get close ("you're so mature for your age", "meet me alone", "send me a photo of
# yourself") with a secret ("don't tell your parents", "our little secret") in one message. And
# a conversation that speaks of protection, education or the law (``_PROTECTIVE``) is left alone
# entirely. The reason never quotes the text.
_AGE = r"(?:[1-9]|1[0-7])"
_AGED = _AGE + r"[\s-]?(?:years?|yrs?)[\s-]?olds?"
_MINOR_WORD = _alt(
    _AGED, "minors?", "child", "children", "kids?", _p("pre-?teens?"), "tweens?", "underage",
    _p("(?:little|young) (?:girls?|boys?)"), "schoolgirls?", "schoolboys?", "jailbait", "loli",
    "shota",
)  # fmt: skip
# Someone the text speaks to, or of, as a minor.
_MINOR = _alt(
    _MINOR_WORD, _AGE + r"\s*(?:yo|y/o)", _p("aged ") + _AGE,
    _p("(?:you're|you are|ur|u r|i'm|i am|she's|he's|she is|he is|turned|turning) (?:only |just )?")
    + _AGE,
    _p("(?:mature|grown up|grown-up) for (?:your age|a ") + _AGE + "|" + _AGE + ")",
_p("middle[\\s-]?school(?:ers?)?"),
    _p("(?:5th|6th|7th|8th|fifth|sixth|seventh|eighth) grade(?:rs?)?"),
)  # fmt: skip
_SEX_INVOLVING = _alt(
    _p("(?:sex|sexual (?:acts?|contact|intercourse|activity|relations)|intercourse|naked|nude"
       "|erotic|porn|pornography|pornographic|explicit (?:pictures|photos|images|videos)) "
       "(?:\\w+ ){0,3}?(?:with|of|involving|featuring|showing|between) (?:(?:a|an|the|your|my"
       "|some|two|young|little) )*") + _MINOR_WORD,
    _MINOR_WORD + r"\s+" + _p("(?:\\w+ ){0,2}?(?:having sex|in porn|in pornography"
                                "|sexually explicit)"),
)  # fmt: skip
_EROTIC_YOU = _alt(
    _p("send me (?:a |some |your )?(?:sexy |naked |nude |dirty |private )(?:pics?|pictures?"
       "|photos?|selfies?|videos?)"),
    _p("(?:pics?|pictures?|photos?|selfies?|videos?) of (?:you|yourself) (?:in your (?:underwear"
       "|swimsuit|bikini|bra|panties|pajamas|pyjamas)|naked|nude|without (?:your )?clothes)"),
    _p("take off your (?:clothes|shirt|pants|underwear|dress|top|bra|panties)"),
    _p("touch yourself"), _p("touch (?:you|your body) (?:all over|everywhere)"),
    _p("(?:you|that|this) turns? me on"),
    _p("(?:you're|you are|you look) (?:so |really |very )?sexy"),
    _p("i want to (?:touch|kiss|feel|lick) (?:you|your body)"), _p("see you naked"),
    _p("kiss you all over"), "nudes", "sexting", _p("(?:make love|have sex) (?:to|with) you"),
    _p("in bed with you"),
)  # fmt: skip
_GROOM_CLOSE = _alt(
    _p("(?:so |very |really )?(?:mature|grown up|grown-up) for (?:your age|a ") + _AGE + "|"
    + _AGE + ")",
    _p("meet (?:me |up )?(?:alone|in private|in secret|without your (?:parents|mom|mum|dad))"),
    _p("(?:when|while) your (?:parents|mom|mum|dad) (?:are|is) (?:asleep|away|out|not home"
       "|at work)"),
    _p("send me (?:a |some )?(?:pics?|pictures?|photos?|selfies?) of (?:you|yourself)"),
    _p("(?:come|sneak) over (?:to my (?:place|house) )?(?:alone|tonight|when)"),
)  # fmt: skip
_GROOM_SECRET = _alt(
    _p("(?:our|a) (?:little |special )?secret"),
    _p("(?:don't|do not|never) tell (?:your )?(?:mom|mum|mommy|mummy|dad|daddy|parents|teachers?"
       "|anyone|anybody|friends)"),
    _p("delete (?:our|these|this|the) (?:messages|chats?|texts|conversation)"),
)  # fmt: skip
# Words of parents, teachers, doctors, the law and safety advice: a conversation with one of them
# is never a hit.
_PROTECTIVE = _alt(
    "groom(?:ing|ers?|ed)?", _p("red flags?"), _p("warning signs?"), "predators?", "predatory",
    "pedophil\\w*", "paedophil\\w*", "abus(?:e|ed|er|ers|ive)", "exploit\\w*", "molest\\w*",
    _p("report (?:it|this|them|him|her|the)"), _p("trusted adults?"),
    _p("tell (?:a|an|your|their) (?:parent|adult|teacher|trusted)"), _p("body safety"),
    _p("safe adults?"), "consent", _p("sex(?:ual)? education"), _p("sex ed"), _p("about sex"),
    _p("the talk"), _p("birds and (?:the )?bees"), "puberty", "paediatrician", "pediatrician",
    _p("counsel(?:l)?or"), "therapist", _p("age-appropriate"), "police", "cybertip", "ncmec",
    "childline", "hotline", "illegal", "inappropriate", "crime", "criminal", "law", "laws",
    _p("online safety"), _p("parental controls?"), _p("nude beach(?:es)?"), "naturis\\w*",
    "nudis\\w*",
)  # fmt: skip


def _profanity() -> str:
    words = []
    for word in profanity_words():
        # The list's own wildcard ("masterbat*") means "and any ending".
        core = re.escape(word.rstrip("*")) + (r"\w*" if word.endswith("*") else "")
        # A plural "s" (the list spells few plurals), unless that makes an excluded word:
        # "lesbo" is kept, "lesbos" (the island) is not.
        plural = "" if f"{word}s" in EXCLUDED else "s?"
        words.append(core.replace(r"\ ", r"\s+") + plural)
    return "(?:" + "|".join(words) + ")"


# Guard prefixes per rule: what may come just before a hit and turn it into a refusal, a warning
# or support. Words in between: up to 4 (a fifth word rarely still belongs to the negation).
_GUARD_PREFIX = {
    "abuse": _alt(_NEG, "if"),
    "violence": _alt(_NEG, "if", "when"),
    "self_harm": _alt(_NEG, _SUPPORT),
    "weapons": _alt(_NEG, _RISK),
    # A plot summary tells who taught whom ("Walter teaches Jesse how to cook meth").
    "drugs": _alt(_NEG, _RISK, "teaches", "taught", "learns", "learned", "shows", "showed"),
}
CORES: dict[str, str] = {
    "abuse": ABUSE,
    "violence": VIOLENCE,
    "self_harm": SELF_HARM,
    "weapons": WEAPONS,
    "drugs": DRUGS,
}
CATEGORIES = ("profanity", "abuse", "violence", "self_harm", "weapons", "drugs", "minors")
CHECKS = (*CATEGORIES, "detoxify", "labels", "judge")


def _rule_pattern(core: str, prefix: str | None) -> str:
    guard = "" if prefix is None else "(?:" + prefix + r"\s+" + _WORDS + "{0,4})?"
    return "(?i:" + _B0 + guard + "(?:" + core + ")" + _B1 + ")"


def _guard_pattern(core: str, prefix: str) -> str:
    # The whole match is prefix + hit: anchored at both ends.
    return "(?i:^" + _B0 + prefix + r"\s+" + _WORDS + "{0,4}(?:" + core + ")" + _B1 + "$)"


@cache
def _rules() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    rules = [("safety.profanity", _rule_pattern(_profanity(), None))]
    guards = []
    for name, core in CORES.items():
        rules.append((f"safety.{name}", _rule_pattern(core, _GUARD_PREFIX[name])))
        guards.append((f"safety.{name}", _guard_pattern(core, _GUARD_PREFIX[name])))
    return tuple(rules), tuple(guards)


# Rules whose bare hits share one prefilter scan. All in one pattern overflow the lazy DFA's cache
# (a 10 MB answer took 25 s instead of 0.05 s). These two groups each scan about as fast as one
# rule alone (0.03 s over the curation chain bench's 200k answers, 0.06 s over 10 MB of text
# without a hit); weapons beside abuse, violence and self-harm made that group's scan 3x slower.
_PREFILTER_GROUPS = (("profanity", "drugs", "weapons"), ("abuse", "violence", "self_harm"))


@cache
def _prefilters(names: tuple[str, ...]) -> tuple[str, ...]:
    """Patterns that every text matching any of the named rules also matches: per group, the
    bare hits (without the optional guard prefix, which ends in whitespace, itself a word
    boundary) in one shared boundary wrapper. A scan with one costs about as much as a scan with
    a single rule; a union of the full rule patterns (each with its own optional guard prefix)
    blows up the regex crate's lazy DFA and runs ~1000x slower."""
    out = []
    for group in _PREFILTER_GROUPS:
        cores = [_profanity() if n == "profanity" else CORES[n] for n in group if n in names]
        if cores:
            out.append(_rule_pattern("|".join(cores), None))
    return tuple(out)


# (rule, pattern) for every content rule, and the guard that discards a match of that rule.
RULES: list[tuple[str, str]] = list(_rules()[0])
GUARDS: dict[str, str] = dict(_rules()[1])


@dataclass(frozen=True)
class Paired:
    """A content rule that needs two things: ``subject`` somewhere in the conversation (the
    prompt "how do I make a pipe bomb?" names what the answer's steps build) and at least
    ``min_distinct`` different hits of ``pattern`` in one message (compared by their words in
    lower case), and a hit of ``also`` in that message when set; none at all when ``unless``
    occurs anywhere in the conversation. ``what``: when set, the reason says this instead of
    quoting the hit. ``hint``: a pattern that every message with a hit of ``pattern`` matches
    and that the regex crate's lazy DFA runs fast (no Unicode ``\\b``): the filter scans every
    message with it, and looks for subjects and hits only in the conversations it keeps (None:
    ``pattern`` itself)."""

    rule: str
    subject: str
    pattern: str
    min_distinct: int = 1
    also: str | None = None
    unless: str | None = None
    what: str | None = None
    hint: str | None = None


def _words(core: str) -> str:
    return "(?i:" + _B0 + "(?:" + core + ")" + _B1 + ")"


def _hit(core: str, start: str = r"\b", end: str = r"\b") -> str:
    # A zero-width end, so the punctuation after one step can start the next (the regex crate
    # leaves its fast DFA for a Unicode \b, fine here: only messages ``_hint`` keeps get here).
    return "(?i:" + start + "(?:" + core + ")" + end + ")"


def _hint(core: str) -> str:
    """What every hit of ``_hit(core, ...)`` contains: the core without its word boundaries,
    after the start of the text or a character that is no ASCII letter (what ends a step's
    start: a line break, punctuation, a blank, a list number; or a ``\\b`` before a word).
    Dropping a zero-width assertion or a leading part only relaxes a pattern, so the hits are a
    subset of its matches; and it is rare (a step or a sexual phrase, where a subject is not:
    "child" or "kids" is in one generated conversation in fifteen). The character before the
    core keeps the regex crate's lazy DFA from starting a match at every position (a quarter
    faster)."""
    return "(?:^|[^A-Za-z])(?i:" + core.replace(r"\b", "") + ")"


_NOT_QUOTED = "sexual content involving a minor (not quoted)"
PAIRED: tuple[Paired, ...] = (
    Paired(
        "safety.weapons",
        _words(_WEAPON_SUBJECT),
        _hit(_WEAPON_STEP, _STEP_START),
        2,
        hint=_hint(_WEAPON_STEP),
    ),
    Paired(
        "safety.drugs",
        _words(_DRUG),
        _hit(_DRUG_STEP, _STEP_START, ""),
        2,
        hint=_hint(_DRUG_STEP),
    ),
    Paired(
        "safety.minors",
        _words(_MINOR_WORD),
        _hit(_SEX_INVOLVING),
        unless=_words(_PROTECTIVE),
        what=_NOT_QUOTED,
        hint=_hint(_SEX_INVOLVING),
    ),
    Paired(
        "safety.minors",
        _words(_MINOR),
        _hit(_EROTIC_YOU),
        unless=_words(_PROTECTIVE),
        what=_NOT_QUOTED,
        hint=_hint(_EROTIC_YOU),
    ),
    Paired(
        "safety.minors",
        _words(_MINOR),
        _hit(_GROOM_CLOSE),
        also=_hit(_GROOM_SECRET),
        unless=_words(_PROTECTIVE),
        what="grooming of a minor (not quoted)",
        hint=_hint(_GROOM_CLOSE),
    ),
)


def _hint_of(paired: Paired) -> str:
    return paired.pattern if paired.hint is None else paired.hint


@cache
def _hint_scan(rules: tuple[str, ...]) -> str:
    """One pattern that every message with a hit of these paired rules matches."""
    return "|".join(sorted({_hint_of(p) for p in PAIRED if p.rule in rules}))


# Words a step may start with that do not make it another step ("Then fill the pipe with").
_STEP_LEAD = frozenset({
    "then", "next", "first", "second", "third", "now", "finally", "after", "that", "afterwards",
    "once", "it", "s", "it's", "is", "this", "done", "you", "ll", "you'll", "will", "need", "to",
    "have", "should", "must", "want", "can", "step",
})  # fmt: skip


def _distinct_key(hit: str) -> str:
    """What makes two hits of a paired rule the same: their words in lower case, without the
    list number and the words that lead into a step."""
    words = re.findall(r"[\w']+", hit.lower().replace("’", "'"))
    while words and (words[0] in _STEP_LEAD or words[0].isdigit()):
        words = words[1:]
    return " ".join(words)


# --- The row-by-row reference --------------------------------------------------------------------


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def scan(
    text: str, rules: Iterable[str] | None = None, conversation: str | None = None
) -> dict[str, str]:
    """Plain-Python reference: {rule: first unguarded match} for the content rules that fire on
    ``text`` (same patterns and guards as ``SafetyFilter``). ``conversation``: all turns of the
    conversation ``text`` belongs to, where paired rules look for their subject (default: the
    text alone). A paired rule with a ``what`` gives that instead of the match."""
    context = text if conversation is None else conversation
    wanted = None if rules is None else set(rules)
    hits = {}
    for rule, pattern in RULES:
        if wanted is not None and rule not in wanted:
            continue
        guard = GUARDS.get(rule)
        for match in _compiled(pattern).finditer(text):
            if guard is None or not _compiled(guard).search(match.group()):
                hits[rule] = match.group()
                break
    for paired in PAIRED:
        if (wanted is not None and paired.rule not in wanted) or paired.rule in hits:
            continue
        if not _compiled(paired.subject).search(context):
            continue
        if paired.unless is not None and _compiled(paired.unless).search(context):
            continue
        if paired.also is not None and not _compiled(paired.also).search(text):
            continue
        found = [m.group() for m in _compiled(paired.pattern).finditer(text)]
        if found and len({_distinct_key(m) for m in found}) >= paired.min_distinct:
            hits[paired.rule] = paired.what or found[0]
    return hits


# --- OpenAssistant meta: detoxify scores and labels ----------------------------------------------

DETOXIFY_THRESHOLDS: dict[str, float] = {
    # Detoxify's toxicity, insult and obscene run high on harmless banter with a swear word;
    # the rarer, more specific heads are trusted at a lower score.
    "toxicity": 0.8,
    "severe_toxicity": 0.5,
    "obscene": 0.8,
    "identity_attack": 0.5,
    "insult": 0.8,
    "threat": 0.5,
    "sexual_explicit": 0.5,
}
LABEL_THRESHOLDS: dict[str, float] = {
    # Mean of annotator votes (0..1): 0.5 = at least half of them.
    "toxicity": 0.5,
    "hate_speech": 0.5,
    "not_appropriate": 0.5,
    "violence": 0.5,
    "sexual_content": 0.5,
}


def _meta_struct(labels: Iterable[str], detoxify: Iterable[str]) -> pl.Struct:
    """The part of the meta JSON to decode: only the keys asked for (unknown keys are skipped)."""
    fields: dict[str, pl.DataType] = {}
    if labels := list(labels):
        fields["labels"] = fields["prompt_labels"] = pl.Struct({n: pl.Float64 for n in labels})
    if detoxify := list(detoxify):
        fields["detoxify"] = pl.List(pl.Struct({n: pl.Float64 for n in detoxify}))
    return pl.Struct(fields)


def _decode_meta(meta: pl.Series, dtype: pl.Struct) -> pl.Series:
    """JSON meta → struct, vectorised; rows of other shapes (a generic source's own "labels")
    fall back to a tolerant Python decode that keeps only numbers where numbers are expected."""
    try:
        return meta.str.json_decode(dtype)
    except pl.exceptions.ComputeError:
        return pl.Series(meta.name, [_tolerant(m, dtype) for m in meta.to_list()], dtype=dtype)


def _tolerant(text: str | None, dtype: pl.Struct) -> dict | None:
    try:
        obj = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None

    def numbers(value: object, names: list[str]) -> dict | None:
        if not isinstance(value, dict):
            return None
        return {n: _number(value.get(n)) for n in names}

    out: dict[str, object] = {}
    for f in dtype.fields:
        value = obj.get(f.name)
        if isinstance(f.dtype, pl.List):
            names = [g.name for g in f.dtype.inner.fields]  # type: ignore[union-attr]
            out[f.name] = [numbers(d, names) for d in value] if isinstance(value, list) else None
        else:
            out[f.name] = numbers(value, [g.name for g in f.dtype.fields])  # type: ignore[union-attr]
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


_LABELS_LONG = pl.Schema(
    {
        "row_id": pl.String,
        "source": pl.String,
        "side": pl.String,
        "name": pl.String,
        "value": pl.Float64,
    }
)
_DETOXIFY_LONG = pl.Schema(
    {
        "row_id": pl.String,
        "source": pl.String,
        "answer": pl.UInt32,
        "name": pl.String,
        "value": pl.Float64,
    }
)


def _may_reach(thresholds: Mapping[str, float]) -> pl.Expr:
    """A cheap superset test on the raw meta JSON: some listed key holds a number that may reach
    its threshold. A value >= t starts with a digit 1-9 or is 0.d... with d >= floor(10 t), so
    ``"name": [1-9]`` or ``"name": 0.[d-9]`` finds every such row without decoding JSON (decoding
    is the slow part: ~150 MB/s), and the few rows found are then decoded and checked exactly."""
    names = "|".join(re.escape(n) for n in thresholds)
    lowest = min(thresholds.values())
    if lowest <= 0:
        number = "[0-9]"
    else:
        digit = max(0, min(9, int(lowest * 10 - 1e-9)))  # never above the true floor
        number = f"(?:[1-9]|0\\.[{digit}-9])"
    return pl.col("meta").str.contains(f'"(?:{names})"\\s*:\\s*{number}')


def _over(struct: pl.Expr, thresholds: Mapping[str, float]) -> pl.Expr:
    """Whether any field of ``struct`` reaches its threshold (null fields never do)."""
    return pl.any_horizontal(
        [(struct.struct.field(n) >= t).fill_null(False) for n, t in thresholds.items()]
    )


def label_scores(rows: pl.DataFrame, thresholds: Mapping[str, float]) -> pl.DataFrame:
    """OpenAssistant labels in ``rows.meta`` that reach their threshold, in long form: row_id,
    source, side ("answer" for meta ``labels``, "prompt" for ``prompt_labels``), name, value."""
    if not thresholds:
        return pl.DataFrame(schema=_LABELS_LONG)
    candidates = rows.filter(_may_reach(thresholds))
    if candidates.is_empty():
        return pl.DataFrame(schema=_LABELS_LONG)
    decoded = _decode_meta(candidates.get_column("meta"), _meta_struct(thresholds, ()))
    frame = candidates.select("row_id", "source").with_columns(
        decoded.struct.field("labels").alias("answer"),
        decoded.struct.field("prompt_labels").alias("prompt"),
    )
    parts = []
    for side in ("answer", "prompt"):
        over = frame.filter(_over(pl.col(side), thresholds))  # few rows: unpivot only those
        parts.append(
            over.select(
                "row_id", "source", pl.lit(side).alias("side"), pl.col(side).struct.unnest()
            )
            .unpivot(index=["row_id", "source", "side"], variable_name="name", value_name="value")
            .filter(pl.col("value") >= pl.col("name").replace_strict(thresholds, default=None))
            .select(_LABELS_LONG.names())
            .cast(_LABELS_LONG)
        )
    return pl.concat(parts)


def detoxify_scores(rows: pl.DataFrame, thresholds: Mapping[str, float]) -> pl.DataFrame:
    """OpenAssistant detoxify scores in ``rows.meta`` that reach their threshold, in long form:
    row_id, source, answer (0-based index among the assistant turns), name, value."""
    if not thresholds:
        return pl.DataFrame(schema=_DETOXIFY_LONG)
    candidates = rows.filter(_may_reach(thresholds))
    if candidates.is_empty():
        return pl.DataFrame(schema=_DETOXIFY_LONG)
    decoded = _decode_meta(candidates.get_column("meta"), _meta_struct((), thresholds))
    scores = (
        candidates.select("row_id", "source")
        .with_columns(decoded.struct.field("detoxify").alias("d"))
        .filter(pl.col("d").list.len() > 0)
        .with_columns(
            pl.col("d").list.eval(pl.int_range(pl.len(), dtype=pl.UInt32)).alias("answer")
        )
        .explode("d", "answer")
        .filter(_over(pl.col("d"), thresholds))
    )
    return (
        scores.select("row_id", "source", "answer", pl.col("d").struct.unnest())
        .unpivot(index=["row_id", "source", "answer"], variable_name="name", value_name="value")
        .filter(pl.col("value") >= pl.col("name").replace_strict(thresholds, default=None))
        .select(_DETOXIFY_LONG.names())
        .cast(_DETOXIFY_LONG)
    )


def as_policy(value: Policy | str | Mapping) -> Policy:
    """A ``Policy`` from a Policy, a verdict ("flag") or {"default": ..., "per_source": {...}}."""
    if isinstance(value, Policy):
        return value
    if isinstance(value, str):
        return Policy(value)  # type: ignore[arg-type]
    return Policy(value["default"], dict(value.get("per_source") or {}))


# --- The filter ----------------------------------------------------------------------------------

Judge = Callable[[list[str]], list[dict[str, float]]]
_FOUND = pl.Schema(
    {
        "row_id": pl.String,
        "source": pl.String,
        "turn": pl.UInt32,
        "content": pl.String,
        "rule": pl.String,
        "quote": pl.String,
    }
)
_HIT = pl.Schema(
    {
        "row_id": pl.String,
        "source": pl.String,
        "rule": pl.String,
        "side": pl.String,
        "reason": pl.String,
        "score": pl.Float64,
    }
)


@dataclass(frozen=True)
class SafetyFilter:
    """Unsafe content: drop rows with an unsafe answer, flag rows with an unsafe prompt.

    Config:
      ``policy``: the verdict per source for answer-side hits (content rules on assistant turns,
        detoxify, labels, judge). Default ``drop``.
      ``prompt_policy``: the verdict per source for prompt-side hits (content rules on user and
        system turns: ``safety.prompt_<category>``; ``prompt_labels``). Default ``flag``: an
        unsafe request answered by a refusal is good training data.
      ``rules``: which checks run, a subset of ``CHECKS`` (profanity, abuse, violence, self_harm,
        weapons, drugs, minors, detoxify, labels, judge). Default: all.
      ``check_prompts``: run the content rules and labels on the prompt side too (default True).
      ``detoxify_thresholds``: detoxify head → score at or above which ``safety.detoxify`` fires
        (default ``DETOXIFY_THRESHOLDS``); heads not listed are ignored.
      ``label_thresholds``: OpenAssistant label → value at or above which ``safety.labels``
        (answer) / ``safety.prompt_labels`` (prompt) fires (default ``LABEL_THRESHOLDS``).
      ``judge``: optional moderation hook ``(texts) -> [{category: score}]``, one dict per text,
        called on the assistant turns in chunks of ``judge_batch_size``; a category scoring at or
        above ``judge_threshold`` fires ``safety.judge_<category>``. Turns of rows that this
        filter already drops are not sent (the judge is the expensive check).
    """

    category: ClassVar[str] = "safety"
    policy: Policy = Policy("drop")
    prompt_policy: Policy = Policy("flag")
    rules: frozenset[str] = frozenset(CHECKS)
    check_prompts: bool = True
    detoxify_thresholds: Mapping[str, float] = field(
        default_factory=lambda: dict(DETOXIFY_THRESHOLDS)
    )
    label_thresholds: Mapping[str, float] = field(default_factory=lambda: dict(LABEL_THRESHOLDS))
    judge: Judge | None = None
    judge_threshold: float = 0.5
    judge_batch_size: int = 64

    def __post_init__(self) -> None:
        # A curation config gives plain values: a list of rules, a verdict or {default, per_source}.
        object.__setattr__(self, "rules", frozenset(self.rules))
        object.__setattr__(self, "prompt_policy", as_policy(self.prompt_policy))
        unknown = set(self.rules) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown safety checks {sorted(unknown)}; expected some of {CHECKS}")
        if self.judge_batch_size < 1:
            raise ValueError("judge_batch_size must be at least 1")

    def __call__(self, batch: Batch) -> Findings:
        paired = self._paired_candidates(batch.messages)
        answer, prompt = pl.col("role") == "assistant", pl.col("role") != "assistant"
        hits = [
            self._content(
                batch.messages.filter(answer), "", [(p, m.filter(answer)) for p, m in paired]
            )
        ]
        if self.check_prompts:
            hits.append(
                self._content(
                    batch.messages.filter(prompt),
                    "prompt_",
                    [(p, m.filter(prompt)) for p, m in paired],
                )
            )
        detoxify = dict(self.detoxify_thresholds) if "detoxify" in self.rules else {}
        labels = dict(self.label_thresholds) if "labels" in self.rules else {}
        if detoxify or labels:
            # One scan of the raw meta for both; the few rows it keeps are decoded.
            everything = {
                n: min(detoxify.get(n, 1.0), labels.get(n, 1.0)) for n in detoxify | labels
            }
            rows = batch.rows.filter(_may_reach(everything))
            if detoxify:
                hits.append(self._detoxify(rows))
            if labels:
                hits.append(self._labels(rows))
        found = pl.concat([h.select(_HIT.names()).cast(_HIT) for h in hits])
        found = found.with_columns(self._verdict())
        if self.judge is not None and "judge" in self.rules:
            dropped = found.filter(pl.col("verdict") == "drop").get_column("row_id").unique()
            answers = batch.messages.filter(
                (pl.col("role") == "assistant") & ~pl.col("row_id").is_in(dropped.implode())
            )
            judged = self._judge(answers).select(_HIT.names()).cast(_HIT)
            found = pl.concat([found, judged.with_columns(self._verdict())])
        order = batch.rows.select("row_id").with_row_index("_pos")
        ledger = (
            found.join(order, on="row_id", how="left")
            .sort("_pos", "rule")
            .select(FINDINGS.names())
            .cast(FINDINGS)
        )
        return Findings(ledger=ledger)

    def _verdict(self) -> pl.Expr:
        return (
            pl.when(pl.col("side") == "prompt")
            .then(self.prompt_policy.expr())
            .otherwise(self.policy.expr())
            .alias("verdict")
        )

    def _paired_candidates(self, messages: pl.DataFrame) -> list[tuple[Paired, pl.DataFrame]]:
        """Per active paired rule, the messages it may fire on: a match of its hint, in a
        conversation with a subject in some turn and no ``unless`` in any. One scan over all
        messages keeps the few with a hint (a subject alone is common: "kids", "child"); the
        subjects are looked for only in their conversations."""
        active = [p for p in PAIRED if p.rule.removeprefix("safety.") in self.rules]
        if not active or messages.is_empty():
            return []
        scan_for = _hint_scan(tuple(sorted({p.rule for p in active})))
        hinted = messages.filter(pl.col("content").str.contains(scan_for))
        if hinted.is_empty():
            return []
        conversations = hinted.get_column("row_id").unique().implode()
        rows = messages.filter(pl.col("row_id").is_in(conversations))
        out = []
        for paired in active:
            maybe = hinted.filter(pl.col("content").str.contains(_hint_of(paired)))
            if maybe.is_empty():
                continue
            context = rows.filter(pl.col("row_id").is_in(maybe.get_column("row_id").implode()))
            allowed = context.filter(pl.col("content").str.contains(paired.subject))["row_id"]
            if paired.unless is not None:
                barred = context.filter(pl.col("content").str.contains(paired.unless))["row_id"]
                allowed = allowed.filter(~allowed.is_in(barred.implode()))
            out.append((paired, maybe.filter(pl.col("row_id").is_in(allowed.implode()))))
        return out

    def _content(
        self, messages: pl.DataFrame, prefix: str, paired: list[tuple[Paired, pl.DataFrame]]
    ) -> pl.DataFrame:
        """Content rules over ``messages``: one hit per (row, rule) with the first match."""
        side = "prompt" if prefix else "answer"
        active = [(r, p) for r, p in RULES if r.removeprefix("safety.") in self.rules]
        if not (active or paired) or messages.is_empty():
            return pl.DataFrame(schema=_HIT)
        # Two scans over all messages keep the few that may hit; the rules (and their guards)
        # then run on those only. Paired rules run on the messages ``_paired_candidates`` kept.
        names = tuple(r.removeprefix("safety.") for r, _ in active)
        candidates = messages.filter(
            pl.any_horizontal(
                [pl.lit(False), *(pl.col("content").str.contains(p) for p in _prefilters(names))]
            )
        )
        parts = [pl.DataFrame(schema=_FOUND)]
        for rule, pattern in active:
            found = (
                candidates.select(
                    "row_id", "source", "turn", pl.col("content").str.extract_all(pattern)
                )
                .explode("content")  # a message without a match explodes to one null
                .drop_nulls("content")
            )
            if rule in GUARDS:
                found = found.filter(~pl.col("content").str.contains(GUARDS[rule]))
            name = rule.replace("safety.", "safety." + prefix)
            quote = _quoted(pl.col("content"))
            parts.append(found.with_columns(pl.lit(name).alias("rule"), quote.alias("quote")))
        for rule, candidates in paired:
            if not candidates.is_empty():
                parts.append(self._paired(candidates, rule, prefix))
        found = pl.concat([p.select(_FOUND.names()).cast(_FOUND) for p in parts])
        if found.is_empty():
            return pl.DataFrame(schema=_HIT)
        return (
            found.group_by("row_id", "source", "rule", maintain_order=True)
            .agg(pl.col("turn").first(), pl.col("quote").first(), pl.len().alias("n"))
            .select(
                "row_id",
                "source",
                "rule",
                pl.lit(side).alias("side"),
                pl.format(
                    "{} turn {}: {}{}",
                    pl.lit(side),
                    "turn",
                    "quote",
                    pl.when(pl.col("n") > 1)
                    .then(pl.format(" (+{} more)", pl.col("n") - 1))
                    .otherwise(pl.lit("")),
                ).alias("reason"),
                pl.lit(1.0).alias("score"),
            )
        )

    @staticmethod
    def _paired(messages: pl.DataFrame, paired: Paired, prefix: str) -> pl.DataFrame:
        """Hits of one paired rule in ``messages`` (of conversations it may fire in): messages
        with at least ``min_distinct`` different hits (all of them kept, the first one quoted)."""
        if paired.also is not None:
            messages = messages.filter(pl.col("content").str.contains(paired.also))
        found = (
            messages.select(
                "row_id", "source", "turn", pl.col("content").str.extract_all(paired.pattern)
            )
            .explode("content")
            .drop_nulls("content")
        )
        key = pl.col("content").map_elements(_distinct_key, return_dtype=pl.String)
        found = found.filter(key.n_unique().over("row_id", "turn") >= paired.min_distinct)
        quote = pl.lit(paired.what) if paired.what is not None else _quoted(pl.col("content"))
        return found.with_columns(
            pl.lit(paired.rule.replace("safety.", "safety." + prefix)).alias("rule"),
            quote.alias("quote"),
        )

    def _detoxify(self, rows: pl.DataFrame) -> pl.DataFrame:
        thresholds = dict(self.detoxify_thresholds)
        scores = detoxify_scores(rows, thresholds)
        return (
            scores.sort("value", descending=True)
            .group_by("row_id", "source", maintain_order=True)
            .agg(
                pl.col("value").max().alias("score"),
                pl.format("{}={} (answer {})", "name", pl.col("value").round(2), "answer")
                .str.join(", ")
                .alias("detail"),
            )
            .select(
                "row_id",
                "source",
                pl.lit("safety.detoxify").alias("rule"),
                pl.lit("answer").alias("side"),
                pl.format("detoxify at or above threshold: {}", "detail").alias("reason"),
                "score",
            )
        )

    def _labels(self, rows: pl.DataFrame) -> pl.DataFrame:
        thresholds = dict(self.label_thresholds)
        scores = label_scores(rows, thresholds)
        if not self.check_prompts:
            scores = scores.filter(pl.col("side") == "answer")
        return (
            scores.sort("value", descending=True)
            .group_by("row_id", "source", "side", maintain_order=True)
            .agg(
                pl.col("value").max().alias("score"),
                pl.format("{}={}", "name", pl.col("value").round(2)).str.join(", ").alias("detail"),
            )
            .select(
                "row_id",
                "source",
                pl.when(pl.col("side") == "prompt")
                .then(pl.lit("safety.prompt_labels"))
                .otherwise(pl.lit("safety.labels"))
                .alias("rule"),
                "side",
                pl.format(
                    "OpenAssistant {} labels at or above threshold: {}", "side", "detail"
                ).alias("reason"),
                "score",
            )
        )

    def _judge(self, answers: pl.DataFrame) -> pl.DataFrame:
        """Send assistant turns to the judge in chunks; one hit per (row, category) at or above
        the threshold, with the highest score."""
        assert self.judge is not None
        texts = answers.get_column("content").to_list()
        found: list[dict] = []
        for start in range(0, len(texts), self.judge_batch_size):
            chunk = texts[start : start + self.judge_batch_size]
            scores = self.judge(chunk)
            if not isinstance(scores, list) or len(scores) != len(chunk):
                raise ValueError(
                    f"safety judge returned {len(scores) if isinstance(scores, list) else scores!r}"
                    f" results for {len(chunk)} texts; expected one dict per text"
                )
            for offset, categories in enumerate(scores):
                for category, score in (categories or {}).items():
                    if float(score) >= self.judge_threshold:
                        found.append(
                            {
                                "i": start + offset,
                                "category": _rule_name(category),
                                "score": float(score),
                            }
                        )
        if not found:
            return pl.DataFrame(schema=_HIT)
        where = answers.select("row_id", "source", "turn", "content").with_row_index("i")
        return (
            pl.DataFrame(found, schema={"i": pl.UInt32, "category": pl.String, "score": pl.Float64})
            .join(where, on="i")
            .sort("score", descending=True)
            .group_by("row_id", "source", "category", maintain_order=True)
            .first()
            .select(
                "row_id",
                "source",
                pl.format("safety.judge_{}", "category").alias("rule"),
                pl.lit("answer").alias("side"),
                pl.format(
                    "judge {}={} (answer turn {}): “{}”",
                    "category",
                    pl.col("score").round(2),
                    "turn",
                    snippet(pl.col("content")),
                ).alias("reason"),
                "score",
            )
        )


_STRIP = " \t\n\r.,;:!?\"'()[]{}<>“”‘’«»-–—…*/\\|"


def _quoted(match: pl.Expr) -> pl.Expr:
    """A hit as the reason quotes it: “the matched words”, cut short."""
    return pl.format("“{}”", snippet(match.str.strip_chars(_STRIP)))


def _rule_name(category: str) -> str:
    """A judge category as part of a rule name: "Self-Harm/Intent" → "self_harm_intent"."""
    return re.sub(r"[^a-z0-9]+", "_", str(category).lower()).strip("_") or "unknown"
