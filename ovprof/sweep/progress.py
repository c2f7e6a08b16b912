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
    """Call start(label) before a point, trial(...) for each max-batch trial, finish(...) after it; with slots,
    each call names its slot, and the live bar shows every slot's current point."""

    def __init__(self, total: int, console: Console | None = None, live: bool | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal if live is None else live
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()
        self.labels: dict[int | None, str] = {}  # each slot's current point (None: a sweep without slots)
        self.current: dict[int | None, str] = {}  # what the live bar shows per slot: point, phase, trial
        self.per_slot: dict[int, int] = {}  # points finished per slot
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

    def _describe(self) -> None:
        if self._progress is not None:
            text = self.current.get(None, "") if list(self.current) == [None] else \
                "  |  ".join(f"slot {k}: {v}" for k, v in sorted(self.current.items(), key=lambda kv: kv[0] or 0))
            self._progress.update(self._task, description=escape(text), eta=_hms(self.eta_s()))

    def start(self, label: str, slot: int | None = None) -> None:
        self.labels[slot] = label
        self.current[slot] = label
        self._describe()

    def phase(self, text: str, slot: int | None = None) -> None:
        """A worker entered a phase ("imports: importing torch and DeepSpeed (+0.1 s)")."""
        self.current[slot] = f"{self.labels.get(slot, '')}  [{text}]"
        self._describe()

    def trial(self, batch: int, status: str | None = None, reused: bool = False, slot: int | None = None) -> None:
        """A max-batch trial starts (status None) or ends."""
        if status is None:
            self.current[slot] = f"{self.labels.get(slot, '')}  [max-batch trial batch={batch}]"
            self._describe()
            return
        note = " (from the store)" if reused else ""
        where = "" if slot is None else f"[slot {slot}] "
        self.console.print(f"    {where}trial batch={batch}: [{STATUS_STYLE.get(status, 'red')}]{status}[/]{note}",
                           highlight=False)

    def finish(self, status: str, wall_s: float | None, detail: str = "", slot: int | None = None) -> None:
        self.done += 1
        if slot is not None:
            self.per_slot[slot] = self.per_slot.get(slot, 0) + 1
        label = self.labels.get(slot, "")
        self.current.pop(slot, None)
        style = STATUS_STYLE.get(status, "red")
        wall = f"{wall_s:6.1f} s" if wall_s is not None else "       "
        head = f"[{self.done:>{len(str(self.total))}}/{self.total}]"
        where = "" if slot is None else f" slot {slot}"
        line = f"{head}{where} [{style}]{status:<7}[/] {wall}  {escape(label)}"
        if detail:
            line += f"  {escape(detail)}"
        if self._progress is not None:
            self._progress.advance(self._task)
            self._describe()
            self.console.print(line, highlight=False)
        else:
            self.console.print(f"{line}  (elapsed {_hms(self.elapsed_s)}, eta {_hms(self.eta_s())})",
                               highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    @property
    def label(self) -> str:
        return self.labels.get(None, "")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description="")
            self._progress.stop()
            self._progress = None
