"""Academic citations in assistant answers: find them, and strip, drop or flag them per source.

Why: an answer that ends in "References:\\n[1] Smith, J. et al. (2019) ..." teaches a model the
shallow pattern "answers cite things", and a small model then invents citations that look real.
The facts in the answer are worth keeping; the citation apparatus is not. Unless the prompt asked
for it ("give me three papers with authors", "cite your sources": ``REQUESTED``): then the
citations are the answer, and the row keeps it unchanged.

Every rule is one regex in ``RULES`` (``reference.<name>``). A cheap ``PREFILTER`` (a necessary
condition of every rule, made of short literals) runs over all assistant messages; the rules run
only on the few that pass, and counting, quoting and stripping only on the messages with a hit.
The patterns use only syntax that Rust's regex crate (polars) and Python's ``re`` read the same
way: no look-around or backreferences; no ``\\b``, ``\\w``, ``\\s``, ``\\d`` (their Unicode tables
differ slightly between the two); no ``$`` outside multi-line mode (Python's also matches before
a final newline, Rust's does not). So ``re.search(pattern, text)`` in a row-by-row baseline
reaches the same verdicts; ``detect`` and ``strip`` below are that baseline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar

import polars as pl

from curation.filters.base import Batch, Findings, Policy

# ---- building blocks -------------------------------------------------------------------------

# A surname: capitalised, ends in a lower-case letter (so "USA" or "COVID" are no authors), Latin
# letters with accents allowed ("Müller", "García", "O'Neil", "McDonald", "Lévy-Bruhl").
_SURNAME = r"[A-ZÀ-ÖØ-ÞĀ-ž][A-Za-zÀ-ÖØ-öø-ÿĀ-ž'’-]*[a-zß-öø-ÿ]"
# Name particles written in lower case ("van der Berg", "de Souza").
_PARTICLES = r"(?:(?:van|von|de|der|den|da|di|du|del|della|la|le|ter|ten)[ \t]+){0,2}"
_NAME = _PARTICLES + _SURNAME
_YEAR = r"(?:1[5-9][0-9]{2}|20[0-9]{2})"
_YEARS = rf"{_YEAR}[a-z]?(?:,[ \t]*{_YEAR}[a-z]?)*"
_PAGE = r"(?:,[ \t]*(?:pp?\.|chap\.|ch\.)[ \t]*[0-9]{1,5}(?:[-–][0-9]{1,5})?)?"
_ET_AL_WORD = r"et\.?[ \t]+al"
_ET_AL = _ET_AL_WORD + r"\.?"
# Two or more authors: "Smith et al.", "Smith & Jones", "Smith, Lee and Park".
_AUTHORS_MULTI = rf"{_NAME}(?:[ \t]+{_ET_AL}|(?:,[ \t]*{_NAME})*,?[ \t]+(?:&|and)[ \t]+{_NAME})"
_AUTHORS = rf"{_NAME}(?:[ \t]+{_ET_AL}|(?:,[ \t]*{_NAME})*,?[ \t]+(?:&|and)[ \t]+{_NAME})?"
# One citation inside parentheses, any form: "Smith 2019a", "Smith & Jones, 2020, p. 4".
_CITE = rf"{_AUTHORS},?[ \t]+{_YEARS}{_PAGE}"
# A single parenthesised citation must carry more than "Word 2019": "(June 2019)",
# "(Windows 2000)" and "(Euro 2020)" are not citations. So: a comma before the year, several
# authors, or a year suffix ("2019a"). A ";"-separated list of two or more is always a citation.
_CITE_STRONG = (
    rf"(?:{_AUTHORS},[ \t]*{_YEARS}|{_AUTHORS_MULTI}[ \t]+{_YEARS}"
    rf"|{_NAME}[ \t]+{_YEAR}[a-z](?:,[ \t]*{_YEAR}[a-z]?)*){_PAGE}"
)
_CITE_PREFIX = r"(?:(?:see(?:[ \t]+also)?|e\.g\.,?|cf\.|i\.e\.,?)[ \t]+)?"
# After "see" or "cf." even a plain "Name 2019" is a citation ("(see Smith 2019)", "(cf. Lee
# 2020 for a review)"): "(see June 2019)" is rare enough (the one case it gets wrong). Some words
# may follow it when they start with "for", "on", "in", "p." ... ("(see Monday 2020 notes)" no).
# Other words may come between "see" and a name with a comma or a parenthesis before the year:
# "(see the review by Smith, 2019, ch. 2)", "(see Smith (2019) for details)".
_SEE_TAIL = r"(?:,?[ \t]+(?:for|on|in|and|p\.|pp\.|chapter|ch\.|§)[^()\n]{0,60})?"
_SEE = r"(?:[Ss]ee(?:[ \t]+also)?(?:,?[ \t]+e\.g\.)?,?|[Cc]f\.)[ \t]+"
_PAREN_CITE = (
    rf"\((?:{_CITE_PREFIX}(?:{_CITE_STRONG}|{_CITE}(?:[ \t]*;[ \t]*{_CITE})+)"
    rf"|{_SEE}{_CITE}(?:[ \t]*[;,][ \t]*{_CITE})*{_SEE_TAIL}"
    rf"|{_SEE}(?:[^()\n]{{0,60}}?[ \t])?{_AUTHORS}"
    rf"(?:,[ \t]*{_YEARS}{_PAGE}|[ \t]+\({_YEAR}[a-z]?{_PAGE}\))[^()\n]{{0,60}})\)"
)
# A reference-list entry in APA style: "Smith, J. et al. (2019)", "Okoro, A. and Lind, P. (2021)".
_INITIALS = r"(?:[A-Z]\.[ \t]?-?){1,3}"
_APA_REST = (
    rf",[ \t]+{_INITIALS}(?:,?[ \t]*(?:(?:&|and)[ \t]+)?{_NAME},[ \t]+{_INITIALS})*"
    rf"(?:,?[ \t]*{_ET_AL})?[ \t]*\({_YEAR}[a-z]?\)"
)
_APA_ENTRY = rf"{_NAME}{_APA_REST}"
# Narrative form: "Smith et al. (2019) showed". A plain "Name (2019)" reads the same as "Titanic
# (1997)" or "Windows (2000)", so it counts only with more: "et al."; three or more names ("LeCun,
# Bengio and Hinton (2015)"); "according to" or "as shown by" before it; or a reporting verb after
# it ("Knuth (1974) argued", "Smith and Jones (2019, p. 4) found", "Lee's (2020) study"). The
# price: a film or product with one of those verbs after its year ("Windows (2000) introduced")
# counts as well.
_YEAR_PAREN = rf"\({_YEAR}[a-z]?{_PAGE}\)"
_REPORTING = (
    "argued|argues|argue|showed|shown|shows[ \t]+that|show[ \t]+that|found|finds|find[ \t]+that"
    "|noted|notes|note[ \t]+that|reported|reports|report[ \t]+that|proposed|proposes|propose"
    "|demonstrated|demonstrates|demonstrate|suggested|suggests|suggest|wrote|writes|write"
    "|observed|observes|observe|described|describes|describe|defined|defines|define"
    "|introduced|introduces|introduce|claimed|claims|claim|stated|states[ \t]+that"
    "|concluded|concludes|conclude|explained|explains|explain|established|establishes"
    "|estimated|estimates|estimate|identified|identifies|identify|pointed[ \t]+out"
    "|points[ \t]+out|point[ \t]+out|put[ \t]+it|puts[ \t]+it|coined|termed|emphasi[sz]ed"
    "|emphasi[sz]es|emphasi[sz]e|highlighted|highlights|highlight|contended|contends|contend"
    "|maintained|maintains|maintain|predicted|predicts|predict|hypothesi[sz]ed|theori[sz]ed"
    "|discovered|measured|analy[sz]ed|examined|examines|examine|investigated|investigates"
    "|investigate|recommended|recommends|recommend|discussed|discusses|discuss|formali[sz]ed"
    "|populari[sz]ed|summari[sz]ed|summari[sz]es|documented|developed|reviewed|surveyed"
    "|called[ \t]+(?:this|it|for)|refers[ \t]+to|referred[ \t]+to|calls[ \t]+(?:this|it)"
    "|said|says|warned|warns|remarked|remarks|cautioned|cautions|quipped|advised|advises"
    "|insisted|insists|asserted|asserts|believed|believes|recogni[sz]ed|recogni[sz]es"
    "|reminded|reminds|advocated|advocates|put[ \t]+forward|gave|offers|offered"
)
_STUDY = "paper|study|studies|work|book|article|analysis|model|theory|experiment|survey|essay"
_AFTER_YEAR = (
    rf"(?:,?[ \t]+(?:(?:[a-z]+ly|also|first|later|then|had|has|have|once|further|both|all)"
    rf"[ \t]+)?"
    rf"(?:{_REPORTING})(?:[^A-Za-z]|(?m:$)))"
)
_AUTHORS_3 = rf"{_NAME},[ \t]*{_NAME}(?:,[ \t]*{_NAME})*,?[ \t]+(?:&|and)[ \t]+{_NAME}"
_ACCORDING = (
    r"(?:[Aa]ccording[ \t]+to|[a-z]+(?:ed|en)[ \t]+by|[Aa]s[ \t]+(?:pointed[ \t]+out|put)[ \t]+by"
    r"|[Pp]er|[Cc]iting|[Qq]uoting|[Pp]araphrasing|[Ii]n[ \t]+the[ \t]+words[ \t]+of)"
)
# The forms after the first name, so Python's ``re`` matches that name once per position: et al.;
# three names or more; one or two names with a verb after the year, or a possessive and "study".
_NARRATIVE_REST = (
    rf"[ \t]+{_ET_AL},?[ \t]*\({_YEAR}[a-z]?\)"
    rf"|(?:,[ \t]*{_NAME})+,?[ \t]+(?:&|and)[ \t]+{_NAME}[ \t]+{_YEAR_PAREN}"
    rf"|(?:[ \t]+{_ET_AL}|(?:,[ \t]*{_NAME})*,?[ \t]+(?:&|and)[ \t]+{_NAME})?"
    rf"(?:[ \t]+{_YEAR_PAREN}{_AFTER_YEAR}"
    rf"|(?:'s|’s|')[ \t]+{_YEAR_PAREN}[ \t]+(?:[a-z]+[ \t]+)?(?:{_STUDY}))"
)

# Signs that a line is a bibliography entry and not prose.
_EVIDENCE = (
    rf"(?:{_YEAR}|https?://|www\.|(?i:doi)|et al|ISBN|[A-Z][a-z]+,[ \t][A-Z]\.|[Vv]ol\.|pp\.)"
)
_MARKER = r"(?:[-*•+][ \t]+|\[[0-9]{1,3}\][ \t]*|[0-9]{1,3}[.)][ \t]+)"

# ---- reference.list: a header line, then entries ---------------------------------------------
# Headers that only ever introduce a bibliography need any list entry after them. "References"
# and "Sources" also head prose sections ("## References\nIn Python, names are references ..."),
# so after those the first entry must look like a citation (a year, URL, DOI, "Name, I.").
_HEADER_START = r"(?m)^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?"
_HEADER_END = r"(?:\*\*|__)?[ \t]*:?[ \t]*(?:\*\*|__)?[ \t]*\r?\n(?:[ \t]*\r?\n)*[ \t]*"


def _casings(*phrases: str) -> str:
    """An alternation of each phrase as written in lower case, Capitalised, Title Case and UPPER
    CASE. Not (?i): a case-insensitive word has too many spellings for the regex engine's literal
    prefilter, and nobody writes "ReFeReNcEs"."""
    variants = {v for p in phrases for v in (p, p.capitalize(), p.title(), p.upper())}
    return "(?:" + "|".join(sorted(variants, key=lambda v: (-len(v), v))) + ")"


_HEADER_WORDS_STRONG = (
    "bibliography",
    "works cited",
    "works consulted",
    "reference list",
    "further reading",
    "suggested reading",
    "literature cited",
    "cited works",
    "cited literature",
)
_HEADER_WORDS_WEAK = (
    "references",
    "reference",
    "sources",
    "source",
    "citations",
    "citation",
    "sources cited",
    "literature",
    "reading list",
)
_HEADERS_STRONG = _casings(*_HEADER_WORDS_STRONG)
_HEADERS_WEAK = _casings(*_HEADER_WORDS_WEAK)
LIST = (
    rf"{_HEADER_START}(?:{_HEADERS_STRONG}{_HEADER_END}(?:{_MARKER}[^ \t\r\n]|[^\n]*{_EVIDENCE})"
    rf"|{_HEADERS_WEAK}{_HEADER_END}[^\n]*{_EVIDENCE})"
)
# The whole block for stripping: the header, its entries up to the first blank line, and more
# entries after blank lines as long as they start with a list marker ("[3] ...", "- ...").
_NONBLANK_LINE = r"\n[ \t]*[^ \t\r\n][^\n]*"
LIST_BLOCK = (
    rf"{LIST}[^\n]*(?:{_NONBLANK_LINE})*"
    rf"(?:\n(?:[ \t\r]*\n)+[ \t]*{_MARKER}[^\n]*(?:{_NONBLANK_LINE})*)*\n?"
)

# ---- reference.et_al -------------------------------------------------------------------------
# "et al", "et al.", "et. al." as words; never "et cetera", "etc.", French "et alors".
ET_AL = r"(?:^|[^A-Za-z])et\.?[ \t]+al(?:[.,;:)\] \t\r\n]|$)"

# ---- reference.author_year ---------------------------------------------------------------------
AUTHOR_YEAR = (
    rf"{_PAREN_CITE}|{_NAME}(?:{_APA_REST}|{_NARRATIVE_REST})"
    rf"|{_ACCORDING}[ \t]+{_AUTHORS}[ \t]+{_YEAR_PAREN}"
)

# ---- reference.numbered ------------------------------------------------------------------------
# An inline marker "[1]", "[2, 3]", "[4-6]", or a run of them ("[1][2]", "[1], [2]"), after
# punctuation or after a word or number and a space, never glued to an identifier ("items[1]",
# "matrix[2][3]", "x[0]").
_ONE_MARKER = r"\[[0-9]{1,3}(?:[ \t]*[-–,][ \t]*[0-9]{1,3})*\]"
_MARKER_RUN = rf"{_ONE_MARKER}(?:[ \t]*,?[ \t]*{_ONE_MARKER})*"
INLINE_MARKER = rf"(?:[.,;:!?)\"'’”]|[A-Za-z0-9%°][ \t])[ \t]*{_MARKER_RUN}"
# A bibliography line: "[1] Smith ... 2019" (a name or initial first, and a year, URL or DOI on
# the line: R prints "[1] 5", "[1] TRUE" and "[1] "2019-05-01"") or "1. Smith, J." (a markdown
# list "1. Preheat the oven" has no "Name, I.").
BIB_LINE = (
    r"(?m)^[ \t]*(?:\[[0-9]{1,3}\][ \t]*[A-Z][a-z.][^\n]*"
    rf"(?:{_YEAR}|https?://|(?i:doi))|[0-9]{{1,3}}\.[ \t]+{_SURNAME},[ \t]+[A-Z]\.)"
)
# The rule fires on the bibliography: a list of numbered entries with no header is a citation
# list all the same, and inline markers are citations only where one is present (so "items[1]"
# and "see step [2]" in an answer without one are left alone). Its score counts the entries and
# the inline markers; its rewrite removes both. (A single "markers and a bibliography" regex,
# "A.*B|B.*A", would be quadratic in Python's backtracking ``re`` on long answers.)
NUMBERED = BIB_LINE

# ---- reference.footnote ----------------------------------------------------------------------
# Chicago notes: "Ibid." (never anything but a note), publication facts "(Chicago: University of
# Chicago Press, 2010)" (a city, a colon, a capitalised publisher, a year), and an article's
# volume, issue and year "*Journal* 12, no. 3 (2015): 45".
_IBID = r"(?:Ibid|ibid|IBID)\."
_PLACE = r"[A-Z][A-Za-z.'’-]*(?:[ \t]+[A-Z][A-Za-z.'’-]*)*"
_PUBLISHED = rf"\({_PLACE}:[ \t]*[A-Z][^():;\n]{{1,80}}?,[ \t]*{_YEAR}\)"
_NOTE_ISSUE = rf"[0-9]{{1,4}},[ \t]*no\.[ \t]*[0-9]{{1,4}}[ \t]+\({_YEAR}\):[ \t]*[0-9]"
# Markdown footnote definitions "[^1]: Smith, *Title*, 2019, p. 4." with a year, page or Ibid.
_MD_NOTE = (
    rf"(?m:^)[ \t]*\[\^[0-9A-Za-z_-]{{1,12}}\]:[ \t]*[^\n]*?(?:{_YEAR}|pp?\.[ \t]*[0-9]|{_IBID})"
)
FOOTNOTE = rf"(?:^|[^A-Za-z]){_IBID}|{_PUBLISHED}|{_NOTE_ISSUE}|{_MD_NOTE}"
_NOTE_NUMBER = r"(?:[0-9]{1,3}\.[ \t]+|\[\^?[0-9]{1,3}\]:?[ \t]*|[¹²³⁴⁵⁶⁷⁸⁹⁰]{1,3}[ \t]*)"
_NOTE_START = rf"(?m)^[ \t]*{_NOTE_NUMBER}?"
_NUMBERED_LINE = rf"[ \t]*{_NOTE_NUMBER}[^\n]*"
_SURE_NOTE = rf"[ \t]*{_NOTE_NUMBER}(?:{_IBID}|[^\n]*(?:{_PUBLISHED}|{_NOTE_ISSUE}))[^\n]*"
_NOTES_BLOCK = (
    rf"{_HEADER_START}{_casings('notes', 'footnotes', 'endnotes')}{_HEADER_END}"
    rf"(?:{_NUMBERED_LINE}\n[ \t]*)*{_SURE_NOTE}(?:\n{_NUMBERED_LINE})*\n?"
)

# ---- reference.source ------------------------------------------------------------------------
# A line (or a parenthesis) that names its source with a year or a page, no URL: "Source: World
# Bank, World Development Report 2019, p. 34", "(Source: Eurostat, 2021)". Not "open source:
# https://..." (no line start), "Source code: ..." or "Source: my own experience" (no year).
_EMPHASIS = r"(?:\*\*|__|\*|_)?"
_SOURCE_LABEL = (
    rf"{_EMPHASIS}(?:[Ss]ources?|SOURCES?|[Dd]ata[ \t]+[Ss]ources?|[Rr]eferences?|REFERENCES?"
    rf"|[Cc]itations?|CITATIONS?){_EMPHASIS}"
)
_SOURCE_EVIDENCE = rf"(?:[^0-9]{_YEAR}(?:[^0-9]|(?m:$))|p\.[ \t]*[0-9]|pp\.[ \t]*[0-9])"
_SOURCE_LINE = (
    rf"(?m:^)[ \t]*(?:[-*•>][ \t]*)?{_SOURCE_LABEL}[ \t]*(?::|[-–—][ \t]){_EMPHASIS}[ \t]*"
    rf"[^\n]*?{_SOURCE_EVIDENCE}"
)
_SOURCE_PAREN = (
    rf"\((?:[Ss]ources?|SOURCES?)[ \t]*:[ \t]*[^()\n]*?"
    rf"(?:[^0-9]{_YEAR}|p\.[ \t]*[0-9]|pp\.[ \t]*[0-9])[^()\n]*\)"
)
SOURCE = rf"{_SOURCE_LINE}|{_SOURCE_PAREN}"

# ---- reference.doi / reference.arxiv -------------------------------------------------------------
# A DOI with a "doi" label or a doi.org link, or bare "10.NNNN/xyz" not glued to a number or price
# ("v10.1234/", "$10.2500/kg" are not DOIs; a suffix of three characters or more is required).
DOI = (
    r"(?i:doi)[ \t]*:?[ \t]*10\.[0-9]{4,9}/[^ \t\r\n]"
    r"|(?i:doi\.org)/10\.[0-9]{4,9}/"
    r"|(?:^|[^0-9A-Za-z.$€£])10\.[0-9]{4,9}/[^ \t\r\n]{3}"
)
ARXIV = (
    r"(?i:arxiv)[ \t]*:[ \t]*(?:[0-9]{4}\.[0-9]{4,5}|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{7})"
    r"|(?i:arxiv\.org)/(?:abs|pdf)/[0-9a-z]"
)

# ---- reference.journal -------------------------------------------------------------------------
# "Journal of X, 12(3), 45-67", "2019;12(3):45-67", "vol. 12, pp. 45–67", "pp. 45-67". The volume
# must follow "," or ";" as it does after a journal name: "2(3), 10-4" in arithmetic does not.
_JOURNAL_ISSUE = (
    r"[,;][ \t]*[0-9]{1,4}[ \t]?\([0-9]{1,4}(?:[-–][0-9]{1,4})?\)[ \t]*[:,][ \t]*"
    r"(?:pp?\.[ \t]*)?[0-9]{1,6}[ \t]*[-–][ \t]*[0-9]{1,6}"
)
_JOURNAL_VOLUME = (
    r"(?i:vol(?:ume)?)\.?[ \t]*[0-9]{1,4}(?:[ \t]*,[ \t]*(?i:no|issue)\.?[ \t]*[0-9]{1,4})?"
    r"[ \t]*,[ \t]*(?i:pp?)\.[ \t]*[0-9]{1,6}(?:[ \t]*[-–][ \t]*[0-9]{1,6})?"
)
_JOURNAL_PAGES = r"pp\.[ \t]*[0-9]{1,6}[ \t]*[-–][ \t]*[0-9]{1,6}"
# Without a comma before the volume, a journal name and a colon: "Nature 521(7553): 436–444";
# with a comma after the issue, two-digit pages too ("Science 313(5786), 504-507"). Volumes of two
# digits or more, so "Evaluate 2(3), 10-4" stays arithmetic. After a year, "(2015), Nature, 521,
# 436–444".
_JOURNAL_NAMED = (
    r"[ \t][0-9]{2,4}[ \t]?\([0-9]{1,5}(?:[-–][0-9]{1,5})?\)[ \t]*:[ \t]*(?:pp?\.[ \t]*)?"
    r"[0-9]{1,6}[ \t]*[-–][ \t]*[0-9]{1,6}"
    r"|[ \t][0-9]{2,4}[ \t]?\([0-9]{1,5}\),[ \t]*(?:pp?\.[ \t]*)?"
    r"[0-9]{2,6}[ \t]*[-–][ \t]*[0-9]{2,6}"
)
_JOURNAL_NAME = r"[A-Z][A-Za-z.&]*"
_JOURNAL_AFTER_YEAR = (
    r",[ \t]*[A-Z][^,\n]{1,80},[ \t]*[0-9]{1,4}(?:[ \t]?\([0-9]{1,5}\))?,[ \t]*(?:pp?\.[ \t]*)?"
    r"[0-9]{1,6}[ \t]*[-–][ \t]*[0-9]{1,6}"
)
# Nature's own style, the year last: "Nature 521, 436–444 (2015)".
_JOURNAL_YEAR_LAST = (
    rf"[ \t][0-9]{{1,4}},[ \t]*[0-9]{{1,6}}[ \t]*[-–][ \t]*[0-9]{{1,6}}[ \t]*\({_YEAR}\)"
)
JOURNAL = (
    rf"{_JOURNAL_ISSUE}|{_JOURNAL_VOLUME}|(?:^|[^A-Za-z]){_JOURNAL_PAGES}"
    rf"|{_JOURNAL_NAME}(?:{_JOURNAL_NAMED}|{_JOURNAL_YEAR_LAST})"
    rf"|\({_YEAR}[a-z]?\){_JOURNAL_AFTER_YEAR}"
)

# ---- reference.url -------------------------------------------------------------------------------
# A URL given as a source: "Source: https://...", "(Sources: https://...)", "Retrieved from
# https://...", "[1] https://..." / "[1]: https://..." at a line start. "Source"/"Reference"
# must start a line or follow "(", "[" or sentence punctuation ("open source: https://github..."
# is no citation). A bare URL, or a plain list of links, is the answer to "what is the website
# of X" or "where can I learn Y": it is content and does not fire.
_URL_LABEL = r"(?i:sources?|references?|citations?|cited from|adapted from|quoted from)"
_RETRIEVED = r"(?i:retrieved(?:[ \t]+(?:on|in)[ \t]+[^\n]{1,40}?,?)?[ \t]+from)"
URL = (
    rf"(?m)(?:(?:^|[(\[.;!?])[ \t]*{_URL_LABEL}|{_RETRIEVED})"
    r"[ \t]*[:\-–]?[ \t]*(?:\r?\n[ \t]*)?[(<\[]?https?://"
    r"|^[ \t]*\[[0-9]{1,3}\][ \t]*:?[ \t]*<?https?://"
)

# ---- asked for: a prompt that wants references -----------------------------------------------
# "Give me three papers on transformers with authors", "cite your sources", "any references for
# that?": the citations are the answer, and stripping them leaves "1. Vaswani. Attention is all
# you need." So when a user or system turn asks for them, a row keeps its answer as it is (the
# ledger still records the rules, with verdict ``keep``). Words that mean a citation on their own
# count anywhere; "sources"/"references" only after a word that asks for them ("the sources of
# vitamin D" is food, "references in C++" is code); works ("papers", "books") after a verb or
# adjective that asks for a list of them, at most four words before.
_W0 = r"(?:^|[^A-Za-z])"  # word start (consumes the character before it, like the rules above)
_W1 = r"(?:[^A-Za-z]|$)"
_ASK_WORK = (
    r"give|list|recommend|suggest|name|provide|find|share|point|mention|show|know[ \t]+of"
    r"|what[ \t]+are|which|any|good|key|seminal|landmark|influential|important|classic"
    r"|foundational|famous|notable|best|top|relevant|recent|main|major|academic|scientific"
    r"|scholarly|published|peer-reviewed|one|two|three|four|five|six|seven|eight|nine|ten"
    r"|[0-9]{1,2}"
)
# Plural "books", "studies", "readings" only: "how to book a flight", "best study habits" and
# "reading glasses" ask for no references.
_WORKS = (
    r"papers?|articles?|publications?|studies|books|textbooks?|readings|literature|journals?"
    r"|monographs?|theses|thesis|preprints?"
)
REQUESTED = (
    rf"(?i:{_W0}(?:cite|cites|citing|citations?|bibliograph(?:y|ies)|works[ \t]+cited"
    r"|reading[ \t]+list|further[ \t]+reading|dois?|apa|mla|(?:harvard|chicago|ieee|vancouver)"
    r"[ \t]+(?:style|format)|peer-reviewed|literature[ \t]+review|quellen(?:angaben)?"
    r"|literaturangaben|literaturverzeichnis|références|bibliographie|referencias|bibliografía"
    r"|bibliografia|fuentes|citas"
    r"|(?:with|include|including|add|adding|give|list|provide|providing|need|want|plus|and"
    r"|any|your|cite)[ \t]+(?:[a-z-]+[ \t]+){0,2}(?:references|sources)"
    r"|(?:references|sources)[ \t]*(?:please|pls|\?|:|for[ \t]+(?:this|that|it|these|those"
    r"|your|each|every))"
    rf"|(?:{_ASK_WORK})[ \t]+(?:[a-z0-9'-]+[ \t]+){{0,4}}?(?:{_WORKS})"
    r"|(?:recommend|suggest|name|cite)[ \t]+(?:[a-z-]+[ \t]+){0,3}?book"
    r"|who[ \t]+(?:wrote|authored)|(?:with|and|include|including|list|name|who[ \t]+(?:are|were))"
    rf"[ \t]+(?:the[ \t]+|their[ \t]+|its[ \t]+)?authors?){_W1})"
)

RULES: list[tuple[str, str]] = [
    ("reference.list", LIST),
    ("reference.et_al", ET_AL),
    ("reference.author_year", AUTHOR_YEAR),
    ("reference.numbered", NUMBERED),
    ("reference.doi", DOI),
    ("reference.arxiv", ARXIV),
    ("reference.journal", JOURNAL),
    ("reference.url", URL),
    ("reference.footnote", FOOTNOTE),
    ("reference.source", SOURCE),
]
RULE_NAMES = [name for name, _ in RULES]

# A cheap necessary condition of every rule, run first over all answers so the exact rules only
# see the few that pass: each branch is implied by one rule (list: its header words; et_al;
# author_year: every form has a year followed by ")" or ",", or starts "(see" or "(cf."; numbered:
# "[" and a digit, or ", I." of "1. Name, I."; doi: "10." and four digits; arxiv; journal: "(" and
# a digit, "vol" or "pp."; url: "http"; footnote: "Ibid.", "[^" or a year and ")"; source: the
# header words "source", "reference", "citation"). Every branch starts with a short literal, so
# the regex engine scans with a SIMD literal search instead of its automaton: about 8x faster than
# running the rules on all.
PREFILTER = "|".join(
    [
        _HEADERS_STRONG,
        _HEADERS_WEAK,
        r"et\.?[ \t]+al",
        rf"{_YEAR}[a-z]?[),]",
        r"\[[0-9]",
        r",[ \t]+[A-Z]\.",
        r"10\.[0-9]{4}",
        r"(?i:arxiv)",
        r"\([0-9]",
        r"(?i:vol)",
        r"pp\.",
        r"http",
        _IBID,
        r"\((?:[Ss]ee|[Cc]f\.)",
        r"\[\^",
    ]
)

# ---- stripping -----------------------------------------------------------------------------------
# (rule, pattern, replacement), applied in this order to a message, each only when its rule fired
# on that message. Whole blocks and lines go first, then inline markers, so an entry inside a
# removed block is never half-edited. Replacements use polars' "${n}" group syntax; ``strip``
# translates it for ``re.sub``. Each pattern takes the blank before it, so no " ." is left.
_DOI_TOKEN = (
    r"(?:(?i:doi)[ \t]*:?[ \t]*|https?://(?:dx\.)?(?i:doi\.org)/)?10\.[0-9]{4,9}/[^ \t\r\n]*"
    r"[^ \t\r\n.,;:)\]]"
)
_ARXIV_TOKEN = (
    r"(?:(?i:arxiv)[ \t]*:[ \t]*(?:[0-9]{4}\.[0-9]{4,5}|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{7})"
    r"(?:v[0-9]+)?|https?://(?:www\.)?(?i:arxiv\.org)/(?:abs|pdf)/[^ \t\r\n]*[^ \t\r\n.,;:)\]])"
)
_URL_TOKEN = r"<?https?://[^ \t\r\n>]*[^ \t\r\n>.,;:)\]]>?"
# Blanks between a removed citation and the punctuation after it go too (the punctuation is
# group 1 of this pattern, so a step that uses it puts it back).
_TO_PUNCT = r"(?:[ \t]+([.,;:!?]))?"
# A run of inline markers after punctuation or a word (glued, as Wikipedia prints them, or after
# a blank), or after a number and a blank ("born in 1777 [3]"), with the blank before it.
_STRIP_MARKERS = (
    rf"([.,;:!?)\"'’”A-Za-z])[ \t]*{_MARKER_RUN}{_TO_PUNCT}"
    rf"|([0-9%°])[ \t]+{_MARKER_RUN}{_TO_PUNCT}"
)
_ORPHAN_HEADERS = _casings(
    *_HEADER_WORDS_STRONG, *_HEADER_WORDS_WEAK, "notes", "footnotes", "endnotes", "links"
)
# What a rule's score counts and its reason quotes: the whole block or token, not just enough of
# it to decide; for numbered citations the bibliography lines and the inline markers.
QUOTE: dict[str, str] = {
    "reference.list": LIST_BLOCK,
    "reference.et_al": rf"(?:{_NAME},[ \t]+{_INITIALS}[ \t]*|{_NAME}[ \t]+)?{_ET_AL}",
    "reference.numbered": BIB_LINE + r"[^\n]*|" + INLINE_MARKER,
    "reference.doi": _DOI_TOKEN,
    "reference.arxiv": _ARXIV_TOKEN,
    "reference.url": rf"(?:{_URL_LABEL}|{_RETRIEVED}|\[[0-9]{{1,3}}\])[ \t]*[:\-–]?[ \t]*"
    rf"(?:\r?\n[ \t]*)?{_URL_TOKEN}",
    "reference.footnote": (
        rf"{_NOTE_START}{_IBID}[^\n]*|{_PUBLISHED}|{_NOTE_ISSUE}|{_MD_NOTE}[^\n]*"
    ),
    "reference.source": rf"{_SOURCE_LINE}[^\n]*|{_SOURCE_PAREN}",
}
STRIP: list[tuple[str, str, str]] = [
    ("reference.list", LIST_BLOCK, ""),
    # Lines that are nothing but a citation: bibliography entries without a header, "[1] URL",
    # "Source: URL", a DOI or arXiv id on its own line (optionally "- " or "[2] " before it).
    ("reference.numbered", BIB_LINE + r"[^\n]*\n?", ""),
    (
        "reference.author_year",
        rf"(?m)^[ \t]*(?:{_MARKER})?{_APA_ENTRY}[^\n]*\n?",
        "",
    ),
    (
        "reference.url",
        rf"(?m)^[ \t]*(?:\[[0-9]{{1,3}}\][ \t]*:?|(?:{_MARKER})?(?:{_URL_LABEL}|{_RETRIEVED})"
        rf"[ \t]*[:\-–]?)[ \t]*(?:\r?\n[ \t]*)?{_URL_TOKEN}[ \t]*(?:\r?\n|$)",
        "",
    ),
    ("reference.doi", rf"(?m)^[ \t]*(?:{_MARKER})?{_DOI_TOKEN}[ \t]*(?:\r?\n|$)", ""),
    ("reference.arxiv", rf"(?m)^[ \t]*(?:{_MARKER})?{_ARXIV_TOKEN}[ \t]*(?:\r?\n|$)", ""),
    # Notes: a "Notes" header with the numbered notes under it, one of them a sure note; then
    # "2. Ibid., 47." and a numbered note with publication facts as whole lines.
    ("reference.footnote", _NOTES_BLOCK, ""),
    ("reference.footnote", rf"{_NOTE_START}{_IBID}[^\n]*\n?", ""),
    (
        "reference.footnote",
        rf"(?m)^[ \t]*{_NOTE_NUMBER}[^\n]*(?:{_PUBLISHED}|{_NOTE_ISSUE})[^\n]*\n?",
        "",
    ),
    # Note marks left in the text: "old.¹" → "old."
    ("reference.footnote", rf"{_MD_NOTE}[^\n]*\n?", ""),
    (
        "reference.footnote",
        r"([.,;:!?)\"'’”A-Za-z])(?:[¹²³⁴⁵⁶⁷⁸⁹⁰]+|\[\^[0-9A-Za-z_-]{1,12}\])",
        "${1}",
    ),
    ("reference.source", rf"{_SOURCE_LINE}[^\n]*\n?", ""),
    ("reference.source", rf"[ \t]*{_SOURCE_PAREN}", ""),
    # Inline: "(Smith, 2019)" and "(see Lee et al., 2020; Park 2021)" vanish with their blank
    # (and with a blank after them that stood before punctuation: "memory (Lee, 2020) .").
    ("reference.author_year", rf"[ \t]*{_PAREN_CITE}{_TO_PUNCT}", "${1}"),
    # Narrative: "Knuth (1974) argued" → "Knuth argued", "according to Lee (2020)" → "according
    # to Lee", "LeCun, Bengio and Hinton (2015)" → "LeCun, Bengio and Hinton".
    ("reference.author_year", rf"({_AUTHORS})[ \t]+{_YEAR_PAREN}({_AFTER_YEAR})", "${1}${2}"),
    (
        "reference.author_year",
        rf"({_AUTHORS_3}|{_ACCORDING}[ \t]+{_AUTHORS})[ \t]+{_YEAR_PAREN}",
        "${1}",
    ),
    ("reference.author_year", rf"({_AUTHORS}(?:'s|’s|'))[ \t]+{_YEAR_PAREN}", "${1}"),
    # "Smith et al. (2019) showed" → "Smith showed"; at a sentence end "by Smith et al. The" keeps
    # its full stop ("by Smith. The"). ``strip`` appends a newline first so the end of the text
    # is a line end here too (no "$", whose meaning differs between the engines).
    # After an initial the full stop is already there: "Shazeer, N., et al. (2017). Attention"
    # → "Shazeer, N. Attention", not "N.,. Attention" or "N.. Attention".
    ("reference.et_al", rf"\.,?[ \t]+{_ET_AL}(?:,?[ \t]*\({_YEAR}[a-z]?\))?\.", "."),
    ("reference.et_al", rf",?[ \t]+{_ET_AL_WORD}\.([ \t]+[A-Z]|[ \t]*\n)", ".${1}"),
    (
        "reference.et_al",
        rf",?[ \t]+{_ET_AL}(?:,?[ \t]*\({_YEAR}[a-z]?\))?",
        "",
    ),
    # Inline markers go where a bibliography, a reference list or numbered source links stand
    # for them: "mathematician.[1][2]" → "mathematician.", "attention [1, 2] ." → "attention.".
    ("reference.numbered", _STRIP_MARKERS, "${1}${2}${3}${4}"),
    ("reference.list", _STRIP_MARKERS, "${1}${2}${3}${4}"),
    ("reference.url", _STRIP_MARKERS, "${1}${2}${3}${4}"),
    (
        "reference.journal",
        rf"[ \t]*(?:{_JOURNAL_ISSUE}|[,;]?[ \t]*(?:{_JOURNAL_VOLUME}|{_JOURNAL_PAGES}))"
        rf"|{_JOURNAL_NAMED}|{_JOURNAL_AFTER_YEAR}|{_JOURNAL_YEAR_LAST}",
        "",
    ),
    ("reference.doi", rf"[ \t]*\(?{_DOI_TOKEN}\)?", ""),
    ("reference.arxiv", rf"[ \t]*\(?{_ARXIV_TOKEN}\)?", ""),
    (
        "reference.url",
        rf"[ \t]*[(\[]?(?:{_URL_LABEL}|{_RETRIEVED})[ \t]*[:\-–]?[ \t]*{_URL_TOKEN}[)\]]?",
        "",
    ),
    # A header left last, its entries gone: a references word ("Notes" over numbered entries) or
    # any line that ends in a colon ("Literatur:", "Further details:"), after other lines (a
    # first line that is all that is left, "Here are three papers:", makes the row a drop, see
    # ``left_nothing``). ``strip`` appended a newline, and the pattern takes every line end to
    # the end of the text, so "$" means the end of the text in both engines.
    (
        "*",
        r"\n[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?"
        rf"(?:{_ORPHAN_HEADERS}(?:\*\*|__)?[ \t]*:?|[^\n]{{0,80}}:)"
        r"[ \t]*(?:\*\*|__)?(?:[ \t]*\n)+$",
        "\n",
    ),
    # Leftover blank runs: at most one empty line in a row.
    ("*", r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n"),
]
# Whitespace trimmed from both ends after stripping, and what counts as "nothing left". Listed
# explicitly: Python's str.strip() and Rust's char::is_whitespace disagree on a few characters.
WHITESPACE = " \t\r\n\f\v\u00a0\u200b\u3000"
REASON_CHARS = 300  # characters of removed text quoted in a ledger reason
_ASKED_TRIM = " \t\r\n.,;:!?()\"'"  # around the prompt's words quoted in a reason


def _python_repl(replacement: str) -> str:
    return re.sub(r"\$\{([0-9]+)\}", r"\\g<\1>", replacement)


# Compiled on first use, not at import: every process that loads the Dagster definitions imports
# this module, and compiling these at import cost ~0.05 s there, while only the row-by-row
# ``detect``/``strip`` below need them (the filter gives polars the pattern strings).
@cache
def _compiled_rules() -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((name, re.compile(pattern)) for name, pattern in RULES)


@cache
def _compiled_strip() -> tuple[tuple[str, re.Pattern[str], str], ...]:
    return tuple((rule, re.compile(pattern), _python_repl(repl)) for rule, pattern, repl in STRIP)


def requested(prompt: str) -> bool:
    """Whether a user or system turn asks for references (``REQUESTED``), as the filter reads it."""
    return _compiled_requested().search(prompt) is not None


@cache
def _compiled_requested() -> re.Pattern[str]:
    return re.compile(REQUESTED)


def detect(text: str) -> list[str]:
    """The rules that fire on one answer, row by row with Python's ``re`` (a reference for the
    vectorised filter and the baseline a benchmark compares it with)."""
    return [name for name, pattern in _compiled_rules() if pattern.search(text)]


def strip(text: str, rules: list[str] | None = None) -> str:
    """``text`` with the citations of ``rules`` (default: those that fire) removed, as the
    filter's rewrite does it."""
    fired = set(detect(text) if rules is None else rules)
    out = text + "\n"
    for rule, pattern, repl in _compiled_strip():
        if rule == "*" or rule in fired:
            out = pattern.sub(repl, out)
    return out.strip(WHITESPACE)


