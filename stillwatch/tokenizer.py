"""Train and load the project's tokenizers over the task corpus.

Tokenizer A (`train_tokenizer`, the teachers'): byte-level BPE, GPT-2 style, one token per digit.
Tokenizer B (`train_tokenizer_b`, for cross-tokenizer distillation): another family over the same text, the way
a Llama- or Qwen-style tokenizer differs from a GPT-2-style one: character-level BPE with SentencePiece's "▁"
for spaces after words, pieces that span words and punctuation ("calls▁one▁", "s.▁one▁"), and the prompt's
label merged with what follows it ("story:▁girl"). Digits stay one per token, as in Llama and Qwen: a
tokenizer that cuts numbers into pairs left the 42k-parameter student unable to learn the arithmetic tasks at
all, whether it was taught by sft or kd (0% and 1% of add), so it measured the tokenizer, not distillation.
"""

from __future__ import annotations

from pathlib import Path

from typing import Callable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase
from transformers import PreTrainedTokenizerFast

from stillwatch.builtin import resolve_model_dir
from stillwatch.tasks import TASK_NAMES, examples, get_task

EOS = "<|eos|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
# Chat messages become the plain task prompt: each system or user message ends in the newline that ends every
# prompt, so one user message renders exactly as the task prompt. An assistant message is the completion and
# ends its turn with the end token, as the models learn it; `{% generation %}` marks it for
# `return_assistant_tokens_mask`, which TRL's `assistant_only_loss=True` reads. With no end token, a trainer on
# exported `messages` would never teach the student to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ message['content'] }}{% if not message['content'].endswith('\n') %}{{ '\n' }}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
)
# What tokenizers saved before the end-of-turn template hold; `load_tokenizer` upgrades it.
LEGACY_CHAT_TEMPLATES = (
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    "{% if not messages[-1]['content'].endswith('\n') %}{{ '\n' }}{% endif %}",
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


def train_tokenizer_b(vocab_size: int = 512, n_per_task: int = 2000, seed: int = 0) -> PreTrainedTokenizerFast:
    """Tokenizer B: character-level BPE on the same corpus, "▁" for spaces, one token per digit.

    Its vocabulary and merges differ from tokenizer A's: A writes " ->" then " " then the answer, B "▁->▁";
    A's words carry their space in front (" girl"), B's behind and across words ("calls▁one▁"), so stories
    share almost no token boundaries.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=False),
    ])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never", split=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], show_progress=False)
    tok.train_from_iterator(corpus(n_per_task, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


# The project's tokenizers by name (a preset names the one its students use).
TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerFast]] = {"a": train_tokenizer, "b": train_tokenizer_b}


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for bytes (the ByteLevel alphabet), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes | None]:
    """The bytes each token id stands for (None for special tokens): what a harvest's token strings spell.

    Byte-level vocabularies (GPT-2, Qwen, Llama 3) map their printable stand-ins back to bytes; SentencePiece
    ones turn "▁" into a space and "<0xNN>" into its byte; anything else is decoded one token at a time.
    """
    decoder = getattr(tokenizer.backend_tokenizer, "decoder", None) if hasattr(tokenizer, "backend_tokenizer") else None
    byte_level = "ByteLevel" in repr(decoder)
    inverse = _byte_decoder()
    specials = set(tokenizer.all_special_tokens)
    out: list[bytes | None] = [None] * len(tokenizer)
    for piece, i in tokenizer.get_vocab().items():
        if i >= len(out):
            out.extend([None] * (i + 1 - len(out)))
        if piece in specials:
            continue
        if byte_level and all(ch in inverse for ch in piece):
            out[i] = bytes(inverse[ch] for ch in piece)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = bytes([int(piece[3:5], 16)])
        elif "\u2581" in piece:
            out[i] = piece.replace("\u2581", " ").encode()
        else:
            out[i] = tokenizer.decode([i]).encode()
    return out


def token_strings(tokenizer: PreTrainedTokenizerBase) -> list[str | None]:
    """`token_bytes` as JSON-ready strings (bytes that are not UTF-8 kept as surrogate escapes): the vocabulary a
    harvest records so that a student with another tokenizer can spell the teacher's token ids."""
    return [None if b is None else b.decode("utf-8", "surrogateescape") for b in token_bytes(tokenizer)]


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with `save_pretrained` (or the shipped teacher's, for `builtin`), with a pad token.

    A directory with `tokenizer.json` loads as `PreTrainedTokenizerFast` (any family: GPT-2, Llama, Qwen);
    one with only a slow tokenizer (SentencePiece `tokenizer.model`) through `AutoTokenizer`, from local files.
    """
    path = resolve_model_dir(path)
    if (Path(path) / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if getattr(tokenizer, "chat_template", None) in LEGACY_CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATE
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token one: its end token (Llama's and Mistral's tokenizers ship none).

    Padding here is only ever a filler that the attention mask and the loss skip by length, never a label, so
    sharing the end token's id costs nothing and keeps the vocabulary (and the model's embedding) as it is.
    Failing that the unknown token; a tokenizer with neither is refused (a new token would change the vocabulary
    under the model).
    """
    if tokenizer.pad_token is not None:
        return tokenizer
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    elif getattr(tokenizer, "unk_token", None) is not None:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        from stillwatch.errors import ModelDirError

        raise ModelDirError(f"the tokenizer at {getattr(tokenizer, 'name_or_path', '?')} has no pad, end or unknown "
                            "token to pad with; give it a pad_token in tokenizer_config.json")
    return tokenizer
