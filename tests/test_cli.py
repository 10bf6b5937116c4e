"""The command line (`llama-cython`, `python -m llama_cython`): every command's output against the
library's own calls, the one-line errors with exit code 2, progress, and the real entry points."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import llama_cython as llama
from llama_cython.cli import _common, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = [f"Row {i}: {'the quick brown fox' if i % 3 else 'a lazy dog, héllo wörld'} {'jumps ' * (i % 7)}"
         for i in range(100)]


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    return llama.models.model_path("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def minilm(minilm_path: Path):
    with llama.load_model(minilm_path) as model:
        yield model


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    """A small Parquet file: an id column (not 0..n-1, so a lost id shows) and a text column in
    several row groups."""
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": np.arange(1000, 1000 + len(TEXTS)), "text": TEXTS}), path,
                   row_group_size=30)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def stdin_lines(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8"))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("llama-cython: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- the parser -------------------------------------------------------------------------------

COMMANDS = ["info", "models", "tokenize", "count", "embed", "generate", "chat", "bench"]


def test_help_lists_every_command_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", out, flags=re.M), command
    for command in COMMANDS:
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "examples:" in out and "llama-cython" in out, command


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith(f"llama-cython {llama.__version__} (llama.cpp ")


def test_global_options_go_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--threads", "1", "--n-ctx", "256", "-v", "info", "m"])
    after = parser.parse_args(["info", "m", "--threads", "1", "--n-ctx", "256", "-v"])
    neither = parser.parse_args(["info", "m"])
    for args in (before, after):
        assert (args.threads, args.n_ctx, args.verbose, args.gpu_layers) == (1, 256, 1, -1)
    assert (neither.threads, neither.n_ctx, neither.verbose, neither.progress) == (None, None, 0, True)


def test_sampling_flags_are_the_generate_keywords() -> None:
    args = build_parser().parse_args(
        ["generate", "m", "p", "--temperature", "0", "--top-k", "5", "--top-p", "0.5", "--min-p", "0.1",
         "--repeat-penalty", "1.1", "--seed", "7", "--ignore-eos", "--stop", "a", "--stop", "b"])
    assert _common.sampling_options(args) == {
        "temperature": 0.0, "top_k": 5, "top_p": 0.5, "min_p": 0.1, "repetition_penalty": 1.1,
        "seed": 7, "ignore_eos": True}
    assert args.stop == ["a", "b"]
    assert _common.sampling_options(build_parser().parse_args(["generate", "m", "p"])) == {}


# -- models, info -----------------------------------------------------------------------------

def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str], smol_path: Path) -> None:
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert set(rows) == set(llama.models.KNOWN_MODELS)
    assert rows["smollm2-135m-instruct"]["cached"] is True and rows["smollm2-135m-instruct"]["default"]
    code, out, _ = run(capsys, "models")
    assert code == 0 and all(name in out for name in rows)


def test_info_json_matches_the_model(capsys: pytest.CaptureFixture[str], smol, smol_path: Path) -> None:
    code, out, _ = run(capsys, "info", smol_path, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["architecture"] == smol.architecture == "llama"
    for key in ("n_params", "size", "n_ctx_train", "n_embd", "n_layer", "n_vocab", "description"):
        assert info[key] == getattr(smol, key), key
    assert info["vocab_type"] == smol.vocab.type and info["chat_template"] is True
    assert info["embedding_model"] is False
    assert set(info["metadata"]) < set(smol.metadata)
    # a registry name gives the same file; --metadata lists every key
    code, out, _ = run(capsys, "info", "smollm2-135m-instruct", "--json", "--metadata")
    assert json.loads(out)["metadata"] == dict(sorted(smol.metadata.items()))


def test_info_text(capsys: pytest.CaptureFixture[str], minilm_path: Path) -> None:
    code, out, _ = run(capsys, "info", minilm_path)
    assert code == 0
    assert re.search(r"^architecture\s+bert$", out, flags=re.M)
    assert re.search(r"^embedding model\s+yes \(pooling", out, flags=re.M)
    assert re.search(r"^chat template\s+no$", out, flags=re.M)


# -- tokenize, count --------------------------------------------------------------------------

def test_tokenize_text_equals_model_tokenize(capsys: pytest.CaptureFixture[str], smol,
                                             smol_path: Path) -> None:
    text = "Hello world, héllo wörld <|im_start|>"
    code, out, _ = run(capsys, "tokenize", smol_path, text, "--pieces")
    assert code == 0
    record = json.loads(out)
    assert record["tokens"] == smol.tokenize(text).tolist()
    assert "".join(record["pieces"]) == text
    code, out, _ = run(capsys, "tokenize", smol_path, text, "--parse-special", "--no-special")
    assert json.loads(out)["tokens"] == smol.tokenize(text, add_special=False, parse_special=True).tolist()


def test_tokenize_stdin_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, smol,
                              smol_path: Path) -> None:
    stdin_lines(monkeypatch, "first line\nsecond, héllo\n\n")
    code, out, _ = run(capsys, "tokenize", smol_path)
    assert code == 0
    got = [json.loads(line)["tokens"] for line in out.splitlines()]
    assert got == [smol.tokenize(t).tolist() for t in ("first line", "second, héllo", "")]


def test_tokenize_file_to_parquet_and_jsonl(capsys: pytest.CaptureFixture[str], smol, smol_path: Path,
                                            docs: Path, tmp_path: Path) -> None:
    expected = smol.tokenize_batch(TEXTS)
    out_path = tmp_path / "tokens.parquet"
    code, _, err = run(capsys, "tokenize", smol_path, "-i", docs, "--id-column", "id", "-o", out_path,
                       "--batch-rows", "17")
    assert code == 0 and "100 rows" in err
    table = pq.read_table(out_path)
    assert table.column("id").to_pylist() == list(range(1000, 1100))
    assert table.column("tokens").to_pylist() == [list(expected[i]) for i in range(len(TEXTS))]
    assert table.column("n_tokens").to_pylist() == np.diff(expected.offsets).tolist()
    code, out, _ = run(capsys, "tokenize", smol_path, "-i", docs, "--id-column", "id")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == list(range(1000, 1100))
    assert [r["tokens"] for r in rows] == [list(expected[i]) for i in range(len(TEXTS))]


def test_count_equals_count_tokens(capsys: pytest.CaptureFixture[str], smol, smol_path: Path, docs: Path,
                                   tmp_path: Path) -> None:
    counts = smol.count_tokens(TEXTS)
    code, out, _ = run(capsys, "count", smol_path, "Hello world")
    assert code == 0 and int(out) == smol.count_tokens("Hello world")
    code, out, _ = run(capsys, "count", smol_path, "-i", docs, "--json", "--chunk-rows", "33")
    summary = json.loads(out)
    assert (summary["rows"], summary["tokens"], summary["max"]) == (100, int(counts.sum()), int(counts.max()))
    assert summary["mean"] == pytest.approx(counts.mean())
    out_path = tmp_path / "counts.parquet"
    code, _, err = run(capsys, "count", smol_path, "-i", docs, "--id-column", "id", "-o", out_path)
    assert code == 0 and f"{int(counts.sum()):,} tokens" in err
    table = pq.read_table(out_path)
    assert table.column("id").to_pylist() == list(range(1000, 1100))
    assert table.column("n_tokens").to_pylist() == counts.tolist()


def test_count_stdin_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, smol,
                           smol_path: Path) -> None:
    stdin_lines(monkeypatch, "one\ntwo words\n")
    code, out, _ = run(capsys, "count", smol_path, "--no-special", "-o", "-")
    assert code == 0
    assert [json.loads(line)["n_tokens"] for line in out.splitlines()] == \
        smol.count_tokens(["one", "two words"], add_special=False).tolist()


# -- embed ------------------------------------------------------------------------------------

def test_embed_parquet_equals_get_embeddings_batch(capsys: pytest.CaptureFixture[str], minilm,
                                                   minilm_path: Path, docs: Path, tmp_path: Path) -> None:
    with minilm.new_context(embeddings=True, n_threads=1) as ctx:
        expected = ctx.get_embeddings_batch(TEXTS)
    out_path = tmp_path / "vectors.parquet"
    code, _, err = run(capsys, "--threads", "1", "embed", minilm_path, docs, "--id-column", "id",
                       "-o", out_path)
    assert code == 0, err
    assert "embedded 100 rows" in err
    table = pq.read_table(out_path)
    assert table.column("id").to_pylist() == list(range(1000, 1100))
    got = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-5

    # the output exists: refused (the flag named), then replaced with --overwrite; .npy output
    code, _, err = run(capsys, "embed", minilm_path, docs, "-o", out_path)
    assert code == 2 and "--overwrite" in one_error_line(err)
    npy = tmp_path / "vectors.npy"
    code, _, err = run(capsys, "--threads", "1", "embed", minilm_path, docs, "-o", npy, "--chunk-rows", "40",
                       "--no-normalize")
    assert code == 0, err
    with minilm.new_context(embeddings=True, n_threads=1) as ctx:
        raw = np.concatenate([ctx.get_embeddings_batch(TEXTS[i:i + 40], normalize=False)
                              for i in range(0, 100, 40)])
    assert float(np.abs(np.load(npy) - raw).max()) <= 1e-5


def test_embed_interrupted_then_resumed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                        minilm, minilm_path: Path, docs: Path, tmp_path: Path) -> None:
    """Ctrl-C during embed exits 130 and says how to continue; the same command then continues
    after the finished chunks and the output equals an uninterrupted run's."""
    with minilm.new_context(embeddings=True, n_threads=1) as ctx:
        expected = np.concatenate([ctx.get_embeddings_batch(TEXTS[i:i + 32]) for i in range(0, 100, 32)])
    real = _common.Progress.report

    def interrupt_late(self: _common.Progress, done: int, total: int | None = None) -> None:
        if done >= 70:
            raise KeyboardInterrupt
        real(self, done, total)

    out_path = tmp_path / "vectors.parquet"
    argv = ["--threads", "1", "embed", minilm_path, docs, "--id-column", "id", "-o", out_path,
            "--chunk-rows", "32"]
    monkeypatch.setattr(_common.Progress, "report", interrupt_late)
    code, _, err = run(capsys, *argv)
    assert code == 130 and "run the same command again" in err and "Traceback" not in err
    assert not out_path.exists()
    monkeypatch.setattr(_common.Progress, "report", real)
    code, _, err = run(capsys, *argv)
    assert code == 0 and "2 chunks resumed" in err
    table = pq.read_table(out_path)
    assert table.column("id").to_pylist() == list(range(1000, 1100))
    got = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert float(np.abs(got - expected).max()) <= 1e-5


