"""The `mask` action: consistent placeholders, exact restore, and streams split at every offset.

Expected outputs are built from parts, not from `unmask`, so the restorer is checked, not echoed.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from collections.abc import Callable, Iterator, Sequence

import pytest

from proxy.classify.findings import Finding
from proxy.classify.masking import Masker, StreamUnmasker, restore_json_strings


def _at(text: str, value: str, entity: str, score: float = 0.9, nth: int = 0) -> Finding:
    start = -1
    for _ in range(nth + 1):
        start = text.index(value, start + 1)
    return Finding(entity, start, start + len(value), score, "test")


def _feed_all(unmasker: StreamUnmasker, pieces: Sequence[str]) -> str:
    return "".join(unmasker.feed(piece) for piece in pieces) + unmasker.flush()


def _cuts(text: str, offsets: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(offsets), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


# --- consistency --------------------------------------------------------------------------------


def test_same_value_gets_the_same_placeholder_across_texts() -> None:
    masker = Masker()
    first = "Write to ann@example.com, then ann@example.com again."
    second = "Forward it to ann@example.com."
    masked_first = masker.mask(
        first,
        [
            _at(first, "ann@example.com", "EMAIL_ADDRESS"),
            _at(first, "ann@example.com", "EMAIL_ADDRESS", nth=1),
        ],
    )
    masked_second = masker.mask(second, [_at(second, "ann@example.com", "EMAIL_ADDRESS")])

    assert masked_first == "Write to <EMAIL_ADDRESS_1>, then <EMAIL_ADDRESS_1> again."
    assert masked_second == "Forward it to <EMAIL_ADDRESS_1>."
    assert dict(masker.mapping) == {"<EMAIL_ADDRESS_1>": "ann@example.com"}


def test_values_numbered_per_entity_in_order_of_first_sight() -> None:
    masker = Masker()
    text = "Ann <ann@example.com> and Bob <bob@example.com>; Ann again."
    findings = [
        _at(text, "Ann", "PERSON"),
        _at(text, "ann@example.com", "EMAIL_ADDRESS"),
        _at(text, "Bob", "PERSON"),
        _at(text, "bob@example.com", "EMAIL_ADDRESS"),
        _at(text, "Ann", "PERSON", nth=1),
    ]
    masked = masker.mask(text, findings)

    assert masked == (
        "<PERSON_1> <<EMAIL_ADDRESS_1>> and <PERSON_2> <<EMAIL_ADDRESS_2>>; <PERSON_1> again."
    )
    assert masker.unmask(masked) == text


def test_same_string_of_different_entities_gets_different_placeholders() -> None:
    masker = Masker()
    text = "Jordan lives in Jordan."
    masked = masker.mask(
        text, [_at(text, "Jordan", "PERSON"), _at(text, "Jordan", "LOCATION", nth=1)]
    )
    assert masked == "<PERSON_1> lives in <LOCATION_1>."


def test_exact_string_decides_sameness() -> None:
    masker = Masker()
    text = "ann@example.com ANN@example.com"
    masked = masker.mask(
        text,
        [
            _at(text, "ann@example.com", "EMAIL_ADDRESS"),
            _at(text, "ANN@example.com", "EMAIL_ADDRESS"),
        ],
    )
    assert masked == "<EMAIL_ADDRESS_1> <EMAIL_ADDRESS_2>"


def test_overlapping_findings_keep_the_longest_then_the_highest_score() -> None:
    masker = Masker()
    text = "Contact Ann Lee at ann.lee@example.com today"
    findings = [
        _at(text, "Ann", "PERSON", score=0.99),
        _at(text, "Ann Lee", "PERSON", score=0.6),
        _at(text, "ann.lee", "PERSON", score=0.7),
        _at(text, "ann.lee@example.com", "EMAIL_ADDRESS", score=0.5),
        _at(text, "example.com", "DOMAIN_NAME", score=1.0),
    ]
    assert masker.mask(text, findings) == "Contact <PERSON_1> at <EMAIL_ADDRESS_1> today"

    tie = "key 1234567890"
    masked = Masker().mask(
        tie,
        [
            _at(tie, "1234567890", "PHONE_NUMBER", 0.4),
            _at(tie, "1234567890", "US_BANK_NUMBER", 0.8),
        ],
    )
    assert masked == "key <US_BANK_NUMBER_1>"


def test_adjacent_findings_are_both_masked() -> None:
    text = "AnnLee"
    masked = Masker().mask(text, [_at(text, "Ann", "PERSON"), _at(text, "Lee", "PERSON")])
    assert masked == "<PERSON_1><PERSON_2>"


def test_entity_names_outside_the_placeholder_grammar_are_squeezed_into_it() -> None:
    masker = Masker()
    text = "Project Blue Heron, ref 42"
    masked = masker.mask(
        text, [_at(text, "Blue Heron", "project-codename"), _at(text, "42", "42x")]
    )
    assert masked == "Project <PROJECT_CODENAME_1>, ref <ENTITY_42X_1>"
    assert masker.unmask(masked) == text


@pytest.mark.parametrize(("start", "end"), [(-1, 2), (3, 3), (2, 1), (0, 99)])
def test_a_span_outside_the_text_is_refused(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="outside a text"):
        Masker().mask("hello", [Finding("PERSON", start, end, 0.9, "test")])


def test_mapping_is_a_read_only_view() -> None:
    masker = Masker()
    masker.mask("Ann", [Finding("PERSON", 0, 3, 0.9, "test")])
    with pytest.raises(TypeError):
        masker.mapping["<PERSON_1>"] = "Eve"  # type: ignore[index]


_VOCABULARY = [
    "a", " ", "\n", "<", ">", "_", "1", "Z", "Zoë", "日本", "😀", '"', "\\", "x@y.z", "Ann",
    "<PERSON_1>", "<PERSON_2>", "<EMAIL_ADDRESS_1>", "<PERSON_", "<EMAIL", "PERSON_1", "<person_1>",
    "<AWS_ACCESS_KEY_ID_1>", "a < b", "<<", "_1>",
]  # fmt: skip
_ENTITIES = ["PERSON", "EMAIL_ADDRESS", "AWS_ACCESS_KEY_ID"]


def _random_request(rng: random.Random) -> list[tuple[str, list[Finding]]]:
    texts = []
    for _ in range(rng.randint(1, 4)):
        text = "".join(rng.choice(_VOCABULARY) for _ in range(rng.randint(0, 30)))
        findings = []
        for _ in range(rng.randint(0, 5) if text else 0):
            start = rng.randrange(len(text))
            end = rng.randint(start + 1, min(len(text), start + 12))
            findings.append(Finding(rng.choice(_ENTITIES), start, end, rng.random(), "test"))
        texts.append((text, findings))
    return texts


def test_unmask_inverts_mask_for_generated_requests() -> None:
    # Generated texts are full of lookalikes ("<PERSON_1>" pasted before and after it is issued),
    # so a collision between a literal and an issued placeholder would break the round trip.
    rng = random.Random(20240611)
    for _ in range(3000):
        masker = Masker()
        request = _random_request(rng)
        masked = [masker.mask(text, findings) for text, findings in request]
        for (text, _findings), sent in zip(request, masked, strict=True):
            assert masker.unmask(sent) == text
            offsets = [rng.randint(0, len(sent)) for _ in range(rng.randint(0, 6))]
            assert _feed_all(masker.stream(), _cuts(sent, offsets)) == text


# --- a client's literal placeholder -------------------------------------------------------------


def test_a_literal_seen_before_issue_is_reserved_and_never_restored() -> None:
    masker = Masker()
    prompt = "Template: Dear <PERSON_1>, ... Fill it for Alice."
    masked = masker.mask(prompt, [_at(prompt, "Alice", "PERSON")])

    assert masked == "Template: Dear <PERSON_1>, ... Fill it for <PERSON_2>."
    assert dict(masker.mapping) == {"<PERSON_2>": "Alice"}
    answer = "Dear <PERSON_2>, (was <PERSON_1>)"
    assert masker.unmask(answer) == "Dear Alice, (was <PERSON_1>)"


def test_a_literal_equal_to_an_issued_placeholder_is_masked_itself() -> None:
    masker = Masker()
    system = "The customer is Alice."
    user = "Why does my template show <PERSON_1> literally?"
    assert masker.mask(system, [_at(system, "Alice", "PERSON")]) == "The customer is <PERSON_1>."
    assert masker.mask(user, []) == "Why does my template show <PERSON_2> literally?"

    answer = "<PERSON_1>: the string <PERSON_2> is an unfilled field."
    assert masker.unmask(answer) == "Alice: the string <PERSON_1> is an unfilled field."
    # The same literal again reuses its escape; a fresh one after it skips nothing it needn't.
    again = "Still <PERSON_1>; and Bob."
    assert masker.mask(again, [_at(again, "Bob", "PERSON")]) == "Still <PERSON_2>; and <PERSON_3>."


def test_placeholders_are_matched_exactly() -> None:
    masker = Masker()
    text = "Alice"
    masker.mask(text, [_at(text, "Alice", "PERSON")])
    answer = "PERSON_1 <person_1> < PERSON_1> <PERSON_01> &lt;PERSON_1&gt; <PERSON_9> <PERSON_1>"
    assert masker.unmask(answer) == (
        "PERSON_1 <person_1> < PERSON_1> <PERSON_01> &lt;PERSON_1&gt; <PERSON_9> Alice"
    )


# --- streaming ----------------------------------------------------------------------------------


def _scenario() -> tuple[Masker, str, str]:
    """A masker for a realistic request, a masked answer, and that answer with real values."""
    masker = Masker()
    prompt = (
        "Mail alice@example.com and bob@example.org; cc Alice Martin. "
        "Key AKIAABCDEFGHIJKLMNOP. Zoë Ōkawa 😀 signs."
    )
    masker.mask(
        prompt,
        [
            _at(prompt, "alice@example.com", "EMAIL_ADDRESS"),
            _at(prompt, "bob@example.org", "EMAIL_ADDRESS"),
            _at(prompt, "Alice Martin", "PERSON"),
            _at(prompt, "AKIAABCDEFGHIJKLMNOP", "AWS_ACCESS_KEY_ID"),
            _at(prompt, "Zoë Ōkawa 😀", "PERSON"),
        ],
    )
    parts: list[str | tuple[str]] = [
        ("<PERSON_1>",),
        " wrote to ",
        ("<EMAIL_ADDRESS_1>",),
        ("<EMAIL_ADDRESS_2>",),
        " — not <PERSON_3> nor <EMAIL_ADDRESS_9>; if a < b and b<c: <EMAIL or <EMAIL_ADDRESS_ ",
        "or <EMAIL_ADDRESS_1 unclosed, <<",
        ("<PERSON_2>",),
        "> 日本語 ✓ PERSON_1 <person_1> ",
        ("<AWS_ACCESS_KEY_ID_1>",),
        " <PERSON_1",
        ("<PERSON_1>",),
        "<<EMAIL_ADDRESS_1>>",
        "<",
        ("<EMAIL_ADDRESS_2>",),
    ]
    masked = "".join(p[0] if isinstance(p, tuple) else p for p in parts)
    real = "".join(masker.mapping[p[0]] if isinstance(p, tuple) else p for p in parts)
    return masker, masked, real.replace("<<EMAIL_ADDRESS_1>>", "<alice@example.com>")


def test_scenario_reference_is_what_unmask_gives() -> None:
    masker, masked, real = _scenario()
    assert masked.startswith("<PERSON_1>") and masked.endswith("<EMAIL_ADDRESS_2>")
    assert masker.unmask(masked) == real


def test_stream_split_into_two_at_every_offset() -> None:
    masker, masked, real = _scenario()
    for offset in range(len(masked) + 1):
        assert _feed_all(masker.stream(), _cuts(masked, [offset])) == real, offset


def test_stream_split_into_three_at_every_pair_of_offsets() -> None:
    masker, masked, real = _scenario()
    for first in range(len(masked) + 1):
        for second in range(first, len(masked) + 1):
            pieces = _cuts(masked, [first, second])
            assert _feed_all(masker.stream(), pieces) == real, (first, second)


def test_stream_random_many_piece_splits_with_empty_pieces() -> None:
    masker, masked, real = _scenario()
    rng = random.Random(7)
    for _ in range(500):
        offsets = [rng.randint(0, len(masked)) for _ in range(rng.randint(1, 40))]
        assert _feed_all(masker.stream(), _cuts(masked, offsets)) == real


def test_stream_one_character_at_a_time() -> None:
    masker, masked, real = _scenario()
    assert _feed_all(masker.stream(), list(masked)) == real


def _must_hold(masker: Masker, fed: str) -> int:
    """Brute force: the longest tail of `fed` that is a proper prefix of an issued placeholder."""
    for size in range(len(fed), 0, -1):
        tail = fed[-size:]
        if any(p.startswith(tail) and p != tail for p in masker.mapping):
            return size
    return 0


def test_stream_holds_back_only_what_could_still_be_a_placeholder() -> None:
    masker, masked, _real = _scenario()
    longest = max(len(p) for p in masker.mapping)
    rng = random.Random(11)
    splits = [list(masked)] + [
        _cuts(masked, [rng.randint(0, len(masked)) for _ in range(8)]) for _ in range(200)
    ]
    for pieces in splits:
        unmasker = masker.stream()
        emitted = fed = ""
        for piece in pieces:
            emitted += unmasker.feed(piece)
            fed += piece
            held = _must_hold(masker, fed)
            assert held < longest
            assert emitted == masker.unmask(fed[: len(fed) - held]), fed
            if held == 0:
                # The piece ended in text that cannot start a placeholder: all of it is out.
                assert emitted == masker.unmask(fed)


def test_stream_holds_a_tail_only_while_it_could_start_an_issued_placeholder() -> None:
    masker = Masker()
    text = "Ann"
    masker.mask(text, [_at(text, "Ann", "PERSON")])

    unmasker = masker.stream()
    assert unmasker.feed("Hello <PE") == "Hello "
    assert unmasker.feed("RSON_1") == ""
    assert unmasker.feed("> and <EMAI") == "Ann and <EMAI"  # no EMAIL_ADDRESS was issued
    assert unmasker.feed("L_1> a <") == "L_1> a "
    assert unmasker.feed(" b") == "< b"
    assert unmasker.feed("<PERSON_") == ""
    assert unmasker.flush() == "<PERSON_"
    assert unmasker.flush() == ""


def test_a_stream_of_a_request_with_nothing_masked_passes_through() -> None:
    unmasker = Masker().stream()
    assert unmasker.feed("a <PERSON_1") == "a <PERSON_1"
    assert unmasker.feed(">") == ">"
    assert unmasker.flush() == ""


def test_streams_are_independent() -> None:
    masker, _masked, _real = _scenario()
    content, arguments = masker.stream(), masker.stream(json_escaped=True)
    assert content.feed("x <PERS") == "x "
    assert arguments.feed('{"a": "<EMAIL_ADDRESS_') == '{"a": "'
    assert content.feed("ON_1>") == "Alice Martin"
    assert arguments.feed('1>"}') == 'alice@example.com"}'


# --- wire formats: the relay decodes each SSE event's JSON and feeds the delta text -------------


Wire = Callable[[Sequence[str], str], Iterator[str]]


def _openai_sse(pieces: Sequence[str], field: str) -> Iterator[str]:
    for piece in pieces:
        if field == "content":
            delta: dict[str, object] = {"content": piece}
        else:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def _anthropic_sse(pieces: Sequence[str], field: str) -> Iterator[str]:
    kind = "text_delta" if field == "content" else "input_json_delta"
    key = "text" if field == "content" else "partial_json"
    for piece in pieces:
        event = {"type": "content_block_delta", "index": 0, "delta": {"type": kind, key: piece}}
        yield f"event: content_block_delta\ndata: {json.dumps(event)}\n\n"
    yield 'event: message_stop\ndata: {"type": "message_stop"}\n\n'


def _delta_text(event: str) -> str | None:
    data = event.split("data: ", 1)[1].strip()
    if data == "[DONE]":
        return None
    body = json.loads(data)
    if "choices" in body:
        delta = body["choices"][0]["delta"]
        text = (
            delta["content"]
            if "content" in delta
            else delta["tool_calls"][0]["function"]["arguments"]
        )
        return str(text)
    if body["type"] == "content_block_delta":
        return str(body["delta"].get("text", body["delta"].get("partial_json")))
    return None


def _relay(events: Iterator[str], unmasker: StreamUnmasker) -> str:
    """What the client reassembles: each delta restored as it passes, the held tail at the end."""
    received = ""
    for event in events:
        text = _delta_text(event)
        if text is None:
            received += unmasker.flush()
        else:
            received += unmasker.feed(text)
    return received


@pytest.mark.parametrize("wire", [_openai_sse, _anthropic_sse])
def test_text_deltas_in_both_wire_formats(wire: Wire) -> None:
    masker, masked, real = _scenario()
    for offset in range(len(masked) + 1):
        events = wire(_cuts(masked, [offset, offset + 3]), "content")
        assert _relay(events, masker.stream()) == real, offset


@pytest.mark.parametrize("wire", [_openai_sse, _anthropic_sse])
def test_tool_arguments_stream_stays_valid_json(wire: Wire) -> None:
    masker = Masker()
    prompt = 'Ping Dana "DJ" O\\Neil at dj@example.com'
    masker.mask(
        prompt,
        [
            _at(prompt, 'Dana "DJ" O\\Neil', "PERSON"),
            _at(prompt, "dj@example.com", "EMAIL_ADDRESS"),
        ],
    )
    arguments = json.dumps({"who": "<PERSON_1>", "to": ["<EMAIL_ADDRESS_1>"], "n": "a < b"})
    for offset in range(len(arguments) + 1):
        events = wire(_cuts(arguments, [offset]), "arguments")
        restored = _relay(events, masker.stream(json_escaped=True))
        assert json.loads(restored) == {
            "who": 'Dana "DJ" O\\Neil',
            "to": ["dj@example.com"],
            "n": "a < b",
        }


# --- non-streaming answers ----------------------------------------------------------------------


def _quoted_masker() -> Masker:
    masker = Masker()
    prompt = 'Ping Dana "DJ" O\\Neil at dj@example.com'
    masker.mask(
        prompt,
        [
            _at(prompt, 'Dana "DJ" O\\Neil', "PERSON"),
            _at(prompt, "dj@example.com", "EMAIL_ADDRESS"),
        ],
    )
    return masker


def test_restore_json_strings_on_an_openai_completion() -> None:
    masker = _quoted_masker()
    arguments = json.dumps({"to": "<EMAIL_ADDRESS_1>", "who": "<PERSON_1>"}, indent=1)
    body = {
        "id": "chatcmpl-1",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": 'Say "<PERSON_1>" to <EMAIL_ADDRESS_1>; not <PERSON_2>.',
                    "tool_calls": [
                        {"type": "function", "function": {"name": "send", "arguments": arguments}}
                    ],
                },
                "logprobs": None,
            }
        ],
        "usage": {"total_tokens": 12, "cached": False, "ratio": 0.5},
    }
    before = copy.deepcopy(body)

    restored = restore_json_strings(body, masker)

    assert body == before
    message = restored["choices"][0]["message"]
    assert message["content"] == 'Say "Dana "DJ" O\\Neil" to dj@example.com; not <PERSON_2>.'
    restored_arguments = message["tool_calls"][0]["function"]["arguments"]
    assert json.loads(restored_arguments) == {"to": "dj@example.com", "who": 'Dana "DJ" O\\Neil'}
    assert restored_arguments.count("\n") == arguments.count("\n")  # layout kept
    assert restored["usage"] == before["usage"]
    assert restored["choices"][0]["logprobs"] is None


def test_restore_json_strings_on_an_anthropic_message() -> None:
    masker = _quoted_masker()
    body = {
        "content": [
            {"type": "text", "text": "Sending to <EMAIL_ADDRESS_1>"},
            {
                "type": "tool_use",
                "input": {"<PERSON_1>": ["<EMAIL_ADDRESS_1>", 3, True, None], "note": "[<x>"},
            },
        ],
        "stop_reason": "tool_use",
    }
    restored = restore_json_strings(body, masker)
    assert restored == {
        "content": [
            {"type": "text", "text": "Sending to dj@example.com"},
            {
                "type": "tool_use",
                "input": {'Dana "DJ" O\\Neil': ["dj@example.com", 3, True, None], "note": "[<x>"},
            },
        ],
        "stop_reason": "tool_use",
    }
