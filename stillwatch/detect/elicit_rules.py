"""Hand-written rules for the elicitation classifier: each names its category and explains a score."""

from __future__ import annotations

import re
from dataclasses import dataclass

from stillwatch.detect.elicit_concepts import concept_words

CATEGORIES = ("reasoning_elicitation", "system_prompt_extraction", "instruction_override", "logit_extraction")


@dataclass(frozen=True)
class Rule:
    """One pattern over normalised text, the category it is evidence for, and how strong it is alone (0-1)."""

    name: str
    category: str
    weight: float
    pattern: re.Pattern[str]


def _r(name: str, category: str, weight: float, pattern: str) -> Rule:
    return Rule(name, category, weight, re.compile(pattern))


_SHOW = r"(?:show|reveal|print|output|dump|display|give|share|expose|write out|spell out|return|include|leak|emit|list|provide|paste|copy)"
_HIDDEN = r"(?:hidden|internal|private|secret|raw|unfiltered|full|complete|entire|unredacted|verbatim|inner|concealed|original|exact|unedited|whole)"
_COT = r"(?:chain[- ]of[- ]thought|reasoning(?: trace| tokens| steps| process| chain)?|thinking(?: tokens| process| trace)?|thoughts?|scratch ?pad|thought process|monologue|deliberation|cot)"
_SYSTEM = r"(?:system (?:prompt|message|instructions?)|developer (?:prompt|message|instructions?)|initial (?:prompt|instructions?)|original (?:prompt|instructions)|hidden (?:prompt|instructions)|pre-?prompt|meta[- ]prompt)"
_PRIOR = r"(?:previous|prior|above|earlier|preceding|former|all|any|your|the|original|initial|existing|old)"
_INSTR = r"(?:instructions?|rules|guidelines|directives?|prompts?|constraints|programming|guardrails|restrictions|policies)"

RULES: tuple[Rule, ...] = (
    # reasoning elicitation: asks for the model's own hidden trace, or a harvest-shaped dump of it
    _r("cot_reveal_hidden", "reasoning_elicitation", 0.9, rf"\b{_SHOW}\b[^.?!\n]{{0,40}}\b{_HIDDEN}\b[^.?!\n]{{0,25}}\b{_COT}\b"),
    _r("cot_your_hidden", "reasoning_elicitation", 0.8, rf"\byour\s+(?:{_HIDDEN}\s+)?{_COT}\b[^.?!\n]{{0,40}}\b(?:verbatim|word for word|in full|unredacted|unabridged|without (?:summar|omit|edit|redact))"),
    _r("think_tags", "reasoning_elicitation", 0.7, r"<\s*/?\s*(?:think|thinking|reasoning|scratchpad|thought)\s*>|\[(?:think|thinking)\]"),
    _r("cot_as_training_data", "reasoning_elicitation", 0.85, rf"\b{_COT}\b[^\n]{{0,80}}\b(?:training data|fine-?tun\w*|dataset|distill\w*|my (?:own )?model)\b|\b(?:training data|fine-?tun\w*|dataset|distill\w*)\b[^\n]{{0,80}}\b{_COT}\b"),
    _r("before_summarising", "reasoning_elicitation", 0.6, r"\b(?:before|prior to) (?:it is|it's|they are|being)? ?(?:summari[sz]ed|condensed|filtered|hidden|redacted)\b"),
    _r("dont_hide_thinking", "reasoning_elicitation", 0.7, rf"\b(?:do not|don't|never|stop) (?:hide|hiding|summari[sz]e|omit|redact|condense|shorten)\b[^.?!\n]{{0,30}}\b{_COT}\b"),
    _r("cot_json_field", "reasoning_elicitation", 0.5, r"[\"'](?:cot|chain_of_thought|reasoning_trace|thinking|rationale|scratchpad)[\"']\s*:"),
    # system-prompt extraction
    _r("sys_reveal", "system_prompt_extraction", 0.85, rf"\b{_SHOW}\b[^.?!\n]{{0,40}}\b(?:your|the)\b[^.?!\n]{{0,20}}\b{_SYSTEM}\b"),
    _r("sys_what_are_your", "system_prompt_extraction", 0.7, rf"\bwhat (?:is|are|was|were) your\s+(?:{_SYSTEM}|(?:initial|original|hidden|secret|exact|first|real) (?:instructions|prompt|rules|orders))"),
    _r("repeat_above", "system_prompt_extraction", 0.75, r"\b(?:repeat|print|output|copy|recite|echo|reproduce|return)\b[^.?!\n]{0,30}\b(?:the )?(?:words|text|everything|all|content|message|lines?)\b[^.?!\n]{0,10}\b(?:above|before (?:this|that|my)|preceding|prior to)\b"),
    _r("starting_with_you_are", "system_prompt_extraction", 0.8, r"\b(?:start|begin|starting|beginning)\w*\s+(?:with|from|at)\s+[\"'“]?(?:you are|you're|system:|#+ ?instructions)"),
    _r("verbatim_instructions", "system_prompt_extraction", 0.7, rf"\b(?:your|the)\s+{_INSTR}\b[^.?!\n]{{0,40}}\b(?:verbatim|word for word|exactly as (?:written|given)|in a code ?block|in full)\b"),
    _r("translate_instructions", "system_prompt_extraction", 0.6, rf"\b(?:translate|summari[sz]e|paraphrase|encode)\b[^.?!\n]{{0,20}}\byour\s+(?:{_INSTR}|{_SYSTEM})\b"),
    # instruction override / injection
    _r("ignore_previous", "instruction_override", 0.9, rf"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon|discard|neglect)\b[^.?!\n]{{0,20}}\b{_PRIOR}\b[^.?!\n]{{0,15}}\b{_INSTR}\b"),
    _r("new_instructions", "instruction_override", 0.6, r"\b(?:new|updated|real|actual|revised|true) (?:instructions|rules|directives|system prompt)\s*(?::|are|follow)"),
    _r("you_are_now", "instruction_override", 0.6, r"\byou are (?:now|no longer)\b|\bfrom now on,? you (?:are|will|must)\b|\bact as (?:dan|an unrestricted|an unfiltered)\b|\bdeveloper mode\b|\bjailbr[eo]a?k"),
    _r("fake_role_tag", "instruction_override", 0.7, r"<\|?\s*/?\s*(?:system|im_start|im_end|sys|start_of_turn|end_of_turn)\s*\|?>|\[/?(?:inst|system)\]|<<\s*sys\s*>>|\n?#+ ?(?:system|admin) (?:override|message|update)|\b(?:system|admin) override\b"),
    _r("no_restrictions", "instruction_override", 0.6, r"\b(?:without|with no|free of|ignoring) (?:any )?(?:restrictions|filters|guardrails|safety rules|limitations|content policy)\b"),
    # logit / token-probability extraction
    _r("logprobs_request", "logit_extraction", 0.8, rf"\b{_SHOW}\b[^.?!\n]{{0,40}}\b(?:log[- ]?probs?|log[- ]probabilit\w+|logits?|token probabilit\w+|probability distribution|softmax (?:scores|outputs|distribution))\b"),
    _r("top_k_tokens", "logit_extraction", 0.8, r"\btop[- ]?\d*[- ]?(?:k )?(?:most likely |candidate |next )?tokens?\b[^.?!\n]{0,40}\b(?:probabilit\w+|log[- ]?probs?|scores|logits)\b|\b(?:\d+|five|ten|twenty) most (?:likely|probable) (?:next )?tokens\b"),
    _r("next_token_distribution", "logit_extraction", 0.7, r"\b(?:your|the model's|its)\b[^.?!\n]{0,20}\b(?:next[- ]token|output) (?:distribution|probabilities|logits)\b"),
    _r("logit_json_field", "logit_extraction", 0.5, r"[\"'](?:logprobs?|top_logprobs|logits|token_probs)[\"']\s*:"),
)


