"""The profanity word list: better-profanity's bundled list, minus the words we do not treat as
profanity.

better-profanity (0.7) ships ~900 entries that mix real swear words and slurs with anatomy,
medicine, drugs, crime topics, identity terms, mild exclamations and plain English words
("cock", "pot", "strip", "organ", "seaman", "hooker", "kill", "gay", "sex", "guido"...). A
curation filter that drops a conversation for saying "rooster", "Lesbos" or "Guido van Rossum"
throws away good data and, worse, skews it against topics such as medicine, sexuality or history.

Our rule: ``safety.profanity`` fires on words whose mere presence makes a text vulgar or
hateful, whatever the topic: swear words and their spellings (``fuck``, ``sh1t``, ``f.u.c.k``),
vulgar sexual slang (``blowjob``, ``cumshot``) and slurs. Everything in ``EXCLUDED`` below is
left to the other signals (detoxify, OpenAssistant labels, the LLM judge, the targeted
abuse/violence/self-harm/weapons patterns), which look at how a word is used. A few ambiguous
slurs (``dyke``, ``fag``, ``pussy``, ``retard``) are kept because in chat data the slur sense
dominates; that choice is deliberate and listed here so it can be revisited.

Leetspeak beyond the spellings already in the list (better-profanity generates ``f@ck``-style
variants at run time) is out of scope: expanding every letter into a character class makes the
one regex several times slower, and obfuscated abuse is what the model-based signals are for.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

# --- Entries of better-profanity's list that are NOT profanity for us, by reason ---------------

# Anatomy, medicine, biology and clinical sexual terms: neutral vocabulary.
_CLINICAL = """
anal anus areole breasts clitoris crotch ejaculate ejaculated ejaculates ejaculating ejaculatings
ejaculation ejakulate erect erection foreskin g-spot gspot glans gonad gonads hymen labia loin
loins menses menstruate menstruation nipple nipples orgasim orgasims orgasm orgasmic orgasms
ovary ovum ovums penetrate penetration penial penile penis phalli phallic pms pubic pubis rectal
rectum rectus scrotum semen smegma sperm tampon teat teets teez teste testee testes testical
testicle testis urinal urine uterus vagina vulva womb herpes herp herpy hiv masturbate
masturbating masturbation fellate fellatio cunilingus cunillingus cunnilingus kunilingus
beastial beastiality bestial bestiality incest molest pedo pedophile pedophilia pedophiliac
perversion prostitute rape raped raper raping rapist sadism sadist masochist bdsm bondage femdom
kinbaku shibari shibary erotic erotism autoerotic homoerotic nude nudes naked sex sexual seduce
lust lusting lusty virgin orgy orgies threesome voyeur enlargement pornography boner
"""

# Sexuality and identity terms: never profanity on their own.
_IDENTITY = """
gay gays gai gae gey ghay ghey gaylord lesbians lesbos homo queer queers transsexual
"""

# Ethnic, national and historical terms with a neutral main sense (or a name).
_NEUTRAL_NAMES = """
arian aryan negro nazi nazism hitler reich kkk klan gringo pollock paddy massa guido yury
asanchez len cnut frigg frigga hebe chink coon ruski pinko
"""

# Drugs, alcohol and medication: topics, not swear words.
_SUBSTANCES = """
drunk ganja hemp heroin hooch hootch hookah meth opiate opium pcp peyote pot reefer rum scag skag
stoned toke valium viagra v1gra v14gra vodka weed extacy extasy junkie junky souse soused
"""

# Violence and crime as topics (the abuse/violence/weapons rules judge how they are used).
_VIOLENCE_TOPICS = """
kill murder howtokill howtomurdep napalm sniper uzi slave snuff sodom
"""

# Mild exclamations, mild or childish insults and bodily-function words.
_MILD = """
damn crap hell he11 god god-dam god-damned godamn godamnit goddam goddammit goddamn goddamned
fart poop pee peepee potty tinkle turd terd weewee whiz stupid moron dummy doofus dopey jerk
jerked weirdo ugly fat ninny nimrod prude prig sissy tramp trashy tawdry sleaze sleazy floozy
hussy wench bimbo bimbos vixen inbred lech leper schizo spac punky thug scum lmao lmfao omg wtf
xx xxx x-rated2g1c feck fecker w00se wazoo wedgie weenie racy raunch steamy scantily smut smutty
quicky kinky playboy pimp gigolo mutha muther wang weiner douche doosh douch3 duche nutbutter
kondum kondums vag titi shota yaoi
"""

# Everyday words whose main sense is not profane (animals, tools, food, places, music...).
_EVERYDAY = """
ass asses cock cocks dick dink dinks dong knob nob muff puss snatch screw screwed
screwing suck sucked sucking strip stripclub pawn organ oral orally seaman seamen stroke thrust
wad woody willy willies pasty pastie hooker hooter hooters hump humped humping fondle fingering
fisted fisty facial flange lube maxi revue sandbar slope tush toots undies panties pantie panty
nad nads pecker prick pricks tit fanny cum cuming cummer cumming cums kum kummer kumming kums
spunk shag nappy homey hoar hoare hore hoor ritard doggin dogging cowgirl cowgirls foobar fubar
mams unwed vomit vulgar niggle rump pron scrog cipa
"""

# Multi-word entries (compared with spaces) that are ordinary phrases.
_PHRASES = ("cow girl", "cow girls", "deep throat", "strip club", "three some", "auto erotic")

# better-profanity's list is English only; the embedded data also holds German, French and
# Spanish. The strongest common swear words of each, with the same rule (vulgar whatever the topic;
# not "Fick", a surname and a law of diffusion; not mild "zut", "mist", "caramba").
EXTRA: tuple[str, ...] = (
    # German
    "scheiße", "scheisse", "scheiß", "scheiss", "arschloch", "arschlöcher", "wichser",
    "hurensohn", "hurensöhne", "fotze", "ficken", "verfickt", "verfickte", "verdammte scheiße",
    # French
    "merde", "putain", "connard", "connards", "connasse", "salope", "salopes", "enculé",
    "enculés", "enculer", "niquer", "nique ta mère", "fils de pute",
    # Spanish
    "mierda", "puta", "putas", "gilipollas", "cabrón", "cabrones", "coño", "joder", "jodido",
    "pendejo", "pendejos", "chingar", "chingada", "hijo de puta",
)  # fmt: skip

EXCLUDED: frozenset[str] = frozenset(
    word.lower()
    for block in (
        _CLINICAL,
        _IDENTITY,
        _NEUTRAL_NAMES,
        _SUBSTANCES,
        _VIOLENCE_TOPICS,
        _MILD,
        _EVERYDAY,
    )
    for word in block.split()
) | frozenset(_PHRASES)


@cache
def bundled_words() -> tuple[str, ...]:
    """better-profanity's own list, read from the installed package (one entry per line)."""
    try:
        text = (
            resources.files("better_profanity")
            .joinpath("profanity_wordlist.txt")
            .read_text(encoding="utf-8")
        )
    except ModuleNotFoundError as exc:  # a declared dependency; say what is missing and why
        raise ModuleNotFoundError(
            "safety.profanity reads better-profanity's bundled word list: "
            "pip install 'better-profanity>=0.7,<0.8' (or disable the 'profanity' rule)"
        ) from exc
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@cache
def profanity_words() -> tuple[str, ...]:
    """The words ``safety.profanity`` matches: the bundled list minus ``EXCLUDED``, plus ``EXTRA``,
    lowercased, deduplicated, longest first (so an alternation prefers "fucker" over "fuck")."""
    words = ({w.lower() for w in bundled_words()} - EXCLUDED) | set(EXTRA)
    return tuple(sorted(words, key=lambda w: (-len(w), w)))
