"""Long texts cut into windows of sentences, so the classifier reads every part of them.

Why: the classifier reads one mean-pooled embedding per text, cut at the encoder's
max_tokens (256). Read whole, a harmful request inside a longer benign text is diluted —
the 31 held-out harmful prompts (tests/governance/test_harm_classifier.py) behind or
before two benign chat answers were flagged 0 and 1 times — and one past the 256th token
is not read at all. Read in windows of at most WINDOW_CHARS characters (the text's
verdict: its most harmful window's), the same texts are flagged 25 times each, and no
part of a text goes unread. Not all: a request packed into one window with benign
sentences is still diluted (with one answer of padding before, in the middle or after:
23 / 14 / 22 of 31 windowed, against 1 / 1 / 7 whole).

Why 200: every labeled item is shorter (dev and test read as before), and it flagged none
of 600 benign chat-corpus answers (81 % of which are longer), where 160 flagged 6 and 120
flagged 13: windows much shorter than a request tear sentences from the context that makes
them benign.
"""

from __future__ import annotations

import re

WINDOW_CHARS = 200
# A sentence ends at . ! or ? followed by white space; a line break ends one too.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


def windows(text: str, size: int = WINDOW_CHARS) -> list[str]:
    """`text` as consecutive windows of at most `size` characters: whole sentences packed in
    order (joined by one space), a longer sentence cut at word boundaries (a longer word at
    `size`). A text of at most `size` characters is its own single window, unchanged; one
    with nothing but white space too."""
    if len(text) <= size:
        return [text]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        while len(sentence) > size:
            cut = sentence.rfind(" ", 0, size + 1)
            cut = cut if cut > 0 else size
            pieces.append(sentence[:cut].rstrip())
            sentence = sentence[cut:].lstrip()
        if sentence:
            pieces.append(sentence)
    out: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > size:
            out.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        out.append(current)
    return out or [text]
