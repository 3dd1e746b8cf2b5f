"""Fast language-model scoring for causal LMs, tokenised exactly as lm-evaluation-harness 0.4.x does.

Three scoring entry points, each taking an already-loaded ``transformers`` causal LM (eval mode) and its
tokenizer:

* :func:`loglikelihood_choices` -- multiple-choice log-likelihoods (lm-eval's ``loglikelihood``);
* :func:`greedy_generate` -- greedy decoding with stop strings (lm-eval's ``generate_until``);
* :func:`rolling_loglikelihood` / :func:`perplexity` -- rolling-window perplexity (``loglikelihood_rolling``).

Tokenisation follows ``HFLM.tok_encode``, ``TemplateLM._encode_pair`` and ``TemplateLM.loglikelihood``
(``lm_eval/models/huggingface.py`` and ``lm_eval/api/model.py`` of EleutherAI/lm-evaluation-harness 0.4.x):

* the context's trailing whitespace moves onto the continuation; with ``whole = enc(context + continuation)``
  and ``ctx = enc(context)`` the continuation tokens are ``whole[len(ctx):]``, and the model is fed
  ``ctx`` followed by those tokens (not ``whole``: a token merged across the boundary is not re-split);
* causal models get no special tokens, except Gemma models, for which lm-eval forces a BOS token;
* an empty context becomes the prefix token (BOS, else EOS) and the continuation is encoded on its own;
* ``context + continuation`` is cut from the left to ``max_length + 1`` tokens; the last one is not fed;
* rolling windows cut the text into disjoint blocks of ``max_length`` predicted tokens, each block with as
  much preceding text as fits; the very first token is conditioned on the prefix token.

The tokenisation is public, so that training on answer tokens (jdna.finetune.lm) splits prompt and answer
exactly as scoring does: :func:`encode_texts` (a batch of texts, with or without special tokens),
:func:`prefix_token_id` (what an empty context is conditioned on), :func:`split_whole` (lm-eval's split of a
``context + continuation`` encoding) and :func:`encode_choice_requests` (every option of every request).

Where lm-eval would stop with an assertion we do something sensible instead: a whitespace-only context is
treated like an empty one, and a continuation swallowed entirely by a boundary merge is scored from where the
whole encoding leaves the context's (see :func:`split_whole`).

Speed, the point of this module: lm-eval runs ``context + option`` through the model once per option.  Here
the tokens that all options of a request share (the context, plus any common start of the options) run once
and each option continues from their key/value cache; a prefix shared by a group of requests (typically the
instruction and the k shots) runs once for the whole group.  A scoring batch is at most three forward passes:

1. *shared prefix* -- the longest common prefix of a group of requests: batch 1, no padding, computed once
   per group and reused by all of its batches;
2. *request pass* -- the rest of each request's shared tokens, **left**-padded so all rows end in the same
   column, which makes the logits of the last context positions a cheap slice;
3. *option pass* -- each option's remaining tokens, right-padded, attending to the two earlier stages through
   a cache that gathers each option's request row one layer at a time, instead of keeping a full copy of the
   context cache per option.

Position ids are always passed explicitly and padding only adds masked-out columns, so padding never moves a
token; results depend on the batching only through float rounding (about 1e-5 in float32).  ``batch_size``
counts requests (prompts, rolling windows) per forward pass; ``None`` sizes batches from a memory estimate:
on CUDA half the free memory, on CPU a fixed budget of 4096 query tokens and 2 GiB per pass.  Models whose
cache is not a plain full-attention cache (sliding-window or hybrid layers) are scored without the prefix
cache, one full sequence per option: exact, but slower.
"""

from __future__ import annotations

import inspect
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

try:
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - transformers without layered caches: scored without prefix caching
    Cache = DynamicCache = DynamicLayer = None  # type: ignore[assignment,misc]

try:  # transformers >= 5 accepts a boolean (batch, seq) mask as `logits_to_keep`
    from transformers.modeling_utils import slice_logits_to_keep as _slice_logits_to_keep  # noqa: F401

    _BOOL_LOGITS_TO_KEEP = True
except ImportError:  # pragma: no cover - older transformers only take an int or a 1-D index
    _BOOL_LOGITS_TO_KEEP = False

__all__ = [
    "ChoiceRequest",
    "ChoiceScores",
    "bits_per_byte",
    "byte_perplexity",
    "encode_choice_requests",
    "encode_texts",
    "greedy_generate",
    "loglikelihood_choices",
    "perplexity",
    "prefix_token_id",
    "resolve_max_length",
    "rolling_loglikelihood",
    "split_whole",
    "word_perplexity",
]

# lm-eval's fallback when neither the model config nor the tokenizer states a context length.
DEFAULT_MAX_LENGTH = 2048
# Tokenizers report this kind of number when they have no real limit.
_TOKENIZER_LIMIT_SANE = 10**7
# A prefix shared by a group of requests is computed once only if it is at least this long; shorter ones
# cost more in bookkeeping and an extra forward than they save.
MIN_SHARED_PREFIX = 16
# Auto batch sizing on CPU: throughput stops improving long before memory runs out, so stay small.
_CPU_TOKEN_BUDGET = 4096
_CPU_BYTE_BUDGET = 2 * 1024**3
# On CUDA use this fraction of the free memory; the estimate below is rough, so leave head-room.
_CUDA_MEMORY_FRACTION = 0.5
# log-softmax is taken over at most this many logit rows at once, to bound the float32 working copy.
_LOGSOFTMAX_CHUNK = 512