# -- generate, chat ---------------------------------------------------------------------------

def test_generate_prompt_greedy_equals_generate(capsys: pytest.CaptureFixture[str], smol,
                                                smol_path: Path) -> None:
    prompt = "The capital of France is"
    with smol.new_context(n_threads=1, n_ctx=512) as ctx:
        expected = ctx.generate(prompt, max_tokens=16, temperature=0)
    code, out, err = run(capsys, "-t", "1", "--n-ctx", "512", "generate", smol_path, prompt,
                         "--temperature", "0", "-n", "16", "--stats")
    assert code == 0
    assert out == expected + "\n"
    assert "generated" in err


def test_generate_stdin_prompt_with_stop(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                         smol, smol_path: Path) -> None:
    prompt = "1, 2, 3, 4,"
    with smol.new_context(n_threads=1, n_ctx=512) as ctx:
        expected = ctx.generate(prompt, max_tokens=16, temperature=0, stop=[" 7"])
    stdin_lines(monkeypatch, prompt)
    code, out, _ = run(capsys, "generate", smol_path, "-t", "1", "--n-ctx", "512", "--temperature", "0",
                       "-n", "16", "--stop", " 7")
    assert code == 0 and out == expected + "\n" and " 7" not in out


def test_generate_file_equals_generate_batch(capsys: pytest.CaptureFixture[str], smol, smol_path: Path,
                                             tmp_path: Path) -> None:
    prompts = ["The capital of France is", "1, 2, 3,", "Once upon a time", "def add(a, b):", "Hello"]
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"key": f"k{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    with smol.new_context(n_threads=1, n_ctx=1024, n_parallel=4) as ctx:
        expected = ctx.generate_batch(prompts, max_tokens=8, temperature=0)
    out_path = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "-t", "1", "--n-ctx", "1024", "generate", smol_path, "-i", src,
                       "--id-column", "key", "-o", out_path, "--n-parallel", "4", "-n", "8",
                       "--temperature", "0")
    assert code == 0, err
    rows = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(len(prompts))]
    assert [r["text"] for r in rows] == expected


