"""Detectors: each finds spans of one kind of risk in a text.

Rules are used where rules are exact (checksums for payment cards); the
governance issue adds model-based detectors beside these.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """One detected span: `text[start:end]` is what the detector matched."""

    detector: str
    start: int
    end: int
    label: str


Detector = Callable[[str], Iterator[Finding]]

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]\d{3,4}[\s.-]\d{3,4}(?!\w)"
)
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_SECRETS = re.compile(
    r"(?:AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|sk-[A-Za-z0-9_-]{20,}"
    r"|xox[baprs]-[A-Za-z0-9-]{10,}"
    r"|-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"
    r"|(?i:password|passwd|pwd|secret|api[_-]?key)\s*[:=]\s*\S{6,})"
)
_INJECTION = re.compile(
    r"(?i)(?:ignore|disregard|forget)\s+(?:all\s+|any\s+)?(?:the\s+)?(?:previous|prior|above|earlier)"
    r"\s+(?:instructions|rules|prompts?|directions)"
    r"|(?:reveal|show|print|repeat)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+prompt|hidden\s+instructions)"
    r"|you\s+are\s+now\s+(?:DAN|in\s+developer\s+mode|an?\s+unrestricted)"
    r"|pretend\s+(?:that\s+)?you\s+(?:have\s+no|are\s+free\s+of)\s+(?:rules|restrictions|guidelines)"
)
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
    "phone": _regex("phone", _PHONE, "PHONE"),
    "payment_card": detect_payment_card,
    "us_ssn": _regex("us_ssn", _SSN, "US_SSN"),
    "ip_address": detect_ip_address,
    "secret": _regex("secret", _SECRETS, "SECRET"),
    "prompt_injection": _regex("prompt_injection", _INJECTION, "PROMPT_INJECTION"),
    "harmful_request": _regex("harmful_request", _HARMFUL, "HARMFUL"),
}
