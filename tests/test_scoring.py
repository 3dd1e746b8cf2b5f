"""jdna.scoring against slow, obviously-correct references: a tiny random Llama, an offline BPE tokenizer.

The references re-implement lm-evaluation-harness's tokenisation independently and run one full forward per
option (or per token), with no cache, no padding and no batching.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from jdna import scoring
from jdna.scoring import ChoiceRequest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = (
    "the quick brown fox jumps over lazy dog question answer words word worded wording apple banana cherry "
    "river mountain ocean forest light dark red green blue yellow one two three four five six seven eight "
    "nine ten because therefore however"
).split()
SHOTS = "Question: what is the answer?\nAnswer: the answer is words.\n\n" * 3
TOL = 1e-4


def _corpus() -> list[str]:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(300)]
    return lines + ["Question: what is the answer?\nAnswer: the answer is words."] * 20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    """A 2-layer Llama with random weights and a 400-token byte-level BPE, saved and loaded back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,  # peaky distributions, so argmax is not decided by float noise
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------------------


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _lm_eval_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4's encoding: empty context -> BOS; trailing context whitespace moves to the continuation.

    Where lm-eval would fail (nothing left of the context, or a merge that swallows the continuation) we
    expect the documented fallbacks: BOS as context; split the whole encoding where it leaves the context's.
    """
    if context == "":
        return [tok.bos_token_id], _ids(tok, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _ids(tok, context + continuation)
    ctx = _ids(tok, context)
    if not ctx:
        return [tok.bos_token_id], whole
    if len(whole) <= len(ctx) and whole != ctx:
        k = 0
        while whole[k] == ctx[k]:
            k += 1
        return whole[:k], whole[k:]
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def _next_logprobs(model, inputs: list[int]) -> torch.Tensor:
    return torch.log_softmax(model(torch.tensor([inputs])).logits[0].double(), dim=-1)


def _brute_choice(model, tok, context: str, continuation: str, max_length: int = 256) -> tuple[float, bool]:
    ctx, cont = _lm_eval_pair(tok, context, continuation)
    window = (ctx + cont)[-(max_length + 1) :]
    logprobs = _next_logprobs(model, window[:-1])[-len(cont) :]
    targets = torch.tensor(cont)
    total = logprobs.gather(1, targets[:, None]).sum().item()
    return total, bool((logprobs.argmax(dim=-1) == targets).all())


def _brute_greedy(model, tok, prompt: str, max_new: int, stop: list[str], eos: set[int]) -> str:
    ids = _ids(tok, prompt)
    generated: list[int] = []
    for _ in range(max_new):
        token = int(_next_logprobs(model, ids + generated)[-1].argmax())
        if token in eos:
            break
        generated.append(token)
        if any(s in tok.decode(generated, skip_special_tokens=True) for s in stop):
            break
    text = tok.decode(generated, skip_special_tokens=True)
    for s in stop:
        text = text.split(s)[0]
    return text


def _requests() -> list[ChoiceRequest]:
    return [
        # k-shot prompt shared with the next request; options of very different lengths.
        ChoiceRequest(
            SHOTS + "Question: which fruit?\nAnswer:",
            [" apple", " banana cherry", " cherry river mountain ocean forest light dark", " apple banana"],
        ),
        # Trailing space in the context moves onto every continuation.
        ChoiceRequest(SHOTS + "Question: which colour is the sea?\nAnswer: ", ["blue", "green", "red light"]),
        # Empty context: conditioned on BOS.
        ChoiceRequest("", ["the quick brown fox", "one two"]),
        # Whitespace-only context: nothing left after moving the whitespace, conditioned on BOS.
        ChoiceRequest(" ", ["one", "two three"]),
        # Options sharing a long common prefix.
        ChoiceRequest(
            "the lazy dog",
            [
                " jumps over the quick brown fox and the river",
                " jumps over the quick brown fox and the ocean",
                " jumps over the quick brown fox",
            ],
        ),
        # Boundary merge: "word" + "s" tokenises as one token "words" in the whole string.
        ChoiceRequest("the answer is word", ["s", "ed", "ing", "s and words"]),
        # A single option.
        ChoiceRequest("four five", [" six seven"]),
    ]


# ----------------------------------------------------------------------------------------------------------
# Multiple choice
# ----------------------------------------------------------------------------------------------------------


def test_boundary_cases_really_merge(lm):
    _, tok = lm
    ctx = _ids(tok, "the answer is word")
    # lm-eval's case: merged, but tokens remain after len(ctx) ...
    whole = _ids(tok, "the answer is words and words")
    assert whole[: len(ctx)] != ctx and len(whole) > len(ctx)
    # ... and the case lm-eval cannot score: the merge swallows the whole continuation.
    assert len(_ids(tok, "the answer is words")) == len(ctx)


def test_choices_match_brute_force(lm):
    model, tok = lm
    requests = _requests()
    scores = scoring.loglikelihood_choices(model, tok, requests)
    assert len(scores) == len(requests)
    for request, score in zip(requests, scores, strict=True):
        for j, continuation in enumerate(request.continuations):
            expected, greedy = _brute_choice(model, tok, request.context, continuation)
            assert score.logprobs[j] == pytest.approx(expected, abs=TOL), (request.context, continuation)
            assert score.greedy[j] == greedy
            ctx, cont = _lm_eval_pair(tok, request.context, continuation)
            assert score.n_tokens[j] == len(cont)
            assert score.n_bytes[j] == len(continuation.encode("utf-8"))
            assert score.n_chars[j] == len(continuation)


def test_greedy_flags_true_for_the_models_own_continuation(lm):
    model, tok = lm
    contexts = ["the quick brown", SHOTS + "Question: which fruit?\nAnswer:", "one two three", "red green"]
    requests = []
    for context in contexts:
        ids = _ids(tok, context)
        generated: list[int] = []
        for _ in range(2):
            generated.append(int(_next_logprobs(model, ids + generated)[-1].argmax()))
        own = tok.decode(generated)
        requests.append(ChoiceRequest(context, [own, own + " apple", " banana", own[:1]]))
    scores = scoring.loglikelihood_choices(model, tok, requests, batch_size=2)
    for request, score in zip(requests, scores, strict=True):
        flags = [_brute_choice(model, tok, request.context, c)[1] for c in request.continuations]
        assert score.greedy == flags
    # The model's own greedy continuation is greedy whenever it re-tokenises to the same tokens
    # (a random model also emits byte fragments that do not).
    assert sum(score.greedy[0] for score in scores) >= 2


def test_choices_batch_size_invariant(lm, monkeypatch):
    model, tok = lm
    requests = _requests() * 3
    reference = scoring.loglikelihood_choices(model, tok, requests, batch_size=1)
    runs = [scoring.loglikelihood_choices(model, tok, requests, batch_size=bs) for bs in (3, 16, None)]
    monkeypatch.setattr(scoring, "_CPU_TOKEN_BUDGET", 64)  # auto sizing forced into many small batches
    runs.append(scoring.loglikelihood_choices(model, tok, requests))
    for run in runs:
        for ref, got in zip(reference, run, strict=True):
            assert got.logprobs == pytest.approx(ref.logprobs, abs=TOL)
            assert got.greedy == ref.greedy
            assert got.prediction == ref.prediction


def test_truncation_to_max_length(lm):
    model, tok = lm
    requests = [
        ChoiceRequest(SHOTS + "Question: which fruit?\nAnswer:", [" apple", " banana cherry river ocean"]),
        ChoiceRequest(SHOTS + "Question: which colour?\nAnswer:", [" blue", " green"]),
    ]
    scores = scoring.loglikelihood_choices(model, tok, requests, max_length=24)
    for request, score in zip(requests, scores, strict=True):
        for j, continuation in enumerate(request.continuations):
            expected, _ = _brute_choice(model, tok, request.context, continuation, max_length=24)
            assert score.logprobs[j] == pytest.approx(expected, abs=TOL)


def test_shared_few_shot_prefix_is_grouped(lm):
    model, tok = lm
    assert scoring._Runner(model, tok).staged, "the prefix-cached path is not in use for a plain Llama"
    requests = [
        ChoiceRequest(SHOTS + f"Question: {w}?\nAnswer:", [" yes", " no", " word"]) for w in WORDS[:6]
    ]
    requests.append(ChoiceRequest("four five", [" six", " seven"]))  # shares nothing: its own group
    encoded = scoring.encode_choice_requests(tok, requests, add_bos=False)
    units = scoring._build_units(encoded, 256)
    groups = scoring._group_units(units, scoring.MIN_SHARED_PREFIX)
    assert [sorted(members) for _, members in groups] == [list(range(6)), [6]]
    assert len(groups[0][0]) >= len(_ids(tok, SHOTS)) - 1 and groups[1][0] == []
    for batch_size in (2, None):
        scores = scoring.loglikelihood_choices(model, tok, requests, batch_size=batch_size)
        for request, score in zip(requests, scores, strict=True):
            expected = [_brute_choice(model, tok, request.context, c)[0] for c in request.continuations]
            assert score.logprobs == pytest.approx(expected, abs=TOL)


def test_uncached_path_agrees(lm, monkeypatch):
    model, tok = lm
    requests = _requests()
    cached = scoring.loglikelihood_choices(model, tok, requests)
    monkeypatch.setattr(scoring._Runner, "_staged_cache_ok", lambda self: False)
    plain = scoring.loglikelihood_choices(model, tok, requests, batch_size=4)
    for a, b in zip(cached, plain, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)
        assert a.greedy == b.greedy


def test_empty_inputs(lm):
    model, tok = lm
    assert scoring.loglikelihood_choices(model, tok, []) == []
    score = scoring.loglikelihood_choices(model, tok, [ChoiceRequest("one", ["", " two"])])[0]
    assert score.logprobs[0] == 0.0 and score.greedy[0] and score.n_tokens[0] == 0
    assert score.logprobs[1] < 0


# ----------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------

PROMPTS = [
    "the quick brown",
    SHOTS + "Question: which fruit?\nAnswer:",
    "one",
    "Question: what is the answer?\nAnswer:",
    "red green blue yellow light dark",
]


def test_generation_matches_brute_force_and_batch_size(lm):
    model, tok = lm
    eos = {tok.eos_token_id}
    free = [_brute_greedy(model, tok, p, 12, [], eos) for p in PROMPTS]
    # A stop string taken from inside the first unstopped output, so it certainly fires there.
    assert len(free[0]) > 4
    stop = [free[0][2:4], "\n\n"]
    expected = [_brute_greedy(model, tok, p, 12, stop, eos) for p in PROMPTS]
    assert expected[0] == free[0].split(stop[0])[0]
    for batch_size in (1, 3, 16, None):
        assert scoring.greedy_generate(model, tok, PROMPTS, 12, stop, batch_size=batch_size) == expected
    assert scoring.greedy_generate(model, tok, PROMPTS, 12, [], batch_size=2) == free


def test_generation_stops_at_eos(lm, monkeypatch):
    model, tok = lm
    ids = _ids(tok, PROMPTS[0])
    third = int(_next_logprobs(model, ids)[-1].argmax())
    # Declare the first generated token an end-of-sequence token: nothing may be generated.
    monkeypatch.setattr(model.generation_config, "eos_token_id", [third])
    expected = _brute_greedy(model, tok, PROMPTS[0], 8, [], {tok.eos_token_id, third})
    assert expected == ""
    assert scoring.greedy_generate(model, tok, PROMPTS[:2], 8, [], batch_size=2)[0] == ""


# ----------------------------------------------------------------------------------------------------------
# Rolling log-likelihood
# ----------------------------------------------------------------------------------------------------------

TEXT = " ".join(random.Random(1).choice(WORDS) for _ in range(60))


def _brute_rolling(model, tok, text: str, max_length: int, stride: int) -> tuple[float, int]:
    """Each token scored by its own forward on exactly the context its rolling window gives it."""
    tokens = _ids(tok, text)
    total = 0.0
    for i, token in enumerate(tokens):
        if i < max_length:
            context = [tok.bos_token_id] + tokens[:i]
        else:
            end = max_length + stride * ((i - max_length) // stride + 1)  # end of this token's window
            end = min(end, len(tokens))
            context = tokens[end - max_length - 1 : i]
        assert len(context) <= max_length
        total += _next_logprobs(model, context)[-1, token].item()
    return total, len(tokens)


@pytest.mark.parametrize("stride", [None, 5])
def test_rolling_matches_brute_force(lm, stride):
    model, tok = lm
    n_tokens = len(_ids(tok, TEXT))
    assert n_tokens > 3 * 16 and n_tokens % 16  # several windows, the last one partial
    total, count = scoring.rolling_loglikelihood(model, tok, TEXT, max_length=16, stride=stride)
    expected, expected_count = _brute_rolling(model, tok, TEXT, 16, stride or 16)
    assert count == expected_count == n_tokens
    assert total == pytest.approx(expected, abs=TOL)
    for batch_size in (1, 3):
        again, _ = scoring.rolling_loglikelihood(model, tok, TEXT, 16, stride, batch_size=batch_size)
        assert again == pytest.approx(total, abs=TOL)


def test_perplexity_helpers(lm):
    model, tok = lm
    total, count = scoring.rolling_loglikelihood(model, tok, TEXT, max_length=16)
    assert scoring.perplexity(model, tok, TEXT, max_length=16) == pytest.approx(math.exp(-total / count))
    assert scoring.word_perplexity(total, TEXT) == pytest.approx(math.exp(-total / 60))
    n_bytes = len(TEXT.encode())
    assert scoring.bits_per_byte(total, TEXT) == pytest.approx(-total / n_bytes / math.log(2))
    assert scoring.byte_perplexity(total, TEXT) == pytest.approx(math.exp(-total / n_bytes))
    assert scoring.rolling_loglikelihood(model, tok, "", max_length=16) == (0.0, 0)


def test_max_length_resolution(lm, monkeypatch):
    model, tok = lm
    assert scoring.resolve_max_length(model, tok) == 256  # the tokenizer states no real limit
    monkeypatch.setattr(tok, "model_max_length", 100)
    assert scoring.resolve_max_length(model, tok) == 100
    assert scoring.resolve_max_length(model, tok, 16) == 16
