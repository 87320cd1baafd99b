"""Offline detection check: the live benchmark's population and plan fed straight into `Detector`; no gateway, no model.

    nice -n 10 python bench/detection_offline.py --seeds 0 1 2 --fraction 0.21 1.0
    nice -n 10 python bench/detection_offline.py --honest tutor=100 --out bench/results/detection_offline-tutors.json
    python bench/detection_offline.py --smoke             # tiny sizes, to keep the script working

bench/detection.py needs about 40 minutes a seed (a live gateway, then students). This script answers its first
question, who gets which action and after how many requests, in minutes: it builds the simulator's seeded clients
and plans (`stillwatch.detect.simulate.clients`, the same sizes as bench/detection.py: 1,000 honest accounts, 30
attacker identities, a 100-account campaign; `--honest tutor=100` adds people who do sums between chats), keeps the first `--fraction` of the plan's requests in the order the
simulator sends them (one pass per seed: a shorter fraction's outcome is taken where its cut falls), and turns
each into the Event the gateway's audit record would give the detector:
  * the prompt as stored (chat messages, or the completion prompt), the request's params, the client's address
    and User-Agent, with the elicitation classifier's scores that the online detector writes back to every
    served record (`score_for_audit`);
  * token counts as `traffic.to_events` synthesises them (no model serves here);
  * times on the plan's clock, stretched by `--stretch` to model a gateway that serves slower than planned
    (rates are signals): the live benchmark's gateway now keeps the plan's pace, so the default is 1;
  * account creation as the simulator does it: the campaign's accounts in one sitting before any traffic,
    everyone else at their first request.
Online the gateway assesses every account with new traffic on each 2 s pass and the campaigns on a slower full
pass. Here an account is assessed when its own request count reaches `min_requests` and then each time it grows
by `--growth` (so the requests before an action are known to within that factor), and the campaigns are judged
every `--link-every` requests with the same `assess_cluster` that `assess_all` uses. Actions follow the built-in
policy as the live gateway honours it (degrade falls back to block, throttle to hide_reasoning); a blocked
account's later requests are refused, so the detector never sees them. Results: per profile, how many accounts
got each action, and the requests before their first action and before they were stopped, over seeds (median and
worst), in bench/results/detection_offline.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stillwatch.detect.detector import DEFAULT_WEIGHTS, Detector, DetectorConfig  # noqa: E402
from stillwatch.detect.events import Event  # noqa: E402
from stillwatch.detect.policy import ACTIONS, STOPPING, load_policy  # noqa: E402
from stillwatch.detect.signals.linkage import link  # noqa: E402
from stillwatch.detect.simulate import SimulationConfig, clients  # noqa: E402
from stillwatch.detect.traffic import HONEST  # noqa: E402
from stillwatch.errors import StillwatchError  # noqa: E402
from stillwatch.runinfo import run_info  # noqa: E402

from bench.detection import SIZES, profile_groups  # noqa: E402  (the live benchmark's population and tallies)

# What the live gateway (builtin teacher, no antidistillation proxy, quotas that do not take the detector's
# throttle) cannot honour: the policy substitutes its fallback or the next stronger action.
UNAVAILABLE = frozenset({"degrade", "throttle"})
TOUCHING = tuple(a for a in ACTIONS if a != "allow")


def audit_prompt(planned) -> str:
    """The prompt as the audit log stores it: chat messages as JSON text, a completion prompt as is."""
    return json.dumps(planned.messages) if planned.messages is not None else (planned.prompt or "")


class Scores:
    """The elicitation scores the online detector stores with each record, computed once per distinct prompt."""

    def __init__(self) -> None:
        from stillwatch.guard.detection import score_for_audit

        self.score = score_for_audit
        self.cache: dict[str, dict | None] = {}

    def __call__(self, prompt: str) -> dict | None:
        if prompt not in self.cache:
            self.cache[prompt] = self.score(prompt)
        return self.cache[prompt]


def run(seed: int, fractions: list[float], size: dict, args: argparse.Namespace, scores: Scores) -> list[dict]:
    """One seed's plan sent up to its largest fraction, with the outcome so far taken at each fraction's cut
    (a shorter cut is the start of a longer one: the same requests in the same order meet the same detector)."""
    sim = SimulationConfig(endpoint="http://127.0.0.1:1/v1", seed=seed, duration=size["duration"],
                           max_requests=size["max_requests"], honest=size["honest"], attackers=size["attackers"],
                           campaign_accounts=size["campaign"])
    everyone = clients(sim)
    jobs = sorted(((p.at, c, p) for c in everyone for p in c.plan), key=lambda j: j[0])  # the simulator's order
    planned = len(jobs)
    cuts: dict[int, list[float]] = defaultdict(list)  # two fractions past max_requests cut at one request
    for f in fractions:
        cuts[min(size["max_requests"], max(1, int(round(f * planned))))].append(f)
    jobs = jobs[:max(cuts)]
    policy = load_policy()
    det = Detector(DetectorConfig(weights=args.weights), elicit_scorer=scores)
    for i, c in enumerate(x for x in everyone if x.profile == "campaign"):
        det.created(c.account, -60.0 + i * 0.01)  # made in one sitting before the traffic
    sent: dict[str, int] = defaultdict(int)
    served: dict[str, int] = defaultdict(int)
    refused: dict[str, int] = defaultdict(int)
    next_check: dict[str, float] = {}
    actions: dict[str, list[dict]] = defaultdict(list)
    strongest: dict[str, str] = {}
    max_risk: dict[str, float] = defaultdict(float)
    reference = None
    began = time.monotonic()
    counters = {"assessments": 0, "cluster_passes": 0}
    out = []

    def act(name: str, risk: float, basis: int, reasons: list, via: str) -> None:
        max_risk[name] = max(max_risk[name], risk)
        chosen = policy.action(risk, basis, UNAVAILABLE)
        if chosen == "allow" or ACTIONS.index(chosen) <= ACTIONS.index(strongest.get(name, "allow")):
            return
        strongest[name] = chosen
        actions[name].append({"action": chosen, "risk": round(risk, 4), "requests": served[name], "via": via,
                              "reasons": [r["signal"] for r in reasons[:3]]})

    def campaigns() -> None:
        counters["cluster_passes"] += 1
        profiles = {pr.account: pr for pr in det.profiles()}
        for members in link(list(profiles.values()), det.config.linkage):
            risk, reasons, _ = det.assess_cluster(members, profiles)
            basis = sum(det.accounts[m].requests for m in members)
            for m in members:
                act(m, risk, basis, reasons, f"campaign of {len(members)}")

    for n, (at, c, p) in enumerate(jobs, 1):
        name = c.account
        sent[name] += 1
        if strongest.get(name) == "block":
            refused[name] += 1
        else:
            if name not in det.accounts or det.accounts[name].created is None:
                det.created(name, at * args.stretch)  # the simulator makes a key at the client's first request
            text = audit_prompt(p)
            event = Event.from_params(name, at * args.stretch, "/v1/chat/completions" if p.messages is not None
                                      else "/v1/completions", text, p.params, prompt_tokens=len(p.text) // 3,
                                      completion_tokens=16 * int(p.params.get("n", 1)), client_addr=c.addr,
                                      user_agent=f"stillwatch-sim/{c.profile}", elicit=scores(text))
            det.observe(event)
            served[name] += 1
            if reference is None or n % args.reference_every == 0:
                reference = det.benign_reference()
            if served[name] >= next_check.get(name, policy.min_requests):
                next_check[name] = served[name] * args.growth
                a = det.assess(name, reference)
                counters["assessments"] += 1
                act(name, a.risk, a.basis_requests, a.reasons, "account")
        if n % args.link_every == 0 or n in cuts:
            campaigns()
        if n in cuts:
            rows = []
            for c2 in everyone:
                acct = c2.account
                acts = actions.get(acct, [])
                stop = next((a for a in acts if a["action"] in STOPPING), None)
                rows.append({"account": acct, "profile": c2.profile, "kind": c2.kind, "planned": len(c2.plan),
                             "sent": sent.get(acct, 0), "served": served.get(acct, 0),
                             "refused": refused.get(acct, 0), "actions": [a["action"] for a in acts],
                             "strongest": strongest.get(acct, "allow"), "stopped": stop is not None,
                             "touched": bool(acts),
                             "requests_before_first_action": acts[0]["requests"] if acts else None,
                             "requests_before_stop": stop["requests"] if stop else None,
                             "first_action": acts[0] if acts else None, "max_risk": round(max_risk.get(acct, 0.0), 4)})
            kept = [r for r in rows if r["kind"] == "attacker" or r["touched"] or r["profile"] != "chat"]
            for f in cuts[n]:
                out.append({"seed": seed, "fraction": f, "requests": n, "planned": planned, **counters,
                            "seconds": round(time.monotonic() - began, 1), "outcome": summarise(rows),
                            "accounts": kept})
                print(f"  cut at {f} of the plan: {n} requests, {out[-1]['seconds']:.0f} s", flush=True)
    return out


def summarise(rows: list[dict]) -> dict:
    """Honest and attacker totals, and per profile: each action's count and the requests before them."""
    honest, attackers, groups = profile_groups(rows)
    by_profile = {}
    for prof, group in groups.items():
        first = [r["requests_before_first_action"] for r in group if r["requests_before_first_action"] is not None]
        stop = [r["requests_before_stop"] for r in group if r["requests_before_stop"] is not None]
        free = [r for r in group if not r["stopped"]]
        by_profile[prof] = {
            "accounts": len(group), "stopped": sum(r["stopped"] for r in group),
            "touched": sum(r["touched"] for r in group),
            "strongest": {a: sum(r["strongest"] == a for r in group) for a in TOUCHING
                          if any(r["strongest"] == a for r in group)},
            "median_requests_before_first_action": statistics.median(first) if first else None,
            "max_requests_before_first_action": max(first) if first else None,
            "median_requests_before_stop": statistics.median(stop) if stop else None,
            "max_requests_before_stop": max(stop) if stop else None,
            "max_risk_unstopped": max((r["max_risk"] for r in free), default=None),
            "served": sum(r["served"] for r in group), "sent": sum(r["sent"] for r in group),
        }
    return {"honest_accounts": len(honest), "attacker_accounts": len(attackers),
            "honest_blocked": sum(r["strongest"] == "block" for r in honest),
            "honest_touched": sum(r["touched"] for r in honest),
            "honest_touched_share": sum(r["touched"] for r in honest) / max(1, len(honest)),
            "honest_touched_accounts": [{"account": r["account"], "actions": r["actions"]} for r in honest
                                        if r["touched"]],
            "attackers_stopped": sum(r["stopped"] for r in attackers),
            "by_profile": by_profile}


