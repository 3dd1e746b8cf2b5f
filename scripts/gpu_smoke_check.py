"""Helpers of scripts/gpu_smoke.sh: write its small tasks and calibration text, and compare the two sides.

    python3 scripts/gpu_smoke_check.py data DIR
    python3 scripts/gpu_smoke_check.py compare DIR REF_SIDE TEST_SIDE [--same-dtype]

`compare` reads DIR/<side>/<step>.json (the stdout record of each step, empty if it failed) and prints a
PASS/FAIL table; it exits 1 when any check fails. Tolerances (reference: CPU float32; test: the device and
dtype under test) are stated in TOLERANCES and printed with each row.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

NOUNS = "river mountain city king queen doctor farmer teacher child dog cat bird ship train garden".split()
VERBS = "sees finds builds paints follows helps carries watches remembers visits".split()
ADJECTIVES = "small large old young red blue quiet loud happy tired bright dark".split()
COLOURS = ["red", "blue", "green", "yellow"]

# name: (what is compared, tolerance, wording)
TOLERANCES = {
    "mask_identical": 1.0,  # magnitude on the device in float32: the very same masks
    "mask_magnitude": 0.99,  # fraction of positions whose keep/prune decision agrees
    "mask_wanda": 0.97,
    "mask_sparsegpt": 0.90,
    "codes_rtn": 0.97,  # fraction of identical 4-bit codes
    "codes_gptq": 0.75,
    "rel_error_lowrank": 0.02,  # absolute difference of the relative weight error
    "rel_error_quant": 0.25,  # relative difference of the relative weight error
    "eval_items": 0.125,  # accuracy difference, as a fraction of the items (and at least 2 items)
    "eval_agree": 0.75,  # fraction of items with the same prediction
    "finetune_loss": 0.5,  # absolute difference of the last training loss
    "finetune_metric": 0.2,
    "lmc_metric": 0.2,  # largest difference along the path
}


def write_data(directory: Path) -> None:
    """A 4-option multiple-choice task (which colour was named), a 2-label classification task and
    calibration text, all generated from a fixed seed."""
    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(40):
        colour = rng.choice(COLOURS)
        noun = rng.choice(NOUNS)
        question = f"The {rng.choice(ADJECTIVES)} {noun} was painted {colour}. What colour was the {noun}?"
        rows.append({"id": f"mc{i}", "question": question, "choices": COLOURS, "gold": COLOURS.index(colour),
                     "split": "train" if i < 8 else "test"})
    (directory / "mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    rows = []
    for i in range(96):
        positive = i % 2 == 0
        mood = rng.choice(["wonderful", "great", "lovely", "happy"] if positive else ["awful", "bad", "sad", "dull"])
        subject, verb, adjective, noun = rng.choice(NOUNS), rng.choice(VERBS), rng.choice(ADJECTIVES), rng.choice(NOUNS)
        text = f"The {subject} {verb} a {adjective} {noun}; it was {mood}."
        rows.append({"id": f"c{i}", "text": text, "label": "positive" if positive else "negative",
                     "split": "train" if i < 64 else "test"})
    (directory / "cls.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    sentences = []
    for _ in range(3000):
        sentences.append(
            f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)} "
            f"near the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}."
        )
    (directory / "calib.txt").write_text(" ".join(sentences) + "\n")


def _record(directory: Path, side: str, step: str) -> dict | None:
    path = directory / side / f"{step}.json"
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def _masks(path: str) -> dict:
    from jdna.artifact import read_artifact, unpack_mask

    artifact = read_artifact(Path(path))
    shapes = artifact.header["masks"]
    return {name: unpack_mask(packed, shapes[name]) for name, packed in artifact.tensors("mask.").items()}


def _codes(path: str) -> dict:
    from jdna.artifact import read_artifact
    from jdna.quantization.packing import unpack_codes

    artifact = read_artifact(Path(path))
    out = {}
    for name, packed in artifact.tensors("codes.").items():
        entry = artifact.header["quant"][name]
        rows, cols = entry["shape"]
        out[name] = unpack_codes(packed, int(entry["bits"]), rows * cols)
    return out


def _agreement(a: dict, b: dict) -> float:
    """Fraction of equal entries over all tensors (0 when the two name different tensors)."""
    if set(a) != set(b) or not a:
        return 0.0
    same = sum(int((a[n].reshape(-1) == b[n].reshape(-1)).sum()) for n in a)
    return same / max(sum(a[n].numel() for n in a), 1)


def _full_eval(record: dict) -> dict:
    return json.loads(Path(record["path"]).read_text())


def compare(directory: Path, ref: str, test: str, extra_sides: list[str]) -> int:
    rows: list[tuple[str, str, str, str, bool]] = []  # step, check, measured, tolerance, passed

    def check(step: str, name: str, measured: str, tolerance: str, passed: bool) -> None:
        rows.append((step, name, measured, tolerance, bool(passed)))

    steps = sorted(p.stem for p in (directory / ref).glob("*.json"))
    for step in steps:
        a, b = _record(directory, ref, step), _record(directory, test, step)
        if a is None or b is None:
            check(step, "ran", f"ref={'ok' if a else 'FAILED'} test={'ok' if b else 'FAILED'}", "both ok", False)
            continue
        check(step, "placement", f"{b.get('device')}/{b.get('dtype')}", "as asked", True)
        try:
            _compare_step(step, a, b, check)
        except Exception as error:  # a comparison that cannot run is a failure, not a crash of the table
            check(step, "compare", f"{type(error).__name__}: {error}"[:60], "-", False)
    for side in extra_sides:  # magnitude on the device in float32: identical masks
        a, b = _record(directory, ref, "prune_magnitude"), _record(directory, side, "prune_magnitude")
        if a is None or b is None:
            check(f"prune_magnitude[{side}]", "ran", "FAILED", "ok", False)
            continue
        agree = _agreement(_masks(a["path"]), _masks(b["path"]))
        check(f"prune_magnitude[{side}]", "masks identical", f"{agree:.6f}", "1.0", agree == 1.0)

    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"{'step':<{width}}  {'check':<22} {'measured':<28} {'tolerance':<14} result")
    for step, name, measured, tolerance, passed in rows:
        print(f"{step:<{width}}  {name:<22} {measured:<28} {tolerance:<14} {'PASS' if passed else 'FAIL'}")
    failed = sum(1 for r in rows if not r[4])
    print(f"\n{len(rows) - failed} passed, {failed} failed ({ref} vs {test})")
    return 1 if failed or not rows else 0


def _compare_step(step: str, a: dict, b: dict, check) -> None:  # type: ignore[no-untyped-def]
    t = TOLERANCES
    if step.startswith("prune_"):
        method = step.split("_", 1)[1]
        check(step, "sparsity", f"{a['sparsity']:.6f} vs {b['sparsity']:.6f}", "equal",
              abs(a["sparsity"] - b["sparsity"]) < 1e-6)
        if method in ("magnitude", "wanda", "sparsegpt"):
            agree = _agreement(_masks(a["path"]), _masks(b["path"]))
            tolerance = t[f"mask_{method}"] if a.get("dtype") != b.get("dtype") else (
                t["mask_identical"] if method == "magnitude" else t[f"mask_{method}"])
            check(step, "mask agreement", f"{agree:.5f}", f">= {tolerance}", agree >= tolerance)
    elif step.startswith("quantize_"):
        method = step.split("_", 1)[1]
        agree = _agreement(_codes(a["path"]), _codes(b["path"]))
        check(step, "code agreement", f"{agree:.5f}", f">= {t[f'codes_{method}']}", agree >= t[f"codes_{method}"])
        ea, eb = a["relative_error"], b["relative_error"]
        rel = abs(ea - eb) / max(ea, 1e-12)
        check(step, "relative error", f"{ea:.4f} vs {eb:.4f}", f"rel <= {t['rel_error_quant']}",
              rel <= t["rel_error_quant"])
    elif step.startswith("lowrank"):
        ea, eb = a["relative_error"], b["relative_error"]
        check(step, "relative error", f"{ea:.4f} vs {eb:.4f}", f"abs <= {t['rel_error_lowrank']}",
              abs(ea - eb) <= t["rel_error_lowrank"])
    elif step.startswith("eval"):
        fa, fb = _full_eval(a), _full_eval(b)
        n = fa["n"]
        acc_a, acc_b = fa["metrics"]["acc"]["value"], fb["metrics"]["acc"]["value"]
        allowed = max(2, math.ceil(t["eval_items"] * n))
        diff_items = round(abs(acc_a - acc_b) * n)
        check(step, "accuracy", f"{acc_a:.3f} vs {acc_b:.3f} (n={n})", f"<= {allowed} items", diff_items <= allowed)
        pa, pb = fa["per_item"]["predictions"], fb["per_item"]["predictions"]
        agree = sum(x == y for x, y in zip(pa, pb, strict=True)) / max(len(pa), 1)
        check(step, "same predictions", f"{agree:.3f}", f">= {t['eval_agree']}", agree >= t["eval_agree"])
    elif step.startswith("finetune"):
        la, lb = a.get("train_loss_last"), b.get("train_loss_last")
        finite = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (la, lb))
        check(step, "loss finite", f"{la} vs {lb}", "finite", finite)
        if finite:
            check(step, "last loss", f"{la:.3f} vs {lb:.3f}", f"abs <= {t['finetune_loss']}",
                  abs(la - lb) <= t["finetune_loss"])
        ma = a["metrics"][a["primary_metric"]]["value"]
        mb = b["metrics"][b["primary_metric"]]["value"]
        check(step, a["primary_metric"], f"{ma:.3f} vs {mb:.3f}", f"abs <= {t['finetune_metric']}",
              abs(ma - mb) <= t["finetune_metric"])
        if b.get("invariants", {}).get("checked"):
            check(step, "mask invariant", str(b["invariants"]["passed"]), "True", b["invariants"]["passed"])
    elif step.startswith("lmc"):
        finite = all(math.isfinite(x) for x in a["loss"] + b["loss"])
        check(step, "loss finite", str(finite), "finite", finite)
        gap = max(abs(x - y) for x, y in zip(a["metric"], b["metric"], strict=True))
        check(step, f"{a['metric_name']} along path", f"max diff {gap:.3f}", f"<= {t['lmc_metric']}",
              gap <= t["lmc_metric"])


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "data":
        write_data(Path(argv[1]))
        return 0
    if len(argv) >= 4 and argv[0] == "compare":
        return compare(Path(argv[1]), argv[2], argv[3], argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
