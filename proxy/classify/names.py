"""People's names and places: a gazetteer of first names and surnames, and spaCy's entity
recognizer run only on the few stretches of a text where a name can be.

spaCy's recognizer is most of the cost of classification and, on code, most of its false
alarms (class names as PERSON, `node` as a place). So: names the gazetteer knows are found
without it; on prose it runs on short windows around capitalised words the gazetteer does not
settle, batched; on code, configuration, JSON and logs it does not run at all, and a name must
be one the gazetteer knows, outside identifiers.

The gazetteer is Faker's first-name and surname lists for every locale it ships (Latin script),
and WordNet's English words as spaCy's model ships them for its lemmatizer, both read from the
installed packages: nothing is downloaded, at install or at run time. A capitalised word that
is an English word and no name (Enterprise, Snowflake) or that starts a company's name
(Soylent Foods) is settled without spaCy, and so is one after "in", "to" or "from" (a place:
"based in Seattle"), and a lone first name that is also a place after "in" or "the" ("in
Berlin", "the Atlanta office"), which keeps a text with names about as cheap per character as one
without: spaCy costs a millisecond a window, the rest of a 1,500-character text about one.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from proxy.classify.findings import Finding

# spaCy's labels as Presidio names them.
NER_LABELS = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
    "NORP": "NRP",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
NER_ENTITIES = frozenset(NER_LABELS.values())

_LATIN_NAME = re.compile(r"^[A-Za-zÀ-ÖØ-öø-ÿĀ-ž][A-Za-zÀ-ÖØ-öø-ÿĀ-ž'\u2019-]+$")
# A word: letters, with inner apostrophes or hyphens (O'Brien, Jean-Luc).
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")
_TITLES = frozenset(
    "mr mrs ms miss dr prof herr frau monsieur madame mme sr sra señor señora".split()  # noqa: SIM905
)
# Characters that make a word part of an identifier, a path or a URL rather than prose.
_IDENT_BEFORE = frozenset("._$@#/\\:=<>`")
_IDENT_AFTER = frozenset("_$@(/\\=<>`[")
_MONTHS_DAYS = (  # noqa: SIM905
    "january february march april may june july august september october november december "
    "monday tuesday wednesday thursday friday saturday sunday"
).split()
# Capitalised words of business and technical English that some locale also uses as a name.
_EXTRA_COMMON = (  # noqa: SIM905
    "hi hello dear thanks regards cheers team head chief lead manager director customer client "
    "vendor contact attendees notes owner user admin support sales finance legal billing "
    "invoice account order ticket project release version service server cluster node master "
    "main stage staging prod production dev test tests review summary subject re fwd cc bcc "
    "mobile phone email address street road avenue city country card bank payment amount "
    "total note please kind best warm many dear sir madam north south east west new old "
    "said asked will may can june august mark bill page max jack "
    "dean guy chase hunter mason king young long white black green gray grey little rich "
    "price cash golden silver star sky ocean river lake hill stone wood field park bay fox "
    # languages and nationalities, and the commonest words of other European languages
    "english german french spanish italian dutch polish swedish danish norwegian finnish "
    "portuguese greek turkish russian chinese japanese korean arabic hindi european american "
    "british irish scottish welsh canadian australian indian african asian latin "
    "der die das den dem des ein eine und oder sie ihr ihre ich wir mit von bei bitte "
    "le la les un une et ou de du des il elle nous vous avec pour "
    "el los las y o en con por para su usted "
    "il lo gli e di da per con "
    "het een en van met voor "
    "hola hallo bonjour ciao hej hoi salut servus moin buongiorno buenos liebe lieber "
    "cher chère querido querida estimado estimada caro cara beste viele grüße"
).split()
# Words that end an organisation's or a place's name, not a person's.
_NOT_SURNAMES = frozenset(
    [
        "inc",
        "ltd",
        "llc",
        "gmbh",
        "ag",
        "sa",
        "plc",
        "corp",
        "corporation",
        "company",
        "co",
        "group",
        "holdings",
        "labs",
        "lab",
        "systems",
        "industries",
        "logistics",
        "freight",
        "foods",
        "analytics",
        "airlines",
        "airways",
        "insurance",
        "lending",
        "retail",
        "traders",
        "trading",
        "components",
        "dynamics",
        "dynamic",
        "biotech",
        "bank",
        "capital",
        "partners",
        "solutions",
        "technologies",
        "technology",
        "software",
        "consulting",
        "services",
        "university",
        "college",
        "school",
        "hospital",
        "clinic",
        "street",
        "road",
        "avenue",
        "lane",
        "building",
        "center",
        "centre",
        "square",
        "park",
        "station",
        "airport",
        "foundation",
        "institute",
        "agency",
        "studio",
        "studios",
        "media",
        "networks",
        "energy",
        "motors",
        "pharma",
        "health",
    ]
)
# Words after which a capitalised word is a place rather than a person ("in Lisbon").
_PLACE_CUES = frozenset({"in", "at", "from", "near", "via", "across", "of", "the"})
# Words after which a first name that is also a place or an English word is the place ("in
# Charlotte", "the Atlanta office"); not "to" or "from", which people are as often as places.
_SETTING = frozenset({"in", "near", "via", "across", "the"})
# Words after which an English word that is no name is taken for a place, without spaCy
# ("based in Seattle", "flight to Dublin"; but not "the Enterprise tier").
_TRAVEL = frozenset({"in", "from", "near", "via", "to"})
# Lower-case words of the text itself, outside e-mail addresses, paths and identifiers: a
# capitalised word that also appears in lower case ("Bill" and "bill") is a common word here.
_LOWER_WORD = re.compile(r"(?<![\w.@/_-])[a-z][a-z'-]*[a-z](?![\w@/_-]|\.\w)")


@dataclass(frozen=True, slots=True)
class Gazetteer:
    first: frozenset[str]
    last: frozenset[str]
    common: frozenset[str]  # lower-case English words that are names only by accident
    places: frozenset[str]  # one-word countries and cities, some of them first names too
    # WordNet's lower-case nouns, verbs, adjectives and adverbs: a capitalised word in it that
    # the name lists do not know (Enterprise, Snowflake, Seattle) is not left open for spaCy.
    words: frozenset[str]


@cache
def gazetteer(model: str) -> Gazetteer:
    """Faker's name lists and the English words of spaCy's `model`, loaded once per process
    (a worker keeps them)."""
    import faker.providers.address as address
    import faker.providers.person as person
    from faker.providers.lorem.en_US import Provider as EnglishWords
    from spacy.lang.en.stop_words import STOP_WORDS

    first: set[str] = set()
    last: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider: Any = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for attribute in dir(provider):
            if not attribute.startswith(("first_name", "last_name")) and attribute not in (
                "first_romanized_names",
                "last_romanized_names",
            ):
                continue
            value = getattr(provider, attribute)
            if not isinstance(value, tuple | list | dict):
                continue
            names = [n for n in value if isinstance(n, str) and _LATIN_NAME.match(n)]
            (first if attribute.startswith("first") else last).update(names)
    common = {w.lower() for w in EnglishWords.word_list} | set(STOP_WORDS) | set(_MONTHS_DAYS)
    common |= set(_EXTRA_COMMON) | _TITLES
    places: set[str] = set()
    for module in pkgutil.iter_modules(address.__path__):
        provider = importlib.import_module(f"{address.__name__}.{module.name}").Provider
        for attribute in ("countries", "cities", "city_names"):
            value = getattr(provider, attribute, ())
            if isinstance(value, tuple | list):
                places.update(p for p in value if isinstance(p, str) and _LATIN_NAME.match(p))
    return Gazetteer(
        frozenset(first),
        frozenset(last),
        frozenset(common),
        frozenset(places),
        _english_words(model),
    )


def _english_words(model: str) -> frozenset[str]:
    """The word index of the model's rule lemmatizer (WordNet's lemmas, as spaCy's English
    models ship them), read from the installed package without loading the lemmatizer."""
    from spacy.lookups import Lookups
    from spacy.util import get_model_meta, get_package_path

    package = get_package_path(model)
    meta = get_model_meta(package)  # the data sits where spaCy's own loader looks for it
    data = package / f"{meta['lang']}_{meta['name']}-{meta['version']}"
    lookups = Lookups().from_disk(data / "lemmatizer" / "lookups")
    index = lookups.get_table("lemma_index")
    return frozenset(w for words in index.values() for w in words)


@dataclass(frozen=True, slots=True)
class _Word:
    text: str
    start: int
    end: int
    sentence_start: bool


def _title_words(text: str) -> list[_Word]:
    """Capitalised words (Emma, O'Brien, Müller) that stand as words, not inside identifiers."""
    words = []
    for match in _WORD.finditer(text):
        word = match.group()
        end = match.end()
        if word.endswith(("'s", "\u2019s")):
            word, end = word[:-2], end - 2  # Lucia's
        if not word[0].isupper() or len(word) < 2 or word.isupper():
            continue
        if any(c.isupper() for c in word[1:].replace("-", "").replace("'", "")) and not (
            word.startswith(("Mc", "Mac", "O'", "De", "Di", "Le", "La"))
        ):
            continue  # camelCase: an identifier
        start = match.start()
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if before in _IDENT_BEFORE or after in _IDENT_AFTER or before.isalnum() or after.isdigit():
            continue  # part of an identifier, a path, a URL or a blob
        if after == "." and end + 1 < len(text) and text[end + 1].isalnum():
            continue  # Foo.bar
        words.append(_Word(word, start, end, _starts_sentence(text, start)))
    return words


def _starts_sentence(text: str, start: int) -> bool:
    i = start - 1
    while i >= 0 and text[i] in " \t\"'([":
        i -= 1
    return i < 0 or text[i] in ".!?:;\n*>-"


def _runs(text: str, words: list[_Word]) -> list[list[_Word]]:
    """Capitalised words that follow one another, separated by a single space."""
    runs: list[list[_Word]] = []
    for word in words:
        if runs and text[runs[-1][-1].end : word.start] == " ":
            runs[-1].append(word)
        else:
            runs.append([word])
    return runs


@dataclass(frozen=True, slots=True)
class NameFinder:
    names: Gazetteer

    def known_names(self, text: str, technical: bool) -> tuple[list[Finding], list[_Word]]:
        """PERSON and LOCATION findings the gazetteers settle, and the capitalised words they
        leave open (for the entity recognizer, on prose)."""
        lowered_words = set(_LOWER_WORD.findall(text))
        g = self.names
        found: list[Finding] = []
        open_words: list[_Word] = []

        def common(word: str) -> bool:
            low = word.lower()
            return low in g.common or low in lowered_words

        def first(word: str) -> bool:
            return word in g.first and not common(word)

        def last(word: str) -> bool:
            return word in g.last and not common(word)

        def surname_like(word: str) -> bool:
            return word in g.last or not (common(word) or word.lower() in _NOT_SURNAMES)

        def english(word: str) -> bool:
            """A word of the dictionary that no name list has: Enterprise, Engineers."""
            if word in g.first or word in g.last:
                return False
            low = word.lower()
            return low in g.words or (low.endswith("s") and low[:-1] in g.words)

        for run in _runs(text, _title_words(text)):
            while len(run) > 1 and common(run[0].text):
                run = run[1:]  # "Dear Sophie", "Hi Hugo"
            i = 0
            # A title makes the next word a name: "Dr. Okafor", "Frau Weber".
            while i < len(run):
                word = run[i]
                j = i
                if first(word.text):
                    j = i + 1
                    while j < len(run) and j - i < 4 and (first(run[j].text) or last(run[j].text)):
                        j += 1
                    if j - i == 1 and j < len(run) and surname_like(run[j].text):
                        j += 1  # Ingrid Levi: an unknown surname after a known first name
                    if j - i >= 2:
                        found.append(Finding("PERSON", word.start, run[j - 1].end, 0.85, "names"))
                        i = j
                        continue
                    alone = len(run) == 1
                    quoted = text[word.start - 1 : word.start] in ("'", '"')
                    if alone and (not technical or quoted):
                        if (
                            not technical
                            and (word.text in g.places or word.text.lower() in g.words)
                            and _after_place_cue(text, word.start, _SETTING)
                            and not text.startswith(("'s", "\u2019s"), word.end)
                        ):
                            # "in Berlin", "the Atlanta office": a city that is a name too.
                            found.append(Finding("LOCATION", word.start, word.end, 0.6, "names"))
                            i += 1
                            continue
                        found.append(Finding("PERSON", word.start, word.end, 0.6, "names"))
                        if word.text in g.places or _after_place_cue(text, word.start):
                            open_words.append(word)  # France, "of Charlotte": let NER say
                        i += 1
                        continue
                elif (
                    i + 1 < len(run)
                    and len(run) == i + 2
                    and not common(word.text)
                    and not (word.sentence_start and english(word.text))
                    and last(run[i + 1].text)
                    and not technical
                ):
                    found.append(Finding("PERSON", word.start, run[i + 1].end, 0.7, "names"))
                    i += 2
                    continue
                elif i == 0 and word.start >= 2 and _follows_title(text, word.start):
                    found.append(Finding("PERSON", word.start, word.end, 0.85, "names"))
                    i += 1
                    continue
                quoted = text[word.start - 1 : word.start] in ("'", '"')
                if (
                    word.text in g.places
                    and word.text not in g.first
                    and not common(word.text)
                    and (quoted if technical else not word.sentence_start)
                ):
                    # A known place needs no model: Lisbon, Rotterdam, Copenhagen.
                    found.append(Finding("LOCATION", word.start, word.end, 0.7, "names"))
                elif (
                    len(run) == 1
                    and not technical
                    and not (common(word.text) or word.sentence_start)
                    and english(word.text)
                    and _after_place_cue(text, word.start, _TRAVEL)
                ):
                    found.append(Finding("LOCATION", word.start, word.end, 0.6, "names"))
                elif not (
                    common(word.text)
                    or word.sentence_start
                    or word.text.lower() in _NOT_SURNAMES
                    or english(word.text)
                    # A company's name: Soylent Foods.
                    or (i + 1 < len(run) and run[i + 1].text.lower() in _NOT_SURNAMES)
                ):
                    open_words.append(word)
                i += 1
        return found, open_words

    def plausible_person(self, value: str) -> bool:
        """Whether a span spaCy calls a person reads as one: on one line, not ending like a
        company ("Soylent Foods"), and with a first name or surname the gazetteer knows (spaCy
        takes capitalised nouns of other languages for people: "Die Rechnung")."""
        words = value.split()
        if "\n" in value or words[-1].lower() in _NOT_SURNAMES:
            return False
        g = self.names
        return any(w in g.first or w in g.last for w in words)


def _after_place_cue(text: str, start: int, cues: frozenset[str] = _PLACE_CUES) -> bool:
    before = text[max(0, start - 8) : start].split()
    return bool(before) and before[-1].lower() in cues


def _follows_title(text: str, start: int) -> bool:
    before = text[max(0, start - 12) : start].rstrip().rstrip(".")
    return before.rsplit(None, 1)[-1].lower() in _TITLES if before.strip() else False


def name_shaped(value: str) -> bool:
    """A span spaCy calls a person or a place is kept only if it could be written as one:
    capitalised words, no digits or code punctuation."""
    words = value.split()
    if not 1 <= len(words) <= 4:
        return False
    return all(_WORD.fullmatch(w.rstrip(".,")) and w[0].isupper() for w in words)


_WIDEN = 24  # at most this many characters added to reach a word boundary
# Characters either side of a word that spaCy reads: its cost goes with the tokens it reads,
# and two or three words either side found the same people on the benchmark's labeled set as
# twice that.
_REACH = 16


def windows(text: str, words: Iterable[_Word], reach: int = _REACH) -> list[tuple[int, int]]:
    """Stretches of `text` around the given words, widened to whitespace and merged."""
    spans: list[tuple[int, int]] = []
    for word in words:
        start = max(0, word.start - reach)
        end = min(len(text), word.end + reach)
        # Widen to whole words, but not across a blob without spaces.
        floor, ceiling = max(0, start - _WIDEN), min(len(text), end + _WIDEN)
        while start > floor and not text[start - 1].isspace():
            start -= 1
        while end < ceiling and not text[end].isspace():
            end += 1
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def recognize(
    nlp: Any, names: NameFinder, text: str, spans: list[tuple[int, int]], wanted: frozenset[str]
) -> list[Finding]:
    """spaCy's entities in the given stretches of `text`, as findings of the wanted types."""
    found: list[Finding] = []
    for (offset, _), doc in zip(spans, nlp.pipe(text[a:b] for a, b in spans), strict=True):
        for ent in doc.ents:
            entity = NER_LABELS.get(ent.label_)
            if entity is None or entity not in wanted:
                continue
            value = ent.text
            end_char = ent.end_char
            if value.endswith(("'s", "\u2019s")):
                value, end_char = value[:-2], end_char - 2
            if entity in ("PERSON", "LOCATION") and not name_shaped(value):
                continue
            if (
                entity == "PERSON"
                and value in names.names.places
                and value not in names.names.first
            ):
                entity = "LOCATION"  # "flight to Lyon": spaCy's PERSON is a place
            elif entity == "PERSON" and not names.plausible_person(value):
                continue
            if entity not in wanted:
                continue
            found.append(Finding(entity, offset + ent.start_char, offset + end_char, 0.85, "ner"))
    return found
