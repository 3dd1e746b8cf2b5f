"""Import contracts (issue #12, item 5): no import cycle among jdna modules, no use of another module's `_private`
name, and the layers of docs/architecture.md (scripts/check_imports.py: LAYERS, ORDER) — function-level imports
included.

KNOWN_VIOLATIONS is what main had when the check was written. The test asserts the violations found EQUAL this
list: a new violation fails it, and so does a fixed one still listed (remove it here when the refactor lands, so
the list only shrinks). `python scripts/check_imports.py` shows where each one is.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts" / "check_imports.py")
assert _spec and _spec.loader
check_imports = importlib.util.module_from_spec(_spec)
sys.modules["check_imports"] = check_imports  # dataclasses look their module up by name
_spec.loader.exec_module(check_imports)

KNOWN_VIOLATIONS: set[str] = set()


def test_import_contracts_hold_but_for_the_known_violations() -> None:
    found = check_imports.violations(check_imports.build(ROOT))
    new = {text: where for text, where in found.items() if text not in KNOWN_VIOLATIONS}
    fixed = KNOWN_VIOLATIONS - set(found)
    assert not new, "new import-contract violations:\n" + "\n".join(f"{t}\n    {w}" for t, w in new.items())
    assert not fixed, "fixed, so remove from KNOWN_VIOLATIONS:\n" + "\n".join(sorted(fixed))


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "jdna/__init__.py": "__version__ = '1'\n",
            "jdna/__main__.py": "from jdna.commands.cli import run\n",  # the CLI entry point may
            "jdna/a.py": "from jdna.b import helper\n_hidden = 1\n_private_thing = 2\n",
            # a cycle hidden in a function, and a private name read through a module alias
            "jdna/b.py": "_secret = 0\ndef helper():\n    from jdna import a\n    return a._hidden\n",
            "jdna/c.py": "from . import __version__\nfrom .b import _secret\nfrom jdna.commands.cli import run\n",
            "jdna/evaluation/__init__.py": "from jdna.evaluation.x import thing\n",
            "jdna/evaluation/x.py": "thing = 1\ndef f():\n    from ..finetune import train\n",
            # a submodule importing a sibling through its package: an edge to the sibling, not a cycle
            "jdna/evaluation/y.py": "from jdna.evaluation import x\nimport jdna.finetune as ft\nft.train()\n",
            "jdna/finetune/__init__.py": "def train():\n    pass\n",
            "commands/__init__.py": "",
            "commands/cli.py": "from jdna.a import _private_thing\nfrom jdna import __version__\ndef run(): pass\n",
            "jdna/low.py": "import jdna.errors\ndef f():\n    from jdna.evaluation import x\n",  # a lower layer
            "jdna/errors.py": "",
            "jdna/stray.py": "",  # in no layer
        },
    )
    order = [
        ("core", ("jdna", "jdna.errors", "jdna.low", "jdna.a", "jdna.b", "jdna.c")),
        ("evaluation", ("jdna.evaluation",)),
        ("transfer", ("jdna.finetune",)),
        ("cli", ("jdna.commands", "jdna.__main__")),
    ]
    graph = check_imports.build(root)
    assert graph.edges["jdna.evaluation.y"] == {"jdna.evaluation.x": 1, "jdna.finetune": 2}
    found = check_imports.violations(graph, order)
    no_finetune = "(evaluation never imports fine-tuning)"
    assert found == {
        "cycle: jdna.a, jdna.b": "jdna.a -> jdna.b (jdna/a.py:1); jdna.b -> jdna.a (jdna/b.py:3)",
        "private: jdna.b uses jdna.a._hidden": "jdna/b.py:4",
        "private: jdna.c uses jdna.b._secret": "jdna/c.py:2",
        "private: jdna.commands.cli uses jdna.a._private_thing": "commands/cli.py:1",
        "layer: jdna.c imports jdna.commands.cli": "jdna/c.py:3 (the library never imports the CLI)",
        "layer: jdna.evaluation.x imports jdna.finetune": f"jdna/evaluation/x.py:3 {no_finetune}",
        "layer: jdna.evaluation.y imports jdna.finetune": f"jdna/evaluation/y.py:2 {no_finetune}",
        # one report per import: jdna.c -> jdna.commands.cli breaks the named rule, so no "order:" line for it
        "order: jdna.low imports jdna.evaluation.x": "jdna/low.py:3 (layer core imports layer evaluation)",
        "unplaced: jdna.stray": "jdna/stray.py:1 (give it a layer in ORDER)",
    }
    assert check_imports.layer_of("jdna.evaluation.x", order) == 1 and check_imports.layer_of("jdna", order) == 0
    assert check_imports.layer_of("jdna.lowest", order) is None  # a prefix counts only at a dot
