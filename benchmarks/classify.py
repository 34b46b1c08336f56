"""Measures Sluice's classification against its targets, next to plain Presidio.

Speed on 1.5k-character English prompts, the per-text cache on a resent conversation, accuracy
per entity type on a labeled set, and how often ordinary source code is stopped by the default
policy.

Run `python benchmarks/classify.py`; it prints the tables and writes them into
docs/benchmarks.md. The data comes from benchmarks/make_dataset.py (generated if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import make_dataset  # the sibling generator of the labeled data
import overhead  # the sibling benchmark: machine description, doc writing, virtualenv

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

    from proxy.classify.engine import Detector
    from proxy.policy.model import Classification
    from proxy.policy.store import PolicySnapshot

REPO = overhead.REPO
POLICIES = REPO / "policies"
MARKERS = ("<!-- classify:start -->", "<!-- classify:end -->")
COMMAND = "python benchmarks/classify.py"

TARGET_CHARS_PER_S = 100_000.0  # per core, default policy, 1.5k-character English prompts
TARGET_CACHE_SPEEDUP = 10.0  # 20-turn conversation resent each turn, cache vs none
TARGET_RECALL_STRUCTURED = 0.95  # structured PII and secrets
TARGET_RECALL_PERSON = 0.85
TARGET_PRECISION = 0.90
TARGET_CODE_STOPPED = 0.01  # share of clean code chunks not simply allowed

STRUCTURED_PII = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
)
EXAMPLES_PER_TYPE = 3


# --- data ----------------------------------------------------------------------------------


def load_jsonl(path: Path) -> list[make_dataset.Case]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def load_data(regenerate: bool) -> tuple[list[make_dataset.Case], list[make_dataset.Case], Any]:
    """The files under benchmarks/data/, written first if missing or asked to."""
    files = (make_dataset.CASES_FILE, make_dataset.PROMPTS_FILE, make_dataset.CONVERSATION_FILE)
    if regenerate or not all(path.exists() for path in files):
        make_dataset.write()
    cases = load_jsonl(make_dataset.CASES_FILE)
    prompts = load_jsonl(make_dataset.PROMPTS_FILE)
    conversation = json.loads(make_dataset.CONVERSATION_FILE.read_text(encoding="utf-8"))
    if (cases, prompts, conversation) != (
        make_dataset.all_cases(),
        make_dataset.prompts(),
        make_dataset.conversation(),
    ):
        log(
            "warning: benchmarks/data/ differs from what make_dataset.py generates now; "
            "run with --regenerate (or python benchmarks/make_dataset.py) to refresh it"
        )
    return cases, prompts, conversation


# --- the two engines ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prediction:
    entity: str
    start: int
    end: int
    score: float


Predict = Callable[[str], list[Prediction]]


def plain_presidio() -> AnalyzerEngine:
    """Presidio as it comes: every default recognizer, spaCy's full pipeline, same model."""
    # tldextract (under Presidio's URL recognizer) would fetch the public suffix list.
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    from proxy.classify.engine import SPACY_MODEL

    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": SPACY_MODEL}])
    engine.nlp = {"en": spacy.load(SPACY_MODEL)}  # type: ignore[assignment]  # as engine.py
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])


@dataclass
class Engines:
    snapshot: PolicySnapshot
    policy: Classification
    sluice: Detector
    presidio: AnalyzerEngine

    @classmethod
    def load(cls, policy_dir: Path) -> Engines:
        from proxy.classify.engine import Detector
        from proxy.filters.classify import detector_config
        from proxy.policy.loader import load_policy
        from proxy.policy.store import PolicySnapshot

        snapshot = PolicySnapshot.from_loaded(load_policy(policy_dir))
        policy = snapshot.policy.classification
        return cls(snapshot, policy, Detector(detector_config(policy)), plain_presidio())

    def run_sluice(self, text: str) -> object:
        return self.sluice.detect(text)

    def run_presidio(self, text: str) -> object:
        return self.presidio.analyze(text=text, language="en")

    def predict_sluice(self, text: str) -> list[Prediction]:
        return [
            Prediction(f.entity, f.start, f.end, f.score)
            for f in self.sluice.detect(text)
            if f.score >= self.policy.min_score
        ]

    def predict_presidio(self, text: str) -> list[Prediction]:
        return [
            Prediction(r.entity_type, r.start, r.end, float(r.score))
            for r in self.presidio.analyze(text=text, language="en")
            if r.score >= self.policy.min_score
        ]


# --- speed -------------------------------------------------------------------------------------


@dataclass
class Speed:
    chars: int = 0
    texts: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def chars_per_s(self) -> float:
        return self.chars / self.wall_s if self.wall_s else 0.0

    @property
    def chars_per_cpu_s(self) -> float:
        return self.chars / self.cpu_s if self.cpu_s else 0.0

    @property
    def cpu_ms_per_text(self) -> float:
        return self.cpu_s / self.texts * 1e3 if self.texts else 0.0


def timed_pass(run: Callable[[str], object], texts: Sequence[str]) -> Speed:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for text in texts:
        run(text)
    return Speed(
        sum(map(len, texts)),
        len(texts),
        time.perf_counter() - wall,
        time.process_time() - cpu,
    )


def measure_speed(engines: Engines, texts: Sequence[str], rounds: int) -> dict[str, Speed]:
    """Both engines over the same prompts, alternating (AB, BA, ...) so drift hits both."""
    runners = {"sluice": engines.run_sluice, "presidio": engines.run_presidio}
    for run in runners.values():
        for text in texts[:10]:
            run(text)
    totals = {name: Speed() for name in runners}
    for round_ in range(rounds):
        order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
        for name in order:
            speed = timed_pass(runners[name], texts)
            total = totals[name]
            total.chars += speed.chars
            total.texts += speed.texts
            total.wall_s += speed.wall_s
            total.cpu_s += speed.cpu_s
    return totals


@dataclass
class Stage:
    name: str
    seconds: float


