"""Progress of a sweep on stderr: a live rich bar on a terminal, one plain line per point elsewhere (CI logs).

    ovprof sweep run sweeps/quickstart.toml 2> progress.log   # not a TTY: plain lines

Both forms show points done / to run, the current point's varying fields,
elapsed time and an ETA (mean time per finished point x points left: ovprof's
own, since rich's speed estimate stays blank when points take over 30 s); the
live bar also shows the phase the current worker is in.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape

STATUS_STYLE = {"ok": "green", "oom": "yellow", "error": "red", "timeout": "red"}


def _hms(s: float | None) -> str:
    if s is None:
        return "-:--:--"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Reporter:
    """Call start(label) before a point, trial(...) for each max-batch trial, finish(...) after it."""

    def __init__(self, total: int, console: Console | None = None, live: bool | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal if live is None else live
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()
        self.label = ""
        self._progress = None
        self._task = None
        if self.live and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, \
                TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), BarColumn(bar_width=24), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
                                      TextColumn("{task.description}"), console=self.console)
            self._task = self._progress.add_task("", total=total, eta=_hms(None))
            self._progress.start()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.t0

    def eta_s(self) -> float | None:
        if not self.done:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)

    def _describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=escape(text), eta=_hms(self.eta_s()))

    def start(self, label: str) -> None:
        self.label = label
        self._describe(label)

    def phase(self, text: str) -> None:
        """The current worker entered a phase ("imports: importing torch and DeepSpeed (+0.1 s)")."""
        self._describe(f"{self.label}  [{text}]")

    def trial(self, batch: int, status: str | None = None, reused: bool = False) -> None:
        """A max-batch trial starts (status None) or ends."""
        if status is None:
            self._describe(f"{self.label}  [max-batch trial batch={batch}]")
            return
        note = " (from the store)" if reused else ""
        self.console.print(f"    trial batch={batch}: [{STATUS_STYLE.get(status, 'red')}]{status}[/]{note}",
                           highlight=False)

    def finish(self, status: str, wall_s: float | None, detail: str = "") -> None:
        self.done += 1
        style = STATUS_STYLE.get(status, "red")
        wall = f"{wall_s:6.1f} s" if wall_s is not None else "       "
        head = f"[{self.done:>{len(str(self.total))}}/{self.total}]"
        line = f"{head} [{style}]{status:<7}[/] {wall}  {escape(self.label)}"
        if detail:
            line += f"  {escape(detail)}"
        if self._progress is not None:
            self._progress.advance(self._task)
            self._progress.update(self._task, eta=_hms(self.eta_s()))
            self.console.print(line, highlight=False)
        else:
            self.console.print(f"{line}  (elapsed {_hms(self.elapsed_s)}, eta {_hms(self.eta_s())})",
                               highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description="")
            self._progress.stop()
            self._progress = None