# progress(done, total): called by the long-running scorers after each forward batch.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ChoiceRequest:
    """One multiple-choice question: a context (prompt) and the candidate continuations."""

    context: str
    continuations: list[str]


@dataclass
class ChoiceScores:
    """Scores of the continuations of one :class:`ChoiceRequest`, in the order given.

    ``logprobs`` sums the log-probabilities of each continuation's tokens given the context; ``greedy``
    says whether greedy decoding would have produced exactly those tokens; ``n_tokens`` counts them;
    ``n_bytes`` and ``n_chars`` are the UTF-8 byte and character lengths of the continuation string, for
    length-normalised accuracy.  (lm-eval's ``acc_norm`` divides by ``len(choice)``, the choice *without*
    the delimiter, usually a space, that the continuation starts with.)
    """

    logprobs: list[float]
    greedy: list[bool]
    n_tokens: list[int]
    n_bytes: list[int]
    n_chars: list[int] = field(default_factory=list)

    @property
    def prediction(self) -> int:
        """Index of the most likely continuation (the first one on ties, like ``numpy.argmax``)."""
        return max(range(len(self.logprobs)), key=lambda i: (self.logprobs[i], -i))


# ----------------------------------------------------------------------------------------------------------
# Tokenisation, as lm-eval does it
# ----------------------------------------------------------------------------------------------------------


def _text_config(model: Any) -> Any:
    config = model.config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def resolve_max_length(model: Any, tokenizer: Any, max_length: int | None = None) -> int:
    """The context length to score with: ``max_length`` if given, else the model's, capped by the tokenizer's.

    The model's length comes from the config (``n_positions``, ``max_position_embeddings`` or ``n_ctx``, in
    lm-eval's order); the tokenizer's ``model_max_length`` caps it unless it is a "no limit" placeholder.
    """
    if max_length is not None:
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        return int(max_length)
    config = _text_config(model)
    from_config = None
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            from_config = value
            break
    from_tokenizer = getattr(tokenizer, "model_max_length", None)
    if not (isinstance(from_tokenizer, int) and 0 < from_tokenizer < _TOKENIZER_LIMIT_SANE):
        from_tokenizer = None
    if from_config and from_tokenizer:
        return min(from_config, from_tokenizer)
    return from_config or from_tokenizer or DEFAULT_MAX_LENGTH


def _adds_bos(model: Any) -> bool:
    # lm-eval encodes without special tokens for causal models, except that it forces a BOS for Gemma.
    model_type = getattr(_text_config(model), "model_type", None) or getattr(model.config, "model_type", "")
    return "gemma" in (model_type or "")


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context, and the first rolling window, is conditioned on: BOS, else EOS."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition an empty context on")


def encode_texts(tokenizer: Any, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids of each text in one batched call; `add_special_tokens` as lm-eval (True for Gemma only)."""
    if not texts:
        return []
    # One batched call: fast tokenizers encode the whole list in parallel, with the same ids as `encode`.
    ids = tokenizer(list(texts), add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    return [list(x) for x in ids]


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def encode_choice_requests(
    tokenizer: Any, requests: Sequence[ChoiceRequest], add_bos: bool
) -> list[list[tuple[list[int], list[int]]]]:
    """For each request, the (context tokens, continuation tokens) of each option, by lm-eval's rules."""
    prefix = prefix_token_id(tokenizer)
    contexts: list[str] = []
    wholes: list[str] = []
    plain: list[str] = []
    for request in requests:
        if request.context == "":
            contexts.append("")
            plain.extend(request.continuations)
            continue
        # The context's trailing whitespace belongs to the continuation: encode the context without it.
        contexts.append(request.context.rstrip())
        wholes.extend(request.context + continuation for continuation in request.continuations)
    context_ids = iter(encode_texts(tokenizer, contexts, add_bos))
    whole_ids = iter(encode_texts(tokenizer, wholes, add_bos))
    plain_ids = iter(encode_texts(tokenizer, plain, add_bos))
    encoded = []
    for request in requests:
        ctx = next(context_ids)
        if request.context == "":
            encoded.append([([prefix], next(plain_ids)) for _ in request.continuations])
        elif not ctx:
            # A whitespace-only context encodes to nothing (lm-eval fails): condition on the prefix token.
            encoded.append([([prefix], next(whole_ids)) for _ in request.continuations])
        else:
            encoded.append([split_whole(ctx, next(whole_ids), prefix) for _ in request.continuations])
    return encoded


def split_whole(ctx: list[int], whole: list[int], prefix: int) -> tuple[list[int], list[int]]:
    """lm-eval's split of ``whole`` into (context tokens, continuation tokens), made total.

    lm-eval scores ``whole[len(ctx):]`` after ``ctx`` even when the last context token merged with the start
    of the continuation.  When the merge swallows the whole continuation that is empty and lm-eval stops
    with an assertion; we then split ``whole`` itself after its common prefix with ``ctx``, so that the
    merged token is what gets scored.
    """
    continuation = whole[len(ctx) :]
    if continuation or whole == ctx:
        return ctx, continuation
    common = _common_prefix_len(ctx, whole)
    return (whole[:common] or [prefix]), whole[common:]


def _rolling_windows(
    tokens: list[int], prefix_token: int, max_length: int, context_len: int
) -> Iterator[tuple[list[int], list[int]]]:
    """lm-eval's ``get_rolling_token_windows`` followed by ``make_disjoint_window``: (context, targets) pairs.

    Every token is a target exactly once.  The first window predicts up to ``max_length`` tokens after the
    prefix token; each later one predicts up to ``max_length - context_len + 1`` new tokens, preceded by
    enough of the text to fill ``max_length`` inputs.
    """
    if not tokens:
        return
    predict = max_length - context_len + 1
    first = min(max_length, len(tokens))
    window_input = [prefix_token] + tokens[: first - 1]
    targets = tokens[:first]
    yield window_input[: len(window_input) - (len(targets) - 1)], targets
    done = first
    while done < len(tokens):
        n_new = min(len(tokens) - done, predict)
        end = done + n_new
        window_input = tokens[max(0, end - max_length - 1) : end - 1]
        targets = tokens[end - n_new : end]
        yield window_input[: len(window_input) - (len(targets) - 1)], targets
        done += n_new


# ----------------------------------------------------------------------------------------------------------
# Running the model
# ----------------------------------------------------------------------------------------------------------


class _KV:
    """Keys and values of one stage for every layer, and which of its rows each row of a later pass reads.

    ``rows`` is ``None`` when the stage has a single row that every later row shares.
    """

    def __init__(
        self, keys: list[torch.Tensor], values: list[torch.Tensor], rows: torch.Tensor | None = None
    ) -> None:
        self.keys = keys
        self.values = values
        self.rows = rows

    def with_rows(self, rows: torch.Tensor | None) -> _KV:
        return _KV(self.keys, self.values, rows)


if DynamicLayer is not None:

    class _StagedLayer(DynamicLayer):  # type: ignore[misc,valid-type]
        """A cache layer that reads earlier stages without copying them per row and can record the new keys.

        ``update`` returns the earlier stages' keys gathered to this pass's rows, followed by the new keys.
        The gathered copy lives only while this layer runs, so an option pass costs one layer's worth of
        copies rather than a per-option copy of the whole context cache.
        """

        def __init__(
            self, stages: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], record: bool
        ) -> None:
            super().__init__()
            self._stages = stages
            self._past = sum(k.shape[-2] for k, _, _ in stages)
            self._record = record
            self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if self._record:
                self.recorded = (key_states, value_states)
            if not self._stages:
                return key_states, value_states
            batch = key_states.shape[0]
            keys = [_gather_rows(k, rows, batch) for k, _, rows in self._stages]
            values = [_gather_rows(v, rows, batch) for _, v, rows in self._stages]
            return torch.cat([*keys, key_states], dim=-2), torch.cat([*values, value_states], dim=-2)

        def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
            return self._past

    class _StagedCache(DynamicCache):  # type: ignore[misc,valid-type]
        """A cache made of :class:`_StagedLayer` s, one per decoder layer."""

        def __init__(self, layers: list[_StagedLayer]) -> None:
            Cache.__init__(self, layers=layers)


