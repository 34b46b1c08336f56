"""The detectors under the default policy on hand-written cases, kept apart from the generated
benchmark set: code and technical text are left alone, personal data inside them is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.classify.engine import Detector
from proxy.classify.textkind import is_technical
from proxy.filters.classify import detector_config
from proxy.policy.loader import load_policy
from proxy.policy.store import PolicySnapshot

POLICIES = Path(__file__).resolve().parent.parent / "policies"


@pytest.fixture(scope="module")
def detector() -> Detector:
    snapshot = PolicySnapshot.from_loaded(load_policy(POLICIES))
    return Detector(detector_config(snapshot.policy.classification))


def found(detector: Detector, text: str) -> list[tuple[str, str]]:
    """(entity, value) of the findings the default policy acts on (score >= min_score)."""
    return [
        (f.entity, text[f.start : f.end])
        for f in detector.detect(text)
        if f.score >= detector.config.min_score
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Send the contract to 617-253-1000 before noon.", ("PHONE_NUMBER", "617-253-1000")),
        ("Jo's line is 020 7946 0018 until Friday.", ("PHONE_NUMBER", "020 7946 0018")),
        ("Rufen Sie +49 30 901820 an.", ("PHONE_NUMBER", "+49 30 901820")),
        ("Charge it to 2221 0000 0000 0009 please.", ("CREDIT_CARD", "2221 0000 0000 0009")),
        ("Yesterday I met Sofia Andersen from procurement.", ("PERSON", "Sofia Andersen")),
        ("Dear Matteo, your badge is ready.", ("PERSON", "Matteo")),
        ("Connect to 192.168.10.24 over SSH.", ("IP_ADDRESS", "192.168.10.24")),
    ],
)
def test_personal_data_in_prose_is_found(
    detector: Detector, text: str, expected: tuple[str, str]
) -> None:
    assert expected in found(detector, text)


@pytest.mark.parametrize(
    "text",
    [
        "npm install lodash@4.17.21 and then rerun the build.",
        "Please upgrade the agent to version 10.2.3.4 tonight.",
        "Our order 2023-11-05-0042 shipped; ticket 48151623 has the details.",
    ],
)
def test_look_alikes_in_prose_are_not_findings(detector: Detector, text: str) -> None:
    assert found(detector, text) == []


def test_a_country_that_is_also_a_first_name_is_a_place(detector: Detector) -> None:
    assert found(detector, "What is the capital of France?") == [("LOCATION", "France")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Revenue grew, driven by the Enterprise tier and the Snowflake migration.", []),
        ("She moved from a monolith to services at Soylent Foods.", []),
        ("Based in Seattle, open to relocation.", [("LOCATION", "Seattle")]),
        ("She joins the team in Berlin on Tuesday.", [("LOCATION", "Berlin")]),
        ("See you at the front desk.\n\nThanks,\nKeiko Dubois", [("PERSON", "Keiko Dubois")]),
    ],
)
def test_the_word_lists_settle_capitalised_words_without_spacy(
    detector: Detector, text: str, expected: list[tuple[str, str]]
) -> None:
    """English words, a company, places after "in" (a city that is a first name too), an
    unknown first name before a known surname: spaCy, most of the cost, is left nothing to
    read."""
    assert found(detector, text) == expected
    assert detector.names is not None
    assert detector.names.known_names(text, technical=False)[1] == []


def test_a_name_no_list_knows_still_goes_to_spacy(detector: Detector) -> None:
    assert detector.names is not None
    _, open_words = detector.names.known_names("The review with Qarvessa went well.", False)
    assert [word.text for word in open_words] == ["Qarvessa"]


CODE = '''import logging
from dataclasses import dataclass

import requests

LOG = logging.getLogger(__name__)
VERSION = "2.4.1.7"
MIN_AGENT = parse_version("1.12.0.3")


@dataclass
class OrderExporter:
    """Exports orders to the warehouse, see setup.py for the entry point."""

    session: requests.Session
    base_url: str = "https://cdn.jsdelivr.net/npm/chart.js@4.4.0"

    def export(self, order_id: int) -> dict:
        response = self.session.get(f"{self.base_url}/orders/{order_id}")
        response.raise_for_status()
        LOG.info("exported order %s", order_id)
        return response.json()
'''


def test_ordinary_code_has_no_findings(detector: Detector) -> None:
    assert is_technical(CODE)
    assert found(detector, CODE) == []


def test_personal_data_inside_code_is_found(detector: Detector) -> None:
    settings = (
        "DEBUG = False\n"
        'ALLOWED_HOSTS = ["shop.example.org"]\n'
        'ADMINS = [("Maria Rossi", "maria.rossi@example.org")]\n'
        'EMAIL_HOST = "smtp.example.org"\n'
        'SUPPORT_PHONE = "+44 20 7946 0018"\n'
    )
    assert is_technical(settings)
    findings = found(detector, settings)
    assert ("PERSON", "Maria Rossi") in findings
    assert ("EMAIL_ADDRESS", "maria.rossi@example.org") in findings
    assert ("PHONE_NUMBER", "+44 20 7946 0018") in findings


def test_a_phone_number_inside_an_iban_is_not_reported(detector: Detector) -> None:
    text = "Pay to IBAN GB82 WEST 1234 5698 7654 32 by Friday."
    assert [entity for entity, _ in found(detector, text)] == ["IBAN_CODE"]


def test_a_secret_wins_over_what_overlaps_it(detector: Detector) -> None:
    text = "token=ghp_Wkg1gpexRqIhezpU1FSvYYMZkjahk0mor4Od"
    assert [entity for entity, _ in found(detector, text)] == ["GITHUB_TOKEN"]


def test_long_blobs_and_lines_are_classified(detector: Detector) -> None:
    """A base64 blob full of capitalised fragments and a one-line JSON array with thousands of
    IP addresses: both stay linear (the suite's timeout would end a quadratic scan)."""
    blob = "".join(f"Ab{i % 10}Cd+Ef/Gh" for i in range(20_000))
    assert all(f.entity != "PERSON" for f in detector.detect(f"key: {blob}"))
    line = json.dumps(
        [{"host": f"10.0.{i // 250}.{i % 250}", "version": "1.2.3"} for i in range(5000)]
    )
    assert sum(f.entity == "IP_ADDRESS" for f in detector.detect(line)) == 5000
