"""Rule detectors where rules are exact: phone numbers (libphonenumber), IBAN (mod-97),
provider secrets, and prompt injection / jailbreak phrasing.

Each function takes a text and yields `Finding`s whose span is exactly what should be
redacted (for a password assignment, the value; for a private key, the whole block).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import phonenumbers

from serve_app.governance.findings import Finding

# -- phone numbers --------------------------------------------------------------------


def detect_phone(text: str, region: str = "US") -> Iterator[Finding]:
    """Phone numbers that libphonenumber finds valid (international ones in + form),
    not digits glued to an identifier (`INV-2024-000123`, `build/4155550132`)."""
    for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
        before = text[m.start - 1] if m.start > 0 else " "
        after = text[m.end] if m.end < len(text) else " "
        if before.isalnum() or before in "-_/#@." or after.isalnum() or after in "-_/@":
            continue
        yield Finding("phone", m.start, m.end, "PHONE")


# -- IBAN -----------------------------------------------------------------------------

# Lengths per country (ISO 13616 registry); an IBAN of another length is not an IBAN.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22,
    "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN = re.compile(r"\b([A-Z]{2})(\d{2})((?:[ ]?[A-Z0-9]){10,30})\b")


def iban_ok(iban: str) -> bool:
    """True when `iban` (spaces allowed) has its country's length and passes mod-97."""
    s = iban.replace(" ", "").upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not s.isalnum():
        return False
    digits = "".join(str(int(ch, 36)) for ch in s[4:] + s[:4])
    return int(digits) % 97 == 1


def detect_iban(text: str) -> Iterator[Finding]:
    for m in _IBAN.finditer(text):
        # The greedy group may run into a following word; shrink to the country's length.
        want = IBAN_LENGTHS.get(m.group(1))
        if want is None:
            continue
        count, end = 0, m.start()
        for i in range(m.start(), m.end()):
            if text[i] != " ":
                count += 1
            if count == want:
                end = i + 1
                break
        if count == want and iban_ok(text[m.start() : end]):
            yield Finding("iban", m.start(), end, "IBAN")


# -- secrets --------------------------------------------------------------------------

_PROVIDER_KEYS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|sk-ant-[A-Za-z0-9_-]{20,}"  # Anthropic
    r"|sk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}"  # OpenAI
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|xox[baprse]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"  # SendGrid
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JWT
    r"|https://hooks\.slack\.com/services/[A-Za-z0-9/]{20,}"
    r")"
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]*?-----END (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
    r"|[\s\S]*)"
)
_ASSIGNMENT = re.compile(
    r"(?i)\b[\w.-]*?(?:password|passwd|pwd|pass|passphrase|secret|client_secret|secret_key"
    r"|api[_-]?key|access[_-]?token|auth[_-]?token|token|aws_secret_access_key)"
    r"[\"']?\s*(?:[:=]|=>|\bis\b)\s*[\"']?([^\s\"',;]{6,})"
)
_URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:([^\s:/@]{3,})@[^\s/]+")
_PLACEHOLDERS = re.compile(
    r"(?i)^(?:\*+|x+|\.+|<[^>]*>|\{[^}]*\}|\$\{?[A-Za-z_]+\}?|\[[^\]]*\]|your[_-]?\w*"
    r"|changeme|placeholder|redacted|required|optional|none|null|example\w*)$"
)


def _looks_secret(value: str) -> bool:
    """A password-ish value: not a placeholder, and not a plain dictionary word."""
    if _PLACEHOLDERS.match(value) or value.startswith("[REDACTED"):
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z0-9]"))
    return classes >= 2 or len(value) >= 12


def detect_secret(text: str) -> Iterator[Finding]:
    """Provider keys and tokens, private-key blocks, passwords in assignments and URLs."""
    for m in _PROVIDER_KEYS.finditer(text):
        yield Finding("secret", m.start(), m.end(), "SECRET")
    for m in _PRIVATE_KEY.finditer(text):
        yield Finding("secret", m.start(), m.end(), "SECRET")
    for pattern in (_ASSIGNMENT, _URL_CREDENTIALS):
        for m in pattern.finditer(text):
            if _looks_secret(m.group(1)):
                yield Finding("secret", m.start(1), m.end(1), "SECRET")