def test_chat_over_piped_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, smol,
                               smol_path: Path) -> None:
    turns = ["Hi!", "Name a colour."]
    messages: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
    replies = []
    with smol.new_context(n_threads=1, n_ctx=1024) as ctx:
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            reply = ctx.chat(messages, max_tokens=10, temperature=0).content
            messages.append({"role": "assistant", "content": reply})
            replies.append(reply)
    stdin_lines(monkeypatch, "Hi!\n\nName a colour.\n/exit\nignored\n")     # a blank line is no turn
    code, out, _ = run(capsys, "chat", smol_path, "-t", "1", "--n-ctx", "1024", "--system", "Be brief.",
                       "-n", "10", "--temperature", "0")
    assert code == 0
    assert out == "".join(r + "\n" for r in replies)


def test_chat_ctrl_c_stops_the_reply_and_at_the_prompt_exits(
        monkeypatch: pytest.MonkeyPatch, smol_path: Path) -> None:
    """Ctrl-C during a reply ends that reply (what was shown is kept) and the chat goes on; Ctrl-C
    at the prompt ends the chat with exit code 0."""

    class Stdin:
        def __init__(self) -> None:
            self.lines = ["Tell me a long story about a dragon.\n", "Hi!\n"]

        def isatty(self) -> bool:
            return False

        def readline(self) -> str:
            if self.lines:
                return self.lines.pop(0)
            raise KeyboardInterrupt

    class Stdout(io.StringIO):
        """Ctrl-C arrives while the second piece of the first reply is shown."""

        pieces = 0

        def write(self, s: str) -> int:
            if s.strip():
                self.pieces += 1
                if self.pieces == 2:
                    raise KeyboardInterrupt
            return super().write(s)

    stdout, stderr = Stdout(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", Stdin())
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    code = main(["chat", str(smol_path), "-t", "1", "--n-ctx", "512", "-n", "12", "--temperature", "0"])
    assert code == 0
    assert "reply stopped" in stderr.getvalue() and "Traceback" not in stderr.getvalue()
    first, second = stdout.getvalue().split("\n")[:2]
    assert first and second        # the first reply cut after one piece, the second whole
    assert stdout.pieces > 2


# -- bench ------------------------------------------------------------------------------------

def test_bench_generative_and_embedding(capsys: pytest.CaptureFixture[str], smol_path: Path,
                                        minilm_path: Path) -> None:
    code, out, _ = run(capsys, "-t", "1", "bench", smol_path, "--json", "--texts", "16",
                       "--prompt-tokens", "32", "--gen-tokens", "8")
    assert code == 0
    report = json.loads(out)
    assert report["model"]["kind"] == "generative"
    assert report["system"]["cpu"] == llama.system_info().cpu_model
    results = report["results"]
    assert results["tokenize_batch"]["tokens_per_second"] > 0
    assert results["prompt"]["tokens_per_second"] > 0 and results["generation"]["tokens"] == 8
    assert report["settings"]["n_threads"] == 1
    code, out, _ = run(capsys, "bench", minilm_path, "--texts", "16", "--threads", "1")
    assert code == 0
    assert re.search(r"^embeddings\s+[\d,.]+ texts/s", out, flags=re.M)
    assert "system" in out and "settings" in out


# -- errors -----------------------------------------------------------------------------------

@pytest.fixture()
def corrupt_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    return path


ERROR_CASES = {
    "missing file": (["info", "{tmp}/nothing.gguf"], "not found"),
    "corrupt gguf": (["info", "{corrupt}"], "corrupt.gguf"),
    "junk file": (["tokenize", "{junk}", "x"], "junk.gguf"),
    "unknown registry name": (["info", "no-such-model"], "neither a file nor a registry name"),
    "missing column": (["count", "{smol}", "-i", "{docs}", "-c", "nope"], "no column 'nope'"),
    "missing input": (["count", "{smol}", "-i", "{tmp}/none.parquet"], "none.parquet"),
    "bad option value": (["generate", "{smol}", "hi", "--temperature", "-1"], "temperature"),
    "bad output suffix": (["embed", "{smol}", "{docs}", "-o", "{tmp}/x.txt"], ".parquet"),
    "text and input": (["tokenize", "{smol}", "x", "-i", "{docs}"], "either TEXT or --input"),
    "no chat template": (["chat", "{minilm}"], "no chat template"),
    "missing text": (["tokenize", "{smol}", "-i", "{tmp}/nulls.jsonl"], "nulls.jsonl: row 1 is missing"),
    "output exists": (["count", "{smol}", "-i", "{docs}", "-o", "{docs}"], "--overwrite"),
    # inputs that are not what their name says: pyarrow's and the readers' errors, one line
    "not parquet": (["count", "{smol}", "-i", "{tmp}/junk.parquet"], "junk.parquet: Parquet magic bytes"),
    "csv not utf-8": (["count", "{smol}", "-i", "{tmp}/bad.csv"], "bad.csv: line 3 is not valid UTF-8"),
    "jsonl not utf-8": (["embed", "{minilm}", "{tmp}/bad.jsonl", "-o", "{tmp}/v.npy"],
                        "bad.jsonl: line 2 is not valid UTF-8"),
    # with --nulls skip the row after a null is named by its own number
    "bad text after a null": (["count", "{smol}", "-i", "{tmp}/skip.jsonl", "--nulls", "skip"],
                              "skip.jsonl: row 3 is not valid text"),
    "bad text after a null, -o": (["count", "{smol}", "-i", "{tmp}/skip.jsonl", "--nulls", "skip",
                                   "-o", "{tmp}/n.jsonl"], "skip.jsonl: row 3 is not valid text"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line_with_exit_code_2(case: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              corrupt_gguf: Path, docs: Path, smol_path: Path,
                                              minilm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "junk.gguf").write_bytes(b"not a model at all")
    (tmp_path / "nulls.jsonl").write_text('{"text": "a"}\n{"text": null}\n')
    (tmp_path / "junk.parquet").write_bytes(b"not a parquet file")
    (tmp_path / "bad.csv").write_bytes(b"text\nfine\nbad \xff\n")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    (tmp_path / "skip.jsonl").write_text('{"text": "a"}\n{"text": null}\n{"text": "b"}\n'
                                         '{"text": "\\ud800"}\n')
    stdin_lines(monkeypatch, "")
    argv, needle = ERROR_CASES[case]
    names = {"tmp": tmp_path, "corrupt": corrupt_gguf, "junk": tmp_path / "junk.gguf", "docs": docs,
             "smol": smol_path, "minilm": minilm_path}
    code, _, err = run(capsys, *(a.format(**names) for a in argv))
    assert code == 2
    assert needle in one_error_line(err)


def test_arrow_and_csv_errors_are_one_line(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch, smol_path: Path,
                                          docs: Path) -> None:
    """pyarrow's errors (ArrowNotImplementedError is no ValueError) and csv.Error are the
    input's fault: one line, exit 2."""
    from llama_cython.cli import info

    def lzo(*args: object, **kwargs: object) -> None:
        raise pa.lib.ArrowNotImplementedError("Support for codec 'lzo' not built")

    monkeypatch.setattr(pq, "ParquetFile", lzo)
    code, _, err = run(capsys, "count", smol_path, "-i", docs)
    assert code == 2
    assert "docs.parquet: Support for codec 'lzo' not built" in one_error_line(err)
    for exc in (pa.lib.ArrowNotImplementedError("not built"), pa.lib.ArrowException("arrow"),
                csv.Error("line contains NUL")):
        def fail(args: object, exc: Exception = exc) -> int:
            raise exc

        monkeypatch.setattr(info, "run_models", fail)
        code, _, err = run(capsys, "models")
        assert code == 2 and str(exc) in one_error_line(err)
    monkeypatch.setattr(info, "run_models", lambda args: 1 // 0)       # a bug: its traceback
    with pytest.raises(ZeroDivisionError):
        main(["models"])


def test_count_output_help_names_what_it_writes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "count", "--help")
    assert code == 0
    text = " ".join(out.split())
    helped = re.search(r"-o FILE, --output FILE (.*?) --no-special", text)
    assert helped is not None and ".csv" not in helped.group(1), text
    assert ".parquet or .jsonl" in helped.group(1)


def test_ctrl_c_on_stdin_input_gives_no_resume_hint(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch, minilm_path: Path,
                                                    tmp_path: Path) -> None:
    """A job that reads stdin cannot be resumed: Ctrl-C does not say to run it again to continue."""
    def interrupt(self: _common.Progress, done: int, total: int | None = None) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(_common.Progress, "report", interrupt)
    stdin_lines(monkeypatch, "".join(f"line {i}\n" for i in range(6)))
    out_path = tmp_path / "v.npy"
    code, _, err = run(capsys, "--threads", "1", "embed", minilm_path, "-", "-o", out_path,
                       "--chunk-rows", "2")
    assert code == 130 and "run the same command again" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["info"], ["generate", "m", "p", "--threads", "0"],
                                  ["--n-ctx", "abc", "info", "m"], ["bench", "m", "--texts", "-3"],
                                  ["nosuchcommand"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and "usage:" in err and "Traceback" not in err


def test_traceback_on_request(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                              tmp_path: Path) -> None:
    code, _, err = run(capsys, "info", tmp_path / "nothing.gguf", "--traceback")
    assert code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("llama-cython: error:")
    monkeypatch.setenv("LLAMA_CYTHON_TRACEBACK", "1")
    code, _, err = run(capsys, "info", tmp_path / "nothing.gguf")
    assert code == 2 and "Traceback" in err


def test_missing_extra_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   smol_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "lines.txt"
    src.write_text("a\nb\n")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code, _, err = run(capsys, "tokenize", smol_path, "-i", src, "-o", tmp_path / "t.parquet")
    assert code == 2
    assert "pip install 'llama_cython[arrow]'" in one_error_line(err)
    assert not (tmp_path / "t.parquet").exists()


def test_ctrl_c_exits_130(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_cython.cli import info

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run_models", interrupted)
    code, _, err = run(capsys, "models")
    assert code == 130 and err.strip() == "llama-cython: interrupted"


def test_verbose_shows_llama_cpp_log(capsys: pytest.CaptureFixture[str], smol_path: Path) -> None:
    code, _, err = run(capsys, "-v", "count", smol_path, "hello")
    assert code == 0 and "llama_model_loader" in err
    code, _, err = run(capsys, "count", smol_path, "hello")
    assert code == 0 and err == ""


# -- progress ---------------------------------------------------------------------------------

def test_progress_line_without_tqdm_only_on_a_terminal(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)     # no tqdm: the built-in line, never a crash
    with _common.Progress(10, "embed") as bar:          # stderr is captured: not a terminal
        bar.update(4)
        bar.report(10, 10)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(_common, "_stderr_is_terminal", lambda: True)
    with _common.Progress(None, "embed") as bar:
        bar.report(5, 10)
        bar.report(10, 10)
    err = capsys.readouterr().err
    assert "\rembed: 10/10 (100%) rows" in err and err.endswith("\n")
    with _common.Progress(10, "embed", enabled=False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_progress_uses_tqdm_when_installed(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    monkeypatch.setattr(_common, "_stderr_is_terminal", lambda: True)
    with _common.Progress(None, "count") as bar:
        bar.report(3, 8)        # a resumed job starts past 0
        bar.report(8, 8)
        assert bar._bar is not None and bar._bar.n == 8 and bar._bar.total == 8
    assert "count" in capsys.readouterr().err


# -- the real entry points ------------------------------------------------------------------

def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_python_dash_m_and_the_console_script() -> None:
    proc = subprocess.run([sys.executable, "-m", "llama_cython", "--help"], capture_output=True, text=True,
                          timeout=120, env=_env())
    assert proc.returncode == 0 and "usage: llama-cython" in proc.stdout
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[project.scripts]\nllama-cython = "llama_cython.cli.main:entry"\n' in pyproject
    from llama_cython.cli.main import entry

    assert callable(entry)
    installed = Path(sys.executable).parent / "llama-cython"
    if installed.exists():    # an install made after the script was declared
        proc = subprocess.run([str(installed), "--version"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("llama-cython ")


def test_the_cli_imports_no_optional_extra() -> None:
    """pyarrow, pandas and tqdm are extras: the CLI imports them only when a command needs them."""
    code = ("import sys; from llama_cython.cli import main; main(['--help']); "
            "print([m for m in ('pyarrow', 'pandas', 'tqdm') if m in sys.modules], file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_env())
    assert proc.returncode == 0 and proc.stderr.strip() == "[]", proc.stderr


def test_chat_in_a_subprocess_with_piped_stdin(smol, smol_path: Path) -> None:
    messages: list[dict[str, str]] = []
    replies = []
    with smol.new_context(n_threads=1, n_ctx=1024) as ctx:
        for turn in ("Hi!", "Name a colour."):
            messages.append({"role": "user", "content": turn})
            reply = ctx.chat(messages, max_tokens=10, temperature=0).content
            messages.append({"role": "assistant", "content": reply})
            replies.append(reply)
    proc = subprocess.run(
        [sys.executable, "-m", "llama_cython", "chat", str(smol_path), "-t", "1", "--n-ctx", "1024",
         "-n", "10", "--temperature", "0"],
        input="Hi!\nName a colour.\n", capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(r + "\n" for r in replies)
    assert proc.stderr == ""


def test_broken_pipe_exits_quietly(smol_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "many.txt"
    src.write_text("".join(f"line number {i} with a few more words in it\n" for i in range(5000)))
    err = tmp_path / "err.txt"
    script = (f"{sys.executable} -m llama_cython tokenize {smol_path} -i {src} 2>{err} | head -1; "
              "echo ${PIPESTATUS[0]}")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=_env())
    first, code = proc.stdout.splitlines()
    assert json.loads(first)["tokens"]
    assert code == "141"
    assert err.read_text() == ""


# -- the docs ---------------------------------------------------------------------------------

def test_every_command_in_the_cli_page_parses() -> None:
    """The `$ ...` lines of docs/cli.md are commands this parser accepts."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    lines = [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]
    commands = [part.strip() for line in lines for part in line.split(" | ")
                if part.strip().startswith("llama-cython ")]
    assert len(commands) >= 15
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])
