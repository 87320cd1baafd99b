"""The scenario that `stillwatch demo` plays on the embedded defaults: no GPU, no internet, loopback only.

Six acts, all library calls in one process (the gateway is a real uvicorn server on 127.0.0.1 in a thread, and
every request goes through the official `openai` client):

1. the built-in teacher is loaded (the shipped default teacher; `--preset tiny` trains one) and evaluated;
2. the provider starts its gateway with a watermark key and opens two accounts, an honest user and a distiller;
3. the distiller harvests reasoning traces and stories through the API; the audit log records every request;
4. the distiller trains a much smaller student on the harvest and measures retention and speed-up;
5. the provider turns on stillwatch's detector: `detect` over the audit log so far ranks the distiller first, and
   when it comes back for top-k logprobs the live detector stops it within a few hundred requests, with an
   evidence bundle the audit chain backs, while honest chat users are untouched;
6. later, the provider proves from its audit log that the student was trained on its watermarked outputs,
   while a control model (same architecture, same prompts, un-watermarked outputs) is cleared.

A closing table gives each act's key number and whether it showed what it is meant to show. Everything the
demo writes lives in `workdir`: a trained teacher (kept and reused) and `workdir/run/` (replaced on every run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

TASKS = ("add", "mul", "chain", "story")
# A fixed secret, fine for a demo on loopback; a real gateway takes STILLWATCH_WATERMARK_KEY.
DEMO_WATERMARK_KEY = "stillwatch-demo-watermark-key, not for production"
STUDENT_PRESET = {"tiny": "student-tiny", "default": "student"}
HONEST, DISTILLER = "honest-user", "distiller"
RUN_MARKER = ".stillwatch-demo"
# The demo's quota: generous enough that the harvest runs at full speed (the default is 600 requests/minute).
QUOTAS = '[default]\nrequests = "6000/minute"\ntokens = "2000000/minute"\n'


@dataclass(frozen=True)
class DemoSizes:
    """How much work each act does. `full` is `stillwatch demo`; `quick` is for tests."""

    teacher_steps: int | None  # teach steps for a teacher the demo trains (None: the preset's own schedule)
    eval_n: int  # held-out prompts per task in every evaluation
    reasoning_prompts: int  # harvested per reasoning task, greedy
    story_prompts: int  # harvested for the open task, sampled at temperature 1 (the watermark's carrier)
    story_samples: int  # completions per story request
    story_tokens: int
    honest_requests: int
    student_steps: int
    student_batch: int
    student_lr: float
    prove_texts: int  # evidence texts read through each suspect
    detect_seconds: float  # how long the returning distiller and the chat users run against the live detector


# Measured on the tiny preset (2 busy cores): the 1-layer student-tiny reaches ~70% valid stories after 2000 sft
# steps; it does not learn carry addition from a few hundred traces at any step count tried (that needs the
# 2-layer `student` and thousands of traces: `--preset default`). ~300 watermarked stories already give the
# student p < 1e-20 in reading mode, so the story harvest is sized for retention, not for the proof.
SIZES = {
    "full": DemoSizes(teacher_steps=None, eval_n=100, reasoning_prompts=150, story_prompts=240, story_samples=2,
                      story_tokens=48, honest_requests=12, student_steps=2000, student_batch=32, student_lr=3e-3,
                      prove_texts=480, detect_seconds=45.0),
    "quick": DemoSizes(teacher_steps=60, eval_n=8, reasoning_prompts=4, story_prompts=120, story_samples=2,
                       story_tokens=40, honest_requests=3, student_steps=400, student_batch=32, student_lr=5e-3,
                       prove_texts=300, detect_seconds=20.0),
}


@dataclass
class Step:
    """One line of the closing table."""

    act: str
    shows: str
    number: str
    passed: bool


@dataclass
class DemoResult:
    """What the demo measured (JSON-friendly), returned by `run_demo`."""

    preset: str
    quick: bool
    workdir: str
    steps: list[Step] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True when every act showed its effect."""
        return all(s.passed for s in self.steps)

    def to_dict(self) -> dict:
        """The result as plain data."""
        return {**asdict(self), "passed": self.passed}


