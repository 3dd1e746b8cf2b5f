"""The flags users of other tools type, mapped to jdna's, and suggestions for unknown options.

Wanda's and SparseGPT's scripts (`--model M --sparsity_ratio 0.5 --sparsity_type 2:4 --nsamples 128`), GPTQ's
(`--wbits 4 --percdamp .01 --act-order`), llm-compressor's and lm-evaluation-harness's (`--num_fewshot`,
`--log_samples`) spellings are rewritten to jdna's flags before parsing. Only aliases whose meaning is the same
are listed: GPTQ's `--groupsize` is not (jdna also needs `--granularity group`), so it is left to the suggestion.
"""

from __future__ import annotations

import difflib

_CALIBRATION = {
    "--nsamples": "--calib-samples",
    "--num_calibration_samples": "--calib-samples",
    "--num-calibration-samples": "--calib-samples",
    "--seqlen": "--calib-seqlen",
    "--max_seq_length": "--calib-seqlen",
    "--max-seq-length": "--calib-seqlen",
    "--percdamp": "--damp",
    "--dampening_frac": "--damp",
    "--blocksize": "--block-size",
    "--block_size": "--block-size",
    "--calib_samples": "--calib-samples",
    "--calib_seqlen": "--calib-seqlen",
}

ALIASES: dict[str, dict[str, str]] = {
    "prune": {
        **_CALIBRATION,
        "--sparsity_ratio": "--sparsity",
        "--sparsity-ratio": "--sparsity",
        "--sparsity_type": "--pattern",
        "--sparsity-type": "--pattern",
        "--prune_method": "--method",
        "--prune-method": "--method",
        "--owl_lambda": "--owl-lambda",
        "--owl_m": "--owl-m",
    },
    "quantize": {
        **_CALIBRATION,
        "--wbits": "--bits",
        "--w_bits": "--bits",
        "--num_bits": "--bits",
        "--num-bits": "--bits",
        "--act_order": "--act-order",
        "--desc_act": "--act-order",
        "--desc-act": "--act-order",
        "--group_size": "--group-size",
        "--quant_method": "--method",
    },
    "eval": {
        "--num_fewshot": "--num-fewshot",
        "--log_samples": "--log-samples",
        "--batch_size": "--batch-size",
        "--max_new_tokens": "--max-new-tokens",
        "--limit_mode": "--limit-mode",
    },
}


# Commands whose MODEL argument Wanda's and GPTQ's scripts pass as `--model PATH`.
MODEL_FLAG_COMMANDS = ("prune", "quantize")


def rewrite(command: str, args: list[str]) -> list[str]:
    """`args` with other tools' flag spellings for `command` replaced by jdna's (also in --flag=value form)."""
    table = ALIASES.get(command)
    if not table:
        return args
    out: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            return out + args[index:]
        name, sep, value = arg.partition("=")
        if name == "--model" and command in MODEL_FLAG_COMMANDS:
            if sep:
                out.append(value)
            continue  # without "=", the next word is the path: it stays, as the MODEL argument
        if name in table:
            arg = table[name] + sep + value
        out.append(arg)
    return out


def suggest_option(command: str, unknown: str, valid: list[str]) -> str | None:
    """The jdna flag an unknown option most likely means: through the alias table first, then by spelling."""
    table = ALIASES.get(command, {})
    spelled = unknown.replace("_", "-")
    if spelled in valid:
        return spelled
    candidates = {name: name for name in valid}
    candidates.update({alias: real for alias, real in table.items() if real in valid})
    # Close to an alias (e.g. --sparsity-typ): the alias's meaning, not the nearest spelling (--sparsity).
    match = difflib.get_close_matches(unknown, list(candidates), n=1, cutoff=0.75)
    if match:
        return candidates[match[0]]
    match = difflib.get_close_matches(spelled, valid, n=1, cutoff=0.6)
    return match[0] if match else None