def _gather_rows(tensor: torch.Tensor, rows: torch.Tensor | None, batch: int) -> torch.Tensor:
    if rows is None:
        return tensor.expand(batch, *tensor.shape[1:])
    # Layers of a model split over several GPUs keep their keys on their own device.
    return tensor.index_select(0, rows.to(tensor.device))


class _Runner:
    """The model plus what we need to know about how to call it."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        first = next(model.parameters())
        self.device = first.device
        # `model.dtype` is the floating dtype even when the first parameter is a quantised integer tensor.
        self.dtype = getattr(model, "dtype", None) or first.dtype
        self.config = _text_config(model)
        params = inspect.signature(model.forward).parameters
        # transformers 5 renamed `past_key_values` to `cache`.
        self.cache_kwarg = next((name for name in ("cache", "past_key_values") if name in params), None)
        self.keeps_logits = "logits_to_keep" in params
        self.takes_positions = "position_ids" in params
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.n_layers = int(getattr(self.config, "num_hidden_layers", 0) or 0)
        self.staged = self._staged_cache_ok()

    def _staged_cache_ok(self) -> bool:
        # The staged cache stands in for a plain full-attention DynamicCache; anything else runs uncached.
        if DynamicLayer is None or self.cache_kwarg is None or not self.takes_positions or self.n_layers <= 0:
            return False
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types is not None:
            return all(kind == "full_attention" for kind in layer_types)
        return not getattr(self.config, "sliding_window", None)

    def tensor(self, data: Any, dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype, device=self.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        keep: torch.Tensor,
        stages: list[_KV] | None = None,
        record: bool = False,
    ) -> tuple[torch.Tensor, _KV | None]:
        """Logits at the ``keep`` positions, flattened row-major to (n_kept, vocab), and the recorded new KV.

        ``stages`` are earlier passes this one attends to (requires the staged cache); their columns come
        first in ``attention_mask``.
        """
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.takes_positions:
            kwargs["position_ids"] = position_ids
        layers = None
        if self.staged and (stages or record):
            layers = [
                _StagedLayer([(s.keys[i], s.values[i], s.rows) for s in stages or []], record)
                for i in range(self.n_layers)
            ]
            kwargs[self.cache_kwarg] = _StagedCache(layers)
            kwargs["use_cache"] = True
        elif stages:
            raise RuntimeError("earlier stages need the staged cache")
        else:
            kwargs["use_cache"] = False
        n_cols = keep.shape[1]
        kept_last = 0
        if self.keeps_logits:
            if _BOOL_LOGITS_TO_KEEP:
                kwargs["logits_to_keep"] = keep
            else:
                needed = keep.any(dim=0).nonzero()
                kept_last = n_cols - int(needed[0]) if len(needed) else 1
                kwargs["logits_to_keep"] = kept_last
        logits = self.model(**kwargs).logits
        if logits.dim() == 3:
            if kept_last:
                logits = logits[:, -kept_last:]
                keep = keep[:, -kept_last:]
            logits = logits[keep]
        recorded = None
        if record and layers is not None:
            pairs = [layer.recorded for layer in layers]
            if any(pair is None for pair in pairs):
                raise RuntimeError("the model did not write every layer's keys to the cache")
            recorded = _KV([p[0] for p in pairs], [p[1] for p in pairs])  # type: ignore[index]
        return logits, recorded

    # -- memory-aware batch sizing ---------------------------------------------------------------------------

    def budget(self) -> tuple[int, int]:
        """(query tokens, bytes) one forward pass may use when the batch size is chosen automatically."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            # Memory the caching allocator holds but does not use is free for us too.
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return 1 << 20, int(free * _CUDA_MEMORY_FRACTION)
        return _CPU_TOKEN_BUDGET, _CPU_BYTE_BUDGET

    def _kv_token_bytes(self) -> int:
        c = self.config
        heads = int(getattr(c, "num_attention_heads", 0) or getattr(c, "n_head", 0) or 16)
        hidden = int(getattr(c, "hidden_size", 0) or getattr(c, "n_embd", 0) or 1024)
        kv_heads = int(getattr(c, "num_key_value_heads", 0) or heads)
        head_dim = int(getattr(c, "head_dim", 0) or hidden // heads)
        return 2 * kv_heads * head_dim * self.dtype.itemsize  # keys + values of one token in one layer

    def pass_bytes(self, rows: int, queries: int, past: int, kept: int) -> int:
        """A rough upper bound of the transient working memory of one forward pass."""
        c = self.config
        width = self.dtype.itemsize
        hidden = int(getattr(c, "hidden_size", 0) or getattr(c, "n_embd", 0) or 1024)
        inner = int(getattr(c, "intermediate_size", 0) or getattr(c, "n_inner", 0) or 4 * hidden)
        heads = int(getattr(c, "num_attention_heads", 0) or getattr(c, "n_head", 0) or 16)
        vocab = int(getattr(c, "vocab_size", 0) or 32000)
        columns = past + queries
        total = rows * queries * (6 * hidden + 3 * inner) * width  # activations of one layer
        total += 2 * rows * columns * self._kv_token_bytes()  # earlier stages gathered, then concatenated
        total += rows * heads * queries * columns * 4  # attention scores, if the kernel materialises them
        total += kept * vocab * (width + 8)  # kept logits, plus float32 log-softmax chunks
        return total

    def stored_bytes(self, tokens: int) -> int:
        """Memory of the keys and values of ``tokens`` tokens kept for a later pass, all layers."""
        return tokens * self._kv_token_bytes() * max(self.n_layers, 1)


def _gather_logprobs(
    logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and whether the target is the argmax, for each (row, target) pair, in float64/bool."""
    logprobs = []
    is_top = []
    for lo in range(0, len(rows), _LOGSOFTMAX_CHUNK):
        r = rows[lo : lo + _LOGSOFTMAX_CHUNK]
        t = targets[lo : lo + _LOGSOFTMAX_CHUNK]
        chunk = logits.index_select(0, r).float()
        # float32 log-softmax, like lm-eval on a float32 model; more accurate than the model dtype on bf16.
        picked = chunk.gather(1, t[:, None])[:, 0] - torch.logsumexp(chunk, dim=-1)
        logprobs.append(picked.double())
        is_top.append(chunk.argmax(dim=-1) == t)
    if not logprobs:
        empty = torch.zeros(0, device=logits.device)
        return empty.double(), empty.bool()
    return torch.cat(logprobs), torch.cat(is_top)


# ----------------------------------------------------------------------------------------------------------
# Multiple choice
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Option:
    out: tuple[int, int]  # (request index, option index)
    window: list[int]  # the last max_length + 1 tokens of context + continuation; the input is window[:-1]
    n_scored: int  # the continuation tokens, at the end of the window

    @property
    def n_inputs(self) -> int:
        return len(self.window) - 1

    @property
    def first_scored(self) -> int:
        # Input position whose logits predict the first continuation token.
        return self.n_inputs - self.n_scored


@dataclass
class _Unit:
    """Options scored from one shared prefix: normally all options of one request."""

    prefix: list[int]
    options: list[_Option]

    @property
    def first_scored(self) -> int:
        return min(option.first_scored for option in self.options)

    @property
    def shareable(self) -> int:
        # How much of the prefix a group may compute for it: none of the positions whose logits it scores,
        # and never the whole prefix, so the request pass always has a token for this unit.
        return max(0, min(self.first_scored, len(self.prefix) - 1))

    @property
    def longest_suffix(self) -> int:
        return max(option.n_inputs - len(self.prefix) for option in self.options)


def _build_units(encoded: list[list[tuple[list[int], list[int]]]], max_length: int) -> list[_Unit]:
    units = []
    for r, pairs in enumerate(encoded):
        options = []
        for j, (context, continuation) in enumerate(pairs):
            if not continuation:
                continue  # an empty continuation: log-probability 0, trivially greedy
            if len(continuation) > max_length:
                raise ValueError(
                    f"continuation {j} of request {r} has {len(continuation)} tokens, more than max_length "
                    f"{max_length}"
                )
            window = (context + continuation)[-(max_length + 1) :]
            options.append(_Option((r, j), window, len(continuation)))
        if not options:
            continue
        shared = options[0].n_inputs
        for option in options[1:]:
            shared = _common_prefix_len(options[0].window[:shared], option.window[: option.n_inputs])
        if shared == 0:
            # Left truncation cut the options at different offsets: nothing in common, score each alone.
            units.extend(_Unit(option.window[:-1], [option]) for option in options)
        else:
            units.append(_Unit(options[0].window[:shared], options))
    return units


def _group_units(units: list[_Unit], min_shared: int) -> list[tuple[list[int], list[int]]]:
    """Groups of units (shared prefix, unit indices) so that each group's common prefix is run once.

    Units are sorted by their tokens so that those with the longest common prefixes are neighbours; a unit
    joins the current group if it keeps at least ``min_shared`` tokens and at least half of what the group
    shared so far (so a long few-shot prefix is not traded for a short generic instruction).  Units that share
    nothing worth computing separately form one group with an empty prefix.
    """
    order = sorted(range(len(units)), key=lambda i: units[i].prefix)
    groups: list[tuple[list[int], list[int]]] = []
    loose: list[int] = []
    members: list[int] = []
    shared: list[int] = []

    def close() -> None:
        if len(members) >= 2 and len(shared) >= min_shared:
            groups.append((shared, list(members)))
        else:
            loose.extend(members)

    for i in order:
        candidate = units[i].prefix[: units[i].shareable]
        if members:
            n = _common_prefix_len(shared, candidate)
            if n >= min_shared and 2 * n >= len(shared):
                members.append(i)
                shared = shared[:n]
                continue
            close()
        members, shared = [i], candidate
    if members:
        close()
    if loose:
        groups.append(([], sorted(loose)))
    return groups


def _plan_batches(
    runner: _Runner, units: list[_Unit], indices: list[int], shared_len: int, batch_size: int | None
) -> list[list[int]]:
    """Split a group's units (longest first) into batches, by count or by the memory estimate."""
    order = sorted(
        indices,
        key=lambda i: (-(len(units[i].prefix) + units[i].longest_suffix), units[i].prefix, i),
    )
    if batch_size is not None:
        return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    max_tokens, max_bytes = runner.budget()

    def fits(n_rows: int, r: int, n_opts: int, s: int) -> bool:
        if n_rows * r + n_opts * s > max_tokens:
            return False
        stored = runner.stored_bytes(n_rows * r)  # the request pass's keys, alive during the option pass
        request_pass = runner.pass_bytes(n_rows, r, shared_len, 4 * n_rows)
        option_pass = runner.pass_bytes(n_opts, s, shared_len + r, n_opts * s)
        return stored + max(request_pass, option_pass) <= max_bytes

    batches: list[list[int]] = []
    batch: list[int] = []
    r_max = s_max = n_opts = 0
    for i in order:
        unit = units[i]
        r = max(r_max, len(unit.prefix) - shared_len)
        s = max(s_max, unit.longest_suffix)
        if batch and not fits(len(batch) + 1, r, n_opts + len(unit.options), s):
            batches.append(batch)
            batch, r_max, s_max, n_opts = [], 0, 0, 0
            r, s = len(unit.prefix) - shared_len, unit.longest_suffix
        batch.append(i)
        r_max, s_max, n_opts = r, s, n_opts + len(unit.options)
    if batch:
        batches.append(batch)
    return batches


def _run_shared_prefix(runner: _Runner, tokens: list[int]) -> _KV:
    n = len(tokens)
    ids = runner.tensor([tokens])
    mask = torch.ones_like(ids)
    positions = runner.tensor([list(range(n))])
    keep = torch.zeros(1, n, dtype=torch.bool, device=runner.device)
    _, kv = runner.forward(ids, mask, positions, keep, record=True)
    assert kv is not None
    return kv


def _score_units_staged(
    runner: _Runner, units: list[_Unit], shared: _KV | None, shared_len: int
) -> list[tuple[tuple[int, int], float, bool]]:
    """Score a batch of units with the request pass and the option pass (see the module docstring)."""
    device = runner.device
    n_rows = len(units)
    r_lens = [len(unit.prefix) - shared_len for unit in units]
    r_max = max(r_lens)

    # Request pass: left-padded so every row's last prefix token sits in the last column.
    ids = torch.full((n_rows, r_max), runner.pad_id, dtype=torch.long)
    mask = torch.zeros(n_rows, shared_len + r_max, dtype=torch.long)
    mask[:, :shared_len] = 1
    positions = torch.zeros(n_rows, r_max, dtype=torch.long)
    keep = torch.zeros(n_rows, r_max, dtype=torch.bool)
    prefix_row: list[int] = []  # index of each unit's first kept prefix logit
    n_kept = 0
    for b, (unit, r_len) in enumerate(zip(units, r_lens, strict=True)):
        pad = r_max - r_len
        ids[b, pad:] = torch.tensor(unit.prefix[shared_len:])
        mask[b, shared_len + pad :] = 1
        positions[b, pad:] = torch.arange(shared_len, len(unit.prefix))
        first = unit.first_scored  # >= shared_len: groups never share a scored position
        if first < len(unit.prefix):
            keep[b, pad + first - shared_len :] = True
        prefix_row.append(n_kept)
        n_kept += max(0, len(unit.prefix) - first)
    stages = [shared] if shared is not None else []
    prefix_logits, request_kv = runner.forward(
        ids.to(device), mask.to(device), positions.to(device), keep.to(device), stages=stages, record=True
    )
    assert request_kv is not None

    # Option pass: the remaining tokens of each option, right-padded, on top of both earlier stages.
    with_suffix = [
        (b, option)
        for b, unit in enumerate(units)
        for option in unit.options
        if option.n_inputs > len(unit.prefix)
    ]
    suffix_row: dict[tuple[int, int], int] = {}
    suffix_logits = prefix_logits[:0]
    if with_suffix:
        s_lens = [option.n_inputs - len(units[b].prefix) for b, option in with_suffix]
        s_max = max(s_lens)
        n_opts = len(with_suffix)
        ids = torch.full((n_opts, s_max), runner.pad_id, dtype=torch.long)
        opt_mask = torch.zeros(n_opts, shared_len + r_max + s_max, dtype=torch.long)
        positions = torch.zeros(n_opts, s_max, dtype=torch.long)
        keep = torch.zeros(n_opts, s_max, dtype=torch.bool)
        owners = []
        n_kept = 0
        for k, ((b, option), s_len) in enumerate(zip(with_suffix, s_lens, strict=True)):
            p_len = len(units[b].prefix)
            ids[k, :s_len] = torch.tensor(option.window[p_len : option.n_inputs])
            opt_mask[k, : shared_len + r_max] = mask[b]
            opt_mask[k, shared_len + r_max : shared_len + r_max + s_len] = 1
            positions[k, :s_len] = torch.arange(p_len, option.n_inputs)
            first = max(option.first_scored, p_len) - p_len
            keep[k, first:s_len] = True
            suffix_row[option.out] = n_kept
            n_kept += s_len - first
            owners.append(b)
        rows = torch.tensor(owners, device=device)
        stages = [shared] if shared is not None else []
        stages.append(request_kv.with_rows(rows))
        suffix_logits, _ = runner.forward(
            ids.to(device), opt_mask.to(device), positions.to(device), keep.to(device), stages=stages
        )

    # Collect every scored (logit row, target) pair; prefix rows first, then option rows.
    n_prefix = prefix_logits.shape[0]
    logit_rows, targets, owner = [], [], []
    flat: list[tuple[int, int]] = []
    for b, unit in enumerate(units):
        p_len = len(unit.prefix)
        for option in unit.options:
            o = len(flat)
            flat.append(option.out)
            for pos in range(option.first_scored, option.n_inputs):
                if pos < p_len:
                    logit_rows.append(prefix_row[b] + pos - unit.first_scored)
                else:
                    first = max(option.first_scored, p_len)
                    logit_rows.append(n_prefix + suffix_row[option.out] + pos - first)
                targets.append(option.window[pos + 1])
                owner.append(o)
    logits = torch.cat([prefix_logits, suffix_logits]) if suffix_logits.shape[0] else prefix_logits
    return _sum_by_owner(logits, logit_rows, targets, owner, flat)


def _sum_by_owner(
    logits: torch.Tensor, logit_rows: list[int], targets: list[int], owner: list[int], outs: list[Any]
) -> list[tuple[Any, float, bool]]:
    """Per owner: the summed log-probability of its (logit row, target) pairs and whether all were argmax."""
    # The logits come off the last layer, which need not share the device of the embeddings.
    device = logits.device
    logprobs, is_top = _gather_logprobs(
        logits, torch.tensor(logit_rows, device=device), torch.tensor(targets, device=device)
    )
    owner_t = torch.tensor(owner, device=device, dtype=torch.long)
    totals = torch.zeros(len(outs), dtype=torch.float64, device=device).index_add_(0, owner_t, logprobs)
    misses = torch.zeros(len(outs), dtype=torch.long, device=device).index_add_(0, owner_t, (~is_top).long())
    return [
        (out, float(t), int(m) == 0) for out, t, m in zip(outs, totals.tolist(), misses.tolist(), strict=True)
    ]


def _score_sequences(
    runner: _Runner,
    items: list[tuple[list[int], int]],
    batch_size: int | None,
    on_batch: Callable[[list[int]], None] | None = None,
) -> list[tuple[float, bool]]:
    """Score independent sequences without a cache; each item is (window, n_scored), scored like lm-eval.

    The model sees ``window[:-1]`` and the last ``n_scored`` tokens of ``window`` are the targets.  Batches
    are right-padded and sorted longest first.
    """
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][0]), i))
    results: list[tuple[float, bool]] = [(0.0, True)] * len(items)
    max_tokens, max_bytes = runner.budget()
    start = 0
    while start < len(order):
        longest = len(items[order[start]][0]) - 1
        if batch_size is not None:
            count = batch_size
        else:
            count = 1
            while start + count < len(order):
                rows = count + 1
                kept = sum(items[order[start + k]][1] for k in range(rows))
                if rows * longest > max_tokens or runner.pass_bytes(rows, longest, 0, kept) > max_bytes:
                    break
                count = rows
        chunk = order[start : start + count]
        start += count
        width = max(len(items[i][0]) - 1 for i in chunk)
        ids = torch.full((len(chunk), width), runner.pad_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        keep = torch.zeros(len(chunk), width, dtype=torch.bool)
        logit_rows, targets, owner = [], [], []
        n_kept = 0
        for b, i in enumerate(chunk):
            window, n_scored = items[i]
            n = len(window) - 1
            ids[b, :n] = torch.tensor(window[:-1])
            mask[b, :n] = 1
            keep[b, n - n_scored : n] = True
            for k in range(n_scored):
                logit_rows.append(n_kept + k)
                targets.append(window[n - n_scored + k + 1])
                owner.append(b)
            n_kept += n_scored
        positions = torch.arange(width).expand(len(chunk), width)
        logits, _ = runner.forward(
            ids.to(runner.device), mask.to(runner.device), positions.to(runner.device), keep.to(runner.device)
        )
        for i, (_, total, greedy) in zip(
            chunk, _sum_by_owner(logits, logit_rows, targets, owner, chunk), strict=True
        ):
            results[i] = (total, greedy)
        if on_batch is not None:
            on_batch(chunk)
    return results


class _RequestProgress:
    """Counts requests whose every option has been scored (options are scored in length order, not by
    request), and reports them; requests without options to score count as done from the start."""

    def __init__(self, units: list[_Unit], n_requests: int, progress: ProgressCallback) -> None:
        self.left = Counter(option.out[0] for unit in units for option in unit.options)
        self.finished = n_requests - len(self.left)
        self.total = n_requests
        self.progress = progress
        progress(self.finished, self.total)  # the clock of the rate and ETA starts now

    def done(self, owners: list[int]) -> None:
        for owner in owners:
            self.left[owner] -= 1
            self.finished += self.left[owner] == 0
        self.progress(self.finished, self.total)


@torch.inference_mode()
def loglikelihood_choices(
    model: Any,
    tokenizer: Any,
    requests: list[ChoiceRequest],
    batch_size: int | None = None,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[ChoiceScores]:
    """Log-likelihood of every continuation of every request, given its context, as lm-eval computes it.

    Each request's context (and any tokens all its options share) is run once and each option continues from
    the cached state; a prefix shared by many requests (instruction + few shots) is run once per group.
    ``batch_size`` is the number of requests per forward pass (``None``: sized from memory); it changes the
    results by float rounding only.  ``max_length`` defaults to :func:`resolve_max_length`.  ``progress(done,
    total)`` is called after each forward batch with the number of requests scored so far.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not requests:
        return []
    runner = _Runner(model, tokenizer)
    length = resolve_max_length(model, tokenizer, max_length)
    encoded = encode_choice_requests(tokenizer, requests, _adds_bos(model))
    scores = [
        ChoiceScores(
            logprobs=[0.0] * len(request.continuations),
            greedy=[True] * len(request.continuations),
            n_tokens=[len(cont) for _, cont in pairs],
            n_bytes=[len(c.encode("utf-8")) for c in request.continuations],
            n_chars=[len(c) for c in request.continuations],
        )
        for request, pairs in zip(requests, encoded, strict=True)
    ]
    units = _build_units(encoded, length)
    tracker = _RequestProgress(units, len(requests), progress) if progress is not None else None

    if runner.staged:
        results = []
        shared_cache: dict[tuple[int, ...], _KV] = {}
        for shared_tokens, members in _group_units(units, MIN_SHARED_PREFIX):
            shared = None
            if shared_tokens:
                key = tuple(shared_tokens)
                if key not in shared_cache:
                    shared_cache.clear()  # one group at a time: groups never come back
                    shared_cache[key] = _run_shared_prefix(runner, shared_tokens)
                shared = shared_cache[key]
            for batch in _plan_batches(runner, units, members, len(shared_tokens), batch_size):
                batch_units = [units[i] for i in batch]
                results.extend(_score_units_staged(runner, batch_units, shared, len(shared_tokens)))
                if tracker is not None:
                    tracker.done([option.out[0] for unit in batch_units for option in unit.options])
    else:
        options = [option for unit in units for option in unit.options]
        on_batch = None
        if tracker is not None:
            on_batch = lambda chunk: tracker.done([options[i].out[0] for i in chunk])  # noqa: E731
        scored = _score_sequences(runner, [(o.window, o.n_scored) for o in options], batch_size, on_batch)
        results = [(o.out, total, greedy) for o, (total, greedy) in zip(options, scored, strict=True)]

    for (r, j), total, greedy in results:
        scores[r].logprobs[j] = total
        scores[r].greedy[j] = greedy
    return scores


# ----------------------------------------------------------------------------------------------------------
# Greedy generation
# ----------------------------------------------------------------------------------------------------------


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, (list, tuple)):
        ids.update(int(x) for x in configured)
    return ids


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    # Same as lm-eval's `for term in until: s = s.split(term)[0]`: cut at the earliest stop string.
    for term in stop:
        if term:
            text = text.split(term)[0]
    return text


def _output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _generate_batch(
    runner: _Runner,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop: Sequence[str],
    eos: set[int],
) -> list[str]:
    model, tokenizer, device = runner.model, runner.tokenizer, runner.device
    n = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((n, width), runner.pad_id, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    positions = torch.zeros(n, width, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt) :] = torch.tensor(prompt)
        mask[b, width - len(prompt) :] = 1
        positions[b, width - len(prompt) :] = torch.arange(len(prompt))
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    next_pos = torch.tensor([len(p) for p in prompts], device=device)
    generated: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))  # rows still generating, in the order of the batch rows below
    cache = None
    stops = [s for s in stop if s]
    for _ in range(max_new_tokens):
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
        if runner.takes_positions:
            kwargs["position_ids"] = positions
        if cache is not None and runner.cache_kwarg is not None:
            kwargs[runner.cache_kwarg] = cache
        if runner.keeps_logits:
            kwargs["logits_to_keep"] = 1
        output = model(**kwargs)
        cache = _output_cache(output)
        chosen = output.logits[:, -1].argmax(dim=-1).tolist()
        still = []
        for k, token in enumerate(chosen):
            row = active[k]
            if token in eos:
                continue
            generated[row].append(token)
            if stops:
                text = tokenizer.decode(generated[row], skip_special_tokens=True)
                if any(s in text for s in stops):
                    continue
            still.append(k)
        if not still:
            break
        if len(still) < len(active):
            # Drop finished rows.  A CPU index works for every layer, wherever each layer's cache lives.
            keep_rows = torch.tensor(still)
            cache.batch_select_indices(keep_rows)
            mask = mask.index_select(0, keep_rows.to(device))
            next_pos = next_pos.index_select(0, keep_rows.to(device))
            chosen = [chosen[k] for k in still]
            active = [active[k] for k in still]
        ids = torch.tensor(chosen, device=device)[:, None]
        positions = next_pos[:, None]
        next_pos = next_pos + 1
        mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype, device=device)], dim=1)
    return [_cut_at_stop(tokenizer.decode(g, skip_special_tokens=True), stop) for g in generated]


@torch.inference_mode()
def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    stop: list[str],
    batch_size: int | None = None,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[str]:
    """Greedy continuation of each prompt, cut at the first stop string, as lm-eval's ``generate_until``.

    Prompts are encoded like lm-eval (no special tokens; left-truncated to ``max_length - max_new_tokens``),
    sorted longest first and decoded in left-padded batches with a KV cache.  A row stops at EOS or once its
    text contains a stop string; a batch stops when all rows have.  The output does not depend on
    ``batch_size`` (up to exact float ties between the top two tokens).  ``progress(done, total)`` is called
    after each batch with the number of prompts answered so far.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not prompts or max_new_tokens <= 0:
        return [""] * len(prompts)
    stop = list(stop or [])
    runner = _Runner(model, tokenizer)
    length = resolve_max_length(model, tokenizer, max_length)
    room = max(1, length - max_new_tokens)
    prefix = prefix_token_id(tokenizer)
    encoded = [ids[-room:] or [prefix] for ids in encode_texts(tokenizer, prompts, _adds_bos(model))]
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    eos = _eos_ids(model, tokenizer)
    outputs = [""] * len(prompts)
    max_tokens, max_bytes = runner.budget()
    if progress is not None:
        progress(0, len(prompts))  # the clock of the rate and ETA starts now
    start = 0
    while start < len(order):
        span = len(encoded[order[start]]) + max_new_tokens
        if batch_size is not None:
            count = batch_size
        else:
            count = 1
            while start + count < len(order):
                rows = count + 1
                memory = runner.pass_bytes(rows, span, 0, rows) + runner.stored_bytes(rows * span)
                if rows * span > max_tokens or memory > max_bytes:
                    break
                count = rows
        chunk = order[start : start + count]
        start += count
        texts = _generate_batch(runner, [encoded[i] for i in chunk], max_new_tokens, stop, eos)
        for i, text in zip(chunk, texts, strict=True):
            outputs[i] = text
        if progress is not None:
            progress(min(start, len(prompts)), len(prompts))
    return outputs


# ----------------------------------------------------------------------------------------------------------
# Rolling log-likelihood and perplexities
# ----------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def rolling_loglikelihood(
    model: Any,
    tokenizer: Any,
    text: str,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
) -> tuple[float, int]:
    """(total log-likelihood, number of tokens) of ``text``, every token scored exactly once.

    The default ``stride`` (= ``max_length``) gives lm-eval's ``loglikelihood_rolling`` windows: disjoint
    blocks of ``max_length`` predictions, the first conditioned on the BOS (else EOS) token, the last one
    given a full ``max_length`` of context.  A smaller stride predicts ``stride`` new tokens per window, so
    every token sees at least ``max_length - stride`` tokens of context (slower, lower perplexity).
    """
    length = resolve_max_length(model, tokenizer, max_length)
    stride = length if stride is None else stride
    if not 1 <= stride <= length:
        raise ValueError(f"stride must be between 1 and max_length ({length}), got {stride}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    runner = _Runner(model, tokenizer)
    tokens = encode_texts(tokenizer, [text], _adds_bos(model))[0]
    windows = _rolling_windows(tokens, prefix_token_id(tokenizer), length, length - stride + 1)
    items = [((context + targets)[-(length + 1) :], len(targets)) for context, targets in windows]
    scored = _score_sequences(runner, items, batch_size)
    return math.fsum(total for total, _ in scored), len(tokens)


def perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
) -> float:
    """Token-level perplexity ``exp(-total / n_tokens)`` of ``text`` from :func:`rolling_loglikelihood`."""
    total, n_tokens = rolling_loglikelihood(model, tokenizer, text, max_length, stride, batch_size)
    if n_tokens == 0:
        raise ValueError("cannot compute the perplexity of a text with no tokens")
    return math.exp(-total / n_tokens)


def word_perplexity(total_logprob: float, text: str) -> float:
    """lm-eval's ``word_perplexity``: ``exp(-total / words)``, counting ``re.split(r"\\s+", text)``."""
    return math.exp(-total_logprob / len(re.split(r"\s+", text)))


def byte_perplexity(total_logprob: float, text: str) -> float:
    """lm-eval's ``byte_perplexity``: ``exp(-total / UTF-8 bytes)``."""
    return math.exp(-total_logprob / len(text.encode("utf-8")))


def bits_per_byte(total_logprob: float, text: str) -> float:
    """lm-eval's ``bits_per_byte``: ``-total / (UTF-8 bytes * ln 2)``."""
    return -total_logprob / (len(text.encode("utf-8")) * math.log(2))
