"""Benchmark: does the gateway, as shipped, stop distillers while honest users keep working; detection.json.

    nice -n 10 python bench/detection.py --seeds 0 1 2 --jobs 2
                                                         # the target: 1,000 honest accounts, 30 attacker
                                                         # identities over every profile and a 100-account
                                                         # campaign per seed through a live gateway, then the
                                                         # students; two seeds at once (a gateway serves on
                                                         # one core), about 45 minutes a seed on 2 cores
    python bench/detection.py --seeds 0                  # one seed (the JSON says which seeds it holds)
    python bench/detection.py --smoke                    # tiny sizes, to keep the script working in CI
    python bench/detection.py --from-db G.db --seeds 0   # the rest of the analysis over a run cut short (the
                                                         # gateway database it left, with the run's seed)

Each seed starts `stillwatch serve --teacher builtin` (detection on, the built-in policy, SQLite in a temp
dir, 127.0.0.1 only) and drives it with `stillwatch.detect.simulate`: honest chat users, app integrations,
eval runners and researchers, and every attacker profile, the campaign included (each of its accounts carries
1/k of one task stream, mixed with chat). Everything below is read back from the gateway's own database after
the traffic, never from the simulator's labels:
  * outcome per account: blocked, degraded, reasoning hidden, throttled, flagged (accounts + account_actions),
    and the requests and tokens each attacker was served before its first action (audit records);
  * judged by outcome: for every attacker identity, and for the campaign as a whole, a student distilled from
    every prompt/completion pair it was served (`sft`, and `kd` on the pairs it got top-k logprobs for: the
    teacher's top-k at the served tokens, which is what the API returned), retention = its accuracy over the
    teacher's on held-out prompts; a control student with the same recipe on an unstopped harvester's whole
    plan shows that the recipe itself can extract the teacher;
  * for every honest account, the accuracy of what it was served (the tasks' own scorers; a refused request
    scores 0) against the in-process teacher's on the same prompts with the same parameters;
  * baselines on the same traffic: plain PRADA and plain MMD as account-level detectors on their own;
  * cost: detector memory per account (tracemalloc) and the time of `Detector.observe` per event.
Students are trained per profile (the union of its identities' harvests: at least what any one of them got) to
fit 2 CPU cores; `--identity-students` trains one per attacker identity on the first seed. Each student trains
40 epochs over its harvest within [100, 3000] steps; the control gets 3000. Figures over seeds: median and
worst. The JSON is rewritten after every phase, so a run stopped part-way keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench.gateway import Proc, free_port, wait_http  # noqa: E402
from stillwatch.detect.detector import Detector, DetectorConfig  # noqa: E402
from stillwatch.detect.embed import embed, embed_many  # noqa: E402
from stillwatch.detect.events import Event, prompt_text  # noqa: E402
from stillwatch.detect.signals.mmd import MMDConfig, mmd  # noqa: E402
from stillwatch.detect.signals.prada import PradaConfig, PradaTracker  # noqa: E402
from stillwatch.detect.simulate import SimulationConfig, clients, simulate  # noqa: E402
from stillwatch.detect.traffic import ATTACKERS, HONEST, Population, plan, population_events  # noqa: E402
from stillwatch.distill.run import DistillConfig, distill  # noqa: E402
from stillwatch.evaluate import evaluate  # noqa: E402
from stillwatch.models import BUILTIN, load_model, resolve_model_dir  # noqa: E402
from stillwatch.runinfo import run_info  # noqa: E402
from stillwatch.tasks import REASONING_TASKS, TASK_NAMES, get_tasks, task_for_prompt  # noqa: E402
from stillwatch.teachers.completion import Completion, SamplingParams  # noqa: E402
from stillwatch.teachers.local import LocalTeacher  # noqa: E402

PROFILES = tuple(p for p in ATTACKERS if p != "campaign")
STOPPING = ("block", "degrade", "hide_reasoning")
STUDENT_POSITIONS = 128  # the `student` preset's learned positions
TOUCHING = ("flag", "throttle", "hide_reasoning", "degrade", "block")
SIZES = {
    # Honest accounts are mostly people chatting, plus ten of each heavy honest profile that looks most like a
    # harvester (one-task apps, eval runners, temperature-sweeping researchers) and twenty people doing sums
    # between chats, the profile closest to camouflage. 30 attacker identities over the
    # seven profiles and a 100-account campaign. The duration keeps the offered load near what the builtin
    # teacher serves on 2 shared cores, so that the gateway's clock, not its queue, paces the clients.
    "full": dict(honest={"chat": 950, "app": 10, "eval": 10, "researcher": 10, "tutor": 20},
                 attackers={"bulk": 4, "slow": 4, "camouflage": 4, "paraphrase": 4, "elicit": 5, "diversity": 4,
                            "underlimit": 5},
                 campaign=100, duration=1500.0, concurrency=48, max_requests=200_000, preset="student",
                 epochs=40, min_steps=100, max_steps=3000, batch_size=16, lr=3e-3, eval_n=50, control_prompts=None,
                 cost_accounts=200),
    "smoke": dict(honest={"chat": 6, "app": 1, "eval": 1, "researcher": 1, "tutor": 1},
                  attackers={p: 1 for p in PROFILES},
                  campaign=4, duration=8.0, concurrency=16, max_requests=300, preset="student-tiny",
                  epochs=1, min_steps=3, max_steps=4, batch_size=8, lr=3e-3, eval_n=4, control_prompts=40,
                  cost_accounts=12),
}
GOALS = {"honest_blocked": 0, "honest_touched_share": 0.01, "retention": 0.5, "honest_accuracy_gap_points": 2.0}
# Plain baselines, each alone at the account level. PRADA (Juuti et al. 2019) alarms when the Shapiro-Wilk W of
# an account's minimum query distances falls below δ, which the paper tunes per model (0.87-0.96 across its
# models): we report that range. The LLM MMD detector tests an account's window against benign traffic with a
# permutation test at the 5% level.
PRADA_DELTAS = (0.87, 0.90, 0.96)
MMD_ALPHA = 0.05
ADMIN_KEY = "bench-detection-admin-0123456789abcdef"


# ---------------------------------------------------------------- the live gateway and its traffic
def run_traffic(seed: int, size: dict, tmp: Path, teacher_dir: Path) -> dict:
    """One seed: a fresh gateway, the simulator through it, then the gateway's own state read back."""
    db_path = tmp / f"gateway-{seed}.db"
    key_file = tmp / "admin.key"
    key_file.write_text(ADMIN_KEY)
    port = free_port()
    # The simulator gives every client its own address in X-Forwarded-For from 127.0.0.1: trust it there.
    env = {**os.environ, "STILLWATCH_TRUSTED_PROXIES": "127.0.0.1", **size.get("gateway_env", {})}
    args = [sys.executable, "-m", "stillwatch", "serve", "--teacher", str(teacher_dir), "--db", f"sqlite:///{db_path}",
            "--port", str(port), "--admin-key-file", str(key_file), "--torch-threads", "1", "--log-level", "warning"]
    gateway = Proc(args, tmp / f"gateway-{seed}.log", env=env)
    try:
        wait_http(port, "/health", 120, gateway.proc)
        config = SimulationConfig(endpoint=f"http://127.0.0.1:{port}/v1", seed=seed, duration=size["duration"],
                                  max_requests=size["max_requests"], honest=size["honest"],
                                  attackers=size["attackers"], campaign_accounts=size["campaign"],
                                  concurrency=size["concurrency"], timeout=120.0)
        began = time.monotonic()
        outcome = simulate(config, ADMIN_KEY)
        traffic_s = time.monotonic() - began
        settle_s = settle(db_path)
    finally:
        gateway.stop()
    state = read_state(db_path)
    log_tail = (tmp / f"gateway-{seed}.log").read_text(errors="replace").splitlines()[-20:]
    return {"outcome": outcome, "state": state, "traffic_s": traffic_s, "settle_s": settle_s,
            "gateway_log_tail": [line[:300] for line in log_tail if "Traceback" in line or "ERROR" in line]}