def _strip_frame(frame: pl.DataFrame) -> pl.Series:
    """``strip`` over a frame of messages (``content`` plus one boolean column per rule). Each
    step runs only on the messages where its rule fired (gathered, replaced, scattered back):
    a rule that did not fire never edits a message, and most steps see a small share of them."""
    text = frame.get_column("content") + "\n"
    for rule, pattern, repl in STRIP:
        if rule == "*":
            text = text.str.replace_all(pattern, repl)
            continue
        where = frame.get_column(rule).arg_true()
        if where.len():
            text = text.scatter(where, text.gather(where).str.replace_all(pattern, repl))
    return text.str.strip_chars(WHITESPACE)


def nothing_left(before: pl.Expr, after: pl.Expr) -> pl.Expr:
    """Whether stripping left nothing of an answer worth training on: nothing at all, or only
    the line that introduced the removed list ("Here are three papers on transformers:")."""
    return (after == "") | (
        after.str.ends_with(":") & ~before.str.strip_chars(WHITESPACE).str.ends_with(":")
    )


def left_nothing(before: str, after: str) -> bool:
    """``nothing_left`` for one answer and its ``strip``."""
    return after == "" or (after.endswith(":") and not before.strip(WHITESPACE).endswith(":"))


def quote(text: pl.Expr, width: int = REASON_CHARS) -> pl.Expr:
    """Removed text for a reason: newlines shown as "\\n", cut to ``width`` characters."""
    cut = text.str.slice(0, width)
    shown = cut.str.replace_all("\r", "", literal=True).str.replace_all("\n", r"\n", literal=True)
    return pl.when(text.str.len_chars() > width).then(shown + pl.lit("…")).otherwise(shown)


