"""The offline calibration corpus: BIG-bench's Wikipedia paragraphs, deduplicated, named by their sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from jdna.calibration import calibration_identity, read_calibration_text
from jdna.calibration_corpus import build_corpus, detokenize, passage_of
from jdna.errors import JdnaError
from tests.cli import run
from tests.conftest import WORDS

pytestmark = pytest.mark.usefixtures("one_thread")


def _passage(i: int) -> str:
    words = [WORDS[(i * 11 + j * 5) % len(WORDS)] for j in range(60)]
    return " ".join(words[:20]) + " , " + " ".join(words[20:40]) + " ( " + " ".join(words[40:]) + " ) ."


def _fake_tree(root: Path, passages: list[str]) -> Path:
    """A disfl_qa task.json: each passage asked about twice (the second time with other spacing), plus an
    input without a context section."""
    examples = []
    for i, passage in enumerate(passages):
        examples.append({"input": f"what is {i} ?  \ncontext: {passage} ", "target": "x"})
        examples.append({"input": f"who is {i} ?\ncontext:   {passage.replace(' ', '  ')}", "target": "y"})
    examples.append({"input": "no passage here", "target": "z"})
    (root / "disfl_qa").mkdir(parents=True)
    (root / "disfl_qa" / "task.json").write_text(json.dumps({"name": "disfl_qa", "examples": examples}))
    return root


def test_detokenize_and_passage_extraction() -> None:
    squad = "the Earth ' s atmosphere ( see Occurrence ) , O 2 ."
    assert detokenize(squad) == "the Earth's atmosphere (see Occurrence), O 2."
    assert passage_of("Q ?  \ncontext: some text ") == "some text"
    assert passage_of("no label") is None and passage_of("a\ncontext: b\ncontext: c") is None


def test_corpus_is_the_deduplicated_detokenized_passages(tmp_path: Path) -> None:
    passages = [_passage(i) for i in range(5)] + [_passage(2)]  # one passage repeated in a later example
    corpus = build_corpus(_fake_tree(tmp_path / "tasks", passages))
    expected = "\n\n".join(detokenize(p) for p in passages[:5])
    assert corpus.text == expected and corpus.documents == 5 and corpus.sources == ("disfl_qa",)
    assert corpus.sha256 == hashlib.sha256(expected.encode()).hexdigest()
    assert corpus.identity() == {"corpus": "bigbench-wiki", "sha256": corpus.sha256}


def test_missing_tree_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JdnaError, match="make data"):
        build_corpus(tmp_path / "nothing")


def test_offline_default_calibrates_on_the_corpus_and_records_its_sha256(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub is unreachable in tests, so the default calibration text is the offline corpus."""
    root = _fake_tree(tmp_path / "bigbench", [_passage(i) for i in range(40)])
    monkeypatch.setenv("JDNA_BIGBENCH", str(root))
    corpus = build_corpus(root)
    assert read_calibration_text(None) == corpus.text == read_calibration_text("bigbench")
    assert calibration_identity(None) == corpus.identity()
    result = run("prune", str(tiny_llama), "-s", "0.5", "--method", "wanda", "--calib-samples", "2",
                 "--calib-seqlen", "16")
    assert result.code == 0, result.stderr
    info = run("info", result.record["path"]).record
    assert info["params"]["calib"] == {"corpus": "bigbench-wiki", "sha256": corpus.sha256}
    explicit = run("prune", str(tiny_llama), "-s", "0.5", "--method", "wanda", "--calib", "bigbench",
                   "--calib-samples", "2", "--calib-seqlen", "16")
    assert explicit.record["id"] == result.record["id"]