def stage_breakdown(engines: Engines, texts: Sequence[str]) -> list[Stage]:
    """Where Sluice's time goes, in CPU time: secret rules, the organisation's recognizers,
    structured types (Presidio's pattern recognizers, the phone rule), then names and places
    (text kind, gazetteer, spaCy on windows). Empty if the engine no longer has these parts."""
    from proxy.classify.secrets import find_secrets

    detector: Any = engines.sluice
    structured = getattr(detector, "structured", None)
    names_and_places = getattr(detector, "_names_and_places", None)
    if structured is None or names_and_places is None:
        return []
    times: dict[str, float] = defaultdict(float)
    for text in texts:
        began = time.process_time()
        find_secrets(text)
        times["secret rules"] += time.process_time() - began
        began = time.process_time()
        for recognizer in getattr(detector, "org", []):
            recognizer.find(text)
        times["organisation recognizers"] += time.process_time() - began
        began = time.process_time()
        structured.find(text)
        times["structured types (Presidio patterns, phone rule)"] += time.process_time() - began
        began = time.process_time()
        names_and_places(text)
        times["names and places (gazetteer, spaCy on windows)"] += time.process_time() - began
    return [Stage(name, seconds) for name, seconds in times.items()]


@dataclass
class Headroom:
    """spaCy's full pipeline next to the same model with only what NER needs loaded."""

    kept: list[str]
    full_chars_per_cpu_s: float
    trimmed_chars_per_cpu_s: float
    same_entities: int  # texts on which both pipelines found the same entities
    texts: int


def spacy_headroom(texts: Sequence[str]) -> Headroom:
    """How fast spaCy alone gets when it loads only `ner` (and `tok2vec`, if `ner` listens to
    it): Presidio's SpacyRecognizer reads nothing but the entities, and its context words
    read the lemmas, which a trimmed pipeline would have to supply some other way."""
    import spacy

    from proxy.classify.engine import SPACY_MODEL

    full: Any = spacy.load(SPACY_MODEL)
    kept = ["ner"]
    if "tok2vec" in full.pipe_names and "ner" in getattr(
        full.get_pipe("tok2vec"), "listening_components", []
    ):
        kept.insert(0, "tok2vec")
    trimmed: Any = spacy.load(SPACY_MODEL, exclude=[n for n in full.pipe_names if n not in kept])

    def run(nlp: Any) -> tuple[float, list[list[tuple[int, int, str]]]]:
        for text in texts[:3]:
            nlp(text)
        cpu = time.process_time()
        found = [[(e.start_char, e.end_char, e.label_) for e in nlp(text).ents] for text in texts]
        return sum(map(len, texts)) / (time.process_time() - cpu), found

    full_speed, full_found = run(full)
    trimmed_speed, trimmed_found = run(trimmed)
    same = sum(a == b for a, b in zip(full_found, trimmed_found, strict=True))
    return Headroom(kept, full_speed, trimmed_speed, same, len(texts))


# --- the resent conversation ------------------------------------------------------------------


@dataclass
class ConversationRun:
    mode: str  # "cache" or "no cache"
    turn_s: list[float]
    actions: list[str]
    cpu_s: float = 0.0  # this process and the pool's worker together

    @property
    def total_s(self) -> float:
        return sum(self.turn_s)


@dataclass
class ConversationResult:
    answers: bool  # each answer scanned on its way back (the default policy's output.scan)
    runs: list[ConversationRun]
    turns: int
    texts_sent: int  # texts classified without a cache: every request's, and the answers
    texts_distinct: int
    chars_sent: int
    chars_distinct: int
    bound: float  # see conversation_bound()

    def total(self, mode: str) -> float:
        return statistics.median(run.total_s for run in self.runs if run.mode == mode)

    def turn(self, mode: str, index: int) -> float:
        return statistics.median(run.turn_s[index] for run in self.runs if run.mode == mode)

    @property
    def speedup(self) -> float:
        cached = self.total("cache")
        return self.total("no cache") / cached if cached else 0.0

    def cpu(self, mode: str) -> float:
        return statistics.median(run.cpu_s for run in self.runs if run.mode == mode)

    @property
    def cpu_speedup(self) -> float:
        cached = self.cpu("cache")
        return self.cpu("no cache") / cached if cached else 0.0

    @property
    def ideal_speedup(self) -> float:
        """What a free cache and free requests would give: characters sent over distinct ones."""
        return self.chars_sent / self.chars_distinct if self.chars_distinct else 0.0

    @property
    def name(self) -> str:
        return "requests and answers" if self.answers else "requests only"


@dataclass
class Conversations:
    variants: list[ConversationResult]
    cached_request_s: float  # the last turn again, every text already in the cache
    round_trip_s: float  # the pool, one two-character text
    detect_s: float = 0.0  # the detector alone on that text, in this process


