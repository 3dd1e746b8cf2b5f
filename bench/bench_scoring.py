"""Time ``jdna.scoring.loglikelihood_choices`` against the naive way of scoring multiple choice.

Builds N k-shot multiple-choice requests from a JSONL file (one question per line) and scores them with

* ``cached``   -- ``loglikelihood_choices``: shared prefix and context run once, options from the KV cache;
* ``padded``   -- the same encoding, one full right-padded sequence per option, batched (what lm-eval does);
* ``naive``    -- one forward per option at batch size 1, context re-run every time (``--naive-limit``
  requests only, it is slow).

It prints requests/s for each and how well their predictions and log-likelihoods agree.  Not a test.

    python bench/bench_scoring.py --model DIR --data questions.jsonl --n 200 --shots 5

Each JSONL line needs a question, a list of choices and (for the shots) the index of the right one; the key
names are options.  Without ``--data`` a small synthetic set is used, which is enough for a sanity check.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jdna import scoring  # noqa: E402
from jdna.scoring import ChoiceRequest, loglikelihood_choices  # noqa: E402

LETTERS = "ABCDEFGHIJ"


def _synthetic(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = "red green blue apple river stone cloud seven eight north south quick lazy bright dark".split()
    rows = []
    for _ in range(n):
        choices = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(4)]
        question = "Which of these is " + " ".join(rng.choice(words) for _ in range(8)) + "?"
        rows.append({"question": question, "choices": choices, "answer": rng.randrange(4)})
    return rows


def _load(path: str | None, needed: int, keys: tuple[str, str, str], seed: int) -> list[dict]:
    if path is None:
        return _synthetic(needed, seed)
    q_key, c_key, a_key = keys
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                item = json.loads(line)
                rows.append(
                    {"question": item[q_key], "choices": item[c_key], "answer": int(item.get(a_key, 0))}
                )
    if len(rows) < needed:
        raise SystemExit(f"{path} has {len(rows)} questions, need {needed} (shots + requests)")
    return rows


def _format(row: dict, style: str, with_answer: bool) -> str:
    text = f"Question: {row['question']}\n"
    if style == "letters":
        text += "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(row["choices"]))
    text += "Answer:"
    if with_answer:
        answer = row["answer"]
        text += " " + (LETTERS[answer] if style == "letters" else row["choices"][answer]) + "\n\n"
    return text


def build_requests(rows: list[dict], n: int, shots: int, style: str) -> list[ChoiceRequest]:
    """k-shot requests; the first ``shots`` rows are the demonstrations shared by every request."""
    prompt = "The following are multiple choice questions (with answers).\n\n"
    prompt += "".join(_format(row, style, True) for row in rows[:shots])
    requests = []
    for row in rows[shots : shots + n]:
        if style == "letters":
            options = [" " + LETTERS[i] for i in range(len(row["choices"]))]
        else:
            options = [" " + c for c in row["choices"]]
        requests.append(ChoiceRequest(prompt + _format(row, style, False), options))
    return requests


@torch.inference_mode()
def naive_scores(model, tokenizer, requests: list[ChoiceRequest], max_length: int) -> list[list[float]]:
    """One forward per option at batch size 1 -- the cost lm-eval pays with ``batch_size=1``."""
    device = next(model.parameters()).device
    encoded = scoring._encode_choice_requests(tokenizer, requests, scoring._adds_bos(model))
    out = []
    for pairs in encoded:
        row = []
        for context, continuation in pairs:
            window = (context + continuation)[-(max_length + 1) :]
            logits = model(torch.tensor([window[:-1]], device=device)).logits[0, -len(continuation) :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            targets = torch.tensor(continuation, device=device)
            row.append(float(logprobs.gather(1, targets[:, None]).sum()))
        out.append(row)
    return out


def padded_scores(model, tokenizer, requests, batch_size, max_length) -> list[list[float]]:
    """lm-eval's strategy: every option is a full sequence, batched with right padding, no cache."""
    original = scoring._Runner._staged_cache_ok
    scoring._Runner._staged_cache_ok = lambda self: False  # type: ignore[method-assign]
    try:
        return [s.logprobs for s in loglikelihood_choices(model, tokenizer, requests, batch_size, max_length)]
    finally:
        scoring._Runner._staged_cache_ok = original  # type: ignore[method-assign]


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _compare(name: str, reference: list[list[float]], other: list[list[float]]) -> None:
    agree = sum(_argmax(a) == _argmax(b) for a, b in zip(reference, other, strict=True))
    diff = max(abs(x - y) for a, b in zip(reference, other, strict=True) for x, y in zip(a, b, strict=True))
    print(f"  cached vs {name:7s}: predictions agree {agree}/{len(reference)}, max |d logprob| {diff:.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local Hugging Face causal LM directory")
    parser.add_argument("--data", help="JSONL file of questions (default: synthetic)")
    parser.add_argument("--n", type=int, default=100, help="number of requests")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument(
        "--style",
        choices=["texts", "letters"],
        default="texts",
        help="options are the choice texts (multi-token) or the letters A-D (one token)",
    )
    parser.add_argument(
        "--keys", default="question,choices,answer", help="JSONL keys: question,choices,answer"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="requests per batch (default: auto)")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--naive-limit", type=int, default=50, help="requests for the batch-1 naive loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    keys = tuple(args.keys.split(","))
    if len(keys) != 3:
        raise SystemExit("--keys takes three comma-separated names")
    rows = _load(args.data, args.shots + args.n, keys, args.seed)  # type: ignore[arg-type]
    requests = build_requests(rows, args.n, args.shots, args.style)
    max_length = scoring.resolve_max_length(model, tokenizer, args.max_length)
    n_options = sum(len(r.continuations) for r in requests)
    print(
        f"{len(requests)} requests, {n_options} options, {args.shots}-shot, style={args.style}, "
        f"device={args.device}, dtype={next(model.parameters()).dtype}, max_length={max_length}"
    )

    loglikelihood_choices(model, tokenizer, requests[:2], args.batch_size, max_length)  # warm-up
    cached, t_cached = _timed(
        lambda: [
            s.logprobs for s in loglikelihood_choices(model, tokenizer, requests, args.batch_size, max_length)
        ]
    )
    padded, t_padded = _timed(lambda: padded_scores(model, tokenizer, requests, args.batch_size, max_length))
    few = requests[: args.naive_limit]
    naive, t_naive = _timed(lambda: naive_scores(model, tokenizer, few, max_length))

    print(f"  cached : {len(requests) / t_cached:9.2f} requests/s  ({t_cached:.2f} s)")
    print(f"  padded : {len(requests) / t_padded:9.2f} requests/s  ({t_padded:.2f} s)")
    print(f"  naive  : {len(few) / t_naive:9.2f} requests/s  ({t_naive:.2f} s, {len(few)} requests)")
    print(
        f"  speed-up of cached: x{t_padded / t_cached:.1f} over padded, "
        f"x{(t_naive / len(few)) / (t_cached / len(requests)):.1f} over naive"
    )
    _compare("padded", cached, padded)
    _compare("naive", cached[: len(few)], naive)
    answers = [row["answer"] for row in rows[args.shots : args.shots + args.n]]
    accuracy = sum(_argmax(s) == a for s, a in zip(cached, answers, strict=True)) / len(answers)
    print(f"  accuracy (cached): {accuracy:.3f}")


if __name__ == "__main__":
    main()
