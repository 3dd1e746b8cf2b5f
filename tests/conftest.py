"""Tiny models built from configs in temporary directories, with an offline word-level tokenizer."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from jdna.progress import Reporter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(2)

WORDS = (
    "the a of and to in is was it for on with as by at from that this be are or an which but not have has "
    "model weight small large prune sparse dense task hard easy data train test answer question yes no cat "
    "dog red blue green one two three four five six seven eight nine ten river mountain city country king "
    "queen science history music art game play read write number letter word sentence story"
).split()

TEXT = " ".join(WORDS[(i * 7 + i // 3) % len(WORDS)] for i in range(3000))


def make_tokenizer(directory: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=64,
    )
    tokenizer.save_pretrained(directory)
    return tokenizer, len(vocab)


def tiny_llama_config(tokenizer, vocab_size: int):
    """The tiny Llama's configuration (2 blocks, hidden size 32, grouped-query attention)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_llama(directory: Path, seed: int = 0) -> Path:
    from transformers import LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_size = make_tokenizer(directory)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, vocab_size))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny_bert(directory: Path, seed: int = 0) -> Path:
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_size = make_tokenizer(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "notes.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own $JDNA_HOME and run store, and runs from a scratch directory."""
    monkeypatch.setenv("JDNA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JDNA_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


class InterruptAt(Reporter):
    """A reporter that sends this process SIGINT after optimizer step `step`, like a Ctrl-C."""

    def __init__(self, step: int) -> None:
        self.step = step

    def progress(self, stage: str, done: int, total: int) -> None:
        if stage.startswith("train") and done == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (use via `pytestmark`): the models are tiny, and on a busy 2-core
    machine OpenMP's spinning threads make every forward hundreds of times slower. Launched processes in the
    distributed tests run with OMP_NUM_THREADS=1 too, so in-process references match them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def prune_record(model_dir: Path, sparsity: str = "0.5") -> dict:
    """`jdna prune MODEL --sparsity S` run in process; its JSON record."""
    from tests.cli import run

    result = run("prune", str(model_dir), "--sparsity", sparsity)
    assert result.code == 0, result.stderr
    return result.record


def prune_path(model_dir: Path, sparsity: str = "0.5") -> str:
    return prune_record(model_dir, sparsity)["path"]


def model_parameters(path: str) -> dict[str, torch.Tensor]:
    """A model's parameters by canonical name, loaded the way every command loads it."""
    from jdna.models import canonical_parameters, load_model, resolve

    model, _ = load_model(resolve(path))
    return {name: p.detach().clone() for name, p in canonical_parameters(model).items()}