def processes_cpu_s(pids: Iterable[int]) -> float:
    """User and system CPU seconds of other processes so far (Linux /proc), 0 where unknown."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def conversation_messages(conversation: Any, turn: int) -> list[dict[str, str]]:
    """The messages a client sends at `turn` (1-based): the system prompt, every earlier
    exchange with the answers as they came back, and the new user message."""
    messages = [{"role": "system", "content": conversation["system"]}]
    for exchange in conversation["turns"][: turn - 1]:
        messages.append({"role": "user", "content": exchange["user"]})
        messages.append({"role": "assistant", "content": exchange["assistant"]})
    messages.append({"role": "user", "content": conversation["turns"][turn - 1]["user"]})
    return messages


def conversation_texts(conversation: Any, answers: bool) -> list[list[str]]:
    """Per turn, the distinct texts a cache-less classifier classifies: the request's, and the
    answer when answers are scanned."""
    turns = len(conversation["turns"])
    result = []
    for turn in range(1, turns + 1):
        texts = [m["content"] for m in conversation_messages(conversation, turn)]
        if answers:
            texts.append(conversation["turns"][turn - 1]["assistant"])
        result.append(list(dict.fromkeys(texts)))
    return result


def answer_body(text: str) -> bytes:
    """The answer as an OpenAI chat completion, as the upstream sends it back."""
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    body = {"id": "chatcmpl-bench", "object": "chat.completion", "choices": [choice]}
    return json.dumps(body).encode()


async def measure_conversation(
    snapshot: PolicySnapshot, conversation: Any, rounds: int, bounds: dict[bool, float]
) -> Conversations:
    """The `classify` filter on a real one-worker `ClassifierPool`: with its per-text cache kept
    across turns, and with a fresh filter (empty cache) for every turn; each both with and
    without scanning the answers. The two modes alternate (ABBA) on the same warm worker."""
    from proxy.classify.pool import ClassifierPool
    from proxy.context import Principal, RequestContext, WireFormat
    from proxy.filters.classify import Classify, detector_config

    turns = len(conversation["turns"])
    principal = Principal(subject="bench@corp.example", roles=("employee",), auth_method="token")
    answers = [answer_body(exchange["assistant"]) for exchange in conversation["turns"]]

    def request(turn: int) -> RequestContext:
        ctx = RequestContext(
            request_id=f"bench-{turn}",
            received_at=time.time(),
            started=time.perf_counter(),
            wire=WireFormat.OPENAI_CHAT,
            policy=snapshot,
            headers={},
            client_address="127.0.0.1",
        )
        ctx.body = {"model": "gpt-4o", "messages": conversation_messages(conversation, turn)}
        ctx.principal = principal
        return ctx

    async def timed(classify: Classify, turn: int, scan: bool) -> tuple[float, str]:
        ctx = request(turn)
        began = time.perf_counter()
        await classify.on_request(ctx)
        if scan:
            assert ctx.output_scanner is not None, "the default policy scans answers"
            await ctx.output_scanner.scan_body(ctx, answers[turn - 1])
        elapsed = time.perf_counter() - began
        return elapsed, ctx.classification.action if ctx.classification else "?"

    pool = ClassifierPool(workers=1)
    variants = []
    try:
        config = detector_config(snapshot.policy.classification)
        await pool.warm_up(config)
        # First calls on real text (regex compilation, spaCy's lazy parts) are paid here.
        warm = [exchange["user"] for exchange in conversation["turns"][:4]]
        await pool.detect(config, warm, 120.0)
        for scan in (False, True):
            runs: list[ConversationRun] = []
            for round_ in range(rounds):
                modes = ("no cache", "cache") if round_ % 2 == 0 else ("cache", "no cache")
                for mode in modes:
                    classify = Classify(pool)
                    run = ConversationRun(mode, [], [])
                    gc.collect()
                    cpu = time.process_time() + processes_cpu_s(pool.worker_pids())
                    for turn in range(1, turns + 1):
                        if mode == "no cache":
                            classify = Classify(pool)
                        elapsed, action = await timed(classify, turn, scan)
                        run.turn_s.append(elapsed)
                        run.actions.append(action)
                    run.cpu_s = time.process_time() + processes_cpu_s(pool.worker_pids()) - cpu
                    runs.append(run)
            sent = [text for texts in conversation_texts(conversation, scan) for text in texts]
            distinct = set(sent)
            variants.append(
                ConversationResult(
                    scan,
                    runs,
                    turns,
                    len(sent),
                    len(distinct),
                    sum(map(len, sent)),
                    sum(map(len, distinct)),
                    bounds[scan],
                )
            )
        warm_cache = Classify(pool)
        for turn in range(1, turns + 1):
            await timed(warm_cache, turn, False)
        cached = [(await timed(warm_cache, turns, False))[0] for _ in range(20)]
        trips = []
        for _ in range(20):
            began = time.perf_counter()
            await pool.detect(config, ["ok"], 60.0)
            trips.append(time.perf_counter() - began)
    finally:
        await pool.close()
    return Conversations(variants, statistics.median(cached), statistics.median(trips))


def conversation_bound(
    engines: Engines, conversation: Any, answers: bool, rounds: int = 5
) -> float:
    """The most any per-text cache can give on this conversation with this detector: CPU time
    to classify every turn's distinct texts over CPU time to classify each text once, in this
    process, with no pool and no filter. Each text's cost is the least of its runs in `rounds`
    passes over all texts: load from other processes only ever adds.
    Below the character ratio when the costly texts (those with names for spaCy) come late."""
    sent = [text for texts in conversation_texts(conversation, answers) for text in texts]
    distinct = list(dict.fromkeys(sent))
    cost = dict.fromkeys(distinct, float("inf"))
    for _ in range(rounds + 1):  # passes over all texts, so a spell of load hits them all alike
        for text in distinct:
            began = time.process_time()
            engines.run_sluice(text)
            cost[text] = min(cost[text], time.process_time() - began)
    once = sum(cost.values())
    return sum(cost[text] for text in sent) / once if once else 0.0


# --- accuracy ----------------------------------------------------------------------------------


def overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


@dataclass
class Tally:
    gold: int = 0  # labeled spans
    found: int = 0  # labeled spans overlapped by a prediction of the same type
    predicted: int = 0  # predictions
    correct: int = 0  # predictions overlapping a labeled span of the same type

    def add(self, other: Tally) -> None:
        self.gold += other.gold
        self.found += other.found
        self.predicted += other.predicted
        self.correct += other.correct

    @property
    def recall(self) -> float | None:
        return self.found / self.gold if self.gold else None

    @property
    def precision(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None or p + r == 0:
            return None
        return 2 * p * r / (p + r)


@dataclass
class Example:
    case_id: str
    kind: str
    entity: str
    text: str  # the span, from the made-up data
    context: str
    other: str  # for a miss: the types predicted over the span instead, if any


@dataclass
class Scores:
    tallies: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    misses: dict[str, list[Example]] = field(default_factory=lambda: defaultdict(list))
    false_positives: dict[str, list[Example]] = field(default_factory=lambda: defaultdict(list))
    # The same tallies per kind of text (prose, log, code-clean, ...).
    by_kind: dict[str, dict[str, Tally]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Tally))
    )
    cases_by_kind: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    chars: int = 0

    def group(self, types: Iterable[str], kind: str | None = None) -> Tally:
        tallies = self.tallies if kind is None else self.by_kind[kind]
        total = Tally()
        for entity in types:
            if entity in tallies:
                total.add(tallies[entity])
        return total


def _context(text: str, start: int, end: int, width: int = 40) -> str:
    snippet = text[max(0, start - width) : end + width]
    return " ".join(snippet.split())


def score_case(case: make_dataset.Case, predictions: list[Prediction], scores: Scores) -> None:
    text, gold, kind = case["text"], case["entities"], case["kind"]
    scores.cases_by_kind[kind] += 1
    for label in gold:
        tallies = (scores.tallies[label["type"]], scores.by_kind[kind][label["type"]])
        for tally in tallies:
            tally.gold += 1
        same = [
            p
            for p in predictions
            if p.entity == label["type"] and overlaps(p.start, p.end, label["start"], label["end"])
        ]
        if same:
            for tally in tallies:
                tally.found += 1
            continue
        others = sorted(
            {
                p.entity
                for p in predictions
                if overlaps(p.start, p.end, label["start"], label["end"])
            }
        )
        scores.misses[label["type"]].append(
            Example(
                case["id"],
                case["kind"],
                label["type"],
                text[label["start"] : label["end"]],
                _context(text, label["start"], label["end"]),
                ", ".join(others),
            )
        )
    for p in predictions:
        tallies = (scores.tallies[p.entity], scores.by_kind[kind][p.entity])
        for tally in tallies:
            tally.predicted += 1
        if any(
            g["type"] == p.entity and overlaps(p.start, p.end, g["start"], g["end"]) for g in gold
        ):
            for tally in tallies:
                tally.correct += 1
            continue
        scores.false_positives[p.entity].append(
            Example(
                case["id"],
                case["kind"],
                p.entity,
                text[p.start : p.end],
                _context(text, p.start, p.end),
                ", ".join(
                    sorted(
                        {g["type"] for g in gold if overlaps(p.start, p.end, g["start"], g["end"])}
                    )
                ),
            )
        )


def evaluate(
    cases: Sequence[make_dataset.Case], predict: Predict
) -> tuple[Scores, dict[str, list[Prediction]]]:
    scores = Scores()
    per_case: dict[str, list[Prediction]] = {}
    began = time.perf_counter()
    for case in cases:
        predictions = predict(case["text"])
        per_case[case["id"]] = predictions
        score_case(case, predictions, scores)
        scores.chars += len(case["text"])
    scores.seconds = time.perf_counter() - began
    return scores, per_case


# --- ordinary code -----------------------------------------------------------------------------


@dataclass
class CodeVerdicts:
    chunks: int = 0
    stopped: list[tuple[str, str]] = field(default_factory=list)  # (case id, action)
    causes: Counter[str] = field(default_factory=Counter)  # entity type -> chunks it stopped
    examples: dict[str, list[Example]] = field(default_factory=lambda: defaultdict(list))
    by_language: Counter[str] = field(default_factory=Counter)  # language -> chunks
    stopped_by_language: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return len(self.stopped) / self.chunks if self.chunks else 0.0


def language_of(case_id: str) -> str:
    """`code-clean-python-007` -> `python`."""
    return case_id.split("-")[2]


def code_verdicts(
    cases: Sequence[make_dataset.Case],
    predictions: dict[str, list[Prediction]],
    policy: Classification,
) -> CodeVerdicts:
    """What the default policy does with clean code chunks, as the `classify` filter decides."""
    from proxy.classify.decision import decide, level_of
    from proxy.classify.extract import Path as SlotPath
    from proxy.classify.findings import Finding

    result = CodeVerdicts()
    for case in cases:
        if case["kind"] != "code-clean":
            continue
        result.chunks += 1
        result.by_language[language_of(case["id"])] += 1
        findings: list[tuple[SlotPath, Finding]] = [
            ((), Finding(p.entity, p.start, p.end, p.score, "bench"))
            for p in predictions[case["id"]]
        ]
        verdict = decide(findings, (), policy)
        if verdict.action == "allow":
            continue
        result.stopped.append((case["id"], verdict.action))
        result.stopped_by_language[language_of(case["id"])] += 1
        causing = set()
        for _, finding in verdict.findings:
            level = level_of(finding.entity, policy)
            if level is not None and policy.actions.get(level.label, "block") != "allow":
                causing.add(finding.entity)
                text = case["text"]
                result.examples[finding.entity].append(
                    Example(
                        case["id"],
                        case["kind"],
                        finding.entity,
                        text[finding.start : finding.end],
                        _context(text, finding.start, finding.end),
                        "",
                    )
                )
        result.causes.update(causing)
    return result


# --- the report --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


@dataclass
class Results:
    cases: int
    spans: int
    kinds: Counter[str]
    prompts: int
    prompt_chars: float
    rounds: int
    min_score: float
    speed: dict[str, Speed]
    stages: list[Stage]
    stage_texts: int
    headroom: Headroom | None
    conversation: Conversations | None
    sluice: Scores
    presidio: Scores
    code_sluice: CodeVerdicts
    code_presidio: CodeVerdicts
    policy_types: list[str]  # types the default policy acts on (levels, recognizers)
    secret_types: list[str]  # secret entities present in the labels


def speed_table(r: Results) -> str:
    presidio = r.speed["presidio"].chars_per_cpu_s
    rows = [
        "| engine | chars/s (wall) | chars per CPU-second | CPU ms per prompt | vs Presidio "
        "| target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    names = {
        "sluice": "Sluice, default policy (`Detector`)",
        "presidio": 'Presidio defaults (`analyze(text, language="en")`)',
    }
    for key in ("sluice", "presidio"):
        s = r.speed[key]
        target = ""
        if key == "sluice":
            ok = s.chars_per_cpu_s >= TARGET_CHARS_PER_S
            target = f"{verdict(ok)} (≥ {TARGET_CHARS_PER_S:,.0f})"
        rows.append(
            f"| {names[key]} | {s.chars_per_s:,.0f} | {s.chars_per_cpu_s:,.0f} "
            f"| {s.cpu_ms_per_text:.1f} | {s.chars_per_cpu_s / presidio:.2f}x | {target} |"
        )
    return "\n".join(rows)


def stage_table(r: Results) -> str:
    if not r.stages:
        return "(no breakdown: the detector no longer has the parts this benchmark times)"
    total = sum(stage.seconds for stage in r.stages)
    rows = ["| stage | CPU ms per prompt | share |", "|---|---:|---:|"]
    for stage in r.stages:
        rows.append(
            f"| {stage.name} | {stage.seconds / r.stage_texts * 1e3:.2f} "
            f"| {stage.seconds / total:.0%} |"
        )
    rows.append(f"| total | {total / r.stage_texts * 1e3:.2f} | 100% |")
    return "\n".join(rows)


def conversation_table(conversations: Conversations) -> str:
    c = conversations.variants[0]
    last = c.turns - 1
    middle = min(9, last)
    rows = [
        f"| classified | mode | turns 1-{c.turns}, total s | turn 1 ms | turn {middle + 1} ms "
        f"| turn {c.turns} ms | CPU s | speed-up (wall / CPU) | ceiling | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in conversations.variants:
        for mode in ("no cache", "cache"):
            speedup, ceiling, target = "", "", ""
            if mode == "cache":
                speedup = f"{c.speedup:.1f}x / {c.cpu_speedup:.1f}x"
                ceiling = f"{c.bound:.1f}x"
                ok = c.speedup >= TARGET_CACHE_SPEEDUP
                target = f"{verdict(ok)} (≥ {TARGET_CACHE_SPEEDUP:g}x)"
            rows.append(
                f"| {c.name} | {mode} | {c.total(mode):.2f} | {c.turn(mode, 0) * 1e3:.0f} "
                f"| {c.turn(mode, middle) * 1e3:.0f} | {c.turn(mode, last) * 1e3:.0f} "
                f"| {c.cpu(mode):.2f} | {speedup} | {ceiling} | {target} |"
            )
    return "\n".join(rows)


def accuracy_rows(r: Results, types: Sequence[str], target: Callable[[str], str]) -> list[str]:
    rows = []
    for entity in types:
        s, p = r.sluice.tallies.get(entity, Tally()), r.presidio.tallies.get(entity, Tally())
        gold = s.gold or p.gold
        rows.append(
            f"| {entity} | {gold} | {fmt(s.recall)} | {fmt(s.precision)} ({s.predicted}) "
            f"| {fmt(s.f1)} | {fmt(p.recall)} | {fmt(p.precision)} ({p.predicted}) "
            f"| {fmt(p.f1)} | {target(entity)} |"
        )
    return rows


def group_row(r: Results, name: str, types: Sequence[str], target: str) -> str:
    s, p = r.sluice.group(types), r.presidio.group(types)
    return (
        f"| **{name}** | {s.gold} | **{fmt(s.recall)}** | **{fmt(s.precision)}** ({s.predicted}) "
        f"| {fmt(s.f1)} | {fmt(p.recall)} | {fmt(p.precision)} ({p.predicted}) | {fmt(p.f1)} "
        f"| {target} |"
    )


def targeted_types(r: Results) -> list[str]:
    return [*STRUCTURED_PII, *r.secret_types, "PERSON"]


def accuracy_table(r: Results) -> str:
    header = [
        "| entity | labeled | Sluice recall | Sluice precision (found) | Sluice F1 "
        "| Presidio recall | Presidio precision (found) | Presidio F1 | target (Sluice) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def per_type(entity: str) -> str:
        recall = r.sluice.tallies.get(entity, Tally()).recall
        if recall is None:
            return ""
        goal = TARGET_RECALL_PERSON if entity == "PERSON" else TARGET_RECALL_STRUCTURED
        return f"recall {verdict(recall >= goal)}"

    structured = r.sluice.group(STRUCTURED_PII + tuple(r.secret_types))
    person = r.sluice.tallies.get("PERSON", Tally())
    targeted = r.sluice.group(targeted_types(r))
    rows = header + accuracy_rows(r, STRUCTURED_PII, per_type)
    rows.append(group_row(r, "structured PII", STRUCTURED_PII, ""))
    rows += accuracy_rows(r, r.secret_types, per_type)
    rows.append(group_row(r, "secrets", r.secret_types, ""))
    rows.append(
        group_row(
            r,
            "structured PII + secrets",
            STRUCTURED_PII + tuple(r.secret_types),
            f"recall {verdict((structured.recall or 0) >= TARGET_RECALL_STRUCTURED)} "
            f"(≥ {TARGET_RECALL_STRUCTURED})",
        )
    )
    rows += accuracy_rows(
        r,
        ["PERSON"],
        lambda _: (
            f"recall {verdict((person.recall or 0) >= TARGET_RECALL_PERSON)} "
            f"(≥ {TARGET_RECALL_PERSON})"
        ),
    )
    rows.append(
        group_row(
            r,
            "all targeted types",
            targeted_types(r),
            f"precision {verdict((targeted.precision or 0) >= TARGET_PRECISION)} "
            f"(≥ {TARGET_PRECISION})",
        )
    )
    others = [t for t in r.policy_types if t not in targeted_types(r)]
    rows += accuracy_rows(r, others, lambda _: "not a target")
    return "\n".join(rows)


def kind_table(r: Results) -> str:
    """Sluice on the targeted types, per kind of text."""
    rows = [
        "| kind of text | cases | labeled | recall | precision (found) "
        "| PERSON recall | PERSON precision (found) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, cases in sorted(r.sluice.cases_by_kind.items()):
        group = r.sluice.group(targeted_types(r), kind)
        person = r.sluice.by_kind[kind].get("PERSON", Tally())
        rows.append(
            f"| {kind} | {cases} | {group.gold} | {fmt(group.recall)} "
            f"| {fmt(group.precision)} ({group.predicted}) | {fmt(person.recall)} "
            f"| {fmt(person.precision)} ({person.predicted}) |"
        )
    return "\n".join(rows)


def unlabeled_line(r: Results) -> str:
    known = set(targeted_types(r)) | set(r.policy_types)
    extra = sorted(
        ((t, tally.predicted) for t, tally in r.presidio.tallies.items() if t not in known),
        key=lambda item: -item[1],
    )
    if not extra:
        return ""
    listed = ", ".join(f"{t} {n}" for t, n in extra)
    return (
        "Presidio's defaults also report types the data does not label and the default policy "
        f"ignores (findings at or above min_score): {listed}."
    )


def code_table(r: Results) -> str:
    rows = [
        "| engine | clean chunks | not allowed | share | caused by (chunks) | target |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, v in (
        ("Sluice, default policy", r.code_sluice),
        ("Presidio defaults, same levels", r.code_presidio),
    ):
        actions = Counter(action for _, action in v.stopped)
        by_action = ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
        causes = ", ".join(f"{t} {n}" for t, n in v.causes.most_common()) or "-"
        target = ""
        if v is r.code_sluice:
            target = f"{verdict(v.rate < TARGET_CODE_STOPPED)} (< {TARGET_CODE_STOPPED:.0%})"
        rows.append(
            f"| {name} | {v.chunks} | {len(v.stopped)}"
            f"{f' ({by_action})' if by_action else ''} | {v.rate:.1%} | {causes} | {target} |"
        )
    return "\n".join(rows)


def shorten(value: str, limit: int = 60) -> str:
    value = " ".join(value.split()).replace("|", "\\|").replace("`", "'")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def shown(example: Example, limit: int = 40) -> str:
    """An example's text for the doc; secrets (made up, but scanners cannot tell) cut short."""
    from proxy.classify.secrets import SECRET_ENTITIES

    types = {example.entity, *example.other.split(", ")}
    if types & SECRET_ENTITIES:
        return f"`{shorten(example.text[:6], limit)}…` ({len(example.text)} characters)"
    return f"`{shorten(example.text, limit)}`"