# -- prompt injection and jailbreaks -------------------------------------------------

_QUAL = r"(?:previous|prior|above|earlier|preceding|original|initial|system|safety)"
_NOUN = (
    r"(?:instructions?|rules|prompts?|directions|directives|guidelines|guardrails|"
    r"restrictions|constraints|programming|policies|filters)\b"
)
_INJECTION_PATTERNS = [
    # Instruction override.
    r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:"
    r"(?:all|any|every)\s+(?:of\s+)?(?:the\s+|your\s+|my\s+)?(?:" + _QUAL + r"\s+)?"
    r"|(?:the\s+|your\s+)?" + _QUAL + r"\s+|your\s+)" + _NOUN,
    r"\b(?:new|updated|real)\s+(?:system\s+)?instructions?\s*:",
    r"\bfrom\s+now\s+on,?\s+you\s+(?:will|must|are|shall)\b",
    r"\bdo\s+not\s+follow\s+(?:your|the|any)\s+(?:rules|guidelines|instructions|policies)",
    r"</?\s*(?:system|im_start|im_end)\s*>|\[/?INST\]|<<SYS>>",
    # System-prompt extraction.
    r"\b(?:reveal|show|print|repeat|output|display|dump|leak|recite|share|give\s+me|tell\s+me|"
    r"what\s+(?:is|are|was|were))\s+(?:me\s+)?(?:your|the)\s+(?:full\s+|exact\s+|entire\s+|"
    r"original\s+|initial\s+|hidden\s+|secret\s+)*(?:system\s+(?:prompt|message|instructions)|"
    r"initial\s+instructions|hidden\s+instructions|developer\s+(?:message|prompt)|"
    r"prompt\s+above|instructions\s+above|pre-?prompt|configuration\s+prompt)",
    r"\b(?:repeat|print|output)\s+(?:everything|all|the\s+text)\s+(?:above|before)\b",
    r"\bwhat\s+(?:were|are)\s+you\s+told\s+(?:before|at\s+the\s+start)",
    r"\bverbatim\b.{0,40}\b(?:instructions|prompt)\b",
    # Role-play jailbreaks.
    r"\byou\s+are\s+(?:now\s+)?(?:DAN|STAN|DUDE|AIM|an?\s+(?:unrestricted|unfiltered|"
    r"uncensored|jailbroken)\b)",
    # "jailbroken" and "jailbreak mode" are the attack; the bare word is also how people ask
    # about attacks ("what is a jailbreak prompt?"): that is for the classifier to judge.
    r"\bdo\s+anything\s+now\b|\bjailbroken\b|\bjailbreak\s+mode\b|\bdeveloper\s+mode\b|"
    r"\bgod\s+mode\b",
    r"\b(?:pretend|imagine|act|behave|roleplay|role-play)\b.{0,60}\b(?:no|without|free\s+of|"
    r"zero)\s+(?:rules|restrictions|limits|guidelines|filters|ethics|morals|censorship|"
    r"content\s+polic(?:y|ies))\b",
    r"\b(?:unfiltered|uncensored|amoral|unrestricted)\s+(?:ai|assistant|model|chatbot|"
    r"version\s+of\s+yourself)\b",
    r"\bstay\s+in\s+character\b.{0,80}\b(?:no\s+matter|whatever|even\s+if)\b",
    r"\b(?:deceased|late|dead)\s+grand(?:ma|mother|pa|father)\b.{0,120}\b(?:used\s+to|would)\b",
    r"\b(?:opposite|evil|shadow)\s+(?:mode|twin|version)\b.{0,80}\b(?:answer|respond|reply)\b",
]
_INJECTION = re.compile("|".join(f"(?:{p})" for p in _INJECTION_PATTERNS), re.IGNORECASE | re.S)


def detect_injection(text: str) -> Iterator[Finding]:
    """Instruction overrides, system-prompt extraction and role-play jailbreak phrasing."""
    for m in _INJECTION.finditer(text):
        yield Finding("prompt_injection", m.start(), m.end(), "PROMPT_INJECTION")
