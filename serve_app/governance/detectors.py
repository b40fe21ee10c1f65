"""Detectors: each finds spans of one kind of risk in a text.

Rules are used where rules are exact (Luhn for payment cards, mod-97 for IBANs,
libphonenumber for phones; see rules.py); the meaning-based detectors (harmful
content, paraphrased injection) are the classifier's, named in hazards.SEMANTIC_DETECTORS.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from serve_app.governance.findings import Detector, Finding
from serve_app.governance.rules import detect_iban, detect_injection, detect_phone, detect_secret

__all__ = ["DETECTORS", "Detector", "Finding"]

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_HARMFUL = re.compile(
    r"(?i)\b(?:how\s+(?:do\s+i|to|can\s+i)\s+(?:make|build|assemble)\s+(?:a\s+)?(?:bomb|explosive|pipe\s+bomb|nerve\s+agent|bioweapon)"
    r"|(?:synthesi[sz]e|cook)\s+(?:meth|methamphetamine|sarin|ricin)"
    r"|hire\s+a\s+hitman)\b"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _regex(name: str, pattern: re.Pattern[str], label: str) -> Detector:
    def detect(text: str) -> Iterator[Finding]:
        for m in pattern.finditer(text):
            yield Finding(name, m.start(), m.end(), label)

    return detect


def detect_payment_card(text: str) -> Iterator[Finding]:
    """Card numbers of 13-19 digits that pass the Luhn checksum."""
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            yield Finding("payment_card", m.start(), m.end(), "PAYMENT_CARD")


def detect_ip_address(text: str) -> Iterator[Finding]:
    """IPv4 addresses that parse as such (each octet 0-255)."""
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield Finding("ip_address", m.start(), m.end(), "IP_ADDRESS")


DETECTORS: dict[str, Detector] = {
    "email": _regex("email", _EMAIL, "EMAIL"),
    "phone": detect_phone,
    "iban": detect_iban,
    "payment_card": detect_payment_card,
    "us_ssn": _regex("us_ssn", _SSN, "US_SSN"),
    "ip_address": detect_ip_address,
    "secret": detect_secret,
    "prompt_injection": detect_injection,
    "harmful_request": _regex("harmful_request", _HARMFUL, "HARMFUL"),
}
