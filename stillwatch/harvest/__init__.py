"""Harvest teacher completions into a resumable, streamable store, and export them for `datasets`."""

from stillwatch.harvest.export import export
from stillwatch.harvest.prompts import PromptItem, PromptSource, file_source, prompt_id, task_source
from stillwatch.harvest.runner import HarvestResult, HarvestStopped, harvest, harvest_async
from stillwatch.harvest.store import HarvestRow, HarvestStore, tokenizer_info

__all__ = ["HarvestResult", "HarvestRow", "HarvestStopped", "HarvestStore", "PromptItem", "PromptSource", "export",
           "file_source", "harvest", "harvest_async", "prompt_id", "task_source", "tokenizer_info"]
