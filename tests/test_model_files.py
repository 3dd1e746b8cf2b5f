"""Single files given as MODEL: GGUF checkpoints load through a cached conversion; records get a precise error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli import run


def _fails_with(result, *fragments: str) -> str:
    assert result.code == 2, result.stderr
    line = result.stderr.strip()
    for fragment in fragments:
        assert fragment in line, line
    assert "corrupt" not in line
    return line


def test_an_eval_record_given_as_model_says_what_it_is(tmp_path: Path) -> None:
    record = tmp_path / "result.json"
    record.write_text(json.dumps({"kind": "eval", "task": "mmlu", "model": {"name": "smollm2-135m"}}))
    _fails_with(run("info", str(record)), "is a jdna eval record (task 'mmlu')", "'smollm2-135m'")
    other = tmp_path / "table.json"
    other.write_text('[{"level": 1}]')
    _fails_with(run("prune", str(other), "-s", "0.5"), "is a JSON file, not a model", ".gguf file")


def test_an_unreadable_gguf_file_gets_a_precise_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))
    _fails_with(run("info", str(bad)), "is a GGUF file that transformers could not convert")


def test_a_gguf_file_is_converted_once_and_cached(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jdna.demo

    conversions: list[Path] = []

    def convert(gguf_path: Path, target: Path) -> None:  # stands in for transformers' GGUF dequantization
        conversions.append(gguf_path)
        shutil.copytree(tiny_llama, target)

    monkeypatch.setattr(jdna.demo, "convert_gguf", convert)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    first = run("info", str(gguf))
    assert first.code == 0, first.stderr
    assert first.record["source"] == "gguf" and first.record["name"] == str(gguf.resolve())
    pruned = run("prune", str(gguf), "-s", "0.5")
    assert pruned.code == 0, pruned.stderr
    assert run("info", pruned.record["path"]).code == 0  # the artifact's base resolves through the same cache
    assert conversions == [gguf.resolve()]


def test_offline_hub_error_does_not_ask_for_what_is_already_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = _fails_with(run("info", "some-org/not-cached-model"), "HF_HUB_OFFLINE is set")
    assert "set HF_HUB_OFFLINE=1" not in line
