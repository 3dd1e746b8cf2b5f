"""`make test-fast` skips the tests conftest.SLOW names: each entry must still name a test, or a renamed slow
test would silently come back into the fast loop (and a deleted one leave a stale entry)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import SLOW, is_slow

ROOT = Path(__file__).resolve().parent.parent


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def test_every_slow_entry_names_an_existing_test() -> None:
    for entry in SLOW:
        file, _, rest = entry.partition("::")
        assert (ROOT / file).is_file(), entry
        if rest:
            assert rest.partition("[")[0] in _test_functions(ROOT / file), entry


def test_slow_matching_is_by_file_function_or_parametrization() -> None:
    assert is_slow("tests/test_makefile_smoke.py::test_anything")
    assert is_slow("tests/test_lowrank.py::test_rank_for_bits_is_the_closest_rank_by_brute_force[6.0-shape2]")
    assert is_slow("tests/test_cli_quantize.py::test_quantizing_a_pruned_artifact_keeps_exact_zeros[gptq]")
    assert not is_slow("tests/test_cli_quantize.py::test_quantizing_a_pruned_artifact_keeps_exact_zeros[rtn]")
    assert not is_slow("tests/test_finetune.py::test_mode_invariants_x")  # a prefix of a name is not the name
