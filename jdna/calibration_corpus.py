"""An offline calibration corpus of real text, built from files jdna already fetches (`make data`).

The references calibrate on C4 (web text). Without the hub, the nearest real prose already on disk is the
Wikipedia paragraphs inside BIG-bench's SQuAD-based tasks: disfl_qa's inputs are "<question> context:
<SQuAD 2.0 passage>", 8,000 examples over 1,204 distinct passages (~180k words). The corpus is those passages,
deduplicated (by their whitespace-normalised text, first occurrence kept, file order), with SQuAD's
tokenisation spaces undone ("Earth ' s atmosphere ( see Occurrence ) ." -> "Earth's atmosphere (see
Occurrence)."), joined by blank lines. Its sha256 names it in every artifact calibrated on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from jdna.errors import JdnaError
from jdna.tasks.bigbench import bigbench_root

CORPUS_NAME = "bigbench-wiki"
# BIG-bench tasks whose inputs carry a Wikipedia paragraph after a "context:" label.
SOURCE_TASKS = ("disfl_qa",)

_CONTEXT_LABEL = re.compile(r"(?:^|\n)[ \t]*context[ \t]*:[ \t]*", re.IGNORECASE)
_SPACE_BEFORE = re.compile(r" ([,.;:!?%)\]}])")
_SPACE_AFTER = re.compile(r"([(\[{$]) ")
_SPLIT_APOSTROPHE = re.compile(r"(\w) ' (\w)")


@dataclass(frozen=True)
class Corpus:
    name: str
    text: str
    sha256: str
    documents: int
    sources: tuple[str, ...]

    def identity(self) -> dict[str, str]:
        """What enters a calibrated step's content address."""
        return {"corpus": self.name, "sha256": self.sha256}


def detokenize(text: str) -> str:
    """Undo SQuAD's word tokenisation spaces around punctuation and apostrophes."""
    text = " ".join(text.split())
    text = _SPLIT_APOSTROPHE.sub(r"\1'\2", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    return _SPACE_AFTER.sub(r"\1", text)


def passage_of(task_input: str) -> str | None:
    """The paragraph after the input's one "context:" label, or None without exactly one."""
    parts = _CONTEXT_LABEL.split(task_input)
    if len(parts) != 2 or not parts[1].strip():
        return None
    return parts[1].strip()


def build_corpus(root: Path | None = None) -> Corpus:
    """The deduplicated Wikipedia paragraphs of SOURCE_TASKS under `root` (JdnaError if none is there)."""
    root = root if root is not None else bigbench_root()
    passages: list[str] = []
    seen: set[str] = set()
    used = []
    for task in SOURCE_TASKS:
        path = root / task / "task.json"
        if not path.is_file():
            continue
        try:
            examples = json.loads(path.read_text())["examples"]
        except (ValueError, KeyError, TypeError):
            raise JdnaError(f"'{path}' is not a BIG-bench task file: run `make data` again") from None
        used.append(task)
        for example in examples:
            passage = passage_of(str(example.get("input", "")))
            if passage is None:
                continue
            text = detokenize(passage)
            key = text.lower()
            if key not in seen:
                seen.add(key)
                passages.append(text)
    if not passages:
        raise JdnaError(
            f"no offline calibration text: the BIG-bench tasks {', '.join(SOURCE_TASKS)} are not under {root} "
            "(run `make data`), and C4 needs the hub: pass --calib FILE (a .txt or .jsonl file)"
        )
    text = "\n\n".join(passages)
    return Corpus(
        name=CORPUS_NAME,
        text=text,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        documents=len(passages),
        sources=tuple(used),
    )


@lru_cache(maxsize=4)
def cached_corpus(root: str) -> Corpus:
    """build_corpus once per process and tree (a plan computes its identity, then the step reads its text)."""
    return build_corpus(Path(root))


def offline_corpus() -> Corpus:
    return cached_corpus(str(bigbench_root()))
