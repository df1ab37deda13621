"""The adversarial sweep's harness itself: case list, judging, report format, one real case end to end.

The sweep (``python tools/adversarial_sweep.py``, a tool outside the installed package) is the gate for error handling;
these tests check that it lists its cases, judges outcomes as it says, and writes the table
and summary line in the promised format. They do not depend on how today's trainer behaves,
except the slow end-to-end test, which runs one long-settled config check.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "adversarial_sweep.py"


def _load_tool():
    """The sweep, imported by path (it is no module of the package); registered so dataclasses resolve."""
    spec = importlib.util.spec_from_file_location("adversarial_sweep", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sweep = _load_tool()
from adversarial_sweep import (  # noqa: E402 - loaded by path above
    CASES,
    CATEGORIES,
    TRAIN_PREFIX,
    Case,
    Ctx,
    Outcome,
    Proc,
    Result,
    Snapshot,
    judge_error,
    judge_success,
    render_report,
    run_cases,
    summary_line,
)

SUMMARY = re.compile(
    r"^(\d+) cases: (\d+) pass, (\d+) fail(, \d+ skipped)?; tracebacks without --debug: (\d+); "
    r"mistaken inputs accepted silently: (\d+); runs or epochs lost: (\d+)$",
    re.M,
)


def fake(rc, stderr="", stdout="") -> Result:
    return Result(["fake"], rc, stdout, stderr, 0.1)


def test_list_shows_every_case_once_with_counts_per_category(capsys):
    assert sweep.main(["--list"]) == 0
    text = capsys.readouterr().out
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    for name in names:
        assert re.search(rf"^{re.escape(name)}  \[", text, re.M), name
    counts = {cat: sum(c.category == cat for c in CASES) for cat in CATEGORIES}
    assert all(counts.values()), counts
    assert 50 <= len(CASES) - counts["fault"] <= 70 and 15 <= counts["fault"] <= 25
    assert f"{len(CASES)} cases (" in text.splitlines()[-1]


def test_only_selects_by_name_or_category(capsys):
    assert [c.name for c in sweep.select_cases(["cfg-ratio-"])] == [
        "cfg-ratio-zero", "cfg-ratio-above-one", "cfg-ratio-negative", "cfg-ratio-text"]
    assert {c.category for c in sweep.select_cases(["fault"])} == {"fault"}
    assert sweep.main(["--only", "no-such-case-anywhere"]) == 2


def test_judge_error():
    good = judge_error(fake(2, "INFO scanning\norderdp-dali train: error: train.epohcs: unknown key\n"),
                       must=["train.epohcs"])
    assert good.verdict == "PASS" and good.exit == "2" and not good.traceback
    # the key is looked for after the prefix: "train" in "orderdp-dali train: error:" does not count
    assert judge_error(fake(2, "orderdp-dali train: error: bad value\n"), must=["train"]).verdict == "FAIL"
    accepted = judge_error(fake(0, "INFO all fine\n"), must=["x"])
    assert accepted.silent and accepted.verdict == "FAIL"
    crashed = judge_error(fake(1, "Traceback (most recent call last):\n  File ...\nValueError: boom\n"))
    assert crashed.traceback and crashed.verdict == "FAIL" and crashed.last_line == "ValueError: boom"
    either = judge_error(fake(2, "orderdp-dali train: error: data.drop_last: too few samples\n"),
                         any_of=["train.batch_size", "data.drop_last"])
    assert either.verdict == "PASS"
    wordy = judge_error(fake(2, TRAIN_PREFIX + " x" * 400 + "\n"))
    assert wordy.verdict == "FAIL" and "characters" in wordy.problems[0]
    killed = judge_error(fake(-9, ""))
    assert killed.verdict == "FAIL" and not killed.silent
    assert judge_success(fake(0, "")).verdict == "PASS"
    assert judge_success(fake(3, "")).problems == ["run exited 3"]


def test_snapshot_notices_changed_and_deleted_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    (run / "last.pth").write_bytes(b"x")
    keep = Snapshot(run)
    assert keep.damage() == []
    (run / "metrics.jsonl").write_text("")
    (run / "last.pth").unlink()
    (run / "new.txt").write_text("new files are fine")
    assert sorted(keep.damage()) == ["last.pth was deleted", "metrics.jsonl was changed"]
    o = judge_error(fake(2, "orderdp-dali train: error: refused\n"), keep=keep)
    assert o.lost and o.verdict == "FAIL"


def test_report_table_and_summary_format():
    cases = [Case(f"case-{i}", cat, "refused, error names `x`", "train x=1", lambda ctx, work: Outcome())
             for i, cat in enumerate(["config", "data", "fault"])]
    outcomes = [
        Outcome(exit="2", last_line="orderdp-dali train: error: x | y in /tmp/sweep-base/a"),
        Outcome(exit="0", last_line="z" * 300, silent=True, problems=["exit 0"]),
        Outcome(exit="1", traceback=True, lost=True, last_line="ValueError", problems=["traceback", "lost"]),
    ]
    text = render_report(list(zip(cases, outcomes)), base="/tmp/sweep-base")
    rows = [line for line in text.splitlines() if line.startswith("| case-")]
    assert len(rows) == 3
    assert all(row.count(" | ") == 6 for row in rows)  # 7 columns, the '|' in a message escaped
    assert "x \\| y in $SWEEP/a" in rows[0] and "| PASS |" in rows[0]
    assert "z" * 119 + "…" in rows[1] and "z" * 120 not in rows[1]
    assert "| yes | FAIL |" in rows[2]
    m = SUMMARY.search(text)
    assert m and m.group(0) == ("3 cases: 1 pass, 2 fail; tracebacks without --debug: 1; "
                                "mistaken inputs accepted silently: 1; runs or epochs lost: 1")
    assert "- `case-1`: exit 0" in text
    skipped = summary_line([Outcome(), Outcome(skipped="root")])
    assert SUMMARY.search(skipped) and skipped.startswith("2 cases: 1 pass, 0 fail, 1 skipped;")


def test_cases_run_real_subprocesses_and_are_judged(tmp_path):
    """Two stand-in cases through run_cases: a traceback and a silently accepted input both fail."""
    ctx = Ctx(tmp_path / "sweep")

    def crashes(ctx, work):
        res = ctx.start([sys.executable, "-c", "raise ValueError('boom')"], work).finish(30)
        return judge_error(res, must=["boom"])

    def accepts(ctx, work):
        res = ctx.start([sys.executable, "-c", "print('trained')"], work).finish(30)
        return judge_error(res, must=["x"])

    def refuses(ctx, work):
        code = f"import sys; sys.exit(print({TRAIN_PREFIX + ' train.x: unknown key'!r}, file=sys.stderr) or 2)"
        return judge_error(ctx.start([sys.executable, "-c", code], work).finish(30), must=["train.x"])

    results = run_cases(ctx, [Case("crash", "fault", "", "", crashes), Case("accept", "config", "", "", accepts),
                              Case("refuse", "config", "", "", refuses)], jobs=2)
    (_, crash), (_, accept), (_, refuse) = results
    assert crash.verdict == "FAIL" and crash.traceback and crash.exit == "1"
    assert accept.verdict == "FAIL" and accept.silent and accept.exit == "0"
    assert refuse.verdict == "PASS", refuse.problems
    assert (tmp_path / "sweep" / "cases" / "crash.step1.log").read_text().count("ValueError: boom") == 1


def test_a_run_past_its_timeout_is_killed_with_its_session(tmp_path):
    proc = Proc([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, env=None)
    res = proc.finish(timeout=1.0)
    assert res.timed_out and res.rc is not None and proc.session_pids() == []
    o = judge_error(res)
    assert o.exit == "timeout" and o.verdict == "FAIL"


@pytest.mark.slow
def test_one_config_case_end_to_end(tmp_path, capsys):
    """The real CLI on a generated dataset: an unknown config section is refused with its name."""
    out = tmp_path / "report.md"
    rc = sweep.main(["--only", "cfg-unknown-section", "--out", str(out), "--tmp", str(tmp_path)])
    text = out.read_text(encoding="utf-8")
    assert rc == 0, text
    assert "| cfg-unknown-section | config |" in text and "| PASS |" in text
    assert SUMMARY.search(text).group(0).startswith("1 cases: 1 pass, 0 fail;")
    assert text in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # the temporary folder is removed


def test_module_imports_without_torch():
    import subprocess

    code = ("import sys, importlib.util as u; s = u.spec_from_file_location('adversarial_sweep', sys.argv[1]); "
            "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); "
            "sys.exit('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(TOOL)], cwd=Path(__file__).parent, timeout=60)
    assert run.returncode == 0
