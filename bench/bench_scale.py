"""Time and memory at 1B: a random-init model of TinyLlama-1.1B's shape, stored in bfloat16 (no hub).

    OMP_NUM_THREADS=2 python bench/bench_scale.py [--dir DIR] [--layers 22] [--eval-items 8]

Builds the stand-in (hidden 2048, MLP 5632, 22 layers, 32 heads, 4 KV heads; the vocabulary is the demo
smollm2's tokenizer's 49,152 instead of TinyLlama's 32,000, since no hub tokenizer is available: 1.2B
parameters, 2.4 GB) in DIR (a temp dir by default; kept when given, and reused if already there), then runs
each measurement in its own process and reads its peak RSS (ru_maxrss of the child):

1. plain: safetensors load + save of the checkpoint (the floor of any step that reads and writes weights);
2. `jdna prune DIR -s 0.5`: time vs 1 (goal <= 3x), peak RSS vs the checkpoint size (goal <= 1.3x);
3. `jdna eval DIR --task file:<multiple choice>` with the default dtype: peak RSS vs the checkpoint (goal <=
   1.5x), and scoring throughput vs one padding-free forward over the same unique tokens (each question's
   prompt plus every option's tokens once, all packed into one sequence; goal >= 70%).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JDNA = [sys.executable, "-m", "jdna"]


def build(directory: Path, layers: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from jdna.demo import demo_model_dir

    if (directory / "config.json").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir("smollm2-135m")))
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.no_grad():
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="20GB")
    return directory


def measure(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS in bytes of the child, stdout)."""
    script = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "s = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "sys.stderr.write(p.stderr[-2000:])\n"
        "print(json.dumps({'rc': p.returncode, 's': s, 'rss': rss, 'out': p.stdout}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True,
                            env=env or os.environ.copy())
    data = json.loads(result.stdout.strip().splitlines()[-1])
    if data["rc"] != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return data["s"], data["rss"], data["out"]


def mc_task(path: Path, items: int) -> Path:
    rng = random.Random(0)
    words = "river mountain city king queen science history music art game number letter word story".split()
    rows = []
    for i in range(items + 4):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(30, 60))) + "?"
        choices = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(4)]
        rows.append({"id": f"q{i}", "question": question, "choices": choices, "gold": i % 4,
                     "split": "train" if i < 4 else "test"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


FORWARD = r'''
import json, sys, time, torch
from jdna.models import load_model, resolve
from jdna.tasks import load_task, format_mc_prompt
model, tok = load_model(resolve(sys.argv[1]), dtype="auto")
task = load_task(sys.argv[2])
seqs = []
for item in task.items:
    prompt, conts = format_mc_prompt(task, item, [])
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    for cont in conts:
        whole = tok(prompt + cont, add_special_tokens=False)["input_ids"]
        ids = ids + whole[len(tok(prompt, add_special_tokens=False)["input_ids"]):]
    seqs.append(ids)
packed = [token for ids in seqs for token in ids]  # one sequence: no padding, every unique token once
with torch.no_grad():
    model(input_ids=torch.tensor([packed[:8]]))
    t = time.perf_counter()
    model(input_ids=torch.tensor([packed]), use_cache=False)
    s = time.perf_counter() - t
print(json.dumps({"seconds": s, "tokens": sum(map(len, seqs)), "dtype": str(model.dtype)}))
'''


def _prune_measurements(directory: Path, weights: list[Path], size: int, work: Path, env: dict[str, str]):
    plain = [sys.executable, "-c",
             "import sys; from safetensors.torch import load_file, save_file; "
             "save_file(load_file(sys.argv[1]), sys.argv[2])", str(weights[0]), str(work / "copy.safetensors")]
    plain_s, plain_rss, _ = measure(plain, env)
    (work / "copy.safetensors").unlink()
    print(f"plain load+save: {plain_s:.1f} s, peak RSS {plain_rss / size:.2f}x the checkpoint", flush=True)

    prune_s, prune_rss, out = measure([*JDNA, "prune", str(directory), "-s", "0.5", "--force"], env)
    record = json.loads(out.strip().splitlines()[-1])
    print(f"jdna prune -s 0.5: {prune_s:.1f} s = {prune_s / plain_s:.2f}x plain (goal <= 3x); peak RSS "
          f"{prune_rss / size:.2f}x the checkpoint (goal <= 1.3x); in-command {record.get('seconds')} s", flush=True)

    return plain_s, plain_rss, prune_s, prune_rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the stand-in lives (kept; reused when present)")
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--eval-items", type=int, default=8)
    parser.add_argument("--skip-prune", action="store_true", help="only the eval measurements")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    directory = build(Path(args.dir) if args.dir else Path(scratch.name) / "tinyllama-shape", args.layers)
    weights = sorted(directory.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in weights)
    work = Path(scratch.name)
    env = {**os.environ, "JDNA_RUNS": str(work / "runs"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    print(f"checkpoint: {size / 2**30:.2f} GiB in {directory}; threads {os.environ.get('OMP_NUM_THREADS')}",
          flush=True)
    load_avg = os.getloadavg()[0]

    if args.skip_prune:
        plain_s = plain_rss = prune_s = prune_rss = float("nan")
    else:
        plain_s, plain_rss, prune_s, prune_rss = _prune_measurements(directory, weights, size, work, env)

    task = mc_task(work / "mc.jsonl", args.eval_items)
    eval_s, eval_rss, out = measure([*JDNA, "eval", str(directory), "--task", f"file:{task}", "--force"], env)
    record = json.loads(out.strip().splitlines()[-1])
    scoring = record["timing"]["scoring_seconds"]
    _, _, out = measure([sys.executable, "-c", FORWARD, str(directory), f"file:{task}"], env)
    forward = json.loads(out.strip().splitlines()[-1])
    print(f"jdna eval ({record['dtype']}): peak RSS {eval_rss / size:.2f}x the checkpoint (goal <= 1.5x); scoring "
          f"{scoring:.1f} s vs one padding-free forward over the same {forward['tokens']} unique tokens "
          f"{forward['seconds']:.1f} s: throughput {forward['seconds'] / scoring:.0%} (goal >= 70%)", flush=True)
    print(json.dumps({
        "checkpoint_bytes": size, "load_average_1min": load_avg, "threads": os.environ.get("OMP_NUM_THREADS"),
        "plain_s": round(plain_s, 2), "plain_rss_x": round(plain_rss / size, 3),
        "prune_s": round(prune_s, 2), "prune_x": round(prune_s / plain_s, 2), "prune_rss_x": round(prune_rss / size, 3),
        "eval_dtype": record["dtype"], "eval_rss_x": round(eval_rss / size, 3), "eval_scoring_s": scoring,
        "forward_s": round(forward["seconds"], 2), "unique_tokens": forward["tokens"],
        "eval_throughput": round(forward["seconds"] / scoring, 3),
    }))


if __name__ == "__main__":
    main()
