"""The documentation's examples run: README's Python blocks and the modules' doctests."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import llama_cython as llama
import llama_cython.errors
import llama_cython.system
import llama_cython.template_sandbox
import llama_cython.token_batch
import llama_cython.token_embeddings
import llama_cython.vocab

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def _is_notebook(path: Path) -> bool:
    import render_notebook

    return render_notebook.is_notebook(path.read_text(encoding="utf-8"))


ALL_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = [d for d in ALL_DOCS if not _is_notebook(d)]
NOTEBOOKS = [d for d in ALL_DOCS if _is_notebook(d)]
BLOCKS = [(doc, i) for doc in DOCS for i in range(len(_python_blocks(doc)))]


@pytest.mark.parametrize(("doc", "index"), BLOCKS, ids=[f"{d.name}-{i}" for d, i in BLOCKS])
def test_doc_python_blocks_run(doc: Path, index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = _python_blocks(doc)[index]
    # run as a script runs it: examples that start worker processes with spawn guard their
    # work with `if __name__ == "__main__":` (the workers import the real __main__, not this)
    exec(compile(code, f"{doc.name}[python block {index}]", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert out.strip(), "the example printed nothing"


@pytest.mark.parametrize("doc", NOTEBOOKS, ids=[d.name for d in NOTEBOOKS])
def test_notebook_pages_print_what_they_show(doc: Path) -> None:
    """Notebook pages run top to bottom in one namespace; every output block is what its Python
    block prints now (scripts/render_notebook.py rewrites them)."""
    import render_notebook

    text = doc.read_text(encoding="utf-8")
    results = render_notebook.run_blocks(text, doc.name)
    assert len(results) == len(_python_blocks(doc)), "every Python block needs an output block"
    for i, (_, recorded, printed) in enumerate(results):
        assert printed == recorded, f"{doc.name} block {i}: shows\n{recorded}\nbut prints\n{printed}"


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["python3 scripts/demo.py", "python3 scripts/test.py"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 scripts/test.py" in ci


@pytest.mark.parametrize(
    "module",
    [llama_cython.errors, llama, llama_cython.system, llama_cython.template_sandbox, llama_cython.token_batch,
     llama_cython.token_embeddings, llama_cython.vocab],
)
def test_module_doctests(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.failed == 0