def traffic_from_db(db_path: Path, seed: int, size: dict) -> dict:
    """A run's gateway database read back without its simulator (a run cut short: the gateway kept everything
    it was sent). The simulator's per-client counts come from the audit records instead."""
    state = read_state(db_path)
    planned = {c.account: len(c.plan) for c in clients(SimulationConfig(
        endpoint="http://127.0.0.1:1/v1", seed=seed, duration=size["duration"], honest=size["honest"],
        attackers=size["attackers"], campaign_accounts=size["campaign"]))}
    accounts = []
    for name in planned:
        records = state["records"].get(name, [])
        if name not in state["accounts"]:
            continue  # its first session had not begun when the run stopped
        statuses = _count(str(r["status"]) for r in records)
        prof = profile_of(name)
        accounts.append({"account": name, "profile": prof, "kind": "honest" if prof in HONEST else "attacker",
                         "planned": planned[name], "sent": len(records),
                         "ok": sum(r["status"] < 400 for r in records),
                         "refused": sum(r["status"] in (403, 429) for r in records),
                         "errors": sum(r["status"] >= 400 and r["status"] not in (403, 429) for r in records),
                         "statuses": dict(statuses)})
    times = [r["time"] for rs in state["records"].values() for r in rs]
    totals = {"sent": sum(a["sent"] for a in accounts), "ok": sum(a["ok"] for a in accounts),
              "refused": sum(a["refused"] for a in accounts), "errors": sum(a["errors"] for a in accounts),
              "planned": sum(planned.values()), "seconds": round(max(times) - min(times), 1) if times else 0.0,
              "cut_short": True}
    return {"outcome": {"totals": totals, "accounts": accounts}, "state": state, "traffic_s": totals["seconds"],
            "settle_s": 0.0, "gateway_log_tail": []}


def settle(db_path: Path, quiet_s: float = 8.0, limit_s: float = 90.0) -> float:
    """Wait until the detector's last assessments have landed: no new action for `quiet_s` seconds."""
    began = last_change = time.monotonic()
    seen = -1
    while time.monotonic() - began < limit_s:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            count = conn.execute("SELECT COUNT(*) FROM account_actions").fetchone()[0]
        if count != seen:
            seen, last_change = count, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            break
        time.sleep(1.0)
    return time.monotonic() - began