def overall(runs: list[dict]) -> dict:
    """Per fraction, over seeds: median and worst of the honest totals and of each profile's stopped count."""
    out = {}
    for fraction in sorted({r["fraction"] for r in runs}):
        group = [r["outcome"] for r in runs if r["fraction"] == fraction]

        def mw(values: list, worst=max) -> dict:
            return {"median": statistics.median(values), "worst": worst(values)}
        profiles = {}
        for prof in group[0]["by_profile"]:
            cells = [g["by_profile"][prof] for g in group]
            first = [c["median_requests_before_first_action"] for c in cells
                     if c["median_requests_before_first_action"] is not None]
            profiles[prof] = {"accounts": cells[0]["accounts"],
                              "stopped": mw([c["stopped"] for c in cells], min),
                              "touched": mw([c["touched"] for c in cells],
                                            max if prof in HONEST else min),
                              "median_requests_before_first_action": mw(first) if first else None}
        out[str(fraction)] = {"honest_blocked": mw([g["honest_blocked"] for g in group]),
                              "honest_touched_share": mw([g["honest_touched_share"] for g in group]),
                              "attackers_stopped_share": mw([g["attackers_stopped"] / max(1, g["attacker_accounts"])
                                                             for g in group], min),
                              "by_profile": profiles}
    return out