@dataclass(frozen=True)
class ReferenceFilter:
    """Citations in assistant turns (see the module docstring and ``RULES``).

    ``policy``: what a row with citations gets, per source: ``rewrite`` strips them (and becomes
    ``drop`` when nothing of the answer is left), ``drop`` removes the row, ``flag``/``keep``
    only record it.
    ``rules``: the rule names to run (default all of ``RULES``); leave one out to switch it off,
    e.g. ``reference.url`` for a source whose answers are meant to carry links.
    ``min_score``: a row is reported only when it has at least this many citation matches in
    all (1 = any citation; raise it to tolerate a lone "et al." in otherwise plain answers).
    ``keep_requested``: a row whose user or system turns ask for references (``REQUESTED``:
    "give me three papers with authors", "cite your sources") keeps its answer unchanged: a
    ``rewrite`` or ``drop`` becomes ``keep`` in the ledger, with the prompt's words in the reason.
    """

    category: ClassVar[str] = "reference"
    policy: Policy = Policy("rewrite")
    rules: tuple[str, ...] = field(default_factory=lambda: tuple(RULE_NAMES))
    min_score: float = 1.0
    keep_requested: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.rules) - set(RULE_NAMES)
        if unknown:
            raise ValueError(f"unknown rules {sorted(unknown)}; expected some of {RULE_NAMES}")

    def __call__(self, batch: Batch) -> Findings:
        rules = [(name, pattern) for name, pattern in RULES if name in self.rules]
        if not rules:
            return Findings()
        names = [name for name, _ in rules]
        # One cheap pass over all answers, then one pass per rule over the candidates that passed;
        # everything after that sees only the messages with a hit. Eager and in this order on
        # purpose: a lazy plan fuses the two filters and runs the regex on user turns too.
        answers = batch.messages.filter(pl.col("role") == "assistant")
        candidates = answers.filter(pl.col("content").str.contains(PREFILTER))
        hits = candidates.select(
            "row_id",
            "source",
            "turn",
            "content",
            *(pl.col("content").str.contains(p).alias(n) for n, p in rules),
        ).filter(pl.any_horizontal(names))
        if hits.is_empty():
            return Findings()
        # Per message and rule: the matched texts, in one pass for both the score (how many) and
        # the reason (which quotes them, cut early so that long lists stay cheap). At least 1
        # where the rule fired: a quote pattern can miss an odd match its rule accepts
        # ("doi:10.1234/." has no token).
        hits = hits.with_columns(
            pl.when(pl.col(n))
            .then(pl.col("content").str.extract_all(QUOTE.get(n, p)))
            .alias(n + "#")
            for n, p in rules
        ).with_columns(
            *(
                pl.when(pl.col(n))
                .then(pl.max_horizontal(pl.col(n + "#").list.len(), 1))
                .otherwise(0)
                .alias(f"{n}#count")
                for n in names
            ),
            *(
                pl.col(n + "#")
                .list.head(32)
                .list.join(" … ")
                .str.slice(0, REASON_CHARS + 1)
                .alias(f"{n}#quote")
                for n in names
            ),
        )
        # Rewriting: strip the rules that fired on each message, in rows whose policy rewrites
        # and whose prompt did not ask for the citations.
        hits = hits.with_columns(verdict=self.policy.expr()).join(
            self._asked(batch, hits), on="row_id", how="left", maintain_order="left"
        )
        hits = hits.with_columns(
            verdict=pl.when(
                pl.col("asked").is_not_null() & pl.col("verdict").is_in(["rewrite", "drop"])
            )
            .then(pl.lit("keep"))
            .otherwise(pl.col("verdict"))
        )
        rewritten = hits.filter(pl.col("verdict") == "rewrite")
        for name in RULE_NAMES:  # the strip chain names every rule; absent ones never fire
            if name not in rewritten.columns:
                rewritten = rewritten.with_columns(pl.lit(False).alias(name))
        rewritten = (
            rewritten.select("row_id", "turn", "content")
            .with_columns(new=_strip_frame(rewritten))
            .filter(pl.col("new") != pl.col("content"))
        )
        emptied = (
            rewritten.filter(nothing_left(pl.col("content"), pl.col("new")))
            .group_by("row_id")
            .agg(empty_turns=pl.col("turn").sort())
        )

        # One row per conversation. Most conversations have one answer with a hit, and then the
        # (costly) group_by is skipped.
        counts = [f"{n}#count" for n in names]
        quotes = [f"{n}#quote" for n in names]
        if hits.get_column("row_id").is_unique().all():
            per_row = hits.select("row_id", "source", "verdict", "asked", *counts, *quotes)
        else:
            per_row = hits.group_by("row_id", maintain_order=True).agg(
                pl.col("source").first(),
                pl.col("verdict").first(),
                pl.col("asked").first(),
                *(pl.col(c).sum() for c in counts),
                *(pl.col(q).drop_nulls().str.join(" … ") for q in quotes),
            )
        per_row = (
            per_row.with_columns(total=pl.sum_horizontal(counts))
            .filter(pl.col("total") >= self.min_score)
            .join(emptied, on="row_id", how="left", maintain_order="left")
        )
        ledger = self._ledger(per_row, names)
        kept_rewrites = per_row.filter(
            (pl.col("verdict") == "rewrite") & pl.col("empty_turns").is_null()
        ).select("row_id")
        rewrites = rewritten.join(
            kept_rewrites, on="row_id", how="semi", maintain_order="left"
        ).select("row_id", "turn", content="new")
        return Findings(ledger=ledger, rewrites=rewrites)

    def _asked(self, batch: Batch, hits: pl.DataFrame) -> pl.DataFrame:
        """row_id and the words of the first user or system turn that asks for references, for
        the rows with a hit (none when ``keep_requested`` is off)."""
        if not self.keep_requested:
            return pl.DataFrame(schema={"row_id": pl.String, "asked": pl.String})
        return (
            batch.messages.filter(
                (pl.col("role") != "assistant")
                & pl.col("row_id").is_in(hits.get_column("row_id").implode())
            )
            .select("row_id", asked=pl.col("content").str.extract(REQUESTED, 0))
            .drop_nulls("asked")
            .group_by("row_id", maintain_order=True)
            .agg(pl.col("asked").first().str.strip_chars(_ASKED_TRIM))
        )

    def _ledger(self, per_row: pl.DataFrame, names: list[str]) -> pl.DataFrame:
        """One row per (conversation, rule that fired), in input order then rule order."""
        long = pl.concat(
            [
                per_row.filter(pl.col(f"{n}#count") > 0).select(
                    "row_id",
                    "verdict",
                    "empty_turns",
                    "asked",
                    pl.lit(i, dtype=pl.UInt32).alias("order"),
                    pl.lit(n).alias("rule"),
                    pl.col(f"{n}#count").cast(pl.Float64).alias("score"),
                    quote(pl.col(f"{n}#quote")).alias("quoted"),
                )
                for i, n in enumerate(names)
            ]
        )
        position = per_row.select("row_id", pl.int_range(pl.len(), dtype=pl.UInt32).alias("pos"))
        long = long.join(position, on="row_id").sort("pos", "order")
        emptied = pl.col("empty_turns").is_not_null()
        turns = pl.col("empty_turns").cast(pl.List(pl.String)).list.join(", ")
        verdict = pl.when(emptied).then(pl.lit("drop")).otherwise(pl.col("verdict"))
        reason = (
            pl.when(emptied)
            .then(
                pl.format(
                    "stripping citations left nothing of answer turn(s) {} (at most a line"
                    " introducing them): '{}'",
                    turns,
                    pl.col("quoted"),
                )
            )
            .when(pl.col("verdict") == "rewrite")
            .then(pl.format("stripped: '{}'", pl.col("quoted")))
            .when(pl.col("asked").is_not_null() & (pl.col("verdict") == "keep"))
            .then(pl.format("asked for by the prompt ('{}'): '{}'", "asked", "quoted"))
            .otherwise(pl.format("citation: '{}'", pl.col("quoted")))
        )
        return long.select(
            "row_id", "rule", verdict.alias("verdict"), reason.alias("reason"), "score"
        )