def _time(value: str | None) -> float | None:
    if value is None:
        return None
    t = datetime.fromisoformat(value)
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def read_state(db_path: Path) -> dict:
    """Accounts, their actions and their audit records, straight from the gateway's database."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        accounts = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM accounts")}
        actions: dict[str, list[dict]] = defaultdict(list)
        for r in conn.execute("SELECT account_id, action, requested, source, risk, created_at, note FROM account_actions "
                              "ORDER BY id"):
            name = accounts[r["account_id"]]["name"]
            actions[name].append({**dict(r), "time": _time(r["created_at"])})
        records: dict[str, list[dict]] = defaultdict(list)
        for r in conn.execute("SELECT account_id, created_at, endpoint, params, prompt, completion, completion_tokens, "
                              "prompt_tokens, status, decision FROM audit_records WHERE account_id IS NOT NULL "
                              "ORDER BY id"):
            name = accounts[r["account_id"]]["name"]
            records[name].append({**dict(r), "time": _time(r["created_at"]), "params": json.loads(r["params"] or "{}")})
    finally:
        conn.close()
    by_name = {a["name"]: a for a in accounts.values()}
    return {"accounts": by_name, "actions": dict(actions), "records": dict(records)}


# ---------------------------------------------------------------- outcomes per account
def profile_of(name: str) -> str:
    """`sim-chat-12` -> chat (the simulator's names; the profile is only used to group the report)."""
    return name.split("-")[1]


def account_outcomes(state: dict, sim: dict) -> list[dict]:
    """What the gateway did to each simulated account, and what it served before its first action."""
    out = []
    for client in sim["accounts"]:
        name = client["account"]
        acct = state["accounts"].get(name, {})
        acts = state["actions"].get(name, [])
        kinds = {a["action"] for a in acts}
        now = {"blocked": bool(acct.get("blocked")), "degraded": bool(acct.get("degraded")),
               "hide_reasoning": bool(acct.get("hide_reasoning")), "throttled": acct.get("throttle_rpm") is not None}
        stopped = now["blocked"] or now["degraded"] or now["hide_reasoning"] or bool(kinds & set(STOPPING))
        touched = stopped or now["throttled"] or bool(kinds & set(TOUCHING))
        records = state["records"].get(name, [])
        served = [r for r in records if r["status"] < 400 and r["completion"] is not None]
        first = min((a["time"] for a in acts), default=None)
        first_stop = min((a["time"] for a in acts if a["action"] in STOPPING), default=None)
        before = [r for r in served if first is None or r["time"] < first]
        before_stop = [r for r in served if first_stop is None or r["time"] < first_stop]
        out.append({
            "account": name, "profile": client["profile"], "kind": client["kind"], "sent": client["sent"],
            "served": len(served), "refused": client["refused"], "errors": client["errors"],
            "actions": sorted(kinds, key=TOUCHING.index), "first_action": acts[0]["action"] if acts else None,
            "stopped": stopped, "touched": touched, **now,
            "blocked_by": "detector" if any(a["action"] == "block" and a["source"] == "detector" for a in acts)
            else ("other" if now["blocked"] else None),
            "served_before_first_action": len(before),
            "tokens_before_first_action": sum(int(r["completion_tokens"] or 0) for r in before),
            "served_before_stop": len(before_stop),
            "tokens_before_stop": sum(int(r["completion_tokens"] or 0) for r in before_stop),
            "risk_at_first_action": acts[0]["risk"] if acts else None,
        })
    return out


def profile_groups(rows: list[dict]) -> tuple[list[dict], list[dict], dict[str, list[dict]]]:
    """Honest rows, attacker rows, and the rows of each profile that has any, in the profiles' order."""
    groups = {prof: [r for r in rows if r["profile"] == prof] for prof in HONEST + ATTACKERS}
    return ([r for r in rows if r["kind"] == "honest"], [r for r in rows if r["kind"] == "attacker"],
            {prof: group for prof, group in groups.items() if group})


def summarise_outcomes(rows: list[dict]) -> dict:
    """Honest and attacker totals, per profile."""
    honest, attackers, groups = profile_groups(rows)
    by_profile = {}
    for prof, group in groups.items():
        by_profile[prof] = {
            "accounts": len(group), "stopped": sum(r["stopped"] for r in group),
            "touched": sum(r["touched"] for r in group), "blocked": sum(r["blocked"] for r in group),
            "actions": dict(sorted(_count(a for r in group for a in r["actions"]).items())),
            "median_served_before_first_action": statistics.median(r["served_before_first_action"] for r in group),
            "max_served_before_first_action": max(r["served_before_first_action"] for r in group),
            "median_tokens_before_first_action": statistics.median(r["tokens_before_first_action"] for r in group),
            "max_tokens_before_first_action": max(r["tokens_before_first_action"] for r in group),
            "served": sum(r["served"] for r in group), "sent": sum(r["sent"] for r in group),
        }
    return {
        "honest_accounts": len(honest), "attacker_accounts": len(attackers),
        "attacker_identities": len({r["account"] for r in attackers if r["profile"] != "campaign"}),
        "campaign_accounts": sum(r["profile"] == "campaign" for r in attackers),
        "honest_blocked": sum(r["blocked"] for r in honest),
        "honest_touched": sum(r["touched"] for r in honest),
        "honest_touched_share": sum(r["touched"] for r in honest) / max(1, len(honest)),
        "honest_touched_accounts": [{"account": r["account"], "actions": r["actions"]} for r in honest if r["touched"]],
        "attackers_stopped": sum(r["stopped"] for r in attackers),
        "attackers_not_stopped": [{"account": r["account"], "actions": r["actions"], "served": r["served"]}
                                  for r in attackers if not r["stopped"]],
        "by_profile": by_profile,
    }


def _count(items) -> dict:
    out: dict = defaultdict(int)
    for x in items:
        out[x] += 1
    return out


# ---------------------------------------------------------------- judged by outcome: students and honest accuracy
def _rendered(record: dict, tokenizer) -> str:
    """The prompt as the teacher saw it: chat messages through the chat template, a completion prompt as is."""
    prompt = record["prompt"] or ""
    if record["endpoint"].endswith("/chat/completions"):
        try:
            messages = json.loads(prompt)
        except ValueError:
            messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


def _texts(record: dict) -> list[str]:
    """The served completion texts of one record (n > 1 is stored as a JSON list)."""
    c = record["completion"]
    if c is None:
        return []
    if c.startswith("["):
        try:
            value = json.loads(c)
            if isinstance(value, list):
                return [str(v) for v in value]
        except ValueError:
            pass
    return [c]


def _top_k(record: dict) -> int:
    p = record["params"]
    top = p.get("top_logprobs")
    logprobs = p.get("logprobs")
    if isinstance(logprobs, int) and not isinstance(logprobs, bool):
        return int(logprobs)
    return int(top or 0) if logprobs else 0


def harvest_of(records: list[dict], teacher: LocalTeacher) -> tuple[list, list]:
    """(sft rows, kd rows) from what an account was served: kd rows carry the teacher's top-k at the served tokens."""
    tok = teacher.tokenizer
    sft, kd = [], []
    for r in records:
        if r["status"] >= 400:
            continue
        prompt = _rendered(r, tok)
        k = _top_k(r)
        limit = r["params"].get("max_tokens") or r["params"].get("max_completion_tokens")
        for text in _texts(r):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if not ids or len(tok(prompt, add_special_tokens=False)["input_ids"]) + len(ids) + 1 > STUDENT_POSITIONS:
                continue  # longer than the student's context: no student of this size could learn from it
            finish = "length" if limit is not None and len(ids) >= int(limit) else "stop"
            top = teacher.score_sync(prompt, ids, k).top_logprobs if k else None
            row = SimpleNamespace(prompt=prompt, completion=Completion(text, ids, [], finish, 0, top))
            sft.append(row)
            if top:
                kd.append(row)
    return sft, kd


def student_steps(rows: int, size: dict) -> int:
    """The training budget: `epochs` passes over the harvest, within [min_steps, max_steps]. A harvest of a few
    dozen pairs is learnt by heart long before its bound; the bound is what an unstopped harvester needs (the
    control reaches its retention at max_steps)."""
    return max(size["min_steps"], min(size["max_steps"], -(-size["epochs"] * rows // size["batch_size"])))


def train_and_score(rows: list, loss: str, out: Path, size: dict, seed: int, teacher_acc: dict) -> dict:
    """One student from `rows` with the short recipe; its accuracy and retention per task."""
    if not rows:
        return {"loss": loss, "rows": 0, "note": "nothing served to learn from",
                "accuracy": {t: 0.0 for t in TASK_NAMES}, **_retention({t: 0.0 for t in TASK_NAMES}, teacher_acc)}
    steps = student_steps(len(rows), size)
    cfg = DistillConfig(loss=loss, steps=steps, batch_size=size["batch_size"], lr=size["lr"], seed=seed,
                        warmup=min(50, steps // 5), checkpoint_every=10**9, log_every=10**9)
    began = time.monotonic()
    distill(rows, out, cfg, preset=size["preset"], progress=False)
    model, tokenizer = load_model(out)
    report = evaluate(LocalTeacher(model, tokenizer), get_tasks(list(TASK_NAMES)), n=size["eval_n"],
                      latency_samples=0, throughput_batch=0)
    acc = {t: v["accuracy"] for t, v in report["tasks"].items()}
    return {"loss": loss, "rows": len(rows), "steps": steps, "seconds": round(time.monotonic() - began, 1), "accuracy": acc,
            **_retention(acc, teacher_acc)}


def _retention(acc: dict, teacher_acc: dict) -> dict:
    per = {t: (acc[t] / teacher_acc[t] if teacher_acc[t] else None) for t in TASK_NAMES}
    reasoning = [per[t] for t in REASONING_TASKS if per[t] is not None]
    return {"retention": per, "max_reasoning_retention": max(reasoning) if reasoning else None}


def honest_accuracy(state: dict, rows: list[dict], teacher: LocalTeacher, seed: int) -> dict:
    """Per honest account: accuracy of what it was served (refused = wrong) vs the teacher's on the same prompts."""
    tok = teacher.tokenizer
    jobs: dict[tuple, list[tuple[str, str, int]]] = defaultdict(list)  # params -> (account, prompt, index)
    per: dict[str, dict] = {}
    for row in rows:
        if row["kind"] != "honest":
            continue
        name = row["account"]
        items = []
        for r in state["records"].get(name, []):
            text = prompt_text(r["prompt"])
            task = task_for_prompt(text)
            if task is None:
                continue
            served = _texts(r) if r["status"] < 400 else []
            ok = bool(served) and task.score(text, served[0])
            p = r["params"]
            temperature = float(p.get("temperature", 1.0) if p.get("temperature") is not None else 1.0)
            key = (temperature, float(p.get("top_p") or 1.0), int(p.get("max_tokens") or 48))
            items.append({"task": task.name, "prompt": text, "served_ok": ok, "greedy": temperature == 0.0})
            jobs[key].append((name, _rendered(r, tok), len(items) - 1))
        if items:
            per[name] = {"profile": row["profile"], "items": items}
    for (temperature, top_p, max_tokens), group in jobs.items():
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
        outputs = teacher.generate([g[1] for g in group], params)
        for (name, _, i), out in zip(group, outputs):
            item = per[name]["items"][i]
            item["teacher_ok"] = get_tasks([item["task"]])[0].score(item["prompt"], out[0].text)
    accounts = []
    for name, entry in per.items():
        items = entry["items"]
        greedy = [i for i in items if i["greedy"]]
        accounts.append({
            "account": name, "profile": entry["profile"], "scored": len(items), "greedy": len(greedy),
            "served_accuracy": sum(i["served_ok"] for i in items) / len(items),
            "teacher_accuracy": sum(i["teacher_ok"] for i in items) / len(items),
            "greedy_gap_points": 100 * (sum(i["teacher_ok"] for i in greedy) - sum(i["served_ok"] for i in greedy))
            / len(greedy) if greedy else None,
        })
    for a in accounts:
        a["gap_points"] = 100 * (a["teacher_accuracy"] - a["served_accuracy"])
    sampled = [i for e in per.values() for i in e["items"] if not i["greedy"]]
    greedy_gaps = [a["greedy_gap_points"] for a in accounts if a["greedy_gap_points"] is not None]
    return {
        "accounts_scored": len(accounts),
        "greedy_accounts": len(greedy_gaps),
        "greedy_within_2_points": sum(g <= GOALS["honest_accuracy_gap_points"] for g in greedy_gaps),
        "worst_greedy_gap_points": max(greedy_gaps, default=None),
        "all_within_2_points": sum(a["gap_points"] <= GOALS["honest_accuracy_gap_points"] for a in accounts),
        "worst_gap_points": max((a["gap_points"] for a in accounts), default=None),
        # Sampled requests (researchers' temperature sweeps) differ from any one teacher sample by chance:
        # they are judged pooled, where that chance averages out.
        "sampled_requests": len(sampled),
        "sampled_pooled_gap_points": 100 * (sum(i["teacher_ok"] for i in sampled) - sum(i["served_ok"] for i in sampled))
        / len(sampled) if sampled else None,
        "served_accuracy_pooled": sum(i["served_ok"] for e in per.values() for i in e["items"])
        / max(1, sum(len(e["items"]) for e in per.values())),
        "teacher_accuracy_pooled": sum(i["teacher_ok"] for e in per.values() for i in e["items"])
        / max(1, sum(len(e["items"]) for e in per.values())),
        "accounts": accounts,
    }


def students(state: dict, rows: list[dict], teacher: LocalTeacher, teacher_acc: dict, size: dict, seed: int,
             per_identity: bool, work: Path, progress=None) -> list[dict]:
    """A student (sft, and kd where top-k was served) per attacker identity or per profile, and the campaign."""
    groups: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row["kind"] != "attacker":
            continue
        unit = "campaign" if row["profile"] == "campaign" else (row["account"] if per_identity else row["profile"])
        groups[unit].append(row["account"])
    out = []
    for unit, members in sorted(groups.items()):
        records = [r for m in members for r in state["records"].get(m, [])]
        sft_rows, kd_rows = harvest_of(records, teacher)
        entry = {"unit": unit, "profile": profile_of(members[0]), "accounts": len(members),
                 "served_pairs": len(sft_rows), "kd_pairs": len(kd_rows),
                 "served_tokens": sum(len(r.completion.token_ids) for r in sft_rows), "students": []}
        for loss, data in (("sft", sft_rows), ("kd", kd_rows)):
            if loss == "kd" and not kd_rows:
                continue  # no top-k logprobs were served to this unit: kd is not open to it
            entry["students"].append(train_and_score(data, loss, work / f"{unit}-{loss}-s{seed}", size, seed, teacher_acc))
        entry["max_reasoning_retention"] = max((s["max_reasoning_retention"] or 0.0) for s in entry["students"])
        entry["max_story_retention"] = max((s["retention"]["story"] or 0.0) for s in entry["students"])
        out.append(entry)
        if progress is not None:
            progress(out)
        print(f"  student {unit:<22} pairs {len(sft_rows):>5} (kd {len(kd_rows):>5})  max reasoning retention "
              f"{entry['max_reasoning_retention']:.1%}", flush=True)
    return out


def control_students(teacher: LocalTeacher, teacher_acc: dict, size: dict, seed: int, work: Path) -> list[dict]:
    """The same recipe on a bulk harvester's whole plan, served in process with nothing stopping it."""
    planned = plan("bulk", seed * 1000, size["duration"] * 0.8)[:size["control_prompts"]]
    tok = teacher.tokenizer
    prompts = [tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) for p in planned]
    k = int(planned[0].params["top_logprobs"])
    params = SamplingParams(max_tokens=int(planned[0].params["max_tokens"]),
                            temperature=float(planned[0].params["temperature"]), seed=seed, top_logprobs=k)
    rows = [SimpleNamespace(prompt=p, completion=o[0]) for p, o in zip(prompts, teacher.generate(prompts, params))]
    out = []
    for loss in ("sft", "kd"):
        s = train_and_score(rows, loss, work / f"control-{loss}-s{seed}", size, seed, teacher_acc)
        out.append({**s, "unit": "control: unstopped bulk harvester", "served_pairs": len(rows)})
        print(f"  control {loss}: pairs {len(rows)}  max reasoning retention {s['max_reasoning_retention']:.1%}",
              flush=True)
    return out


# ---------------------------------------------------------------- baselines on the same traffic
def benign_reference(seed: int, n: int = 128) -> np.ndarray:
    """Embeddings of known-benign prompts: honest profiles from a seed no account in the run uses."""
    events, _, _ = population_events(Population(honest={"chat": 40, "app": 4, "eval": 3, "researcher": 3},
                                                attackers={}), 10_000 + seed, 60.0)
    rng = random.Random(seed)
    prompts = [e.prompt for e in events if e.prompt]
    return embed_many(rng.sample(prompts, min(n, len(prompts))))


def baselines(state: dict, rows: list[dict], seed: int) -> dict:
    """Plain PRADA (at each δ) and plain MMD, each as an account-level detector over every request it sent."""
    reference = benign_reference(seed)
    flagged: dict[str, dict[str, bool]] = {}
    for row in rows:
        prompts = [prompt_text(r["prompt"]) for r in state["records"].get(row["account"], [])]
        vecs = [embed(p) for p in prompts if p]
        verdict = {}
        for delta in PRADA_DELTAS:
            tracker = PradaTracker(PradaConfig(delta=delta))
            alarm = False
            for i, v in enumerate(vecs):
                tracker.update(v)
                # PRADA tests after every query once it has enough distances; the first alarm counts.
                if i >= tracker.config.min_samples and i % 10 == 0 and tracker.result()["w"] is not None:
                    alarm = alarm or tracker.result()["w"] < delta
            if len(vecs) > tracker.config.min_samples and tracker.result()["w"] is not None:
                alarm = alarm or tracker.result()["w"] < delta
            verdict[f"prada@{delta}"] = alarm
        window = MMDConfig().max_samples
        alarm = False
        for start in range(0, max(0, len(vecs) - MMDConfig().min_samples) + 1, window):
            chunk = vecs[start:start + window]
            if len(chunk) >= MMDConfig().min_samples:
                alarm = alarm or bool(mmd(np.stack(chunk), reference, MMDConfig(alpha=MMD_ALPHA))["flagged"])
        verdict["mmd"] = alarm
        flagged[row["account"]] = verdict
    by = {r["account"]: r for r in rows}
    detectors = {n: (lambda a, n=n: flagged[a][n]) for n in [f"prada@{d}" for d in PRADA_DELTAS] + ["mmd"]}
    detectors["stillwatch (stopped)"] = lambda a: by[a]["stopped"]
    detectors["stillwatch (any action)"] = lambda a: by[a]["touched"]
    return {name: rates(rows, fn) for name, fn in detectors.items()}


def rates(rows: list[dict], fn) -> dict:
    """Account-level true and false positive rates, with the campaign's accounts counted as attackers."""
    att = [r for r in rows if r["kind"] == "attacker"]
    hon = [r for r in rows if r["kind"] == "honest"]
    tp = sum(bool(fn(r["account"])) for r in att)
    fp = sum(bool(fn(r["account"])) for r in hon)
    missed = sorted({r["profile"] for r in att if not fn(r["account"])})
    fp_profiles = dict(_count(r["profile"] for r in hon if fn(r["account"])))
    return {"tpr": tp / max(1, len(att)), "fpr": fp / max(1, len(hon)), "tp": tp, "fp": fp,
            "attackers": len(att), "honest": len(hon), "profiles_missed": missed, "false_positives_by_profile": fp_profiles}


# ---------------------------------------------------------------- cost
def detector_cost(n_accounts: int, seed: int) -> dict:
    """Memory per account (tracemalloc over a Detector fed `n_accounts`) and the time of observe per event."""
    chat = max(1, int(n_accounts * 0.85))
    rest = max(1, (n_accounts - chat) // 6)
    pop = Population(honest={"chat": chat, "app": rest, "eval": rest, "researcher": rest},
                     attackers={"bulk": rest, "camouflage": rest, "slow": rest})
    events, truth, created = population_events(pop, seed, 600.0)
    config = DetectorConfig()
    timing = Detector(config)  # the packaged elicitation classifier loaded once, outside the measurement
    scorer = timing.elicit_scorer
    for e in events[:200]:  # warm-up: imports, caches
        timing.observe(e)
    timing = Detector(config, elicit_scorer=scorer)
    per_event = np.empty(len(events))
    for i, e in enumerate(events):
        t0 = time.perf_counter_ns()
        timing.observe(e)
        per_event[i] = time.perf_counter_ns() - t0
    t0 = time.perf_counter()
    timing.assess_all()
    assess_s = time.perf_counter() - t0
    del timing
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    det = Detector(config, elicit_scorer=scorer)
    det.observe_many(events)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    full = max(det.accounts.values(), key=lambda s: s.requests)
    return {"accounts": len(det.accounts), "events": len(events),
            "bytes_per_account": used / len(det.accounts), "bytes_total": used,
            "largest_account_requests": full.requests,
            "observe_us": {"p50": float(np.percentile(per_event, 50) / 1e3), "p99": float(np.percentile(per_event, 99) / 1e3),
                           "mean": float(per_event.mean() / 1e3)},
            "assess_all_s": assess_s}


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, under a minute")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="simulator and student seeds")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher directory (default: the shipped one)")
    parser.add_argument("--from-db", type=Path, default=None,
                        help="read a stopped run's gateway database (SQLite file) instead of running traffic; one seed")
    parser.add_argument("--no-students", action="store_true", help="skip the distillation (traffic and outcome only)")
    parser.add_argument("--identity-students", action="store_true",
                        help="a student per attacker identity on the first seed (default: per profile on every seed)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run at once, each its own gateway and process (one core each while serving)")
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)  # a --jobs child's results
    parser.add_argument("--later-seed", action="store_true", help=argparse.SUPPRESS)  # a child that is not first
    args = parser.parse_args()
    if args.jobs > 1 and len(args.seeds) > 1:
        return run_jobs(args)
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()  # one bar per student load would bury the table
    size = SIZES["smoke" if args.smoke else "full"]
    out_path = args.out or results_path(args.smoke)
    teacher_dir = resolve_model_dir(args.teacher or BUILTIN)
    model, tokenizer = load_model(teacher_dir)
    teacher = LocalTeacher(model, tokenizer)
    t_report = evaluate(teacher, get_tasks(list(TASK_NAMES)), n=size["eval_n"], latency_samples=0, throughput_batch=0)
    teacher_acc = {t: v["accuracy"] for t, v in t_report["tasks"].items()}
    print(f"teacher accuracy (n={size['eval_n']} per task): {teacher_acc}", flush=True)

    seeds_out: list[dict] = []
    result = {"benchmark": "detection", **run_info(args.seeds[0]), "seeds": args.seeds, "smoke": args.smoke,
              "sizes": dict(size), "students_per": "attacker identity on the first seed, profile on the others"
              if args.identity_students else "profile (the union of its identities' harvests) on every seed",
              "teacher": _shown(teacher_dir), "teacher_accuracy": teacher_acc, "goals": GOALS,
              "traffic_cut_short": args.from_db is not None}
    result["machine"].update(bench_torch_threads=1, gateway_torch_threads=1)

    def write(done: bool) -> None:
        """The results so far (a long run that stops part-way keeps what it measured)."""
        result.update(complete=done, seeds_done=[s["seed"] for s in seeds_out], summary=overall(seeds_out),
                      per_seed=seeds_out)
        out_path.write_text(json.dumps(result, indent=2, default=float) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-detection-") as tmpdir:
        tmp = Path(tmpdir)
        for n, seed in enumerate(args.seeds):
            began = time.monotonic()
            print(f"seed {seed}: traffic through a live gateway ...", flush=True)
            run = (traffic_from_db(args.from_db, seed, size) if args.from_db else
                   run_traffic(seed, size, tmp, teacher_dir))
            rows = account_outcomes(run["state"], run["outcome"])
            summary = summarise_outcomes(rows)
            print(f"  {run['outcome']['totals']} in {run['traffic_s']:.0f} s; honest blocked "
                  f"{summary['honest_blocked']}, touched {summary['honest_touched']}/{summary['honest_accounts']}; "
                  f"attackers stopped {summary['attackers_stopped']}/{summary['attacker_accounts']}", flush=True)
            entry = {"seed": seed, "traffic": run["outcome"]["totals"], "traffic_s": round(run["traffic_s"], 1),
                     "settle_s": round(run["settle_s"], 1), "gateway_errors": run["gateway_log_tail"],
                     "outcome": summary, "baselines": baselines(run["state"], rows, seed),
                     "honest_accuracy": honest_accuracy(run["state"], rows, teacher, seed), "accounts": rows}
            seeds_out.append(entry)
            write(False)
            if "cost" not in result and not args.later_seed:  # before the students, the longest phase
                result["cost"] = detector_cost(size["cost_accounts"], args.seeds[0])
                write(False)
            if not args.no_students:
                per_identity = args.identity_students and n == 0
                entry["students_per"] = "attacker identity" if per_identity else "profile"
                if n == 0 and not args.later_seed:  # first: without it no retention below can be read
                    entry["control"] = control_students(teacher, teacher_acc, size, seed, tmp / "control")
                    write(False)

                def progress(done: list[dict]) -> None:
                    entry["students"] = done
                    write(False)
                entry["students"] = students(run["state"], rows, teacher, teacher_acc, size, seed, per_identity,
                                             tmp / f"students-{seed}", progress)
            entry["seconds"] = round(time.monotonic() - began, 1)
            write(False)
            print(f"  seed {seed} done in {entry['seconds']:.0f} s", flush=True)
    write(True)
    if args.out is None:  # a --jobs child leaves the table to its parent
        print_table(result)
        print(f"wrote {out_path.relative_to(ROOT)}")


def run_jobs(args: argparse.Namespace) -> None:
    """Each seed in its own child process (`--jobs` at once), then one JSON over them all, in seed order. The
    first seed's child also measures the control and the detector's cost, as a one-process run does."""
    out_path = results_path(args.smoke)
    flags = [f for f, on in (("--smoke", args.smoke), ("--no-students", args.no_students),
                             ("--identity-students", args.identity_students)) if on]
    flags += ["--teacher", str(args.teacher)] if args.teacher else []
    with tempfile.TemporaryDirectory(prefix="bench-detection-jobs-") as tmpdir:
        parts = {seed: Path(tmpdir) / f"seed-{seed}.json" for seed in args.seeds}
        pending = [[sys.executable, str(Path(__file__).resolve()), "--seeds", str(seed), "--out", str(parts[seed]),
                    *flags, *([] if n == 0 else ["--later-seed"])] for n, seed in enumerate(args.seeds)]
        running: list[subprocess.Popen] = []
        while pending or running:
            while pending and len(running) < args.jobs:
                running.append(subprocess.Popen(pending.pop(0)))
            time.sleep(2.0)
            for child in [c for c in running if c.poll() is not None]:
                running.remove(child)
                if child.returncode != 0:
                    for other in running:
                        other.kill()
                    raise SystemExit(f"a seed's run failed (exit {child.returncode}): {' '.join(child.args)}")
        results = [json.loads(parts[seed].read_text()) for seed in args.seeds]
    merged = {**results[0], "command": run_info(args.seeds[0])["command"], "seeds": args.seeds}
    merged["per_seed"] = [entry for r in results for entry in r["per_seed"]]
    merged.update(complete=all(r["complete"] for r in results), seeds_done=[s["seed"] for s in merged["per_seed"]],
                  summary=overall(merged["per_seed"]))
    out_path.write_text(json.dumps(merged, indent=2, default=float) + "\n")
    print_table(merged)
    print(f"wrote {out_path.relative_to(ROOT)}")


def results_path(smoke: bool) -> Path:
    """Where a run's merged results go: the smoke run never overwrites the committed full one."""
    return ROOT / "bench" / "results" / ("detection-smoke.json" if smoke else "detection.json")


def _shown(path: Path) -> str:
    """A path as results record it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def overall(seeds: list[dict]) -> dict:
    """The goals over seeds: median and worst."""
    def med_worst(values: list[float], worst=max) -> dict:
        return {"median": statistics.median(values), "worst": worst(values)} if values else {}

    out = {
        "honest_blocked": med_worst([s["outcome"]["honest_blocked"] for s in seeds]),
        "honest_touched_share": med_worst([s["outcome"]["honest_touched_share"] for s in seeds]),
        "attackers_stopped_share": med_worst([s["outcome"]["attackers_stopped"] / max(1, s["outcome"]["attacker_accounts"])
                                              for s in seeds], min),
        "honest_worst_greedy_gap_points": med_worst([s["honest_accuracy"]["worst_greedy_gap_points"] or 0.0
                                                     for s in seeds]),
        "honest_sampled_pooled_gap_points": med_worst([s["honest_accuracy"]["sampled_pooled_gap_points"] or 0.0
                                                       for s in seeds]),
    }
    with_students = [s for s in seeds if "students" in s]
    if with_students:
        out["max_reasoning_retention"] = med_worst([max(u["max_reasoning_retention"] for u in s["students"])
                                                    for s in with_students])
        per_profile: dict[str, list[float]] = defaultdict(list)
        for s in with_students:
            for u in s["students"]:
                per_profile[u["profile"]].append(u["max_reasoning_retention"])
        out["max_reasoning_retention_by_profile"] = {p: med_worst(v) for p, v in sorted(per_profile.items())}
    names = seeds[0]["baselines"].keys() if seeds else []
    out["detectors"] = {n: {"tpr": med_worst([s["baselines"][n]["tpr"] for s in seeds], min),
                            "fpr": med_worst([s["baselines"][n]["fpr"] for s in seeds])} for n in names}
    out["goals_met"] = {
        "honest_blocked_0": bool(out["honest_blocked"]) and out["honest_blocked"]["worst"] == 0,
        "honest_touched_le_1pct": bool(out["honest_touched_share"]) and out["honest_touched_share"]["worst"] <= 0.01,
        "every_attacker_stopped": bool(out["attackers_stopped_share"]) and out["attackers_stopped_share"]["worst"] == 1.0,
        "retention_lt_50pct": ("max_reasoning_retention" in out and out["max_reasoning_retention"]["worst"] < 0.5),
        "honest_within_2_points": bool(out["honest_worst_greedy_gap_points"])
        and out["honest_worst_greedy_gap_points"]["worst"] <= 2.0,
    }
    return out


def print_table(result: dict) -> None:
    """The numbers a reader wants, in one screen."""
    s = result["summary"]
    print(f"\nseeds {result['seeds']}  (median / worst over seeds)")
    for key in ("honest_blocked", "honest_touched_share", "attackers_stopped_share", "honest_worst_greedy_gap_points",
                "honest_sampled_pooled_gap_points", "max_reasoning_retention"):
        if s.get(key):
            print(f"  {key:<36} {s[key]['median']:>10.4g} / {s[key]['worst']:.4g}")
    print(f"\n{'profile':<12}{'accounts':>9}{'stopped':>9}{'touched':>9}{'served before 1st action (med/max)':>38}"
          f"{'tokens before (med/max)':>26}")
    first = result["per_seed"][0]["outcome"]["by_profile"] if result["per_seed"] else {}
    for prof in first:
        agg = [sd["outcome"]["by_profile"][prof] for sd in result["per_seed"] if prof in sd["outcome"]["by_profile"]]
        print(f"{prof:<12}{sum(a['accounts'] for a in agg):>9}{sum(a['stopped'] for a in agg):>9}"
              f"{sum(a['touched'] for a in agg):>9}"
              f"{statistics.median(a['median_served_before_first_action'] for a in agg):>30.0f} / "
              f"{max(a['max_served_before_first_action'] for a in agg):<6}"
              f"{statistics.median(a['median_tokens_before_first_action'] for a in agg):>18.0f} / "
              f"{max(a['max_tokens_before_first_action'] for a in agg)}")
    if "max_reasoning_retention_by_profile" in s:
        print("\nstudent retention (max over add/mul/chain, sft or kd; median / worst):")
        for prof, v in s["max_reasoning_retention_by_profile"].items():
            print(f"  {prof:<12} {v['median']:>7.1%} / {v['worst']:.1%}")
        control = result["per_seed"][0].get("control", [])
        for c in control:
            print(f"  control {c['loss']:<4} {c['max_reasoning_retention']:>7.1%}  (an unstopped bulk harvester, "
                  f"{c['rows']} pairs)")
    print(f"\n{'detector':<26}{'TPR (med/worst)':>18}{'FPR (med/worst)':>18}")
    for name, v in s["detectors"].items():
        print(f"{name:<26}{v['tpr']['median']:>10.1%} / {v['tpr']['worst']:<6.1%}{v['fpr']['median']:>9.2%} / "
              f"{v['fpr']['worst']:.2%}")
    c = result["cost"]
    print(f"\ncost: {c['bytes_per_account'] / 1024:.1f} KiB per account ({c['accounts']} accounts); observe p50 "
          f"{c['observe_us']['p50']:.0f} us, p99 {c['observe_us']['p99']:.0f} us; assess_all {c['assess_all_s']:.2f} s")
    print(f"goals met: {s['goals_met']}")


if __name__ == "__main__":
    main()
