"""LocalTeacher: an HF model directory in process, with batched KV-cache generation and exact logprobs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from stillwatch.errors import ConfigError
from stillwatch.models import load_model
from stillwatch.teachers.completion import Completion, SamplingParams, ScoredText


def _top_k(logprobs: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    values, ids = logprobs.topk(k, dim=-1)
    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(ids, values)]


class LocalTeacher:
    """Generates with a Hugging Face causal LM in this process.

    Per-token logprobs are the log-softmax of the model's own (unprocessed) logits, as OpenAI reports them,
    even when a watermark or other logits processor changed what was sampled.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "local",
                 logits_processors: Sequence[LogitsProcessor] = (), max_batch: int = 256):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.logits_processors = list(logits_processors)
        self.max_batch = max_batch
        self.tokenizer.padding_side = "left"
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self._lock = threading.Lock()  # HF generate is not re-entrant on one model

    @classmethod
    def from_dir(cls, path: str | Path, **kwargs) -> "LocalTeacher":
        """Load a teacher from a model directory."""
        model, tokenizer = load_model(path)
        return cls(model, tokenizer, name=kwargs.pop("name", f"local:{Path(path).name}"), **kwargs)

    def check_prompt(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise ConfigError when a prompt and its completion cannot fit the context window."""
        if prompt_tokens + max_tokens > self.context_length:
            raise ConfigError(
                f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the context length "
                f"of {self.context_length}"
            )

    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 extra_processors: Sequence[LogitsProcessor] = ()) -> list[list[Completion]]:
        """`params.n` completions per prompt, generated in batches of at most `max_batch` sequences."""
        per_batch = max(1, self.max_batch // max(1, params.n))
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), per_batch):
            results += self._generate_batch(list(prompts[start:start + per_batch]), params, extra_processors)
        return results

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[str], params: SamplingParams,
                        extra_processors: Sequence[LogitsProcessor]) -> list[list[Completion]]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        for n_tokens in lengths:
            self.check_prompt(n_tokens, params.max_tokens)
        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=None,
            num_return_sequences=params.n,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            stop_strings=list(params.stop) or None,
        )
        processors = LogitsProcessorList([*self.logits_processors, *extra_processors])
        with self._lock, torch.random.fork_rng(devices=[]):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.model.generate(
                **enc, generation_config=config, logits_processor=processors,
                tokenizer=self.tokenizer if params.stop else None,
            )
        prompt_width = enc["input_ids"].shape[1]
        new_tokens = out.sequences[:, prompt_width:]
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(dim=-1) if out.logits else None
        completions = [self._completion(new_tokens[row], logprobs[row] if logprobs is not None else None,
                                        lengths[row // params.n], params)
                       for row in range(new_tokens.shape[0])]
        return [completions[i * params.n:(i + 1) * params.n] for i in range(len(prompts))]

    def _completion(self, tokens: torch.Tensor, logprobs: torch.Tensor | None, prompt_tokens: int,
                    params: SamplingParams) -> Completion:
        ids = tokens.tolist()
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        finish = "length"
        if eos in ids:
            ids, finish = ids[: ids.index(eos)], "stop"
        elif pad in ids:  # finished by a stop string in a batch that ran longer
            ids = ids[: ids.index(pad)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in params.stop:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        if finish == "length" and len(ids) < params.max_tokens and params.stop:
            finish = "stop"
        count = len(ids)
        token_lp = [] if logprobs is None else logprobs[:count].gather(1, tokens[:count, None]).squeeze(1).tolist()
        top = _top_k(logprobs[:count], params.top_logprobs) if params.top_logprobs and logprobs is not None else None
        return Completion(text=text, token_ids=ids, logprobs=token_lp, finish_reason=finish,
                          prompt_tokens=prompt_tokens, top_logprobs=top)

    @torch.inference_mode()
    def score_sync(self, prompt: str, continuation_ids: Sequence[int], top_k: int = 0) -> ScoredText:
        """Teacher-force `continuation_ids` after `prompt` and return their log-probabilities."""
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        self.check_prompt(len(prompt_ids), len(continuation_ids))
        ids = torch.tensor([prompt_ids + list(continuation_ids)])
        with self._lock:
            logits = self.model(input_ids=ids).logits[0]
        lp = logits[len(prompt_ids) - 1: -1].float().log_softmax(dim=-1)
        target = torch.tensor(list(continuation_ids), dtype=torch.long)
        token_lp = lp.gather(1, target[:, None]).squeeze(1).tolist() if len(target) else []
        return ScoredText(list(continuation_ids), token_lp, _top_k(lp, top_k) if top_k and len(target) else None)

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """Async wrapper over `generate`, run in a worker thread."""
        return await asyncio.to_thread(self.generate, prompts, params)

    async def score(self, prompt: str, continuation_ids: Sequence[int], top_k: int = 0) -> ScoredText:
        """Async wrapper over `score_sync`."""
        return await asyncio.to_thread(self.score_sync, prompt, continuation_ids, top_k)

    async def aclose(self) -> None:
        """Nothing to release."""