def findings_notes(r: Results) -> list[str]:
    """Sluice's misses and false positives per type, by kind of text, with a few examples."""
    notes = []
    targeted = targeted_types(r)
    for entity in dict.fromkeys([*targeted, *r.policy_types]):
        misses = r.sluice.misses.get(entity, [])
        fps = r.sluice.false_positives.get(entity, [])
        if not misses and not fps:
            continue
        parts = []
        if misses:
            kinds = Counter(e.kind for e in misses)
            instead = Counter(e.other for e in misses if e.other)
            listed = "; ".join(
                shown(e) + (f" (seen as {e.other})" if e.other else "")
                for e in misses[:EXAMPLES_PER_TYPE]
            )
            extra = ""
            if instead:
                extra = "; found as another type: " + ", ".join(
                    f"{t} {n}" for t, n in instead.most_common(3)
                )
            parts.append(
                f"{len(misses)} missed ("
                + ", ".join(f"{k} {n}" for k, n in kinds.most_common())
                + f"{extra}), e.g. {listed}"
            )
        if fps:
            kinds = Counter(e.kind for e in fps)
            listed = "; ".join(
                shown(e) + (f" (labeled {e.other})" if e.other else "") for e in _spread(fps)
            )
            parts.append(
                f"{len(fps)} false positives ("
                + ", ".join(f"{k} {n}" for k, n in kinds.most_common())
                + f"), e.g. {listed}"
            )
        notes.append(f"- {entity}: " + "; ".join(parts) + ".")
    return notes


