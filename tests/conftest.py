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


# Tests `make test-fast` leaves out (marked `slow` at collection): whole files, test functions (every
# parametrization) or single parametrizations, by node id. Slow means torchrun, the Makefile, SIGKILL and other
# subprocess-heavy tests, and anything else over ~2 s on a busy 2-core machine (`pytest --durations=80`).
# Listed here rather than decorated in each file so that marking touches one file; tests/test_slow_marks.py
# checks every entry still names a test.
SLOW = (
    "tests/test_makefile_smoke.py",
    "tests/test_finetune_distributed.py",
    "tests/test_scale.py::test_torchrun_eval_matches_one_process",
    "tests/test_cli_start.py::test_shell_completion_completes_commands_and_options",
    "tests/test_cli_start.py::test_help_and_version_import_no_heavy_library",
    "tests/test_cli_start.py::test_wanda_and_gptq_flag_spellings_are_aliases",
    "tests/test_hardening.py::test_a_real_size_limit_fails_cleanly_and_keeps_the_old_file",
    "tests/test_hardening.py::test_sigkill_during_prune_leaves_no_broken_artifact",
    "tests/test_hardening.py::test_two_commands_racing_for_one_output_never_both_win",
    "tests/test_hardening.py::test_two_processes_making_the_same_artifact",
    "tests/test_hardening.py::test_samples_that_cannot_be_written_leave_no_record",
    "tests/test_hardening.py::test_a_full_stdout_is_one_line",
    "tests/test_hardening.py::test_fuzz_info_verify_on_mutated_headers",
    "tests/test_lowrank.py::test_rank_for_bits_is_the_closest_rank_by_brute_force",
    "tests/test_lmc.py::test_endpoints_reproduce_models_and_self_has_no_barrier",
    "tests/test_cli_quantize.py::test_lowrank_energy_and_half_rank_on_bert",
    "tests/test_cli_quantize.py::test_quantizing_a_pruned_artifact_keeps_exact_zeros[gptq]",
    "tests/test_cli_quantize.py::test_lowrank_full_rank_reproduces_weights_within_fp16",
    "tests/test_cli_quantize.py::test_lowrank_at_bits_per_weight_chooses_each_rank_from_its_shape",
    "tests/test_cli_quantize.py::test_gptq_quantize_loads_codes_and_beats_rtn_on_calibration_loss",
    "tests/test_cli_quantize.py::test_quantize_after_lowrank_of_pruned_carries_no_mask",
    "tests/test_finetune.py::test_mode_invariants",
    "tests/test_finetune_mc.py::test_finetune_mc_head_all_modes_and_eval_reproduces",
    "tests/test_pruning.py::test_sparsegpt_end_to_end_exact_sparsity_and_weights_stored",
    "tests/test_pruning.py::test_owl_with_sparsegpt_prunes_each_block_at_the_reference_ratio",
    "tests/test_tasks.py::test_eval_cli_on_bigbench_context_task",
    "tests/test_analysis.py::test_verdict_rule_error_rates_on_simulated_studies",
    "tests/test_plot.py::test_cli_renders_png_of_expected_size",
    "tests/test_plot.py::test_plot_from_a_difficulty_record",
    "tests/test_eval.py::test_predictions_do_not_depend_on_batch_size",
    "tests/test_eval.py::test_classification_fine_tunes_first_then_reuses_the_head",
    "tests/test_selection.py::test_bracket_needs_no_fallback_on_continuous_scores",
)


def is_slow(nodeid: str) -> bool:
    return any(nodeid == entry or nodeid.startswith((entry + "::", entry + "[")) for entry in SLOW)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)


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
