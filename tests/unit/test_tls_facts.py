"""TlsFacts as results and the queue keep them: one JSON form, read back the same."""

from __future__ import annotations

import json

from relaymail.tls.context import CLEAR, PeerCertificate, TlsFacts
from relaymail.tls.results import ResultType
from relaymail.tls.verify import VERIFIED, failed


def test_facts_become_the_four_fields_results_and_the_queue_keep() -> None:
    facts = TlsFacts(
        used=True,
        version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        verification=failed(ResultType.CERTIFICATE_EXPIRED, "the certificate has expired"),
        certificate=PeerCertificate("CN=mx", "CN=ca", "2026-01-01T00:00:00+00:00", ("mx",)),
    )
    assert facts.to_json() == {
        "used": True,
        "version": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "verified": False,
    }
    # The reason a check failed stays in the logs, not in the queue.
    assert TlsFacts.from_json(json.loads(json.dumps(facts.to_json()))) == TlsFacts(
        used=True, version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384"
    )


def test_verified_facts_read_back_verified() -> None:
    facts = TlsFacts(used=True, version="TLSv1.3", cipher="X", verification=VERIFIED)
    assert TlsFacts.from_json(facts.to_json()) == facts


def test_clear_round_trips_and_missing_fields_take_defaults() -> None:
    assert CLEAR.to_json() == {"used": False, "version": None, "cipher": None, "verified": False}
    assert TlsFacts.from_json(CLEAR.to_json()) == CLEAR
    assert TlsFacts.from_json({}) == CLEAR