def _spread(examples: list[Example]) -> list[Example]:
    """A few examples, from different kinds of text where there are several."""
    chosen: list[Example] = []
    seen_kinds: set[str] = set()
    seen_texts: set[str] = set()
    for example in examples:
        if example.kind not in seen_kinds and example.text not in seen_texts:
            chosen.append(example)
            seen_kinds.add(example.kind)
            seen_texts.add(example.text)
    for example in examples:
        if len(chosen) >= EXAMPLES_PER_TYPE:
            break
        if example not in chosen and example.text not in seen_texts:
            chosen.append(example)
            seen_texts.add(example.text)
    return chosen[:EXAMPLES_PER_TYPE]


def code_notes(v: CodeVerdicts) -> list[str]:
    languages = ", ".join(
        f"{lang} {v.stopped_by_language[lang]}/{n}" for lang, n in sorted(v.by_language.items())
    )
    notes = [f"Sluice, chunks not allowed per language: {languages}.", ""]
    for entity, examples in sorted(v.examples.items(), key=lambda item: -v.causes[item[0]]):
        chosen: list[Example] = []
        for example in examples:  # one per language first, then any other distinct text
            language = language_of(example.case_id)
            if all(language != language_of(c.case_id) for c in chosen) and all(
                example.text != c.text for c in chosen
            ):
                chosen.append(example)
        for example in examples:
            if len(chosen) >= EXAMPLES_PER_TYPE:
                break
            if all(example.text != c.text for c in chosen):
                chosen.append(example)
        listed = "; ".join(
            f"{shown(e)} ({language_of(e.case_id)}: `{shorten(e.context, 60)}`)"
            for e in chosen[: EXAMPLES_PER_TYPE + 2]
        )
        notes.append(f"- {entity}, e.g. {listed}")
    return notes


