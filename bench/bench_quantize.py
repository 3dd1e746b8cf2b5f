"""Time RTN against GPTQ quantization of a model, with each run's peak memory.

Each method runs in its own child process, so its peak resident set size (``ru_maxrss`` from ``os.wait4``)
is its own and not the maximum of everything run so far. The child loads the model, quantizes its
prunable matrices in place with :func:`jdna.quantization.engine.quantize_model` (no artifact is written) and
reports the load and quantize times and the whole-set relative weight error ‖W−Ŵ‖/‖W‖. Not a test.

    python bench/bench_quantize.py --model smollm2-135m --bits 4 --group-size 64 --calib notes.txt

The issue's target is GPTQ ≤ 20× RTN in quantize time. Note that ``smollm2-135m`` was itself dequantized from
Q4_1, so 4-bit RTN on it is almost lossless; ``minilm-l6`` (fp32 original) shows a real quantization error.
SmolLM2's 576-wide matrices admit group sizes dividing 576 (e.g. 64), not 128.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _child(args: argparse.Namespace) -> None:
    """Quantize once and print one JSON line of timings."""
    import resource

    import torch

    from jdna.models import load_model, resolve
    from jdna.quantization.engine import QuantizeConfig, plan_quantize, quantize_model
    from jdna.quantization.run import set_relative_error

    torch.set_num_threads(args.threads)
    config = QuantizeConfig(
        bits=args.bits,
        method=args.method,
        granularity=args.granularity,
        group_size=args.group_size,
        symmetric=not args.asym,
        calib=args.calib,
        calib_samples=args.calib_samples,
        calib_seqlen=args.calib_seqlen,
    )
    plan = plan_quantize(config)
    started = time.perf_counter()
    model, tokenizer = load_model(resolve(args.model))
    loaded = time.perf_counter()
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = quantize_model(model, tokenizer, plan)
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "load_s": round(loaded - started, 2),
                "quantize_s": round(done - loaded, 2),
                "rss_after_load_mib": round(rss_after_load / 1024, 1),
                "relative_error": set_relative_error(outcome.errors.values()),
                "matrices": len(outcome.stored),
            }
        )
    )


def _measure(args: argparse.Namespace, method: str) -> dict:
    command = [sys.executable, __file__, "--child", "--method", method, *_forwarded(args)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{method} child failed with status {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    # ru_maxrss is in KiB on Linux.
    result.update(method=method, wall_s=round(wall, 2), peak_rss_mib=round(usage.ru_maxrss / 1024, 1))
    return result


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = [
        "--model", args.model, "--bits", str(args.bits), "--granularity", args.granularity,
        "--group-size", str(args.group_size), "--calib-samples", str(args.calib_samples),
        "--calib-seqlen", str(args.calib_seqlen), "--threads", str(args.threads),
    ]  # fmt: skip
    if args.calib:
        out += ["--calib", args.calib]
    if args.asym:
        out.append("--asym")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--granularity", default="group")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--asym", action="store_true")
    parser.add_argument("--calib", help="calibration .txt/.jsonl (default C4, which needs the hub)")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--method", default="rtn", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    results = [_measure(args, "rtn"), _measure(args, "gptq")]
    for result in results:
        print(json.dumps(result))
    rtn, gptq = results
    ratio = gptq["quantize_s"] / max(rtn["quantize_s"], 1e-9)
    summary = {
        "model": args.model,
        "bits": args.bits,
        "granularity": args.granularity,
        "group_size": args.group_size if args.granularity == "group" else None,
        "calib_samples": args.calib_samples,
        "calib_seqlen": args.calib_seqlen,
        "gptq_over_rtn_time": round(ratio, 1),
        "target_met": ratio <= 20,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
