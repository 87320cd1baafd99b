"""Train and load the project's tokenizer: byte-level BPE on the task corpus, one token per digit."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from stillwatch.builtin import resolve_model_dir
from stillwatch.tasks import TASK_NAMES, examples, get_task

EOS = "<|eos|>"
PAD = "<|pad|>"
# Chat messages become the plain task prompt: contents joined, ending in the newline that ends every prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    "{% if not messages[-1]['content'].endswith('\n') %}{{ '\n' }}{% endif %}"
)


def corpus(n_per_task: int = 2000, seed: int = 0) -> list[str]:
    """Prompts, traces and answers-only completions of every task: the text the tokenizer learns from."""
    texts: list[str] = []
    for name in TASK_NAMES:
        for ex in examples(get_task(name), n_per_task, seed):
            texts += [ex.prompt + ex.trace, ex.prompt + ex.answer_only]
    return texts


def train_tokenizer(vocab_size: int = 512, n_per_task: int = 2000, seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the task corpus; digits are split one per token before BPE."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(corpus(n_per_task, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with `save_pretrained` (or the shipped teacher's, for `builtin`)."""
    return PreTrainedTokenizerFast.from_pretrained(str(resolve_model_dir(path)))
