"""The fixed corpus of the embedding benchmark: 2,000 sentences of 5 to 60 words.

Deterministic: a seeded ``random.Random`` walks a small hand-written grammar over the word
lists below (English mostly, with a few accented loanwords, names, numbers and codes), so
every run and every machine embeds exactly the same texts. The length of each sentence is
drawn uniformly from ``min_words..max_words`` and the clauses are cut to it exactly; commas,
semicolons, colons, parentheses and quotes are sprinkled in, and a sentence ends with
``.``, ``?`` or ``!``.

    from benchmarks.corpus import make_corpus      # or: sys.path + ``import corpus``
    texts = make_corpus()                           # list[str], 2,000 sentences

    python benchmarks/corpus.py > texts.txt         # one per line; the digest goes to stderr
"""

from __future__ import annotations

import hashlib
import random
import sys

N_TEXTS = 2000
MIN_WORDS = 5
MAX_WORDS = 60
SEED = 20261201

_DETERMINERS = (
    "the", "a", "this", "that", "every", "each", "some", "another", "our", "their", "her", "his",
    "its", "my", "your", "no", "one", "any",
)
_ADJECTIVES = (
    "small", "large", "quiet", "bright", "old", "new", "quick", "slow", "heavy", "light", "careful",
    "simple", "strange", "early", "late", "warm", "cold", "green", "blue", "red", "narrow", "wide",
    "busy", "empty", "famous", "hidden", "local", "public", "private", "modern", "ancient", "gentle",
    "rough", "smooth", "tired", "curious", "honest", "clever", "patient", "distant", "nearby",
    "wooden", "golden", "broken", "final", "useful", "rare", "common", "sudden", "steady", "fragile",
    "digital", "natural", "political", "economic", "scientific", "medical", "musical", "rural",
    "urban", "northern", "southern", "naïve", "spare", "crowded", "sparkling", "muddy", "frozen",
)
_NOUNS = (
    "river", "mountain", "village", "city", "garden", "library", "museum", "station", "bridge",
    "market", "kitchen", "window", "table", "letter", "report", "engine", "computer", "network",
    "server", "database", "teacher", "student", "doctor", "farmer", "engineer", "artist", "writer",
    "child", "neighbour", "committee", "government", "company", "customer", "question", "answer",
    "problem", "solution", "experiment", "theory", "history", "language", "story", "song", "film",
    "painting", "photograph", "recipe", "journey", "storm", "forest", "ocean", "island", "desert",
    "valley", "harbour", "airport", "hospital", "school", "university", "budget", "contract",
    "meeting", "decision", "policy", "election", "festival", "holiday", "weekend", "morning",
    "evening", "winter", "summer", "season", "planet", "telescope", "microscope", "battery", "sensor",
    "algorithm", "model", "dataset", "benchmark", "bicycle", "train", "ship", "truck", "road",
    "path", "door", "key", "clock", "coffee", "tea", "bread", "cheese", "apple", "orange", "café",
    "résumé", "piano", "violin", "guitar", "camera", "newspaper", "magazine", "novel", "poem",
    "lecture", "concert", "recording", "signal", "message", "password", "invoice", "warehouse",
    "factory", "harvest", "vineyard", "glacier", "volcano", "earthquake", "lighthouse", "tunnel",
)
_NAMES = (
    "Alice", "Bob", "Carmen", "Daniel", "Elena", "Farid", "Grace", "Hiroshi", "Ingrid", "Jamal",
    "Kofi", "Lucía", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tomás",
    "London", "Paris", "Nairobi", "Lisbon", "Kyoto", "Zürich", "Montréal", "Oslo", "Lima", "Cairo",
)
_VERBS = (
    "found", "built", "opened", "closed", "painted", "repaired", "measured", "tested", "described",
    "visited", "crossed", "followed", "watched", "carried", "delivered", "translated", "recorded",
    "published", "reviewed", "approved", "rejected", "ignored", "explained", "questioned",
    "remembered", "forgot", "borrowed", "returned", "moved", "cleaned", "designed", "planned",
    "cancelled", "postponed", "improved", "replaced", "discovered", "protected", "shared",
    "collected", "sorted", "counted", "compared", "trained", "deployed", "monitored", "sent",
    "received", "wrote", "read", "sang", "drew", "cooked", "ate", "sold", "bought", "lost", "won",
)
_ADVERBS = (
    "quickly", "slowly", "carefully", "quietly", "suddenly", "finally", "rarely", "often",
    "almost", "nearly", "perhaps", "certainly", "yesterday", "today", "again", "together",
    "eventually", "probably", "really", "barely", "gladly", "openly", "twice", "soon",
)
_PREPOSITIONS = (
    "in", "on", "near", "behind", "under", "over", "beside", "across", "through", "after",
    "before", "during", "without", "with", "for", "from", "towards", "inside", "outside", "around",
)
_CONJUNCTIONS = ("and", "but", "because", "while", "although", "so", "until", "since", "or", "when")
_OPENERS = (
    "However", "Meanwhile", "Later", "In fact", "Of course", "At first", "Still", "Honestly",
    "According to the report", "For example", "In the end", "Surprisingly",
)


