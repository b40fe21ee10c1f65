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

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b(?![.-]?\w)"
)
# A URL's scheme and authority up to the current position: `user@host` there is the
# URL's user info (`https://user@host/`, `postgresql://admin:pw@db/`), not a mailbox.
_URL_AUTHORITY_BEFORE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#]*$")
# Names that look like `name@host.tld` but are files (`icon@2x.png`).
_FILE_SUFFIX = re.compile(r"(?i)\.(?:png|jpe?g|gif|svg|webp|ico|bmp|tiff?|pdf|css|js|ts|json)$")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
# Not part of a longer dotted number (a version `10.0.19041.1`, an OID); a sentence's
# final period after the address is fine.
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d|\w)")
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|\bversion\s*|\brelease\s*|\bbuild\s*)$")
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


def detect_email(text: str) -> Iterator[Finding]:
    """E-mail addresses; not the user info of a URL, an SSH remote or a file name."""
    for m in _EMAIL.finditer(text):
        token_start = max(text.rfind(c, 0, m.start()) for c in " \t\n\r\"'<>(") + 1
        if _URL_AUTHORITY_BEFORE.search(text, token_start, m.start()):
            continue  # scheme://user@host or scheme://user:password@host
        if text[m.end() : m.end() + 1] == ":" and re.match(r"[\w~/.]", text[m.end() + 1 :]):
            continue  # git@github.com:org/repo.git (an SSH remote)
        if _FILE_SUFFIX.search(m.group()):
            continue
        yield Finding("email", m.start(), m.end(), "EMAIL")


def detect_payment_card(text: str) -> Iterator[Finding]:
    """Card numbers of 13-19 digits that pass the Luhn checksum."""
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            yield Finding("payment_card", m.start(), m.end(), "PAYMENT_CARD")


def detect_ip_address(text: str) -> Iterator[Finding]:
    """IPv4 addresses that could point at someone: each octet 0-255, not a version
    number, and not loopback, unspecified, multicast, reserved, broadcast or a netmask."""
    for m in _IPV4.finditer(text):
        try:
            ip = ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            continue
        if _is_netmask(ip) or _VERSION_BEFORE.search(text, max(0, m.start() - 10), m.start()):
            continue
        yield Finding("ip_address", m.start(), m.end(), "IP_ADDRESS")


def _is_netmask(ip: ipaddress.IPv4Address) -> bool:
    """255.255.255.0 and the like: ones then zeros, starting with 255."""
    bits = int(ip)
    inverted = ~bits & 0xFFFFFFFF
    return bits >> 24 == 0xFF and inverted & (inverted + 1) == 0


DETECTORS: dict[str, Detector] = {
    "email": detect_email,
    "phone": detect_phone,
    "iban": detect_iban,
    "payment_card": detect_payment_card,
    "us_ssn": _regex("us_ssn", _SSN, "US_SSN"),
    "ip_address": detect_ip_address,
    "secret": detect_secret,
    "prompt_injection": detect_injection,
    "harmful_request": _regex("harmful_request", _HARMFUL, "HARMFUL"),
}
