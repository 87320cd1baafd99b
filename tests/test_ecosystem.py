"""Students from other ecosystems: a Llama-style tokenizer without a pad token, TRL's conversational SFT on
exported messages, and saved directories that load on the lowest transformers pyproject.toml allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stillwatch.cli import main
from stillwatch.tokenizer import corpus, load_tokenizer


def _llama_style_dir(path: Path) -> Path:
    """A Llama-style model directory built here: SentencePiece-like BPE with byte fallback, <s> </s> <unk> and no
    pad token (as Llama's and Mistral's tokenizers ship), and a LlamaForCausalLM whose config has no pad id."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=[f"<0x{b:02X}>" for b in range(256)])
    tok.train_from_iterator(corpus(200), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert fast.pad_token is None
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=None)
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    config_file = path / "tokenizer_config.json"
    saved = json.loads(config_file.read_text())
    saved["tokenizer_class"] = "LlamaTokenizerFast"  # what a real Llama directory names
    config_file.write_text(json.dumps(saved))
    return path


@pytest.fixture(scope="module")
def small_store(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eco") / "store.db"
    main(["harvest", "--teacher", str(tiny_teacher), "--task", "add", "--task", "story", "--n", "8",
          "--max-tokens", "40", "--out", str(path), "--no-progress"])
    return path


def test_llama_style_init_without_a_pad_token_distils(small_store: Path, tmp_path: Path) -> None:
    init = _llama_style_dir(tmp_path / "llama")
    tok = load_tokenizer(init)
    assert tok.pad_token == "</s>" and tok.pad_token_id == tok.eos_token_id  # derived, vocabulary unchanged
    out = tmp_path / "student"
    main(["distill", "--data", str(small_store), "--init", str(init), "--loss", "sft", "--steps", "2",
          "--batch-size", "4", "--out", str(out)])
    from stillwatch.models import load_model, read_card

    model, saved = load_model(out)
    assert read_card(out)["train"]["steps"] == 2 and saved.pad_token_id == saved.eos_token_id
    assert type(model).__name__ == "LlamaForCausalLM" and len(saved) == len(tok)


def test_exported_messages_end_their_turn_and_mark_the_assistant(small_store: Path, tmp_path: Path) -> None:
    from stillwatch.tokenizer import train_tokenizer

    main(["harvest", "export", str(small_store), "--out", str(tmp_path / "x.jsonl")])
    row = json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0])
    for tok in (load_tokenizer("builtin"), train_tokenizer(vocab_size=300)):
        text = tok.apply_chat_template(row["messages"], tokenize=False)
        assert text == row["prompt"] + row["completion"] + tok.eos_token
        enc = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids, mask = enc["input_ids"], enc["assistant_masks"]
        prompt_len = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        assert mask == [0] * prompt_len + [1] * (len(ids) - prompt_len) and ids[-1] == tok.eos_token_id


def test_trl_conversational_sft_with_assistant_only_loss(small_store: Path, tiny_teacher: Path,
                                                         tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from stillwatch.models import load_model

    main(["harvest", "export", str(small_store), "--out", str(tmp_path / "x.jsonl")])
    data = datasets.load_dataset("json", data_files=str(tmp_path / "x.jsonl"), split="train")
    data = data.select_columns(["messages"])
    model, tok = load_model(tiny_teacher)
    config = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=2, per_device_train_batch_size=4,
                           assistant_only_loss=True, report_to=[], save_strategy="no", logging_steps=1,
                           use_cpu=True, dataloader_num_workers=0, max_length=128)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
    first = trainer.train_dataset[0]
    # TRL keeps the loss on the assistant's tokens only (its labels are -100 elsewhere), the end token included.
    ids = first["input_ids"]
    labels = first.get("labels") or [t if m else -100 for t, m in zip(ids, first["assistant_masks"])]
    prompt_len = len(tok(data[0]["messages"][0]["content"], add_special_tokens=False)["input_ids"])
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    assert labels[:prompt_len] == [-100] * prompt_len and -100 not in labels[prompt_len:]
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss == result.training_loss


def test_saved_directories_load_on_transformers_4(tiny_teacher: Path, tmp_path: Path) -> None:
    """Runs where STILLWATCH_TEST_TRANSFORMERS4 names a directory holding transformers 4.x (a `pip install
    --target DIR transformers==4.56.2 'tokenizers<0.23' 'huggingface_hub<1'`); skips otherwise."""
    where = os.environ.get("STILLWATCH_TEST_TRANSFORMERS4")
    if not where or not Path(where).is_dir():
        pytest.skip("set STILLWATCH_TEST_TRANSFORMERS4 to a transformers 4.x install to run this")
    from stillwatch.models import load_model, save_model

    model, tok = load_model(tiny_teacher)
    save_model(model, tok, tmp_path / "saved")
    script = ("import sys, transformers, torch\n"
              "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              "assert transformers.__version__.startswith('4.'), transformers.__version__\n"
              "for d in sys.argv[1:]:\n"
              "    tok = AutoTokenizer.from_pretrained(d)\n"
              "    model = AutoModelForCausalLM.from_pretrained(d)\n"
              "    ids = tok('add: 12+34\\n', return_tensors='pt')['input_ids']\n"
              "    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)\n"
              "    text = tok.apply_chat_template([{'role': 'user', 'content': 'a'}, {'role': 'assistant', "
              "'content': 'b'}], tokenize=False)\n"
              "    assert text == 'a\\nb' + tok.eos_token, text\n"
              "    print(transformers.__version__, type(tok).__name__, out.shape[1])\n")
    env = {**os.environ, "PYTHONPATH": where}
    builtin = Path(__file__).resolve().parents[1] / "stillwatch" / "assets" / "teacher"
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "saved"), str(builtin)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("PreTrainedTokenizerFast") == 2