def _noun_phrase(rng: random.Random) -> list[str]:
    r = rng.random()
    if r < 0.12:
        return [rng.choice(_NAMES)]
    if r < 0.17:
        return [str(rng.randint(2, 9999)), rng.choice(_NOUNS) + "s"]
    words = [rng.choice(_DETERMINERS)]
    if rng.random() < 0.55:
        words.append(rng.choice(_ADJECTIVES))
    if rng.random() < 0.12:
        words.append(rng.choice(_ADJECTIVES))
    words.append(rng.choice(_NOUNS))
    return words


def _clause(rng: random.Random) -> list[str]:
    words = _noun_phrase(rng)
    if rng.random() < 0.25:
        words.append(rng.choice(_ADVERBS))
    words.append(rng.choice(_VERBS))
    words += _noun_phrase(rng)
    while rng.random() < 0.45:
        words.append(rng.choice(_PREPOSITIONS))
        words += _noun_phrase(rng)
    if rng.random() < 0.2:
        words.append(rng.choice(_ADVERBS))
    return words


def _decorate(rng: random.Random, words: list[str]) -> str:
    """Join words into a sentence with some punctuation; the word count stays the same."""
    n = len(words)
    out = list(words)
    # commas / semicolons / colons after some words (never the last one)
    for i in range(n - 1):
        r = rng.random()
        if r < 0.045:
            out[i] += ","
        elif r < 0.05:
            out[i] += ";"
        elif r < 0.053:
            out[i] += ":"
    # a parenthesis or a quotation around a short span
    if n >= 8 and rng.random() < 0.15:
        i = rng.randrange(1, n - 3)
        j = i + rng.randint(1, 3)
        open_, close = rng.choice((("(", ")"), ('"', '"'), ("'", "'")))
        out[i] = open_ + out[i]
        out[j] = out[j].rstrip(",;") + close
    first = out[0]
    out[0] = first[:1].upper() + first[1:]
    end = rng.choices((".", "?", "!", "...", ":)"), weights=(80, 11, 6, 2, 1))[0]
    return " ".join(out) + end


def _sentence(rng: random.Random, min_words: int, max_words: int) -> str:
    target = rng.randint(min_words, max_words)
    words: list[str] = []
    if rng.random() < 0.15:
        words += (rng.choice(_OPENERS) + ",").split()
    words += _clause(rng)
    while len(words) < target:
        words.append(rng.choice(_CONJUNCTIONS))
        words += _clause(rng)
    return _decorate(rng, words[:target])


def make_corpus(n: int = N_TEXTS, seed: int = SEED, min_words: int = MIN_WORDS,
                max_words: int = MAX_WORDS) -> list[str]:
    """``n`` deterministic sentences of ``min_words..max_words`` words each."""
    if not 1 <= min_words <= max_words:
        raise ValueError("need 1 <= min_words <= max_words")
    rng = random.Random(seed)
    return [_sentence(rng, min_words, max_words) for _ in range(n)]


def digest(texts: list[str]) -> str:
    """sha256 of the texts joined by newlines: tells whether two runs embedded the same corpus."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


if __name__ == "__main__":
    texts = make_corpus()
    sys.stdout.write("\n".join(texts) + "\n")
    words = [len(t.split()) for t in texts]
    print(f"{len(texts)} texts, {min(words)}-{max(words)} words (mean {sum(words) / len(words):.1f}), "
          f"sha256 {digest(texts)}", file=sys.stderr)