def verdicts(r: Results) -> list[str]:
    lines = []
    if r.speed:
        s = r.speed["sluice"].chars_per_cpu_s
        lines.append(
            f"- Speed, default policy: {s:,.0f} chars per CPU-second, target ≥ "
            f"{TARGET_CHARS_PER_S:,.0f}: **{verdict(s >= TARGET_CHARS_PER_S)}** "
            f"({s / TARGET_CHARS_PER_S:.0%} of target; Presidio defaults "
            f"{r.speed['presidio'].chars_per_cpu_s:,.0f} in the same run)."
        )
    if r.conversation is not None:
        for c in r.conversation.variants:
            lines.append(
                f"- Resent {c.turns}-turn conversation, {c.name} classified, cache vs none: "
                f"{c.speedup:.1f}x, target ≥ {TARGET_CACHE_SPEEDUP:g}x: "
                f"**{verdict(c.speedup >= TARGET_CACHE_SPEEDUP)}** (ceiling {c.bound:.1f}x for "
                f"this conversation and detector, {c.ideal_speedup:.1f}x by characters)."
            )
    structured = r.sluice.group(STRUCTURED_PII + tuple(r.secret_types))
    below = [
        f"{t} {fmt(r.sluice.tallies[t].recall)}"
        for t in (*STRUCTURED_PII, *r.secret_types)
        if t in r.sluice.tallies and (r.sluice.tallies[t].recall or 0) < TARGET_RECALL_STRUCTURED
    ]
    lines.append(
        f"- Recall, structured PII + secrets: {fmt(structured.recall)}, target ≥ "
        f"{TARGET_RECALL_STRUCTURED}: "
        f"**{verdict((structured.recall or 0) >= TARGET_RECALL_STRUCTURED)}**"
        + (f" (types below target: {', '.join(below)})." if below else ".")
    )
    person = r.sluice.tallies.get("PERSON", Tally())
    lines.append(
        f"- Recall, PERSON: {fmt(person.recall)}, target ≥ {TARGET_RECALL_PERSON}: "
        f"**{verdict((person.recall or 0) >= TARGET_RECALL_PERSON)}**."
    )
    targeted = r.sluice.group(targeted_types(r))
    low = [
        f"{t} {fmt(r.sluice.tallies[t].precision)}"
        for t in targeted_types(r)
        if t in r.sluice.tallies and (r.sluice.tallies[t].precision or 1) < TARGET_PRECISION
    ]
    lines.append(
        f"- Precision, targeted types: {fmt(targeted.precision)}, target ≥ {TARGET_PRECISION}: "
        f"**{verdict((targeted.precision or 0) >= TARGET_PRECISION)}**"
        + (f" (types below target: {', '.join(low)})." if low else ".")
    )
    code = r.code_sluice
    lines.append(
        f"- Clean code not allowed: {len(code.stopped)} of {code.chunks} chunks "
        f"({code.rate:.1%}), target < {TARGET_CODE_STOPPED:.0%}: "
        f"**{verdict(code.rate < TARGET_CODE_STOPPED)}**."
    )
    return lines