def _demo_settings(**values: Any):
    """GuardSettings from these values only: the demo ignores any STILLWATCH_* variables of the shell."""
    from stillwatch.guard.settings import GuardSettings

    class DemoSettings(GuardSettings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, **sources):  # type: ignore[override]
            return (init_settings,)

    return DemoSettings(**values)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _p(value: float) -> str:
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def run_demo(workdir: str | Path = "runs/demo", preset: str = "default", console: Console | None = None,
             quick: bool = False, seed: int = 0, progress: bool = True, json_out: str | Path | None = None) -> dict:
    """Play the whole story (teacher, gateway, harvest, distillation, detection, proof) and return what it measured."""
    from stillwatch.models import get_preset

    get_preset(preset)  # fail fast on an unknown name
    demo = _Demo(Path(workdir), preset, console or Console(), SIZES["quick" if quick else "full"], quick, seed,
                 progress)
    result = demo.play()
    if json_out is not None:
        Path(json_out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


class _Demo:
    """The acts, in order; each one prints its tables and appends its line of the closing summary."""

    def __init__(self, workdir: Path, preset: str, console: Console, sizes: DemoSizes, quick: bool, seed: int,
                 progress: bool):
        self.console, self.sizes, self.seed, self.progress = console, sizes, seed, progress
        self.preset, self.student_preset = preset, STUDENT_PRESET.get(preset, "student")
        from stillwatch.models import BUILTIN_TEACHER_DIR

        shipped = preset == "default" and (BUILTIN_TEACHER_DIR / "config.json").is_file()
        self.teacher_dir = BUILTIN_TEACHER_DIR if shipped else workdir / f"teacher-{preset}"
        self.run_dir = workdir / "run"
        self.result = DemoResult(preset=preset, quick=quick, workdir=str(workdir))
        self.db_url = f"sqlite:///{self.run_dir / 'guard.db'}"
        self.keys: dict[str, str] = {}

    # -- the whole story -------------------------------------------------------------------------------

    def play(self) -> dict:
        import torch

        began = time.perf_counter()
        self._fresh_run_dir()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models on a shared 2-core machine run fastest on one thread
        # accelerate warns on every save that tied embeddings are saved once: true, expected, and noise here.
        tied = logging.getLogger("accelerate.utils.other")
        level = tied.level
        tied.setLevel(logging.ERROR)
        try:
            self.act_teacher()
            quotas = self.run_dir / "quotas.toml"
            quotas.write_text(QUOTAS)
            settings = _demo_settings(
                teacher=self.teacher_dir, db_url=self.db_url, admin_key=_secret(), served_model_name="stillwatch",
                watermark_key=DEMO_WATERMARK_KEY, quotas_file=quotas, max_batch=64, batch_wait_ms=5.0,
                # Acts 2-4 are the world without a detector; act 5 turns it on over the same audit log.
                detection=False, trusted_proxies=["127.0.0.1"])
            from stillwatch.guard.app import create_app
            from stillwatch.guard.loopback import LoopbackServer

            self.console.rule("[bold]2. The provider: an OpenAI-compatible gateway on 127.0.0.1")
            with LoopbackServer(create_app(settings)) as server:
                self.base_url = server.base_url
                self.result.numbers["gateway"] = server.base_url
                self.act_provider()
                self.act_harvest()
                self.act_distill()
            self.console.print(f"gateway at {self.base_url} shut down")
            self.act_detect(settings)
            self.act_prove(settings)
        finally:
            torch.set_num_threads(threads)
            tied.setLevel(level)
        self.result.seconds = time.perf_counter() - began
        self.summary()
        out = self.result.to_dict()
        (self.run_dir / "demo.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
        return out

    def _fresh_run_dir(self) -> None:
        """Replace `run/` from an earlier demo; refuse to delete a directory the demo did not make."""
        from stillwatch.errors import ConfigError

        marker = self.run_dir / RUN_MARKER
        if self.run_dir.exists():
            if not marker.is_file():
                raise ConfigError(f"{self.run_dir} exists and was not made by `stillwatch demo`; "
                                  "choose another --workdir")
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        marker.write_text("made by stillwatch demo; replaced on every run\n")

    def step(self, act: str, shows: str, number: str, passed: bool) -> None:
        self.result.steps.append(Step(act, shows, number, bool(passed)))

    # -- 1. the teacher --------------------------------------------------------------------------------

    def act_teacher(self) -> None:
        from stillwatch.evaluate import evaluate
        from stillwatch.tasks import get_tasks
        from stillwatch.teach import teach
        from stillwatch.teachers.local import LocalTeacher

        self.console.rule(f"[bold]1. The built-in teacher ({self.preset} preset)")
        from stillwatch.models import BUILTIN_TEACHER_DIR

        card_path = self.teacher_dir / "stillwatch_card.json"
        if self.teacher_dir == BUILTIN_TEACHER_DIR:
            self.console.print("the shipped default teacher (`stillwatch teach` makes it again)")
        elif card_path.is_file():
            self.console.print(f"reusing the teacher at {self.teacher_dir} (delete it to train again)")
        else:
            self.console.print(f"training the {self.preset} teacher into {self.teacher_dir}")
            teach(self.teacher_dir, preset=self.preset, seed=self.seed,
                  steps=self.sizes.teacher_steps if self.preset == "tiny" else None, eval_n=20, progress=self.progress,
                  command=f"stillwatch demo --preset {self.preset}")
        card = json.loads(card_path.read_text())
        self.tasks = get_tasks([t for t in card.get("tasks", TASKS) if t in TASKS])
        self.reasoning = [t.name for t in self.tasks if t.kind == "reasoning"]
        self.teacher_report = evaluate(LocalTeacher.from_dir(self.teacher_dir), self.tasks, n=self.sizes.eval_n)
        r = self.teacher_report
        table = Table(title=f"teacher: {self.preset} preset, {r['parameters']:,} parameters, "
                            f"{card['train'].get('steps', '?')} training steps")
        for col in ("task", "kind", "accuracy / valid"):
            table.add_column(col, justify="right" if col != "task" else "left")
        for name, row in r["tasks"].items():
            table.add_row(name, row["kind"], _pct(row["accuracy"]))
        self.console.print(table)
        self.console.print(f"throughput {r['tokens_per_s']:,.0f} tokens/s, latency {r['latency_ms']:.0f} ms "
                           f"per completion (held-out n = {self.sizes.eval_n} per task)")
        accuracy = {k: v["accuracy"] for k, v in r["tasks"].items()}
        self.result.numbers["teacher"] = {"parameters": r["parameters"], "accuracy": accuracy,
                                          "tokens_per_s": r["tokens_per_s"], "dir": str(self.teacher_dir)}
        best = max(accuracy, key=accuracy.get)
        self.step("1. teacher", "a teacher that has learnt something",
                  ", ".join(f"{k} {_pct(v)}" for k, v in accuracy.items()), accuracy[best] >= 0.5)

    # -- 2. the provider -------------------------------------------------------------------------------

    def act_provider(self) -> None:
        import openai

        from stillwatch.guard.accounts import AccountStore
        from stillwatch.guard.db import make_engine
        from stillwatch.tasks import examples

        engine = make_engine(self.db_url)
        try:
            store = AccountStore(engine)
            for name in (HONEST, DISTILLER):
                key_id, self.keys[name] = store.create_key(name)
                self.console.print(f"account [bold]{name}[/bold]: key {key_id} created (shown once, stored hashed)")
        finally:
            engine.dispose()
        self.console.print(f"watermark on every completion (key fingerprint "
                           f"{_watermark_config().fingerprint}); audit log in {self.db_url}")
        client = openai.OpenAI(base_url=self.base_url, api_key=self.keys[HONEST], max_retries=0)
        ok = 0
        sample = ""
        for i in range(self.sizes.honest_requests):
            task = self.tasks[i % len(self.tasks)]
            prompt = examples(task, 1, 900 + i)[0].prompt
            resp = client.chat.completions.create(model="stillwatch", messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=96, temperature=0.0 if task.kind == "reasoning" else 1.0)
            ok += bool(resp.choices[0].message.content)
            if i == 0:
                sample = f"{prompt.strip()} -> {resp.choices[0].message.content.strip()[:100]}"
        client.close()
        self.console.print(f"the honest user made {self.sizes.honest_requests} requests with the official client, "
                           f"e.g. [italic]{sample}[/italic]")
        self.result.numbers["honest_requests"] = ok
        self.step("2. gateway", "accounts, keys, answers on 127.0.0.1",
                  f"{ok}/{self.sizes.honest_requests} honest requests answered", ok == self.sizes.honest_requests)

    # -- 3. the distiller harvests ------------------------------------------------------------------------

    def _sources(self):
        from stillwatch.harvest import task_source

        return (task_source(self.reasoning, self.sizes.reasoning_prompts, self.seed),
                task_source(["story"], self.sizes.story_prompts, self.seed))

    def _harvest_params(self):
        from stillwatch.teachers.completion import SamplingParams

        return (SamplingParams(max_tokens=96, temperature=0.0, seed=self.seed),
                SamplingParams(max_tokens=self.sizes.story_tokens, temperature=1.0, n=self.sizes.story_samples,
                               seed=self.seed))

    def _harvest_into(self, teacher: Any, path: Path, info: dict) -> list:
        """Both harvests (greedy reasoning traces, sampled stories) into one store, in one event loop."""
        from stillwatch.harvest import HarvestStore, harvest_async, tokenizer_info

        async def run(store) -> list:
            try:
                return [await harvest_async(teacher, source, store, params, concurrency=16, total=source.total,
                                            progress=self.progress)
                        for source, params in zip(self._sources(), self._harvest_params())]
            finally:
                await teacher.aclose()

        with HarvestStore(path, create=True) as store:
            store.record_teacher(teacher.name, {**info, "tokenizer": tokenizer_info(teacher.tokenizer)})
            return asyncio.run(run(store))

    def act_harvest(self) -> None:
        from stillwatch.guard.audit import query
        from stillwatch.guard.accounts import AccountStore
        from stillwatch.guard.db import make_engine
        from stillwatch.teachers.openai_teacher import OpenAITeacher
        from stillwatch.tokenizer import load_tokenizer

        self.console.rule("[bold]3. The distiller harvests the teacher through the API")
        self.tokenizer = load_tokenizer(self.teacher_dir)
        self.store_path = self.run_dir / "harvest.db"
        client = OpenAITeacher(self.base_url, self.keys[DISTILLER], model="stillwatch", tokenizer=self.tokenizer,
                               api="chat", concurrency=16)
        began = time.perf_counter()
        results = self._harvest_into(client, self.store_path, {"endpoint": self.base_url})
        seconds = time.perf_counter() - began
        rows = results[-1].rows_total
        tokens = sum(r.completion_tokens for r in results)
        requests = sum(r.prompts_done for r in results)
        self.console.print(f"{requests} requests in {seconds:.1f} s: {rows} rows, {tokens:,} completion tokens "
                           f"({tokens / seconds:,.0f} tokens/s) in {self.store_path}")

        engine = make_engine(self.db_url)
        try:
            store = AccountStore(engine)
            usage = {name: store.usage(name) for name in (HONEST, DISTILLER)}
            recent = query(engine, account=DISTILLER, limit=3)
        finally:
            engine.dispose()
        table = Table(title="what the audit log recorded, per account")
        for col in ("account", "requests", "prompt tokens", "completion tokens", "refused"):
            table.add_column(col, justify="right" if col != "account" else "left")
        for name, u in usage.items():
            table.add_row(name, str(u["requests"]), f"{u['prompt_tokens']:,}", f"{u['completion_tokens']:,}",
                          str(u["refused"]))
        self.console.print(table)
        latest = Table(title=f"the {DISTILLER}'s latest audit records")
        for col in ("time", "endpoint", "prompt", "completion", "status", "decision"):
            latest.add_column(col, no_wrap=True, overflow="ellipsis", max_width=28 if col == "completion" else None)
        for rec in recent:
            latest.add_row(rec["time"][11:19], rec["endpoint"], _short(_prompt_text(rec["prompt"])),
                           _short(_completion_text(rec["completion"])), str(rec["status"]), str(rec["decision"]))
        self.console.print(latest)
        audited = usage[DISTILLER]["requests"]
        self.result.numbers["harvest"] = {"rows": rows, "requests": requests, "completion_tokens": tokens,
                                          "seconds": seconds, "audit": usage}
        self.step("3. harvest", "a distiller collects outputs; the audit log sees it",
                  f"{rows} rows; {audited} audit records for {DISTILLER}", rows > 0 and audited >= requests)

    # -- 4. the distiller trains a student ------------------------------------------------------------------

    def _distill(self, data: Path, out: Path) -> dict:
        from stillwatch.distill.run import DistillConfig, distill

        s = self.sizes
        config = DistillConfig(loss="sft", steps=s.student_steps, batch_size=s.student_batch, lr=s.student_lr,
                               warmup=20, seed=self.seed, checkpoint_every=10**9, log_every=50)
        return distill(data, out, config, preset=self.student_preset, progress=self.progress,
                       command=f"stillwatch demo (distill --data {data.name} --preset {self.student_preset})")

    def act_distill(self) -> None:
        from stillwatch.evaluate import compare, evaluate
        from stillwatch.teachers.local import LocalTeacher

        self.console.rule(f"[bold]4. The distiller trains a student ({self.student_preset} preset, sft on the harvest)")
        self.student_dir = self.run_dir / "student"
        began = time.perf_counter()
        card = self._distill(self.store_path, self.student_dir)
        seconds = time.perf_counter() - began
        report = evaluate(LocalTeacher.from_dir(self.student_dir), self.tasks, n=self.sizes.eval_n)
        cmp = compare(report, self.teacher_report)
        table = Table(title=f"student {report['parameters']:,} parameters vs teacher "
                            f"{self.teacher_report['parameters']:,} ({self.sizes.student_steps} steps, {seconds:.0f} s)")
        for col in ("task", "teacher", "student", "retention", "answer agreement"):
            table.add_column(col, justify="right" if col != "task" else "left")
        for name, row in report["tasks"].items():
            c = cmp["tasks"].get(name, {})
            table.add_row(name, _pct(self.teacher_report["tasks"][name]["accuracy"]), _pct(row["accuracy"]),
                          _pct(c.get("retention")), _pct(c.get("agreement")))
        self.console.print(table)
        ratio, speedup = cmp.get("parameter_ratio", 1.0), cmp.get("throughput_speedup", 0.0)
        self.console.print(f"parameter ratio {ratio:.3f} (1/{1 / ratio:.1f}); generation throughput "
                           f"{report['tokens_per_s']:,.0f} vs {self.teacher_report['tokens_per_s']:,.0f} tokens/s "
                           f"({speedup:.2f}x); {card['teacher_tokens']['harvested']:,} teacher tokens used")
        # Retention is meaningful only where the teacher itself scores.
        learnt = {k: v["retention"] for k, v in cmp["tasks"].items()
                  if self.teacher_report["tasks"][k]["accuracy"] >= 0.5 and v["retention"] is not None}
        self.result.numbers["student"] = {"parameters": report["parameters"], "parameter_ratio": ratio,
                                          "throughput_speedup": speedup, "train_seconds": seconds,
                                          "accuracy": {k: v["accuracy"] for k, v in report["tasks"].items()},
                                          "retention": {k: v["retention"] for k, v in cmp["tasks"].items()}}
        lost = [k for k, v in learnt.items() if v < 0.5]
        if lost:
            self.console.print(f"[yellow]not kept at this size: {', '.join(lost)}[/yellow] (a {self.student_preset}-preset "
                               f"student does not learn it from {self.sizes.reasoning_prompts} traces per task in "
                               f"{self.sizes.student_steps} steps; bench/retention.py gives it 1,000 per task and "
                               f"12,000 steps)")
        number = ", ".join(f"{k} retention {_pct(v)}" for k, v in learnt.items()) or "no task the teacher knows"
        # Throughput is shown, not judged: between two models this small, generation is bound by per-token
        # overhead rather than by FLOPs, and a shared machine makes it noisy.
        self.step("4. distil", "a smaller student keeps part of the teacher's ability",
                  f"{number}; 1/{1 / ratio:.1f} params; {speedup:.1f}x throughput",
                  any(v >= 0.5 for v in learnt.values()) and ratio < 1)

    # -- 5. the detector stops the distiller ---------------------------------------------------------------

    def act_detect(self, settings: Any) -> None:
        import openai

        from stillwatch.detect.simulate import SimulationConfig, simulate
        from stillwatch.guard.accounts import AccountStore
        from stillwatch.guard.app import create_app
        from stillwatch.guard.db import make_engine
        from stillwatch.guard.detection import detect_database
        from stillwatch.guard.evidence import evidence_bundle, verify_bundle
        from stillwatch.guard.loopback import LoopbackServer

        self.console.rule("[bold]5. The provider turns on stillwatch's detector")
        engine = make_engine(self.db_url)
        try:
            offline = detect_database(engine)
        finally:
            engine.dispose()
        table = Table(title=f"stillwatch detect over the audit log so far (policy {offline['policy']})")
        for col in ("account", "risk", "action", "requests", "top reason"):
            table.add_column(col)
        for a in offline["accounts"]:
            top = a["reasons"][0] if a["reasons"] else {}
            table.add_row(a["account"], f"{a['risk']:.3f}", a["action"], str(a["requests"]),
                          _short(f"{top.get('signal', '')} {top.get('explanation', '')}", 70))
        self.console.print(table)
        live = settings.model_copy(update={"detection": True, "detection_interval_s": 0.5})
        returning = f"{DISTILLER}-kd"
        with LoopbackServer(create_app(live)) as server:
            # The detector replays the recent audit log when it starts: the first harvest is judged too.
            engine = make_engine(self.db_url)
            try:
                replayed = _wait_for(lambda: _stopped(AccountStore(engine), DISTILLER), 15.0)
            finally:
                engine.dispose()
            self.console.print(f"the gateway restarts with detection on (the shipped policy) and replays its log: "
                               f"{DISTILLER} is " + (f"[bold]blocked[/bold] ({replayed['block_reason']})"
                                                     if replayed and replayed["blocked"] else
                                                     "stopped" if replayed else "not stopped"), soft_wrap=True)
            self.console.print(f"the distiller comes back as [bold]{returning}-bulk-0[/bold] for top-k logprobs, "
                               f"among honest chat users")
            sim = SimulationConfig(endpoint=server.base_url, seed=self.seed, duration=self.sizes.detect_seconds,
                                   max_requests=4000, concurrency=16, honest={"chat": 4}, attackers={"bulk": 1},
                                   model="stillwatch", prefix=returning)
            outcome = simulate(sim, live.admin_key.get_secret_value())
            engine = make_engine(self.db_url)
            try:
                store = AccountStore(engine)
                account = _wait_for(lambda: _stopped(store, f"{returning}-bulk-0"), 30.0) \
                    or store.get_account(f"{returning}-bulk-0")
                from stillwatch.guard.actions import account_with_history

                shown = account_with_history(store, f"{returning}-bulk-0")
                bundle = evidence_bundle(store, f"{returning}-bulk-0")
                honest_actions = sum(len(account_with_history(store, c["account"])["actions"])
                                     for c in outcome["accounts"] if c["kind"] == "honest")
            finally:
                engine.dispose()
            messages = [{"role": "user", "content": "add: 4721+3856\n"}]
            with openai.OpenAI(base_url=server.base_url, api_key=self.keys[HONEST], max_retries=0) as client:
                raw = client.chat.completions.with_raw_response.create(model="stillwatch", messages=messages,
                                                                       max_tokens=96, temperature=0)
        answer = (raw.parse().choices[0].message.content or "").strip()
        first = next((a for a in shown["actions"] if a["action"] in ("hide_reasoning", "degrade", "block")), None)
        table = Table(title=f"what the detector did to {returning}-bulk-0")
        for col in ("action", "risk", "after requests", "reasons"):
            table.add_column(col)
        for a in shown["actions"]:
            ev = a["evidence"]
            table.add_row(a["action"], f"{a['risk']:.3f}", str(ev.get("requests")),
                          _short("; ".join(f"{r['signal']} +{r['contribution']:.1f}" for r in ev.get("reasons", [])),
                                 70))
        self.console.print(table)
        bundle_path = self.run_dir / "evidence.json"
        bundle_path.write_text(json.dumps(bundle, indent=1, default=str) + "\n")
        problems = verify_bundle(bundle)
        harvester = next(c for c in outcome["accounts"] if c["account"] == f"{returning}-bulk-0")
        self.console.print(f"{returning}-bulk-0 sent {harvester['sent']} requests, {harvester['ok']} answered; "
                           f"evidence bundle {bundle_path} ({len(bundle['records'])} cited records, "
                           f"{'hashes and chain hold' if not problems else 'PROBLEMS: ' + '; '.join(problems)})")
        self.console.print(f"the honest user's request: HTTP {raw.status_code}, [italic]{answer[:100]}[/italic]")
        stopped = first is not None
        self.result.numbers["detect"] = {
            "offline": [{k: a[k] for k in ("account", "risk", "action", "requests")} for a in offline["accounts"]],
            "replayed": bool(replayed),
            "action": first and first["action"], "risk": first and first["risk"],
            "requests_before": first and first["evidence"].get("requests"),
            "tokens_before": first and first["evidence"].get("tokens"),
            "harvester": harvester, "honest_actions": honest_actions, "honest_status": raw.status_code,
            "honest_answer": answer, "evidence_problems": problems, "evidence": str(bundle_path)}
        number = (f"{DISTILLER} {'stopped' if replayed else 'not stopped'} on replay; returning account "
                  + (f"{first['action']} after {first['evidence'].get('requests')} requests (risk {first['risk']:.2f})"
                     if first else "not stopped"))
        self.step("5. detect", "the detector stops the returning distiller with evidence; honest users untouched",
                  f"{number}; honest users {honest_actions} actions, HTTP {raw.status_code}",
                  stopped and honest_actions == 0 and raw.status_code == 200 and not problems)

    # -- 6. forensics ------------------------------------------------------------------------------------

    def act_prove(self, settings: Any) -> None:
        from stillwatch.forensics.prove import ProveSettings, load_evidence, prove
        from stillwatch.forensics.report import write_report
        from stillwatch.teachers.local import LocalTeacher

        self.console.rule("[bold]6. Later: prove that the released student was distilled from the gateway")
        # The control: same architecture, same prompts, the same teacher's outputs without a watermark.
        control_store = self.run_dir / "control-harvest.db"
        control_dir = self.run_dir / "control"
        self.console.print(f"a control model: {self.student_preset}, the same prompts and training, but the "
                           f"teacher's outputs without a watermark (harvested in process) -> {control_dir}")
        plain = LocalTeacher.from_dir(self.teacher_dir)
        self._harvest_into(plain, control_store, {"model_dir": str(self.teacher_dir.resolve())})
        self._distill(control_store, control_dir)

        config = _watermark_config(settings)
        evidence = load_evidence(self.db_url, self.tokenizer, account=DISTILLER)
        # The watermark lives where the text has entropy: keep the stories (audit prompts are chat JSON).
        evidence.texts = [t for t in evidence.texts if self.tokenizer.decode(t.prompt_ids).startswith("story:")]
        prove_settings = ProveSettings(max_texts=self.sizes.prove_texts, seed=self.seed)
        report = prove(evidence, config, self.tokenizer, suspect_dir=self.student_dir, control_dirs=[control_dir],
                       settings=prove_settings)
        control = prove(evidence, config, self.tokenizer, suspect_dir=control_dir, settings=prove_settings)
        report_dir = self.run_dir / "report"
        paths = write_report(report, report_dir, "md", command="stillwatch demo")
        write_report(control, self.run_dir / "report-control", "md", command="stillwatch demo (control)")

        table = Table(title=f"radioactivity test, reading mode: evidence = what {DISTILLER} was served "
                            f"({len(evidence.texts)} stories from the audit log)")
        for col in ("model", "tuples scored", "green", "p-value", "verdict"):
            table.add_column(col, justify="right" if col != "model" else "left")
        for label, r in (("student (suspect)", report), ("control", control)):
            t = r["test"]
            table.add_row(label, f"{t['num_tuples_scored']:,}", f"{t['green_fraction']:.1%} (γ={t['gamma']})",
                          _p(t["p_value"]), r["verdict"])
        self.console.print(table)
        checks = report["controls"]
        self.console.print(f"controls: evidence watermark z = {checks['evidence_watermark']['z_score']:.1f}; "
                           f"{checks['wrong_keys']['keys']} wrong keys min p = "
                           f"{_p(checks['wrong_keys']['min_p_value'])}; reference model p = "
                           f"{_p(checks['reference_models'][0]['p_value'])}")
        self.console.print(f"[bold]{report['verdict'].upper()}[/bold]: {report['reason']}")
        self.console.print("report: " + ", ".join(str(p) for p in paths.values()))
        p, cp = report["test"]["p_value"], control["test"]["p_value"]
        self.result.numbers["prove"] = {"verdict": report["verdict"], "p_value": p,
                                        "tuples": report["test"]["num_tuples_scored"],
                                        "control_verdict": control["verdict"], "control_p_value": cp,
                                        "evidence_texts": len(evidence.texts), "report": str(paths["md"])}
        self.step("6. prove", "the student is named, an innocent control is cleared",
                  f"student p = {_p(p)} ({report['verdict']}); control p = {_p(cp)} ({control['verdict']})",
                  report["verdict"] == "derived" and control["verdict"] != "derived" and cp >= 0.01)

    # -- 7. summary --------------------------------------------------------------------------------------

    def summary(self) -> None:
        self.console.rule("[bold]Summary")
        table = Table(title=f"stillwatch demo ({self.preset} teacher"
                            f"{', quick sizes' if self.result.quick else ''}): {self.result.seconds:.0f} s")
        for col in ("act", "what it shows", "key number", "result"):
            table.add_column(col)
        for s in self.result.steps:
            table.add_row(s.act, s.shows, s.number, "[green]pass[/green]" if s.passed else "[red]FAIL[/red]")
        self.console.print(table)
        self.console.print(f"everything is in {self.run_dir} (summary: {self.run_dir / 'demo.json'})")


def _stopped(store: Any, name: str) -> dict | None:
    account = store.get_account(name)
    return account if account["blocked"] or account["hide_reasoning"] or account["degraded"] else None


def _wait_for(predicate: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    return predicate()


def _secret() -> str:
    import secrets

    return secrets.token_urlsafe(24)


def _watermark_config(settings: Any = None):
    from stillwatch.forensics.watermark import WatermarkConfig

    if settings is None:
        return WatermarkConfig(key=DEMO_WATERMARK_KEY)
    return WatermarkConfig.from_settings(settings, key=DEMO_WATERMARK_KEY)


def _prompt_text(prompt: str | None) -> str:
    """An audit prompt for display: chat messages are stored as JSON."""
    try:
        messages = json.loads(prompt or "")
        return " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    except (json.JSONDecodeError, TypeError, AttributeError):
        return prompt or ""


def _completion_text(completion: str | None) -> str:
    try:
        values = json.loads(completion or "")
        if isinstance(values, list):
            return " | ".join(v if isinstance(v, str) else str(v.get("text", "")) for v in values)
    except (json.JSONDecodeError, TypeError, AttributeError):
        pass
    return completion or ""


def _short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"
