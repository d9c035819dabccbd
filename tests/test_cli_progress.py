"""The CLI's progress (saefeat/cli/progress.py): real clocks and rates, lines that fit the
terminal without an ellipsis, and a plain line per change when output is a file."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from saefeat.cli.progress import ProgressView, Step, clock, fitted_lines, plain_line, wall_time

PIPELINE_NOTE = "harvest: succeeded | train: succeeded | index: running | explain: pending"


def _moving_step(**kw) -> Step:
    """An index job 65 s in, 1,024 of 3,072 tokens done at 100 tokens a second."""
    step = Step("index 58748144", "tokens", total=3072, status="running",
                started=time.time() - 65, **kw)  # fmt: skip
    now = time.monotonic()
    step.record(24, now - 10)
    step.done = 1024
    step.record(1024, now)
    return step


def test_clock_rate_and_eta_are_measured():
    step = _moving_step()
    assert clock(step.elapsed(time.time())) in ("0:01:05", "0:01:06")  # not 0:00:00
    assert step.rate() == pytest.approx(100, rel=0.01)
    assert step.eta() == pytest.approx(20.48, rel=0.01)
    line = plain_line(step)
    assert "1,024/3,072 tokens (33%)" in line and "100 tokens/s" in line
    assert "elapsed 0:01:0" in line and "eta 0:00:20" in line
    step.done = step.total  # at its total but not ended: still finishing, no ETA guess
    assert step.eta() is None
    assert clock(None) == "-:--:--" and clock(3725) == "1:02:05"
    assert wall_time("2026-01-02T03:04:05") == wall_time("2026-01-02T03:04:05+00:00")


@pytest.mark.parametrize("width", [20, 30, 44, 60, 80, 100, 120, 160, 240])
def test_lines_fit_the_width_and_nothing_is_cut(width):
    step = _moving_step(note=PIPELINE_NOTE)
    lines = [t.plain.replace("\xa0", " ") for t in fitted_lines(step, width)]
    assert all(len(line) <= width for line in lines), (width, lines)
    text = " ".join(lines)
    assert "…" not in text and "..." not in text
    # Everything survives at every width: whose progress, how far, how fast, the clock,
    # the time left, the stages (words wrap; none is dropped or cut).
    words = " ".join(text.split())
    for part in ("index 58748144 running", "1,024/3,072 tokens (33%)", "100 tokens/s",
                 "0:01:0", "eta 0:00:2", PIPELINE_NOTE):  # fmt: skip
        assert part in words, (width, lines)
    if width >= 100:  # a bar and every column; the stages under them, or beside them
        assert "━" in lines[0] and "100 tokens/s" in lines[0] and "eta 0:00:2" in lines[0]
        assert len(lines) == (1 if width >= 240 else 2)
    if 70 <= width < 100:  # the bar and the count; the rate, clock and ETA under them
        assert "━" in lines[0] and "1,024/3,072" in lines[0] and "eta" in lines[1]


def test_a_file_gets_one_plain_line_per_change():
    out = io.StringIO()
    console = Console(file=out, width=80)
    assert not console.is_terminal
    with ProgressView(console, every=0) as view:
        view.add("j", "harvest abcd1234", "tokens", status="queued")
        view.update("j", status="running", done=0, total=300)
        view.update("j", done=0, total=300)  # nothing moved: no line
        for done in (100, 200, 300):
            view.update("j", done=done)
        view.finish("j", "succeeded")
    lines = out.getvalue().splitlines()
    assert len(lines) == 6, lines
    assert lines[0].startswith("harvest abcd1234 queued:")
    assert [re.search(r"(\d+)/300", line).group(1) for line in lines[1:5]] == [
        "0", "100", "200", "300"]  # fmt: skip
    assert lines[-1].startswith("harvest abcd1234 succeeded: 300/300 tokens (100%)")
    assert all(len(line) > 80 or "…" not in line for line in lines)  # no width, no cuts


def test_a_log_gets_a_line_every_few_seconds_not_per_report():
    out = io.StringIO()
    with ProgressView(Console(file=out), every=0.3) as view:
        view.add("t", "train 1234abcd", "steps", total=1000)
        t_end = time.monotonic() + 1.0
        step = 0
        while time.monotonic() < t_end:
            step += 1
            view.update("t", done=step)
            time.sleep(0.005)
        view.finish("t", "succeeded")
    lines = out.getvalue().splitlines()
    assert step > 50 and 3 <= len(lines) <= 8, (step, lines)
    assert lines[-1].startswith("train 1234abcd succeeded: 1,000/1,000 steps")


def test_a_terminal_draws_bars_at_its_own_width():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=70, color_system=None)
    with ProgressView(console) as view:
        assert not view.plain
        view.add("j", "explain 0c1d2e3f", "features", total=40, status="running")
        view.update("j", done=10, note=PIPELINE_NOTE)
        rendered = view._render()
    lines = [t.plain for t in rendered.renderables]
    assert all(len(line) <= 70 for line in lines) and "━" in lines[0], lines
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "…" not in screen and "10/40 features" in screen


def test_transformers_bars_become_steps():
    from transformers.utils import logging as hf_logging

    out = io.StringIO()
    with ProgressView(Console(file=out), every=0) as view:
        view.follow_transformers()
        for _ in hf_logging.tqdm(range(5), desc="Loading weights"):
            pass
        (step,) = view.steps.values()
    assert hf_logging._tqdm_hook is None  # put back on leaving the view
    assert step.label == "loading weights" and step.unit == "tensors"
    assert step.finished and step.done == step.total == 5
    assert "loading weights done: 5/5 tensors (100%)" in out.getvalue()


def test_watch_of_a_job_prints_each_change_to_a_file():
    from saefeat.remote import watch

    states = [("queued", 0, None), ("running", 0, 1000), ("running", 400, 1000),
              ("running", 400, 1000), ("running", 1000, 1000),
              ("succeeded", 1000, 1000)]  # fmt: skip
    polls = iter(states)

    def read(job_id: str) -> dict:
        status, done, total = next(polls)
        return {"id": job_id, "kind": "index", "status": status, "unit": "tokens",
                "progress_done": done, "progress_total": total,
                "rate": 250.0 if done else None, "eta_seconds": None,
                "created_at": "2026-01-01T00:00:00", "stages": None}  # fmt: skip

    out = io.StringIO()
    (job,) = watch(read, ["f00dfeed0123"], Console(file=out, width=40), every=0.01)
    assert job["status"] == "succeeded"
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "index f00dfeed queued", "index f00dfeed running", "index f00dfeed running",
        "index f00dfeed running", "index f00dfeed succeeded"]  # fmt: skip
    assert "400/1,000 tokens (40%), 250 tokens/s" in lines[2]
    assert all(len(line) > 40 for line in lines[1:])  # a file is not cut to 40 columns
