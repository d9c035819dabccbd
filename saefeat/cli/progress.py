"""Progress you can trust: one view for every long step the CLI runs or follows.

A step is a line: its label (kind and job id), its status when that says more than
"running" (queued, loading the model, succeeded), done/total in its unit, the rate, the
elapsed time and an ETA, and a note (a loss, a pipeline's stages). The clock is wall
time since the step began (a followed job: since it was submitted); the rate is
measured over the last RATE_WINDOW_S of reports unless the job gives its own.

On a terminal the lines carry a bar and are redrawn a few times a second, fitted to the
terminal's width as it is now: the bar shrinks, then the note takes a line of its own,
then the rate and the ETA go, then words wrap. Nothing is cut with an ellipsis. When
the progress stream is not a terminal (a file, a pipe, CI), each step prints one plain
line when it starts, when its status changes, when it ends, and while it moves at most
every `every` seconds (0: at each change; a followed job, polled once a second). A step
that goes quiet still prints a line every QUIET_S seconds, so a log shows it is alive.

While a view is open, transformers' own progress bars (its "Loading weights") become
steps of the view (`follow_transformers`), so a model load has a bar with a rate too.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

PLAIN_EVERY_S = 5.0  # a moving step's plain line at most this often
QUIET_S = 30.0  # a step that reports nothing still prints a plain line this often
RATE_WINDOW_S = 30.0  # the rate is measured over the reports of this last span
BAR_MIN, BAR_MAX = 10, 40  # the bar's width on a terminal


def clock(seconds: float | None) -> str:
    """H:MM:SS; "-:--:--" when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-:--:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def rate_text(rate: float | None, unit: str) -> str:
    if not rate:
        return ""
    per = f"{unit}/s" if unit else "/s"
    if rate >= 10:
        return f"{rate:,.0f} {per}"
    return f"{rate:.2f} {per}" if rate < 1 else f"{rate:.1f} {per}"


def wall_time(when: datetime | str | None) -> float | None:
    """A row's timestamp (ISO text or datetime; naive ones are UTC) as time.time()."""
    if when is None:
        return None
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@dataclass
class Step:
    label: str
    unit: str = ""
    done: int = 0
    total: int | None = None
    status: str = ""  # shown when set: queued, loading model, succeeded, ...
    note: str = ""  # a loss, a pipeline's stages
    started: float = field(default_factory=time.time)  # wall clock
    ended: float | None = None
    given_rate: float | None = None  # the job's own (a server's row); else measured
    given_eta: float | None = None
    samples: deque = field(default_factory=deque)  # (monotonic time, done)

    @property
    def finished(self) -> bool:
        return self.ended is not None

    def record(self, done: int, now: float) -> None:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()

    def rate(self) -> float | None:
        if self.given_rate is not None:
            return self.given_rate
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None

    def elapsed(self, now_wall: float) -> float:
        return max(0.0, (self.ended or now_wall) - self.started)

    def eta(self) -> float | None:
        if self.finished or self.total is None or self.done >= self.total:
            return None  # at its total, a step may still be finishing: no guess
        if self.given_eta is not None:
            return self.given_eta
        rate = self.rate()
        return max(0.0, (self.total - self.done) / rate) if rate else None

    def count(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total is None:
            return f"{self.done:,}{unit}" if self.done else ""
        pct = f" ({self.done / self.total:.0%})" if self.total else ""
        return f"{self.done:,}/{self.total:,}{unit}{pct}"

    def parts(self, now_wall: float) -> dict[str, str]:
        """The text of each column; empty ones are left out."""
        eta = self.eta()
        return {
            "head": " ".join(p for p in (self.label, self.status) if p),
            "count": self.count(),
            "rate": rate_text(self.rate(), self.unit),
            "elapsed": clock(self.elapsed(now_wall)),
            "eta": f"eta {clock(eta)}" if eta is not None else "",
            "note": self.note,
        }


def plain_line(step: Step, now_wall: float | None = None) -> str:
    """One line for a log: every column, no bar, no width limit."""
    p = step.parts(time.time() if now_wall is None else now_wall)
    cols = [p["count"], p["rate"], f"elapsed {p['elapsed']}", p["eta"], p["note"]]
    return f"{p['head']}: " + ", ".join(c for c in cols if c)


def _bar(step: Step, width: int) -> Text:
    bar = Text()
    if step.total:
        filled = round(width * min(step.done, step.total) / step.total)
        style = "green" if step.finished else "magenta"
        bar.append("━" * filled, style=style)
        bar.append("━" * (width - filled), style="grey23")
    else:
        bar.append("━" * width, style="grey23")
    return bar


def fitted_lines(step: Step, width: int, now_wall: float | None = None, bar: bool = True
                 ) -> list[Text]:  # fmt: skip
    """The step's lines for a terminal `width` columns wide: none longer than that and
    none cut short. The first that fits: everything on one line with a bar; the same with
    the note on lines of its own; the label, bar and count on one line and the rate,
    clock and ETA under them; then words wrapped."""
    p = step.parts(time.time() if now_wall is None else now_wall)
    width = max(width, 20)
    p["eta"] = p["eta"].replace(" ", "\xa0")  # "eta" stays with its time when wrapped
    detail = "  ".join(p[c] for c in ("rate", "elapsed", "eta") if p[c])

    def joined(*parts: str) -> str:
        return "  ".join(x for x in parts if x)

    def wrapped(text: str, indent: str = "") -> list[str]:
        return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent="  ",
                             break_on_hyphens=False)  # fmt: skip

    def with_bar(rest: str) -> Text | None:
        """head, bar, rest on one line if the bar gets BAR_MIN columns or more."""
        room = width - len(joined(p["head"], rest)) - 4
        if not bar or room < BAR_MIN:
            return None
        line = Text(p["head"] + "  ")
        line.append_text(_bar(step, min(room, BAR_MAX)))
        line.append("  " + rest)
        return line

    note = [Text(t) for t in wrapped(p["note"], "  ")] if p["note"] else []
    for rest, under in ((joined(p["count"], detail, p["note"]), []),
                        (joined(p["count"], detail), note)):  # fmt: skip
        line = with_bar(rest)
        if line is not None:
            return [line, *under]
        if not bar and len(joined(p["head"], rest)) <= width:
            return [Text(joined(p["head"], rest)), *under]
    first = with_bar(p["count"])
    lines = [first] if first else [Text(t) for t in wrapped(joined(p["head"], p["count"]))]
    return lines + [Text(t) for t in wrapped(detail, "  ")] + note


