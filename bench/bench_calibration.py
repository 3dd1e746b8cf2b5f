"""Calibrated pruning time relative to one plain forward pass over the same calibration tokens.

    python bench/bench_calibration.py [--model smollm2-135m] [--samples 32] [--seqlen 512] [--methods wanda sparsegpt]

The floor of any layer-by-layer calibration is one forward pass of the calibration tokens through every
transformer block; Wanda needs two block passes (statistics on the dense block, then the pruned block's
outputs for the next one), SparseGPT the same plus its Hessians and the column solves. The denominator here
is one forward of the model's transformer body (embeddings and blocks, no LM head, which calibration never
runs) over the same windows in the same chunks, so the ratio is not flattered by the head's cost.

Each method prunes a freshly loaded copy of the model (loading is not timed). `--old-chunks` also times Wanda
with the 8-sample chunks calibration used before samples were batched by a token budget.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

WORDS = (
    "the of and to in is was for on with as by at from that this be are or an which not have has model weight "
    "river mountain city country king queen science history music art game play read write number letter word "
    "sentence story small large prune sparse dense task hard easy data train test answer question"
).split()


def _text(words: int = 200_000, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _load(name: str):
    from jdna.models import load_model, resolve

    return load_model(resolve(name))


@torch.no_grad()
def plain_forward_seconds(model, input_ids: torch.Tensor, chunk: int) -> float:
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    started = time.perf_counter()
    for start in range(0, input_ids.shape[0], chunk):
        batch = input_ids[start : start + chunk]
        body(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)
    return time.perf_counter() - started


def prune_seconds(name: str, method: str, calib_path: str, samples: int, seqlen: int) -> float:
    from jdna.pruning import PruneConfig, plan_prune, prune_model

    model, tokenizer = _load(name)
    plan = plan_prune(
        PruneConfig(method=method, sparsity=0.5, calib=calib_path, calib_samples=samples, calib_seqlen=seqlen)
    )
    started = time.perf_counter()
    prune_model(model, tokenizer, plan)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--old-chunks", action="store_true", help="also time Wanda with 8-sample chunks")
    args = parser.parse_args()

    import tempfile

    import jdna.calibration as calibration

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write(_text())
        calib_path = handle.name
    model, tokenizer = _load(args.model)
    ids = calibration.calibration_samples(
        open(calib_path).read(), tokenizer, model, args.samples, args.seqlen, seed=0
    ).input_ids
    chunk = calibration.chunk_samples(ids.shape[0], ids.shape[1], torch.device("cpu"))
    plain_forward_seconds(model, ids[:1], 1)  # warm-up
    forward = plain_forward_seconds(model, ids, chunk)
    del model
    result: dict[str, object] = {
        "model": args.model,
        "samples": int(ids.shape[0]),
        "seqlen": int(ids.shape[1]),
        "threads": torch.get_num_threads(),
        "chunk_samples": chunk,
        "plain_forward_s": round(forward, 2),
    }
    print(f"plain forward (transformer body) over {ids.numel()} tokens: {forward:.1f} s", flush=True)
    for method in args.methods:
        seconds = prune_seconds(args.model, method, calib_path, args.samples, args.seqlen)
        result[f"{method}_s"] = round(seconds, 2)
        result[f"{method}_ratio"] = round(seconds / forward, 2)
        print(f"{method}: {seconds:.1f} s = {seconds / forward:.2f}x the plain forward", flush=True)
    if args.old_chunks:
        calibration.CPU_TOKENS_PER_CHUNK = 8 * ids.shape[1]
        seconds = prune_seconds(args.model, "wanda", calib_path, args.samples, args.seqlen)
        result["wanda_8_sample_chunks_s"] = round(seconds, 2)
        result["wanda_8_sample_chunks_ratio"] = round(seconds / forward, 2)
        print(f"wanda, 8-sample chunks: {seconds:.1f} s = {seconds / forward:.2f}x", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