def print_table(runs: list[dict]) -> None:
    """One block per seed and fraction: each profile's accounts, stopped, touched and requests before acting."""
    for r in runs:
        o = r["outcome"]
        print(f"\nseed {r['seed']}, fraction {r['fraction']} ({r['requests']} requests, {r['seconds']:.0f} s): honest "
              f"blocked {o['honest_blocked']}, touched {o['honest_touched']}/{o['honest_accounts']}; attackers "
              f"stopped {o['attackers_stopped']}/{o['attacker_accounts']}")
        print(f"  {'profile':<11}{'accts':>6}{'stopped':>8}{'touched':>8}  {'strongest action':<34}"
              f"{'req. before 1st (med/max)':>26}{'max risk unstopped':>20}")
        for prof, v in o["by_profile"].items():
            first = (f"{v['median_requests_before_first_action']:.0f} / {v['max_requests_before_first_action']}"
                     if v["median_requests_before_first_action"] is not None else "-")
            risk = f"{v['max_risk_unstopped']:.3f}" if v["max_risk_unstopped"] is not None else "-"
            print(f"  {prof:<11}{v['accounts']:>6}{v['stopped']:>8}{v['touched']:>8}  "
                  f"{json.dumps(v['strongest']):<34}{first:>26}{risk:>20}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="simulator seeds")
    parser.add_argument("--fraction", type=float, nargs="+", default=[0.21, 1.0],
                        help="share of each seed's planned requests to send, in the simulator's order")
    parser.add_argument("--smoke", action="store_true", help="a small population, under a minute")
    parser.add_argument("--stretch", type=float, default=1.0,
                        help="seconds of event time per planned second (the live gateway's pace)")
    parser.add_argument("--growth", type=float, default=1.2,
                        help="an account is assessed again when its requests grow by this factor")
    parser.add_argument("--link-every", type=int, default=1000, help="requests between campaign passes")
    parser.add_argument("--weight", action="append", default=[], metavar="SIGNAL=W",
                        help="override one signal's weight (an ablation: cover=0 is the detector without it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default bench/results/detection_offline.json, -smoke with --smoke)")
    parser.add_argument("--reference-every", type=int, default=500,
                        help="requests between refreshes of MMD's benign reference")
    parser.add_argument("--honest", action="append", default=[], metavar="PROFILE=N",
                        help="honest accounts of a profile on top of the live benchmark's (tutor=100: people who "
                             "do arithmetic homework between chats)")
    args = parser.parse_args()
    if not all(0 < f <= 1 for f in args.fraction) or args.growth <= 1 or args.link_every < 1:
        parser.error("fractions lie in (0, 1], --growth above 1, --link-every at least 1")
    try:
        args.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (w.split("=", 1) for w in args.weight)}}
        DetectorConfig(weights=args.weights)
    except (ValueError, StillwatchError) as exc:
        parser.error(f"--weight: {exc}")
    size = {k: SIZES["smoke" if args.smoke else "full"][k]
            for k in ("honest", "attackers", "campaign", "duration", "max_requests")}
    try:
        extra = {k: int(v) for k, v in (h.split("=", 1) for h in args.honest)}
    except ValueError:
        parser.error("--honest takes PROFILE=N")
    if set(extra) - set(HONEST) or any(v < 0 for v in extra.values()):
        parser.error(f"--honest: profiles are {', '.join(HONEST)}, counts at least 0")
    size["honest"] = {**size["honest"], **extra}
    out_path = (args.out or ROOT / "bench" / "results" /
                ("detection_offline-smoke.json" if args.smoke else "detection_offline.json")).resolve()
    result = {"benchmark": "detection_offline", **run_info(args.seeds[0]), "seeds": args.seeds,
              "fractions": args.fraction, "smoke": args.smoke, "sizes": size,
              "settings": {"stretch": args.stretch, "growth": args.growth, "link_every": args.link_every,
                           "reference_every": args.reference_every, "unavailable": sorted(UNAVAILABLE),
                           "policy": load_policy().version,
                           "detector": repr(DetectorConfig(weights=args.weights))}}
    scores = Scores()
    runs: list[dict] = []
    for seed in args.seeds:
        print(f"seed {seed} ...", flush=True)
        runs += run(seed, sorted(args.fraction), size, args, scores)
        result.update(runs_done=len(runs), summary=overall(runs), per_run=runs)
        out_path.write_text(json.dumps(result, indent=2, default=float) + "\n")  # a stopped run keeps its part
    print_table(runs)
    print(f"\nwrote {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")


if __name__ == "__main__":
    main()
