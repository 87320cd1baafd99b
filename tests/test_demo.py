"""`stillwatch demo` end to end at its quick sizes, on the cached tiny teacher (so `teach` is skipped)."""

from __future__ import annotations

import io
import json
import shutil
import socket
from urllib.parse import urlparse

import pytest
from rich.console import Console

from stillwatch.demo import DISTILLER, HONEST, SIZES, run_demo


@pytest.fixture(scope="module")
def demo(tiny_teacher, tmp_path_factory):
    """One quick run of the whole scenario: its result and everything it printed."""
    workdir = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_teacher, workdir / "teacher-tiny", ignore=shutil.ignore_patterns("_run"))
    out = io.StringIO()
    result = run_demo(workdir, preset="tiny", console=Console(file=out, width=160), quick=True, progress=False,
                      json_out=workdir / "summary.json")
    return result, out.getvalue(), workdir


def test_the_teacher_is_reused_and_every_act_reports(demo):
    result, printed, workdir = demo
    assert "reusing the teacher" in printed
    assert [s["act"][:2] for s in result["steps"]] == ["1.", "2.", "3.", "4.", "5.", "6."]
    assert "Summary" in printed and str(workdir / "run") in printed
    assert json.loads((workdir / "summary.json").read_text())["steps"] == result["steps"]
    assert json.loads((workdir / "run" / "demo.json").read_text())["passed"] == result["passed"]


def test_harvest_through_the_gateway_is_audited_per_account(demo):
    result, _, _ = demo
    numbers, quick = result["numbers"], SIZES["quick"]
    harvest = numbers["harvest"]
    assert harvest["rows"] > 0
    assert harvest["rows"] == harvest["requests"] - quick.story_prompts + quick.story_prompts * quick.story_samples
    audit = harvest["audit"]
    # The harvest may first ask GET /v1/models what kind of server it talks to: one audited request more.
    assert audit[DISTILLER]["requests"] - harvest["requests"] in (0, 1) and audit[DISTILLER]["refused"] == 0
    assert audit[DISTILLER]["completion_tokens"] == harvest["completion_tokens"]
    assert audit[HONEST]["requests"] == quick.honest_requests == numbers["honest_requests"]


def test_the_live_detector_stops_the_returning_distiller_and_spares_honest_users(demo):
    result, printed, workdir = demo
    detect = result["numbers"]["detect"]
    offline = {a["account"]: a for a in detect["offline"]}
    assert offline[DISTILLER]["risk"] > offline[HONEST]["risk"]  # the first harvest already stands out
    assert detect["action"] in ("hide_reasoning", "degrade", "block") and detect["requests_before"] >= 20
    assert detect["honest_actions"] == 0 and detect["honest_status"] == 200 and "->" in detect["honest_answer"]
    assert detect["evidence_problems"] == []
    bundle = json.loads((workdir / "run" / "evidence.json").read_text())
    assert bundle["format"] == "stillwatch-evidence/1" and bundle["records"] and bundle["chain"]["ok"]
    step = next(s for s in result["steps"] if s["act"].startswith("5."))
    assert step["passed"]


def test_the_student_is_proven_derived_and_the_control_is_cleared(demo):
    # Reliable at the quick size: 240 watermarked stories and 400 student steps gave the student p between
    # 1e-45 and 1e-37 over seeds 0-3 (at 150 steps only ~1e-5, too close to alpha = 1e-4), while the control,
    # trained on un-watermarked outputs, gave p = 0.39-0.87 over the same seeds.
    result, _, workdir = demo
    prove = result["numbers"]["prove"]
    assert prove["verdict"] == "derived" and prove["p_value"] < 1e-4
    assert prove["control_verdict"] == "not shown" and prove["control_p_value"] >= 0.01
    report = json.loads((workdir / "run" / "report" / "report.json").read_text())
    assert report["verdict"] == "derived" and report["evidence"]["account"] == DISTILLER
    assert (workdir / "run" / "report" / "report.md").is_file()


def test_the_gateway_is_shut_down_and_bound_to_loopback(demo):
    result, _, _ = demo
    url = urlparse(result["numbers"]["gateway"])
    assert url.hostname == "127.0.0.1"
    with pytest.raises(OSError):
        socket.create_connection((url.hostname, url.port), timeout=2).close()


def test_cli_demo_rejects_an_unknown_preset(tmp_path):
    from stillwatch.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--preset", "huge", "--workdir", str(tmp_path)])
    assert exc.value.code == 2
    assert not (tmp_path / "run").exists()


def test_the_demo_never_deletes_a_run_directory_it_did_not_make(tmp_path):
    from stillwatch.errors import ConfigError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not made by"):
        run_demo(tmp_path, console=Console(file=io.StringIO()), quick=True, progress=False)
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"