def section(r: Results, started: str, host: str, elapsed: float) -> str:
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(r.kinds.items()))
    conversation = r.conversation
    lines = [
        MARKERS[0],
        "## Classification: speed, cache and accuracy",
        "",
        "What: Sluice's detectors under the default policy (`policies/classification.yaml`: "
        "secret rules, the organisation's recognizers, and Presidio restricted to the policy's "
        "entity types with `min_score`) next to plain Presidio (`AnalyzerEngine` with all its "
        'default recognizers on the same spaCy model, `analyze(text, language="en")`), on '
        "made-up labeled data from `benchmarks/make_dataset.py` (`benchmarks/data/`).",
        "",
        f"How: speed is one process (one thread) classifying {r.prompts} English prompts of "
        f"about {r.prompt_chars:,.0f} characters, after a warm-up, the two engines alternating "
        f"over {r.rounds} passes each; per core means characters per CPU-second of the process. "
        "The conversation (below) goes through the `classify` filter "
        "(`proxy.filters.classify.Classify`) on a real one-worker `ClassifierPool`, once with "
        "the filter's per-text cache kept across turns, once with a fresh filter (empty cache) "
        "every turn; the time is the filter's, end to end. Accuracy: a finding is correct if "
        "it has the labeled type and overlaps the labeled span; findings below the policy's "
        f"`min_score` ({r.min_score:g}) are dropped for both engines. Clean code: a chunk "
        "counts as stopped when its findings, through `proxy.classify.decision.decide`, give "
        "an action other than `allow`.",
        "",
        "Caveat on PERSON: Sluice's name gazetteer is Faker's first-name and surname lists, "
        "independent of this set's names (short lists in `make_dataset.py`), but it contains "
        "nearly all of them (all but 3 of 72 first names and 5 of 84 surnames), as it would "
        "contain most real names; names it lacks rest on spaCy alone. Capitalised words that "
        "are English words (WordNet's, from the spaCy model's lemmatizer tables) and no name "
        "are not sent to spaCy. The rules were tuned on "
        "this set; `tests/test_classify_detectors.py` holds hand-written cases outside it.",
        "",
        f"Data: {r.cases} cases with {r.spans} labeled spans ({kinds}).",
        "",
        f"Machine: {host}. Run {started}, Sluice at {overhead.revision()}; "
        f"the whole run took {elapsed:.0f} s.",
        "",
        f"Command: `{COMMAND}`",
        "",
    ]
    if r.speed:
        lines += [
            "### Speed",
            "",
            speed_table(r),
            "",
            f"Where Sluice's time goes, over {r.stage_texts} of the prompts (one pass, each "
            "stage timed on its own):",
            "",
            stage_table(r),
            "",
        ]
        if r.headroom is not None:
            h = r.headroom
            lines += [
                f"Headroom: spaCy alone runs at {h.full_chars_per_cpu_s:,.0f} chars per "
                f"CPU-second with the full pipeline and {h.trimmed_chars_per_cpu_s:,.0f} with "
                f"only {' + '.join(f'`{n}`' for n in h.kept)} loaded, and finds the same "
                f"entities on {h.same_entities} of {h.texts} prompts. Sluice loads the trimmed "
                "pipeline and runs it only on windows of prose around capitalised words its "
                "gazetteers leave open, never on code, configuration, JSON or logs; context "
                "words for the pattern types are matched in a window of characters, so no "
                "lemmas are needed.",
                "",
            ]
    if conversation is not None:
        requests, both = conversation.variants
        lines += [
            "### Resent conversation",
            "",
            f"A chat tool's conversation of {requests.turns} turns "
            "(`benchmarks/data/conversation.json`): a system prompt, then user messages of "
            "about 1,500 characters (business prose with PII, source code, log excerpts) and "
            "answers of about 1,500 characters (prose, some with code), each request resending "
            "the system prompt and the whole history with the answers as they came back. "
            "Each turn goes through the `classify` filter's `on_request` and, in the second "
            "variant, the answer through its output scanner (`scan_body`), as under the default "
            "policy (`output.scan: true`), which puts the answer in the cache before the client "
            "resends it. With the cache, each text is classified once: requests only, the new "
            "user message and the previous answer; requests and answers, the new user message "
            "on the way in and the answer on the way back. Without it (a fresh filter every "
            "turn), every text of every request, and each answer. Same process, same warm "
            f"worker, the two modes alternating (ABBA), median of {len(requests.runs) // 2} "
            "run(s) per mode.",
            "",
            f"Requests only: the {requests.turns} requests carry {requests.texts_sent} texts "
            f"({requests.chars_sent:,} characters), {requests.texts_distinct} of them distinct "
            f"({requests.chars_distinct:,} characters): a free cache on free requests would give "
            f"{requests.ideal_speedup:.1f}x by characters. With the answers: "
            f"{both.texts_sent} texts, {both.texts_distinct} distinct, "
            f"{both.ideal_speedup:.1f}x by characters. Even texts of equal cost would cap a "
            f"per-text cache at {requests.texts_sent / requests.texts_distinct:.1f}x "
            f"({both.texts_sent / both.texts_distinct:.1f}x with the answers): a "
            f"{TARGET_CACHE_SPEEDUP:g}x target leaves the cached run a few percent for "
            "everything but classifying each new text.",
            "",
            conversation_table(conversation),
            "",
            "Ceiling: the CPU time to classify every turn's distinct texts over the CPU time to "
            "classify each text once, in one process with no pool and no filter: what a cache "
            "that cost nothing could give with this detector on this conversation. It departs "
            "from the character ratio as far as texts differ in cost per character: the costlier "
            "ones (log excerpts; prose whose capitalised words the word lists leave open, which "
            "goes through spaCy at a millisecond a window) raise it when they come early in the "
            "conversation, and lower it when they come late and so are resent less often than "
            "the average text.",
            "",
            "Fixed costs per request, which the cache cannot remove: turn "
            f"{requests.turns} resent with every text already cached takes "
            f"{conversation.cached_request_s * 1e3:.2f} ms in the filter (extraction, hashing, "
            "the decision); a pool round trip for a two-character text takes "
            f"{conversation.round_trip_s * 1e3:.2f} ms, of which the detector itself takes "
            f"{conversation.detect_s * 1e3:.2f} ms in one process (its fixed cost per text); "
            "the rest is the two processes' Python around the pipe and, on these VMs, waking "
            "the idle CPU the other process waits on, once each way.",
            "",
        ]
    lines += [
        "### Accuracy per entity type",
        "",
        "Recall and precision; (found) is the number of findings of the type.",
        "",
        accuracy_table(r),
        "",
        "Sluice on the targeted types (structured PII, secrets, PERSON) by kind of text:",
        "",
        kind_table(r),
        "",
    ]
    extra = unlabeled_line(r)
    if extra:
        lines += [extra, ""]
    lines += [
        "### Ordinary source code",
        "",
        code_table(r),
        "",
        *code_notes(r.code_sluice),
        "",
        "### Targets",
        "",
        *verdicts(r),
        "",
        "### Where Sluice misses and over-reports",
        "",
        *findings_notes(r),
        MARKERS[1],
    ]
    return "\n".join(lines).replace("\n\n\n", "\n\n")


