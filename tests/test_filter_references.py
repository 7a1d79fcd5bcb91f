"""ReferenceFilter on real frames: each rule's positives and near misses, the rewrite, rewrite →
drop, per-source policies, the embedded samples, and odd input. Python's ``re`` (the row-by-row
baseline) must agree with the vectorised filter everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from curation.filters.base import FINDINGS, REWRITES, Batch, Findings, Policy
from curation.filters.references import (
    PREFILTER,
    REQUESTED,
    RULE_NAMES,
    RULES,
    ReferenceFilter,
    detect,
    left_nothing,
    requested,
    strip,
)
from curation.ingest import ingest
from curation.schema import CONVERSATIONS, frame

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def conversation(
    row_id: str, *answers: str, source: str = "web", prompt: str = "Tell me about it."
) -> dict:
    messages = []
    for answer in answers:
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {
        "id": row_id,
        "source": source,
        "source_id": row_id,
        "lang": "en",
        "messages": messages,
        "meta": "{}",
        "provenance": None,
    }


def batch(*rows: dict) -> Batch:
    return Batch.from_conversations(frame(list(rows), CONVERSATIONS))


def run(*answers: str, f: ReferenceFilter | None = None) -> Findings:
    """One conversation per answer, ids r0, r1, ..."""
    rows = [conversation(f"r{i}", a) for i, a in enumerate(answers)]
    return (f or ReferenceFilter())(batch(*rows))


def fired(findings: Findings, row_id: str = "r0") -> list[str]:
    return findings.ledger.filter(pl.col("row_id") == row_id)["rule"].to_list()


def rewritten(findings: Findings, row_id: str = "r0", turn: int = 1) -> str:
    rows = findings.rewrites.filter((pl.col("row_id") == row_id) & (pl.col("turn") == turn))
    assert rows.height == 1, findings.rewrites
    return rows["content"].item()


# ---- each rule: positives --------------------------------------------------------------------

POSITIVES = [
    ("reference.list", "It works.\n\nReferences:\n[1] Smith, J. (2019). A title. Nature."),
    ("reference.list", "It works.\n\n## Bibliography\n- Lee, K. A book about it. Penguin."),
    ("reference.list", "It works.\n\n**Sources:**\n- https://example.org/a\n- https://b.example"),
    ("reference.list", "It works.\n\nWorks cited\n\n1. Brandt, K. Calendars. 2015."),
    ("reference.list", "It works.\n\nFurther reading:\n- The Selfish Gene, by Richard Dawkins"),
    ("reference.et_al", "Smith et al. found that sleep helps memory."),
    ("reference.et_al", "This was shown before (Kim et. al, 2020)."),
    ("reference.author_year", "Sleep helps memory (Smith, 2019)."),
    ("reference.author_year", "Sleep helps memory (Smith & Jones, 2020)."),
    ("reference.author_year", "Smith et al. (2019) showed that sleep helps memory."),
    ("reference.author_year", "Sleep helps memory (Smith 2019a; Lee 2020)."),
    ("reference.author_year", "Sleep helps memory (see Müller and García, 2018, p. 12)."),
    ("reference.author_year", "Okoro, A. and Lind, P. (2021). Sound speed in natural waters."),
    ("reference.numbered", "Water boils at 100 °C [1].\n\n[1] Smith, J. (2019). Boiling. Nature."),
    ("reference.numbered", "As shown [2, 3] and [4-6].\n\n[2] Lee, K. (2020). Title. Journal."),
    ("reference.numbered", "It is so.\n\n1. Smith, J. Boiling points. Nature 12, 2019."),
    ("reference.doi", "See doi:10.1234/abcd for the data."),
    ("reference.doi", "See https://doi.org/10.1038/nature12373 for the data."),
    ("reference.doi", "The paper (10.1016/j.cell.2020.01.001) has the details."),
    ("reference.arxiv", "The model is described in arXiv:2101.00001."),
    ("reference.arxiv", "See https://arxiv.org/abs/1706.03762 for attention."),
    ("reference.journal", "Published in Journal of Applied Acoustics, 12(3), 45-67."),
    ("reference.journal", "In Proc. Acoustics, vol. 12, pp. 45–67."),
    ("reference.journal", "J Appl Acoust. 2019;12(3):45-67."),
    ("reference.url", "Sound is faster in water.\nSource: https://example.org/sound"),
    ("reference.url", "Sound is faster in water (Source: https://example.org/sound)."),
    ("reference.url", "Retrieved from https://example.org/sound on Monday."),
    ("reference.url", "Sound is faster.\n\n[1] https://example.org/a\n[2] https://example.org/b"),
    # Chicago notes: "Ibid.", publication facts, an article's volume, issue and year.
    (
        "reference.footnote",
        "Rome grew fast.\n\n1. Mary Beard, *SPQR* (London: Profile Books, 2015), 112.\n"
        "2. Ibid., 114.",
    ),
    ("reference.footnote", "Rome grew fast.\n\n3. Ibid."),
    ("reference.footnote", "Rome grew fast, as noted before (ibid., 12)."),
    (
        "reference.footnote",
        "Salt was traded early.\n\n1. Jane Doe, *Salt Roads* (New York: Norton, 2003), 12.",
    ),
    (
        "reference.footnote",
        'Salt was traded early.¹\n\n¹ Jane Doe, "Salt Roads," *Journal of Trade* 12, no. 3 '
        "(2015): 45.",
    ),
    ("reference.footnote", "Rome grew fast.[^1]\n\n[^1]: Beard, *SPQR*, 2015, p. 112."),
    # Narrative author-year: a verb after it, et al., three names, "according to", "... by".
    (
        "reference.author_year",
        "```python\n# As Knuth (1974) argued, premature optimization is the root of all evil.\n"
        "def f():\n    pass\n```",
    ),
    ("reference.author_year", "Knuth (1974, p. 268) famously wrote that it is evil."),
    ("reference.author_year", "As Dijkstra (1968) observed, goto makes code hard to follow."),
    ("reference.author_year", "Kahneman and Tversky (1979) proposed prospect theory."),
    ("reference.author_year", "Kahneman & Tversky (1979) showed that losses loom larger."),
    ("reference.author_year", "Walker et al. (2017) report the same."),
    ("reference.author_year", "LeCun, Bengio and Hinton (2015) review the field."),
    ("reference.author_year", "According to Piketty (2014), returns on capital exceed growth."),
    ("reference.author_year", "Miller's (1956) paper on the number seven is a classic."),
    ("reference.author_year", "LSTMs were introduced by Hochreiter and Schmidhuber (1997)."),
    ("reference.author_year", "Smith (2019) and Lee (2020) both found the same."),
    ("reference.author_year", "# Per Knuth (1974), premature optimization is evil."),
    ("reference.author_year", "// Knuth (1974) famously said it is the root of all evil."),
    ("reference.author_year", "Quoting Hoare (1981): the price of reliability is simplicity."),
    ("reference.author_year", "Sleep matters (see the review by Walker, 2017, ch. 2)."),
    ("reference.author_year", "Sleep matters (see Walker (2017) for details)."),
    ("reference.author_year", "Sleep helps memory (see Walker 2017)."),
    ("reference.author_year", "Sleep helps memory (see also Müller, 2018)."),
    ("reference.author_year", "Sleep helps memory (cf. Walker 2017 for a review)."),
    ("reference.author_year", "Sleep helps (see, e.g., Walker 2017; Diekelmann and Born 2010)."),
    # Journal volume(issue): pages without a comma before them, or after an author-year.
    ("reference.journal", "It was published in Nature 521(7553): 436–444."),
    ("reference.journal", "The study appeared in Science 313(5786), 504-507."),
    ("reference.journal", "See LeCun, Bengio and Hinton (2015), Nature, 521, 436–444."),
    ("reference.journal", "Deep learning. Nature 521, 436–444 (2015)."),
    # A source line with a year or a page and no URL.
    ("reference.source", "Poverty fell.\nSource: World Bank, World Development Report 2019, p. 34"),
    ("reference.source", "Poverty fell.\n\n**Sources:** IMF, World Economic Outlook 2023"),
    ("reference.source", "Poverty fell sharply (Source: Eurostat, 2021)."),
    ("reference.source", "Poverty fell.\n- Data source: national census, 2020"),
    ("reference.source", "Poverty fell.\nSource – OECD Economic Outlook, June 2022"),
    ("reference.source", "Poverty fell.\nReference: Sen, Development as Freedom, 1999."),
]


@pytest.mark.parametrize(("rule", "text"), POSITIVES)
def test_rule_fires(rule: str, text: str) -> None:
    findings = run(text)
    assert rule in fired(findings)
    assert rule in detect(text)  # the row-by-row baseline agrees


# ---- near misses: must not fire --------------------------------------------------------------

NEGATIVES = [
    "In 2019 the company grew by a third.",
    "Prices rose from 1990 to 2000, then fell (in 2001).",
    "It happened in the summer (June 2019), and again (Windows 2000, Euro 2020).",
    "Good films: Titanic (1997) and Inception (2010).",
    "Use items[1] for the second item, matrix[2][3] for a cell and x[0] for the first.",
    "In R:\n> x <- c(5, 6)\n> x[1]\n[1] 5\n[1] TRUE",
    "Bring apples, pears, et cetera.",
    "Bring apples, pears, etc.",
    "Il est venu et alors il est parti.",
    "1. Preheat the oven to 200 °C.\n2. Mix the flour and the butter.\n3. Bake for 20 minutes.",
    "The website of the Python project is https://www.python.org",
    "Here are two good places to start:\n- https://docs.python.org\n- https://realpython.com",
    "It is open source: https://github.com/example/project",
    "arXiv is a preprint server run by Cornell.",
    "## References\nIn Python, names are references to objects, not boxes.",
    "Good sources of vitamin C:\n- oranges\n- peppers",
    "Sources:\n- oranges\n- peppers",
    "It costs $10.2500/kg this week.",
    "Evaluate 2(3), 10-4 and 6/2.",
    "The volume is 12 litres.",
    "Version 10.1 was released.",
    "",
    # Film, book and product titles with years, with no reporting verb after them.
    "Titanic (1997) won eleven Oscars.",
    "Windows (2000) was followed by Windows XP (2001).",
    "Bonnie and Clyde (1967) changed Hollywood.",
    "Romeo and Juliet (1968) is a film by Zeffirelli.",
    "Crime and Punishment (1866) is a novel.",
    "Apple (1976) started in a garage.",
    "DiCaprio starred in Titanic (1997) and in Inception (2010).",
    "Toy Story (1995) was the first fully computer-animated film.",
    # Sources without a year or page; notes that are no citations; numbers that are no journal.
    "Source code: see the repository.",
    "Source: my own experience as a nurse.",
    "The Source: a film from 2019? I have not seen it.",
    "Notes:\n- Bring water.\n- Leave at 9.",
    "(Note: updated in March, 2019)",
    "Article 5(1): everyone has the right to liberty.",
    "Revenue (2015): 45 million dollars.",
    "Python 3(2): 4-5 is not valid syntax.",
    "The meeting (see Monday 2020 notes) went well.",
    "Book early (see the Paris 2024 schedule).",
    'He said, "I\'m done," and left.',
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_near_misses_do_not_fire(text: str) -> None:
    findings = run(text)
    assert findings.ledger.height == 0, findings.ledger
    assert findings.rewrites.height == 0
    assert detect(text) == []


def test_user_turns_are_not_checked() -> None:
    row = conversation("r0", "Sure, happy to help.", prompt="Summarise Smith et al. (2019).")
    assert ReferenceFilter()(batch(row)).ledger.height == 0


# ---- rewrite ---------------------------------------------------------------------------------

ANSWER = (
    "Sound travels faster in water than in air, because water is much stiffer [1]. In water it "
    "covers about 1,480 metres per second (Okoro & Lind, 2021).\n\n"
    "References:\n"
    "[1] Smith, J. et al. (2019). Acoustic propagation in fluids. Journal of Applied Acoustics, "
    "12(3), 45-67. doi:10.1234/abcd\n"
    "[2] Okoro, A. and Lind, P. (2021). Sound speed in natural waters. Marine Physics Letters, "
    "4(1), 9-18. doi:10.4321/dcba"
)


def test_rewrite_strips_block_and_inline_citations_and_keeps_the_answer() -> None:
    findings = run(ANSWER)
    assert set(findings.ledger["verdict"]) == {"rewrite"}
    assert rewritten(findings) == (
        "Sound travels faster in water than in air, because water is much stiffer. In water it "
        "covers about 1,480 metres per second."
    )


def test_ledger_rows_scores_and_reasons() -> None:
    findings = run(ANSWER)
    ledger = findings.ledger
    assert ledger.schema == FINDINGS
    assert findings.rewrites.schema == REWRITES
    # One row per rule that fired, in rule order.
    assert ledger["rule"].to_list() == [
        "reference.list",
        "reference.et_al",
        "reference.author_year",
        "reference.numbered",
        "reference.doi",
        "reference.journal",
    ]
    scores = dict(zip(ledger["rule"], ledger["score"], strict=True))
    assert scores["reference.doi"] == 2.0
    assert scores["reference.author_year"] == 3.0  # (Okoro & Lind, 2021) and two entries
    assert scores["reference.numbered"] == 3.0  # two entries and one inline marker
    reasons = dict(zip(ledger["rule"], ledger["reason"], strict=True))
    assert reasons["reference.list"].startswith("stripped: 'References:\\n[1] Smith, J. et al.")
    assert reasons["reference.list"].endswith("doi:10.4321/dcba'")
    assert reasons["reference.doi"] == "stripped: 'doi:10.1234/abcd … doi:10.4321/dcba'"


def test_long_reasons_are_cut() -> None:
    entries = "\n".join(f"[{i}] Author{i}, A. ({2000 + i}). Title {i}. Journal." for i in range(40))
    (reason,) = run(
        f"Answer.\n\nReferences:\n{entries}", f=ReferenceFilter(rules=("reference.list",))
    ).ledger["reason"]
    assert reason.startswith("stripped: 'References:\\n[0] Author0")
    # 300 characters of the block, its newlines shown as "\\n".
    assert reason.endswith("…'")
    assert len(reason.replace("\\n", "\n")) == len("stripped: ''…") + 300


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sleep helps memory (Smith, 2019).", "Sleep helps memory."),
        ("Smith et al. (2019) showed that sleep helps.", "Smith showed that sleep helps."),
        (
            "It was shown by Smith et al. Later work agreed.",
            "It was shown by Smith. Later work agreed.",
        ),
        ("It was shown by Smith et al.", "It was shown by Smith."),
        (
            "Water boils [1]. It freezes [2, 3].\n\n[1] Lee, K. (2020). Water. Nature.",
            "Water boils. It freezes.",
        ),
        ("Attention works.\nSource: https://example.org/a", "Attention works."),
        ("Attention works (Source: https://example.org/a).", "Attention works."),
        ("Attention works.\narXiv:1706.03762", "Attention works."),
        ("Attention works.\n\ndoi: 10.1234/abcd\n\nMore text.", "Attention works.\n\nMore text."),
        ("In Proc. Acoustics, vol. 12, pp. 45–67.", "In Proc. Acoustics."),
        # Narrative citations keep the name and lose the year.
        (
            "# As Knuth (1974) argued, premature optimization is evil.",
            "# As Knuth argued, premature optimization is evil.",
        ),
        ("Knuth (1974, p. 268) famously wrote it.", "Knuth famously wrote it."),
        ("According to Piketty (2014), r > g.", "According to Piketty, r > g."),
        ("LeCun, Bengio and Hinton (2015) review it.", "LeCun, Bengio and Hinton review it."),
        (
            "LeCun, Bengio and Hinton (2015), Nature, 521, 436–444, review it.",
            "LeCun, Bengio and Hinton, review it.",
        ),
        ("Sleep helps (see Walker 2017).", "Sleep helps."),
        ("It was published in Nature 521(7553): 436–444.", "It was published in Nature."),
        # Notes and their marks go, the text stays.
        (
            "Rome grew fast.¹\n\nNotes\n1. Mary Beard, *SPQR* (London: Profile Books, 2015), 112."
            "\n2. Ibid., 114.\n3. Beard, *SPQR*, 120.",
            "Rome grew fast.",
        ),
        ("Rome grew fast.\n\n1. Ibid., 114.\n\nMore text.", "Rome grew fast.\n\nMore text."),
        ("Rome grew fast.[^1]\n\n[^1]: Beard, *SPQR*, 2015, p. 112.", "Rome grew fast."),
        # A source line goes; the paragraph after it stays.
        (
            "Poverty fell.\nSource: World Bank, World Development Report 2019, p. 34\n"
            "It rose later.",
            "Poverty fell.\nIt rose later.",
        ),
        ("Poverty fell sharply (Source: Eurostat, 2021).", "Poverty fell sharply."),
        # Code is left alone: only rules that fired on the message edit it.
        ("Use x[1] (Smith, 2019).\n\n    y = x[0]", "Use x[1].\n\n    y = x[0]"),
    ],
)
def test_rewrite_keeps_sentences_readable(text: str, expected: str) -> None:
    assert rewritten(run(text)) == expected
    assert strip(text) == expected  # the Python mirror strips the same


def test_rewrite_becomes_drop_when_nothing_is_left() -> None:
    only_refs = "References:\n[1] Smith, J. (2019). Title. Nature 12(3), 45-67. doi:10.1234/abcd"
    findings = run(only_refs, "  \n Source: https://example.org/x \n ")
    assert findings.rewrites.height == 0
    assert set(findings.ledger["verdict"]) == {"drop"}
    assert findings.ledger["reason"].str.contains("left nothing of answer turn").all()


def test_rewrite_of_one_turn_in_a_multi_turn_conversation() -> None:
    row = conversation("r0", "Plain answer.", "Sleep helps memory (Smith, 2019).")
    findings = ReferenceFilter()(batch(row))
    assert findings.rewrites.rows() == [("r0", 3, "Sleep helps memory.")]


def test_emptied_turn_drops_the_whole_conversation() -> None:
    row = conversation("r0", "Plain answer.", "Source: https://example.org/x")
    findings = ReferenceFilter()(batch(row))
    assert findings.ledger["verdict"].to_list() == ["drop"]
    assert "turn(s) 3" in findings.ledger["reason"].item()
    assert findings.rewrites.height == 0


# Realistic answers with numbered citations and a bibliography, written the ways models and
# wikis write them, and what must be left: no marker, no blank before punctuation, no double
# blank, no ",." from a removed "et al.".
CLEAN_STRIPS = [
    (
        "Gauss was a German mathematician.[1][2]\n\n"
        "[1] Dunnington, G. W. (1955). Gauss: Titan of Science. Hafner.\n"
        "[2] Bühler, W. K. (1981). Gauss: A Biographical Study. Springer.",
        "Gauss was a German mathematician.",
    ),
    (
        "Gauss was a German mathematician [1][2]. He was born in 1777 [3].\n\nReferences\n"
        "[1] Dunnington, G. W. (1955). Gauss. Hafner.\n[2] Bühler, W. K. (1981). Gauss. "
        "Springer.\n[3] Hall, T. (1970). Carl Friedrich Gauss. MIT Press.",
        "Gauss was a German mathematician. He was born in 1777.",
    ),
    (
        "Transformers replaced recurrence with attention [1, 2]. They scale well [1–3], and are "
        "used widely [2-3] .\n\nReferences\n[1] Vaswani, A. et al. (2017). Attention is all "
        "you need. NeurIPS.\n[2] Devlin, J. et al. (2019). BERT. NAACL.\n[3] Brown, T. et al. "
        "(2020). Language models are few-shot learners. NeurIPS.",
        "Transformers replaced recurrence with attention. They scale well, and are used widely.",
    ),
    (
        "Attention [1] [2] is key, as is scale [3],[4].\n\n[1] Vaswani, A. (2017). Attention. "
        "NeurIPS.\n[2] Lee, K. (2018). X. https://example.org\n[3] Kaplan, J. (2020). Scaling."
        " arXiv.\n[4] Hoffmann, J. (2022). Chinchilla. arXiv.",
        "Attention is key, as is scale.",
    ),
    (
        "Water boils at 100 °C at sea level.[1] It freezes at 0 °C.[2][3]\n\n## References\n\n"
        "1. Lide, D. R. (2004). CRC Handbook. CRC Press.\n2. Atkins, P. (2010). Physical "
        "Chemistry. OUP.\n3. Smith, J. (2012). Ice. Nature.",
        "Water boils at 100 °C at sea level. It freezes at 0 °C.",
    ),
    (
        "Photosynthesis converts light to chemical energy [1]; it happens in chloroplasts [2]."
        "\n\nSources:\n[1] https://example.org/photo\n[2] https://example.org/chloro",
        "Photosynthesis converts light to chemical energy; it happens in chloroplasts.",
    ),
    (
        "Some say it works.[1] Others disagree.[2]\n\nNotes:\n\n[1] Smith, J. (2019). A. "
        "Nature.\n[2] Lee, K. (2020). B. Science.",
        "Some say it works. Others disagree.",
    ),
    (  # a header the filter does not know, left with nothing under it
        "Die Hanse prägte den Handel im Ostseeraum.\n\nLiteratur:\n"
        "- Dollinger, P. (1998). Die Hanse. Kröner.",
        "Die Hanse prägte den Handel im Ostseeraum.",
    ),
    (
        "Mood improves (Smith, 2019), and sleep too (Lee & Park, 2020; Kim, 2021) .",
        "Mood improves, and sleep too.",
    ),
    (
        "Key papers include Vaswani, A., Shazeer, N., et al. (2017). Attention is all you need.",
        "Key papers include Vaswani, A., Shazeer, N. Attention is all you need.",
    ),
    (
        "Attention was introduced by Vaswani et al., and BERT followed (Devlin et al., 2019).",
        "Attention was introduced by Vaswani, and BERT followed.",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CLEAN_STRIPS)
def test_rewrite_removes_marker_runs_and_sections_cleanly(text: str, expected: str) -> None:
    assert strip(text) == expected
    assert rewritten(run(text)) == expected
    assert not re.search(r"  |[ \t][.,;:!?]|\[[0-9]|,\.|\w\.\.", expected)


def test_a_list_of_citations_alone_is_dropped_not_cut_to_its_intro() -> None:
    answer = (
        "Here are three papers on transformers:\n\n"
        "1. Vaswani, A., Shazeer, N., et al. (2017). Attention is all you need. NeurIPS.\n"
        "2. Devlin, J., et al. (2019). BERT. NAACL."
    )
    findings = run(answer)
    assert findings.rewrites.height == 0
    assert set(findings.ledger["verdict"]) == {"drop"}
    assert left_nothing(answer, strip(answer))
    # A stripped answer that ends in a colon only counts when the colon was not there before.
    assert not left_nothing("Run this:", "Run this:")


# ---- references the prompt asked for ---------------------------------------------------------

PAPERS = (
    "Here are three papers on transformers:\n\n"
    "1. Vaswani, A., Shazeer, N., Parmar, N., et al. (2017). Attention is all you need. NeurIPS."
    "\n2. Devlin, J., Chang, M.-W., Lee, K., & Toutanova, K. (2019). BERT: Pre-training of deep "
    "bidirectional transformers. NAACL.\n"
    "3. Brown, T. B., Mann, B., et al. (2020). Language models are few-shot learners. NeurIPS."
)
PAPERS_SHORT = (
    "1. Vaswani et al. Attention is all you need. NeurIPS 2017.\n"
    "2. Devlin et al. BERT. NAACL 2019.\n"
    "3. Brown et al. Language Models are Few-Shot Learners. NeurIPS 2020."
)


@pytest.mark.parametrize("answer", [PAPERS, PAPERS_SHORT, ANSWER])
@pytest.mark.parametrize(
    "prompt",
    [
        "Give me three papers on transformers with authors.",
        "What are the seminal papers on attention? Include the authors.",
        "Explain transformers and cite your sources.",
        "Any references for that?",
        "List 3 peer-reviewed articles about it, APA style.",
    ],
)
def test_an_answer_the_prompt_asked_for_is_kept_unchanged(answer: str, prompt: str) -> None:
    assert requested(prompt)
    assert pl.Series([prompt]).str.contains(REQUESTED).item() is True
    findings = ReferenceFilter()(batch(conversation("r0", answer, prompt=prompt)))
    assert findings.rewrites.height == 0  # the answer stays exactly as it was
    assert findings.ledger.height > 0 and set(findings.ledger["verdict"]) == {"keep"}
    assert findings.ledger["reason"].str.starts_with("asked for by the prompt ('").all()


def test_the_same_answer_unasked_is_stripped_and_a_system_turn_can_ask() -> None:
    plain = conversation("a", PAPERS_SHORT, prompt="Tell me about transformers.")
    system = conversation("b", PAPERS_SHORT, prompt="Tell me about transformers.")
    system["messages"].insert(0, {"role": "system", "content": "Always cite your sources."})
    findings = ReferenceFilter()(batch(plain, system))
    verdicts = dict(zip(findings.ledger["row_id"], findings.ledger["verdict"], strict=True))
    assert verdicts == {"a": "rewrite", "b": "keep"}
    assert findings.rewrites["row_id"].to_list() == ["a"]
    assert "et al" not in findings.rewrites["content"].item()


def test_asked_for_overrides_drop_not_flag_and_can_be_switched_off() -> None:
    prompt = "Give me three papers on transformers with authors."
    rows = [
        conversation("a", PAPERS_SHORT, prompt=prompt, source="flan"),
        conversation("b", PAPERS_SHORT, prompt=prompt, source="hh"),
    ]
    policy = Policy("rewrite", per_source={"flan": "drop", "hh": "flag"})
    findings = ReferenceFilter(policy=policy)(batch(*rows))
    verdicts = dict(zip(findings.ledger["row_id"], findings.ledger["verdict"], strict=True))
    assert verdicts == {"a": "keep", "b": "flag"}
    off = ReferenceFilter(keep_requested=False)(batch(rows[0]))
    assert set(off.ledger["verdict"]) == {"rewrite"} and off.rewrites.height == 1


@pytest.mark.parametrize(
    "prompt",
    [
        "Tell me about transformers.",
        "How do I book a flight to Rome?",
        "What are the best study habits?",
        "What are the sources of vitamin D?",
        "How do references work in C++?",
        "What's the source code license?",
        "Summarise Smith et al. (2019).",
    ],
)
def test_prompts_that_do_not_ask_for_references(prompt: str) -> None:
    assert not requested(prompt)
    assert pl.Series([prompt]).str.contains(REQUESTED).item() is False
    findings = ReferenceFilter()(
        batch(conversation("r0", "Sleep helps (Smith, 2019).", prompt=prompt))
    )
    assert findings.ledger["verdict"].to_list() == ["rewrite"]


# ---- policies --------------------------------------------------------------------------------


def test_policy_per_source() -> None:
    rows = [
        conversation("a", "Sleep helps (Smith, 2019).", source="oasst"),
        conversation("b", "Sleep helps (Smith, 2019).", source="flan"),
        conversation("c", "Sleep helps (Smith, 2019).", source="hh"),
    ]
    policy = Policy("rewrite", per_source={"oasst": "drop", "hh": "flag"})
    findings = ReferenceFilter(policy=policy)(batch(*rows))
    verdicts = dict(zip(findings.ledger["row_id"], findings.ledger["verdict"], strict=True))
    assert verdicts == {"a": "drop", "b": "rewrite", "c": "flag"}
    assert findings.rewrites["row_id"].to_list() == ["b"]
    reasons = dict(zip(findings.ledger["row_id"], findings.ledger["reason"], strict=True))
    assert reasons["a"] == "citation: '(Smith, 2019)'"
    assert reasons["b"] == "stripped: '(Smith, 2019)'"


def test_rules_can_be_switched_off_and_min_score() -> None:
    text = "See https://example.org/x.\nSource: https://example.org/x\nSmith et al. agree."
    rules = tuple(r for r in RULE_NAMES if r != "reference.url")
    assert fired(run(text, f=ReferenceFilter(rules=rules))) == ["reference.et_al"]
    assert run(text, f=ReferenceFilter(min_score=3)).ledger.height == 0
    with pytest.raises(ValueError, match="unknown rules"):
        ReferenceFilter(rules=("reference.nope",))


def test_findings_concatenate_with_other_filters() -> None:
    findings = Findings.concat([run(ANSWER), Findings()])
    assert findings.ledger.height == 6


# ---- embedded samples ------------------------------------------------------------------------


def sample_batch(fmt: str, *files: str) -> tuple[pl.DataFrame, Batch]:
    conversations = ingest(fmt, [SAMPLES / f for f in files]).conversations
    return conversations, Batch.from_conversations(conversations)


def test_flan_sample_reference_rows() -> None:
    conversations, b = sample_batch("flan", "flan.jsonl")
    findings = ReferenceFilter()(b)
    lines = conversations.select("id", line=pl.col("provenance").struct.field("line"))
    hit_lines = findings.ledger.join(lines, left_on="row_id", right_on="id")
    by_line = hit_lines.group_by("line").agg("rule")
    assert sorted(by_line["line"]) == [85, 117]  # and no other FLAN row
    for rules in by_line["rule"]:
        assert {"reference.list", "reference.doi", "reference.author_year"} <= set(rules)
    # The answers stay, the reference lists go.
    texts = findings.rewrites.join(lines, left_on="row_id", right_on="id").sort("line")
    first, second = texts["content"]
    assert first.startswith("Sound is a vibration") and first.endswith(
        "343 metres per second in air."
    )
    assert second.endswith("to keep the calendar aligned with Earth's orbit.")
    assert "doi" not in first + second and "References" not in first + second


def test_oasst_sample_reference_reply() -> None:
    conversations, b = sample_batch("oasst", "oasst_trees.jsonl", "oasst_messages.jsonl")
    findings = ReferenceFilter()(b)
    ids = conversations.filter(
        pl.col("provenance")
        .struct.field("ids")
        .list.contains("525c2986-2b48-51b8-9651-dcc387d1be4d")
    )["id"]
    assert set(findings.ledger["row_id"]) == set(ids)
    assert not findings.rewrites["content"].str.contains("References|doi").any()


@pytest.mark.parametrize(
    ("fmt", "files"),
    [
        ("hh", ("hh_rlhf.jsonl",)),
        ("ultrafeedback", ("ultrafeedback.jsonl", "synthetic_ultrafeedback.jsonl")),
        ("jsonl", ("synthetic_chat.jsonl",)),
        ("flan", ("synthetic_flan.jsonl",)),
    ],
)
def test_no_false_positives_in_other_samples(fmt: str, files: tuple[str, ...]) -> None:
    _, b = sample_batch(fmt, *files)
    assert ReferenceFilter()(b).ledger.height == 0


def sample_answers() -> list[str]:
    texts = []
    for fmt, files in [
        ("flan", ("flan.jsonl",)),
        ("oasst", ("oasst_trees.jsonl", "oasst_messages.jsonl")),
        ("hh", ("hh_rlhf.jsonl",)),
        ("ultrafeedback", ("ultrafeedback.jsonl",)),
    ]:
        result = ingest(fmt, [SAMPLES / f for f in files])
        for messages in [result.conversations["messages"]] + [
            result.preferences[c] for c in ("chosen", "rejected") if result.preferences.height
        ]:
            texts += messages.explode().struct.field("content").drop_nulls().to_list()
    return texts


def test_python_re_and_polars_agree_rule_by_rule() -> None:
    """The contract with the pandas baseline: ``re.search`` and polars give the same result for
    every rule on every text, and the prefilter never drops a text that a rule would catch."""
    texts = sample_answers() + [t for _, t in POSITIVES] + NEGATIVES + [ANSWER]
    series = pl.Series(texts)
    passed = series.str.contains(PREFILTER)
    for name, pattern in RULES:
        compiled = re.compile(pattern)
        expected = [compiled.search(t) is not None for t in texts]
        assert series.str.contains(pattern).to_list() == expected, name
        assert all(p for p, e in zip(passed, expected, strict=True) if e), name


def test_filter_rewrites_equal_python_strip() -> None:
    texts = [t for _, t in POSITIVES] + [ANSWER]
    findings = run(*texts)
    got = dict(zip(findings.rewrites["row_id"], findings.rewrites["content"], strict=True))
    dropped = set(findings.ledger.filter(pl.col("verdict") == "drop")["row_id"])
    for i, text in enumerate(texts):
        row_id = f"r{i}"
        if row_id in dropped:
            assert left_nothing(text, strip(text)), text
        else:
            assert strip(text) == got.get(row_id, text), text


# ---- odd input -------------------------------------------------------------------------------


def test_empty_batch_and_empty_strings() -> None:
    empty = Batch.from_conversations(frame([], CONVERSATIONS))
    assert ReferenceFilter()(empty).ledger.height == 0
    assert run("", " ", "\n\n").ledger.height == 0


def test_huge_answer_and_mixed_scripts() -> None:
    unit = "Le renard 🦊 狐狸 лиса ثعلب jumps (Smith, 2019) over x[1]. "
    huge = unit * (10_000_000 // len(unit))
    findings = run(
        huge, "🙂 日本語 العربية עברית — no citations here 🎉", "Müller et al. (2020) 🎉"
    )
    assert fired(findings, "r0") == ["reference.author_year"]
    assert fired(findings, "r1") == []
    assert fired(findings, "r2") == ["reference.et_al", "reference.author_year"]
    big = rewritten(findings, "r0")
    assert "(Smith, 2019)" not in big and "x[1]" in big and "🦊 狐狸" in big
    assert rewritten(findings, "r2") == "Müller 🎉"
