"""The shipped labeled governance dataset: seeds expanded into items, with splits.

Source: `data/labeled_seeds.yaml` (hazard, injection and benign seeds and sentences)
plus PII and secret items generated here with valid checksums (and near-miss negatives
labeled benign). Each seed, sentence or generated item is one split group; the split
is fixed by the sha256 of the group key: 60 % train, 20 % dev, 20 % test. The file's
`train_only` section (classes and sentences, same shape) is training data only: its
split is train whatever the hash, so adding to it leaves dev and test as they were.
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import yaml

from serve_app.governance.hazards import BENIGN, HAZARDS, INJECTION_CLASS

DATA_FILE = Path(__file__).resolve().parent / "data" / "labeled_seeds.yaml"
LABELS = [*HAZARDS, INJECTION_CLASS, "pii", "secrets", BENIGN]


@dataclass(frozen=True)
class Item:
    text: str
    label: str  # a hazard name, prompt_injection, pii, secrets or benign
    kind: str  # prompt | response
    split: str  # train | dev | test
    group: str
    # Other labels the text also carries: an IP address inside a code-interpreter attack
    # is PII as well (the file's `also_contains` section).
    also: tuple[str, ...] = ()


def split_of(key: str) -> str:
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10
    return "train" if h < 6 else "dev" if h < 8 else "test"


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def _iban(country: str, bban: str) -> str:
    digits = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


def _group4(s: str) -> str:
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


def _pii_and_secret_items(rng: random.Random) -> list[tuple[str, str]]:
    names = ["jane.doe", "m.rossi", "kwame.mensah", "li.wei", "olga_petrova", "sam+news"]
    domains = ["example.com", "mail.co.uk", "company.io", "uni.edu"]
    out: list[tuple[str, str]] = []
    for i in range(14):
        email = f"{rng.choice(names)}{i}@{rng.choice(domains)}"
        card = _luhn_complete(rng.choice(["4", "51", "37", "6011"]), 16, rng)
        bad_card = card[:-1] + str((int(card[-1]) + 1) % 10)
        phone = rng.choice(
            [f"(415) 555-01{i:02d}", f"+44 20 7946 0{i:03d}", f"212-555-01{i:02d}",
             f"+49 30 901820{i:02d}"]
        )  # fmt: skip
        ssn = f"{rng.randint(100, 665):03d}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
        bban = {"DE": 18, "GB": 18, "FR": 23, "NL": 14}
        country = rng.choice(list(bban))
        if country == "GB":
            body = "NWBK" + "".join(rng.choice(string.digits) for _ in range(14))
        elif country == "NL":
            body = "ABNA" + "".join(rng.choice(string.digits) for _ in range(10))
        else:
            body = "".join(rng.choice(string.digits) for _ in range(bban[country]))
        iban = _iban(country, body)
        bad_iban = iban[:2] + f"{(int(iban[2:4]) + 1) % 100:02d}" + iban[4:]
        ip = f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{i + 2}"
        out += [
            (rng.choice(["My email is {} - please update my account.",
                         "Send the invoice to {} today."]).format(email), "pii"),
            (f"You can reach me on {phone} after six.", "pii"),
            (f"Charge my card {_group4(card)}, expiry 09/28.", "pii"),
            (f"My social security number is {ssn}.", "pii"),
            (f"Please wire the deposit to IBAN {_group4(iban)}.", "pii"),
            (f"The customer's home router is at {ip}.", "pii"),
            (f"Order reference {bad_card} was shipped.", BENIGN),
            (f"Our internal batch id is {bad_iban} for the March run.", BENIGN),
            (f"Ticket #{rng.randint(10000, 99999)} was closed on 2024-0{i % 9 + 1}-1{i % 9}.",
             BENIGN),
            (f"Upgrade to version 2.{i}.{i + 3} before Friday; it costs ${i + 5}.99.", BENIGN),
        ]  # fmt: skip
        alnum = string.ascii_letters + string.digits
        akid = "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        tok = "".join(rng.choice(alnum) for _ in range(36))
        pw = "".join(rng.choice(alnum) for _ in range(9)) + rng.choice("!#%&") + str(i)
        out += [
            (f"export AWS_ACCESS_KEY_ID=AKIA{akid}", "secrets"),
            (f"Use my token ghp_{tok} to push.", "secrets"),
            (f"OPENAI_API_KEY=sk-proj-{tok[:28]}", "secrets"),
            (f"db_password = \"{pw}\"", "secrets"),
            (f"connect with postgresql://admin:{pw}@db.internal:5432/prod", "secrets"),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + tok + "\n-----END RSA PRIVATE KEY-----",
             "secrets"),
            (rng.choice(["Set password: <your password> in the config file.",
                         "Put API_KEY=${API_KEY} in the .env template.",
                         "The token is stored in Vault; never paste it into chat.",
                         "Your password must be at least 12 characters long."]), BENIGN),
        ]  # fmt: skip
    return out


@lru_cache(maxsize=1)
def load_items() -> tuple[Item, ...]:
    """Every item of the dataset, deterministic."""
    raw = yaml.safe_load(DATA_FILE.read_text())
    items = _expand(raw, raw["framings"], split=None)
    # Training-only additions: the split is fixed to train, so dev and test stay as they
    # were and measure the additions on the same items.
    items += _expand(raw.get("train_only") or {}, raw["framings"], split="train")
    for text, label in _pii_and_secret_items(random.Random(20261101)):
        items.append(Item(text, label, "prompt", split_of(f"gen:{text}"), text))
    return tuple(_with_also(items, raw.get("also_contains") or {}))


def _with_also(items: list[Item], also_contains: dict[str, list[str]]) -> list[Item]:
    """`items` with each `also_contains` label added to the items whose text is listed
    under it; a label outside LABELS or a text that is no item is an error."""
    extra: dict[str, list[str]] = {}
    for label, texts in also_contains.items():
        if label not in LABELS or label == BENIGN:
            raise ValueError(f"{DATA_FILE.name}: also_contains: unknown label {label!r}")
        for text in texts:
            extra.setdefault(text, []).append(label)
    known = {i.text for i in items}
    missing = [t for t in extra if t not in known]
    if missing:
        raise ValueError(f"{DATA_FILE.name}: also_contains: no item has the text {missing[0]!r}")
    return [replace(i, also=tuple(extra[i.text])) if i.text in extra else i for i in items]


def _expand(section: dict, framings: dict, split: str | None) -> list[Item]:
    """The items of one section's `classes` (seeds through the framings) and `sentences`;
    `split` None: each seed's or sentence's split by hash."""
    items: list[Item] = []
    for label, seeds in (section.get("classes") or {}).items():
        for seed in seeds:
            where = split or split_of(f"seed:{seed}")
            for f in framings["prompt"]:
                items.append(Item(f.format(s=seed), label, "prompt", where, seed))
            for f in framings["response"]:
                items.append(Item(f.format(s=seed), label, "response", where, seed))
    for label, sentences in (section.get("sentences") or {}).items():
        kind = "response" if label.endswith("_response") else "prompt"
        gold = BENIGN if label.startswith(BENIGN) else label
        for text in sentences:
            items.append(Item(text, gold, kind, split or split_of(f"sentence:{text}"), text))
    return items


def dataset_hash() -> str:
    return hashlib.sha256(DATA_FILE.read_bytes()).hexdigest()[:16]