# --- running it --------------------------------------------------------------------------------


def details_json(
    cases: Sequence[make_dataset.Case],
    sluice: dict[str, list[Prediction]],
    presidio: dict[str, list[Prediction]],
) -> list[dict[str, Any]]:
    """Per case: the labels and both engines' findings, for digging into a number."""

    def rows(predictions: list[Prediction], text: str) -> list[dict[str, Any]]:
        return [
            {
                "type": p.entity,
                "start": p.start,
                "end": p.end,
                "score": round(p.score, 3),
                "text": text[p.start : p.end],
            }
            for p in predictions
        ]

    return [
        {
            "id": case["id"],
            "kind": case["kind"],
            "labels": [
                {**e, "text": case["text"][e["start"] : e["end"]]} for e in case["entities"]
            ],
            "sluice": rows(sluice[case["id"]], case["text"]),
            "presidio": rows(presidio[case["id"]], case["text"]),
        }
        for case in cases
    ]


def measure(args: argparse.Namespace) -> Results:
    from proxy.classify.secrets import SECRET_ENTITIES

    cases, prompt_cases, conversation = load_data(args.regenerate)
    if args.cases and args.cases < len(cases):
        step = len(cases) / args.cases
        cases = [cases[int(i * step)] for i in range(args.cases)]
    prompts = [p["text"] for p in prompt_cases[: args.prompts]]

    began = time.monotonic()
    engines = Engines.load(args.policies)
    log(f"engines loaded in {time.monotonic() - began:.1f} s")

    speed: dict[str, Speed] = {}
    stages: list[Stage] = []
    headroom = None
    stage_texts = prompts[: min(len(prompts), 60)]
    if prompts:
        speed = measure_speed(engines, prompts, args.rounds)
        log(", ".join(f"{k} {v.chars_per_cpu_s:,.0f} chars/CPU-s" for k, v in speed.items()))
        stages = stage_breakdown(engines, stage_texts)
        headroom = spacy_headroom(stage_texts)

    conversation_result = None
    if args.conversation_rounds > 0:
        bounds = {
            answers: conversation_bound(engines, conversation, answers) for answers in (False, True)
        }
        conversation_result = asyncio.run(
            measure_conversation(engines.snapshot, conversation, args.conversation_rounds, bounds)
        )
        alone = []
        for _ in range(200):
            began_detect = time.perf_counter()
            engines.run_sluice("ok")
            alone.append(time.perf_counter() - began_detect)
        conversation_result.detect_s = statistics.median(alone)
        for variant in conversation_result.variants:
            log(
                f"conversation, {variant.name}: cache speed-up {variant.speedup:.1f}x "
                f"(ceiling {variant.bound:.1f}x)"
            )

    sluice_scores, sluice_predictions = evaluate(cases, engines.predict_sluice)
    log(f"accuracy, Sluice: {sluice_scores.seconds:.1f} s")
    presidio_scores, presidio_predictions = evaluate(cases, engines.predict_presidio)
    log(f"accuracy, Presidio: {presidio_scores.seconds:.1f} s")
    if args.details:
        args.details.write_text(
            json.dumps(
                details_json(cases, sluice_predictions, presidio_predictions),
                ensure_ascii=False,
                indent=1,
            )
        )
        log(f"wrote {args.details}")

    policy = engines.policy
    labeled = {e["type"] for case in cases for e in case["entities"]}
    policy_types = sorted(set(policy.levels) | {r.entity for r in policy.recognizers})
    return Results(
        cases=len(cases),
        spans=sum(len(case["entities"]) for case in cases),
        kinds=Counter(case["kind"] for case in cases),
        prompts=len(prompts),
        prompt_chars=statistics.mean(map(len, prompts)) if prompts else 0.0,
        rounds=args.rounds,
        min_score=policy.min_score,
        speed=speed,
        stages=stages,
        stage_texts=len(stage_texts),
        headroom=headroom,
        conversation=conversation_result,
        sluice=sluice_scores,
        presidio=presidio_scores,
        code_sluice=code_verdicts(cases, sluice_predictions, policy),
        code_presidio=code_verdicts(cases, presidio_predictions, policy),
        policy_types=policy_types,
        secret_types=sorted(t for t in labeled if t in SECRET_ENTITIES),
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--prompts", type=int, default=200, help="1.5k-character prompts timed (default 200)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="timed passes over the prompts per engine"
    )
    parser.add_argument(
        "--conversation-rounds",
        type=int,
        default=5,
        help="runs of the 20-turn conversation per mode (0 skips it; default 5)",
    )
    parser.add_argument(
        "--cases", type=int, default=0, help="score only this many cases, spread over the set"
    )
    parser.add_argument("--policies", type=Path, default=POLICIES, help=argparse.SUPPRESS)
    parser.add_argument("--regenerate", action="store_true", help="rewrite benchmarks/data/")
    parser.add_argument("--details", type=Path, help="write per-case findings to this JSON file")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    overhead.use_venv(__file__)
    args = parse_args(argv)
    overhead.exit_on_sigterm()
    # Per core: numpy (under spaCy) would otherwise spread matrix work over every CPU.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = overhead.machine()
    began = time.monotonic()
    results = measure(args)
    elapsed = time.monotonic() - began
    text = section(results, started, host, elapsed)
    print(text)
    if not args.no_write:
        overhead.write_section(text, markers=MARKERS)
        print(f"wrote {overhead.DOC.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
