"""The graded policy: a YAML file that maps risk to allow / flag / throttle / hide_reasoning / degrade / block."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stillwatch.errors import StillwatchError

Action = Literal["allow", "flag", "throttle", "hide_reasoning", "degrade", "block"]
ACTIONS: tuple[str, ...] = ("allow", "flag", "throttle", "hide_reasoning", "degrade", "block")  # mildest first
STOPPING: frozenset[str] = frozenset({"hide_reasoning", "degrade", "block"})  # what stops a distiller


class PolicyError(StillwatchError):
    """A policy file that is missing, is not YAML, or breaks a rule of the policy format."""


class Step(BaseModel):
    """At or above `risk`, take `action`."""

    model_config = ConfigDict(extra="forbid")
    action: Action
    risk: float = Field(ge=0.0, le=1.0)


class Policy(BaseModel):
    """Steps in rising risk and rising severity, a minimum of requests before any action, and fallbacks."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=100)
    min_requests: int = Field(20, ge=0)
    throttle_rpm: int = Field(10, ge=1)  # requests per minute a throttled account keeps
    steps: list[Step] = Field(min_length=1)
    fallback: dict[Action, Action] = Field(default_factory=dict)

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: list[Step]) -> list[Step]:
        for a, b in zip(steps, steps[1:]):
            if b.risk <= a.risk:
                raise ValueError(f"step risks must rise: {b.action} at {b.risk} after {a.action} at {a.risk}")
            if ACTIONS.index(b.action) <= ACTIONS.index(a.action):
                raise ValueError(f"steps must grow more severe: {b.action} after {a.action}")
        return steps

    @model_validator(mode="after")
    def _fallbacks_stronger(self) -> Policy:
        for weak, strong in self.fallback.items():
            if ACTIONS.index(strong) <= ACTIONS.index(weak):
                raise ValueError(f"fallback of {weak} must be a stronger action, not {strong}")
        return self

    def action(self, risk: float, requests: int = 10**9, unavailable: frozenset[str] = frozenset()) -> str:
        """The action for `risk` (allow under `min_requests`); an action in `unavailable` falls back."""
        if requests < self.min_requests:
            return "allow"
        chosen = "allow"
        for step in self.steps:
            if risk >= step.risk:
                chosen = step.action
        return self.substitute(chosen, unavailable)

    def substitute(self, action: str, unavailable: frozenset[str]) -> str:
        """What is taken for `action` where it cannot be honoured: its `fallback`, else the next stronger action
        that can be (block can always): never silently weaker than what was asked."""
        seen = set()
        while action in unavailable and action not in seen:
            seen.add(action)
            stronger = [a for a in ACTIONS[ACTIONS.index(action) + 1:] if a not in unavailable] or ["block"]
            action = self.fallback.get(action, stronger[0])  # type: ignore[call-overload]
        return action


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """A Policy from YAML text; PolicyError naming the first problem."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a mapping with version, steps and optional min_requests, fallback")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "policy"
        raise PolicyError(f"{source}: {where}: {first.get('msg', 'invalid')}") from None


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at `path`, or the built-in one shipped with the package."""
    if path is None:
        text = resources.files("stillwatch.detect").joinpath("policy.yaml").read_text(encoding="utf-8")
        return parse_policy(text, "built-in policy")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_policy(text, str(path))


def decide(assessment: Any, policy: Policy, unavailable: frozenset[str] = frozenset()) -> str:
    """The policy's action for an Assessment."""
    return policy.action(assessment.risk, assessment.basis_requests, unavailable)
