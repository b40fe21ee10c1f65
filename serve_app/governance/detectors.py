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
# Digit groups joined by single spaces or dashes: a card followed by more numbers
# ("4111 1111 1111 1111 12 28", the expiry) is one such run, longer than any card.
_DIGIT_GROUPS = re.compile(r"(?<!\d)\d+(?:[ -]\d+)*(?!\d)")
_GROUP = re.compile(r"\d+")
# How issuers print card numbers: fours (the last group shorter for 13-19 digits),
# Amex 4-6-5, Diners 4-6-4.
_CARD_LAYOUT = re.compile(r"(?:4,){2,3}4(?:,[1-4])?|4,6,[45]")
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
    """Card numbers of 13-19 digits that pass the Luhn checksum: a whole run of digits
    (any grouping), or within a longer run of digit groups, groups laid out the way
    cards are printed (`_CARD_LAYOUT`), so a card followed by its expiry is found."""
    found: list[tuple[int, int]] = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            found.append((m.start(), m.end()))
    for m in _DIGIT_GROUPS.finditer(text):
        if any(start <= m.start() < end or m.start() <= start < m.end() for start, end in found):
            continue  # already found as a whole
        found += _card_in_groups(
            [(g.start() + m.start(), g.group()) for g in _GROUP.finditer(m.group())]
        )
    for start, end in sorted(found):
        yield Finding("payment_card", start, end, "PAYMENT_CARD")


def _card_in_groups(groups: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """Spans of consecutive digit groups laid out like a card and passing Luhn, longest
    first at each start; a found card's groups are not reused."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        best = None
        for j in range(i + 1, min(len(groups), i + 5)):  # at most 5 groups (4-4-4-4-3)
            layout = ",".join(str(len(d)) for _, d in groups[i : j + 1])
            digits = "".join(d for _, d in groups[i : j + 1])
            if 13 <= len(digits) <= 19 and _CARD_LAYOUT.fullmatch(layout) and _luhn_ok(digits):
                best = j
        if best is None:
            i += 1
            continue
        out.append((groups[i][0], groups[best][0] + len(groups[best][1])))
        i = best + 1
    return out


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