@dataclass(frozen=True)
class ConceptRule:
    """Concepts (see elicit_concepts) that all occur within `window` words: phrasing-free evidence."""

    name: str
    category: str
    weight: float
    all_of: tuple[frozenset[str], ...]
    window: int = 8


def _c(name: str, category: str, weight: float, *groups: str, window: int = 8) -> ConceptRule:
    return ConceptRule(name, category, weight, tuple(frozenset(g.split("|")) for g in groups), window)


CONCEPT_RULES: tuple[ConceptRule, ...] = (
    _c("c_reveal_own_hidden_reasoning", "reasoning_elicitation", 0.6, "REVEAL", "HIDDEN|VERBATIM", "COT"),
    _c("c_reasoning_for_training", "reasoning_elicitation", 0.6, "COT", "TRAIN", window=12),
    _c("c_cancel_prior_instructions", "instruction_override", 0.6, "CANCEL", "PRIOR|SELF", "INSTR"),
    _c("c_reveal_system_instructions", "system_prompt_extraction", 0.6, "REVEAL", "SYS", "INSTR|PRIOR"),
    _c("c_reveal_prior_instructions_verbatim", "system_prompt_extraction", 0.6, "REVEAL", "PRIOR", "INSTR",
       "VERBATIM|SELF"),
    _c("c_own_token_probabilities", "logit_extraction", 0.6, "PROB", "TOKEN", "REVEAL|SELF"),
)


def _concept_hit(seq: list[tuple[str, str]], rule: ConceptRule) -> str | None:
    # a window of words around each word of the first group; the hit shows the words that made it
    for i, (concept, _) in enumerate(seq):
        if concept in rule.all_of[0]:
            span = seq[max(0, i - rule.window): i + rule.window + 1]
            if all(any(c in group for c, _ in span) for group in rule.all_of[1:]):
                wanted = set().union(*rule.all_of)
                return " ".join(w for c, w in span if c in wanted)
    return None


def rule_hits(text: str) -> list[tuple[Rule | ConceptRule, str]]:
    """Every rule that matches the normalised text, with the first matched span (cut to 80 characters)."""
    hits: list[tuple[Rule | ConceptRule, str]] = []
    for rule in RULES:
        match = rule.pattern.search(text)
        if match:
            hits.append((rule, match.group(0)[:80]))
    seq = concept_words(text)
    for crule in CONCEPT_RULES:
        span = _concept_hit(seq, crule)
        if span:
            hits.append((crule, span[:80]))
    return hits


def rule_scores(hits: list[tuple[Rule | ConceptRule, str]]) -> dict[str, float]:
    """Rules alone: each category's score is the noisy-or of its hits' weights."""
    scores = dict.fromkeys(CATEGORIES, 0.0)
    for rule, _ in hits:
        scores[rule.category] = 1.0 - (1.0 - scores[rule.category]) * (1.0 - rule.weight)
    return scores
