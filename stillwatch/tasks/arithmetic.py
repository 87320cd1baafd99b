"""Verifiable reasoning tasks: addition with carries, long multiplication by one digit, and a modular chain.

Every trace works one digit (or one step) at a time, least significant first, with the carry written out,
so that a small model can follow it; the answer follows the answer mark.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from stillwatch.errors import ConfigError
from stillwatch.tasks.base import ANSWER_MARK, Example, TaskKind, extract_answer


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


class _ExactAnswerTask:
    """Scoring shared by the reasoning tasks: the answer after the mark must match exactly."""

    name: str
    kind: TaskKind = "reasoning"

    def reference_answer(self, prompt: str) -> str | None:
        raise NotImplementedError

    def score(self, prompt: str, completion: str) -> bool:
        """Exact match of the final answer; malformed completions score False."""
        try:
            expected = self.reference_answer(prompt)
        except (ValueError, IndexError, ZeroDivisionError):
            return False
        return expected is not None and extract_answer(completion) == expected


@dataclass
class Addition(_ExactAnswerTask):
    """`add: 4721+3856` -> `1+6+0=07 2+5+0=07 7+8+0=15 4+3+1=08 -> 8577` (digit sums with carry)."""

    digits: int = 4
    name: str = "add"

    def __post_init__(self) -> None:
        _check_range("add digits", self.digits, 1, 12)

    def example(self, rng: random.Random) -> Example:
        a, b = _number(rng, self.digits), _number(rng, self.digits)
        prompt = f"add: {a}+{b}\n"
        da, db = str(a).zfill(self.digits)[::-1], str(b).zfill(self.digits)[::-1]
        steps, carry = [], 0
        for x, y in zip(da, db):
            total = int(x) + int(y) + carry
            steps.append(f"{x}+{y}+{carry}={total:02d}")
            carry = total // 10
        answer = str(a + b)
        return Example(self.name, prompt, f"{' '.join(steps)} {ANSWER_MARK} {answer}", answer)

    def reference_answer(self, prompt: str) -> str | None:
        if not prompt.startswith("add: "):
            return None
        a, b = prompt[5:].strip().split("+")
        return str(int(a) + int(b))


@dataclass
class Multiplication(_ExactAnswerTask):
    """`mul: 4721*8` -> `1*8+0=08 2*8+0=16 7*8+1=57 4*8+5=37 -> 37768` (digit products with carry)."""

    digits: int = 4
    name: str = "mul"

    def __post_init__(self) -> None:
        _check_range("mul digits", self.digits, 1, 12)

    def example(self, rng: random.Random) -> Example:
        a, b = _number(rng, self.digits), rng.randint(2, 9)
        prompt = f"mul: {a}*{b}\n"
        steps, carry = [], 0
        for x in str(a)[::-1]:
            total = int(x) * b + carry
            steps.append(f"{x}*{b}+{carry}={total:02d}")
            carry = total // 10
        answer = str(a * b)
        return Example(self.name, prompt, f"{' '.join(steps)} {ANSWER_MARK} {answer}", answer)

    def reference_answer(self, prompt: str) -> str | None:
        if not prompt.startswith("mul: "):
            return None
        a, b = prompt[5:].strip().split("*")
        return str(int(a) * int(b))


_CHAIN_OPS = "+-*"


def _apply(value: int, op: str, operand: int) -> int:
    if op == "+":
        return (value + operand) % 10
    if op == "-":
        return (value - operand) % 10
    return (value * operand) % 10


@dataclass
class ModularChain(_ExactAnswerTask):
    """`chain: 7+5*3-2` (left to right, mod 10) -> `7+5=2 2*3=6 6-2=4 -> 4`: multi-step word-free arithmetic."""

    steps: int = 5
    name: str = "chain"

    def __post_init__(self) -> None:
        _check_range("chain steps", self.steps, 1, 32)

    def example(self, rng: random.Random) -> Example:
        value = rng.randint(0, 9)
        expression, trace = str(value), []
        for _ in range(self.steps):
            op, operand = rng.choice(_CHAIN_OPS), rng.randint(1, 9)
            result = _apply(value, op, operand)
            expression += f"{op}{operand}"
            trace.append(f"{value}{op}{operand}={result}")
            value = result
        answer = str(value)
        return Example(self.name, f"chain: {expression}\n", f"{' '.join(trace)} {ANSWER_MARK} {answer}", answer)

    def reference_answer(self, prompt: str) -> str | None:
        if not prompt.startswith("chain: "):
            return None
        expression = prompt[7:].strip()
        value = int(expression[0])
        for i in range(1, len(expression), 2):
            if expression[i] not in _CHAIN_OPS:
                raise ValueError(f"unknown operator {expression[i]!r}")
            value = _apply(value, expression[i], int(expression[i + 1]))
        return str(value)
