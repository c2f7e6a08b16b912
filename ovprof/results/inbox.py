"""Records that submitted jobs leave beside the store, until the sweep watching them appends them to it.

    ovprof sweep run sweeps/ci-memory.toml --executor submitit   # jobs write results/ci-memory.jsonl.inbox/*.jsonl

A job on another node never appends to the shared JSONL store itself. On NFS,
O_APPEND is not atomic across clients, and `flock` excludes other clients only
when the mount's lock manager works (NFSv4, or v3 with lockd; not with `nolock`
or `local_lock=all`): two nodes appending at once could interleave or overwrite
lines. So each job writes its records with the usual append (one line, fsynced:
ovprof/results/store.py) to a file of its own, `<store>.inbox/<key>.jsonl`,
which no other process writes. The sweep that submitted the job, one process on
one host, appends those records to the store (`Merger.merge`) and removes the
file once it holds the point's final record. A sweep killed in between loses
nothing: the next `sweep run` on the store merges first.

The merge is idempotent: a record the store already holds (same kind, run_id,
started_at and finished_at) is not appended again, so a merge cut short by a
kill is finished by the next one without a duplicate. Two merges never run at
once: each holds a claim on the store (ovprof/results/claims.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ovprof.results import claims, store
from ovprof.results import record as R

MERGE_KEY = "_inbox-merge"  # the claim that one merge at a time holds


def inbox_dir(store_path: str | Path) -> Path:
    return store.sidecar(store_path, ".inbox")


def job_file(store_path: str | Path, key: str) -> Path:
    """The file one job writes its records to; `key` names the point and the job (e.g. "<run_id>-<job id>")."""
    return inbox_dir(store_path) / f"{store.safe_key(key, 160)}.jsonl"


def _files(store_path: str | Path) -> list[Path]:
    d = inbox_dir(store_path)
    if not d.is_dir():
        return []
    # a record the job's filesystem refused waits in "<file>.pending" (record.append): merged the same way
    return sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith((".jsonl", ".jsonl.pending")))


def _read(path: Path) -> list[R.Record]:
    try:
        return R.read_store(path, warn=None).records  # a line still being written is left for the next read
    except OSError:
        return []


def records(store_path: str | Path) -> list[R.Record]:
    """Every record waiting in the inbox, file by file (a job reads them to see points finished elsewhere)."""
    return [rec for f in _files(store_path) for rec in _read(f)]


def identity(rec: R.Record) -> tuple:
    return (rec.kind, rec.run_id, rec.started_at, rec.finished_at)


def is_final(rec: R.Record) -> bool:
    """The last record a point's job writes: a plain run's record, or a max-batch search's summary."""
    return isinstance(rec, R.MaxBatchRecord) or rec.max_batch_search is None


class Merger:
    """Appends the inbox's records to the store, each once; remembers what the store holds between calls."""

    def __init__(self, store_path: str | Path):
        self.store = Path(store_path)
        self._cursor = store.Cursor()
        self._held: set[tuple] = set()  # identities of the records the store holds

    def merge(self) -> list[R.Record]:
        """Append every inbox record the store lacks; returns them. Files ending in a final record go.

        When another process is merging right now, returns [] (its merge covers the same files)."""
        if not _files(self.store):
            return []
        added: list[R.Record] = []
        with claims.claim(self.store, MERGE_KEY) as mine:
            if not mine:
                return []
            for rec in R.read_store(self.store, cursor=self._cursor, warn=None).records:
                self._held.add(identity(rec))
            for f in _files(self.store):
                recs = _read(f)
                for rec in recs:
                    if identity(rec) not in self._held:
                        # RecordNotStored (a full disk) keeps the record in the store's pending file, which the
                        # next sweep appends before it merges: counted as held, so it is not appended twice.
                        self._held.add(identity(rec))
                        R.append(self.store, rec)
                        added.append(rec)
                if recs and is_final(recs[-1]):
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()
        return added