class ProgressView:
    """Steps shown live on a terminal, or as plain lines otherwise (see the module's
    docstring). Use as a context manager; thread-safe."""

    def __init__(self, console: Console, *, plain: bool | None = None,
                 every: float = PLAIN_EVERY_S) -> None:  # fmt: skip
        self.console = console
        self.plain = (not console.is_terminal) if plain is None else plain
        self.every = every
        self.steps: dict[str, Step] = {}
        self._printed: dict[str, tuple[float, str, bool]] = {}  # key -> (when, status, dirty)
        self._lock = threading.RLock()
        self._live: Live | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._hooked: Any = None

    # ---- lifetime -------------------------------------------------------------------

    def __enter__(self) -> ProgressView:
        if self.plain:
            self._ticker = threading.Thread(target=self._tick, name="progress-lines", daemon=True)
            self._ticker.start()
        else:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False,
                              get_renderable=self._render,
                              vertical_overflow="visible")  # fmt: skip
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.unfollow_transformers()
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
        else:
            with self._lock:  # a step that moved since its last line ends on its latest
                for key in self.steps:
                    if self._printed.get(key, (0, "", False))[2]:
                        self._print(key)

    # ---- steps ------------------------------------------------------------------------

    def add(self, key: str, label: str, unit: str = "", *, total: int | None = None,
            status: str = "", started: float | None = None, show: bool = True) -> str:  # fmt: skip
        """A new step; `show` False: its first plain line waits for its first update."""
        with self._lock:
            self.steps[key] = Step(label, unit, total=total, status=status,
                                   started=started or time.time())  # fmt: skip
            if self.plain and show:
                self._print(key)
        return key

    def update(self, key: str, *, done: int | None = None, total: int | None = None,
               status: str | None = None, note: str | None = None,
               rate: float | None = None, eta: float | None = None,
               show: bool = True) -> None:  # fmt: skip
        """`show` False: no plain line for this change (a `finish` follows)."""
        with self._lock:
            step = self.steps[key]
            before = (step.done, step.total, step.note)
            if done is not None:
                step.done = done
                step.record(done, time.monotonic())
            if total is not None:
                step.total = total
            if note is not None:
                step.note = note
            if rate is not None:
                step.given_rate = rate
            if eta is not None:
                step.given_eta = eta
            status_changed = status is not None and status != step.status
            if status is not None:
                step.status = status
            if not self.plain or not show:
                return
            moved = (step.done, step.total, step.note) != before
            if status_changed or key not in self._printed or (moved and self.every <= 0):
                self._print(key)
            elif moved:
                when, printed_status, _ = self._printed.get(key, (0.0, "", False))
                self._printed[key] = (when, printed_status, True)
                if time.monotonic() - when >= self.every:
                    self._print(key)

    def finish(self, key: str, status: str = "done", ended: float | None = None) -> None:
        """The step's last line; `ended`: when it ended (wall clock), if not now."""
        with self._lock:
            step = self.steps[key]
            if step.finished:
                return
            if status in ("done", "succeeded") and step.total is not None:
                step.done = step.total
            step.status, step.ended = status, ended or time.time()
            if self.plain:
                self._print(key)
            elif self._live is not None:
                self._live.refresh()

    def callback(self, key: str) -> Callable[..., None]:
        """progress(done, total, *rest) for a job's run: done and total in its unit."""

        def progress(done: int, total: int | None, *_: Any) -> None:
            self.update(key, done=done, total=total)

        return progress

    # ---- drawing ---------------------------------------------------------------------

    def _render(self) -> Group:
        with self._lock:
            width, now = self.console.width, time.time()
            lines = [line for s in self.steps.values() for line in fitted_lines(s, width, now)]
        return Group(*lines)

    def _print(self, key: str) -> None:
        step = self.steps[key]
        self.console.print(plain_line(step), highlight=False, soft_wrap=True, markup=False)
        self._printed[key] = (time.monotonic(), step.status, False)

    def _tick(self) -> None:
        """Plain mode: the lines of steps that moved since their last line, every
        `every` seconds, and of quiet ones every QUIET_S."""
        wait = min(self.every, QUIET_S) if self.every > 0 else QUIET_S
        while not self._stop.wait(max(wait, 0.2)):
            with self._lock:
                now = time.monotonic()
                for key, step in self.steps.items():
                    if step.finished:
                        continue
                    when, _, dirty = self._printed.get(key, (0.0, "", False))
                    if (dirty and now - when >= self.every) or now - when >= QUIET_S:
                        self._print(key)

    # ---- transformers' bars ------------------------------------------------------------

    def follow_transformers(self) -> bool:
        """Show transformers' progress bars ("Loading weights") as steps of this view
        (in this process); `unfollow_transformers` (or leaving the view) puts back
        whatever hook was there. False: this transformers has no such hook."""
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:  # pragma: no cover - a dependency
            return False
        if not hasattr(hf_logging, "set_tqdm_hook"):  # before transformers 5
            return False
        view = self

        def hook(factory, args: tuple, kwargs: dict):
            return _StepBar(view, args[0] if args else kwargs.get("iterable"), kwargs)

        self._hooked = (hf_logging, hf_logging.set_tqdm_hook(hook))
        return True

    def unfollow_transformers(self) -> None:
        if self._hooked is not None:
            module, previous = self._hooked
            module.set_tqdm_hook(previous)
            self._hooked = None


class _StepBar:
    """Enough of tqdm's interface for transformers' loops, reporting to a view."""

    _n = 0
    _lock = threading.Lock()

    def __init__(self, view: ProgressView, iterable: Iterable | None, kwargs: dict):
        with _StepBar._lock:
            _StepBar._n += 1
            self.key = f"tqdm-{_StepBar._n}"
        self.view, self.iterable = view, iterable
        total = kwargs.get("total")
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.n = kwargs.get("initial", 0) or 0
        desc = (kwargs.get("desc") or "working").strip().rstrip(":")
        unit = kwargs.get("unit") or ("tensors" if "weight" in desc.lower() else "it")
        view.add(self.key, desc[:1].lower() + desc[1:], unit, total=total)

    def __iter__(self):
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.view.update(self.key, done=self.n)

    def close(self) -> None:
        self.view.finish(self.key)

    def __enter__(self) -> _StepBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str) -> Callable[..., None]:  # set_description, refresh, ...
        return lambda *a, **k: None


def stderr_console() -> Console:
    """The console progress goes to (stderr), as a command's own would be made."""
    return Console(file=sys.stderr)
