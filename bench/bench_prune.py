"""Global magnitude pruning on a demo model: time and peak extra memory, next to a plain read+write pass
over the same weights and the concat+topk approach of the paper's code. Also Wanda and SparseGPT times.

Run: `make bench` or `.venv/bin/python bench/bench_prune.py [--model smollm2-135m] [--calib FILE]`.
Each measurement runs in its own process so peak RSS is attributable to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _prunable_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if ".layers." in name and name.endswith("proj.weight") or ".layer." in name and "dense.weight" in name:
                    tensors[name] = handle.get_tensor(name)
    return tensors


def measure(mode: str, model_dir: Path, sparsity: float) -> dict:
    """One measurement in this process: load the prunable weights, then time `mode`."""
    from jdna.artifact import pack_mask
    from jdna.pruning.selection import prune_count, select_group_packed

    tensors = _prunable_tensors(model_dir)
    names = list(tensors)
    model_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    out = Path(tempfile.mkdtemp()) / "out.safetensors"
    rss_before = _rss_kib("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    if mode == "plain-read-write":
        # The floor for any pass that reads every weight from disk and writes a result of the same size.
        fresh = _prunable_tensors(model_dir)
        save_file(fresh, str(out))
    elif mode == "jdna-global":
        fresh = _prunable_tensors(model_dir)
        k = prune_count(sparsity, sum(t.numel() for t in fresh.values()))
        # The same scores and strided sample `jdna prune --method magnitude` computes.
        masks = select_group_packed([fresh[n].numel() for n in names], lambda i: fresh[names[i]].abs(), k,
                                    lambda i, start, stride: fresh[names[i]].reshape(-1)[start::stride].abs())
        save_file({f"mask.{n}": m for n, m in zip(names, masks)}, str(out))
    elif mode == "concat-topk":
        fresh = _prunable_tensors(model_dir)
        flat = torch.cat([fresh[n].abs().reshape(-1) for n in names])
        k = prune_count(sparsity, flat.numel())
        threshold = torch.topk(flat, k, largest=False).values.max()
        del flat
        masks = [fresh[n].abs() > threshold for n in names]
        save_file({f"mask.{n}": pack_mask(m) for n, m in zip(names, masks)}, str(out))
    seconds = time.perf_counter() - started
    peak_extra = (_rss_kib("VmHWM") - rss_before) * 1024
    beyond_weights = peak_extra - model_bytes  # every mode re-reads the weights once
    return {
        "mode": mode,
        "seconds": round(seconds, 3),
        "peak_extra_mib": round(peak_extra / 2**20, 1),
        "peak_extra_fraction_of_weights": round(peak_extra / model_bytes, 3),
        "beyond_weights_mib": round(beyond_weights / 2**20, 1),
        "beyond_weights_fraction": round(beyond_weights / model_bytes, 3),
        "weights_mib": round(model_bytes / 2**20, 1),
    }


def run_cli(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "jdna"), "prune", *args, "--force", "-o",
                    str(Path(tempfile.mkdtemp()) / "p.safetensors")], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--calib", default=None, help="calibration text for Wanda/SparseGPT (default: demo notes)")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--selection-only", action="store_true", help="skip the whole-command timings")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from jdna.models import resolve

    model_dir = resolve(args.model).base.path
    if args.measure:
        print(json.dumps(measure(args.measure, model_dir, args.sparsity)))
        return
    rows = []
    for mode in ("plain-read-write", "jdna-global", "concat-topk"):
        results = []
        for _ in range(args.repeats):
            output = subprocess.run([sys.executable, __file__, "--model", args.model, "--sparsity", str(args.sparsity),
                                     "--measure", mode], check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
        best = min(results, key=lambda r: r["seconds"])
        best["peak_extra_mib"] = max(r["peak_extra_mib"] for r in results)
        for key in ("peak_extra_fraction_of_weights", "beyond_weights_mib", "beyond_weights_fraction"):
            best[key] = max(r[key] for r in results)
        rows.append(best)
    plain = rows[0]["seconds"]
    for row in rows:
        row["relative_to_plain"] = round(row["seconds"] / plain, 2)
    if args.selection_only:
        print(json.dumps({"model": args.model, "sparsity": args.sparsity, "selection": rows}, indent=2))
        return
    calib = args.calib
    if calib is None:
        notes = Path(tempfile.mkdtemp()) / "notes.txt"
        notes.write_text(subprocess.run([sys.executable, "examples/make_notes.py"], capture_output=True, text=True,
                                        check=True).stdout)
        calib = str(notes)
    cli = {"magnitude-global (whole command)": run_cli([args.model, "-s", str(args.sparsity)])}
    calib_flags = ["--calib", calib, "--calib-samples", str(args.calib_samples), "--calib-seqlen",
                   str(args.calib_seqlen)]
    cli[f"wanda ({args.calib_samples}x{args.calib_seqlen} tokens)"] = run_cli(
        [args.model, "-s", str(args.sparsity), "--method", "wanda", *calib_flags])
    cli[f"sparsegpt ({args.calib_samples}x{args.calib_seqlen} tokens)"] = run_cli(
        [args.model, "-s", str(args.sparsity), "--method", "sparsegpt", *calib_flags])
    report = {"model": args.model, "sparsity": args.sparsity, "threads": torch.get_num_threads(),
              "selection": rows, "commands_seconds": cli, "cpu_count": os.cpu_count()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
