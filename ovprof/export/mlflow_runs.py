"""Records as MLflow runs: one run per record, through MLflow's client API (`MlflowClient.log_batch`).

    ovprof export results/quickstart.jsonl --to mlflow                        # ./mlruns, experiment "quickstart"
    ovprof export results/quickstart.jsonl --to mlflow --report reports/quickstart --tracking-uri http://host:5000

A record's run:
- name: `<run_id> (<status>)`; start and end time: the record's own; status: FINISHED for ok, FAILED for oom
  and error, KILLED for timeout (the record's status is the tag `ovprof.status`);
- params: the normalised config, one param per field (`str(value)`, as `mlflow.log_params` writes it); a
  max-batch summary adds its search options as `search.start`, `search.granularity`, `search.limit`;
- metrics: every numeric figure of the record's `metrics` block, under its registered name (units in the name);
  a breakdown as `<name>.<part>`, the per-step list `step_times_ms` as a history (one step per timed step); the
  `derived` figures as `derived.<name>`; `wall_time_s`; a summary's `max_batch`, `first_oom_batch` and trial
  counts. A null metric is left out and its reason is the tag `null_reason.<metric>`;
- tags: `env.<key>` for the environment (torch, deepspeed, hostname, gpu_name, cpu_model, ...), `ovprof.kind`
  (run, max_batch), `ovprof.status`, `ovprof.error_type` and `ovprof.error_message`, `ovprof.sweep`,
  `ovprof.run_id`, `ovprof.record_key`, `ovprof.superseded`, `ovprof.schema_version`, `ovprof.version` (the
  exporting ovprof; `env.ovprof_version` measured), `ovprof.store`; `mlflow.source.git.commit` from the record's
  git SHA; a failed run's error as its description (`mlflow.note.content`);
- artifact: `record.json`, the whole record (ranks, DeepSpeed config, every step).

The report (`--report DIR`, what `ovprof report` wrote) goes to one run of its own, named `report` (tag
`ovprof.kind` = report), not to every record's run: it is about all of them, and a copy per run would multiply
its megabytes by the number of records.

Exporting again adds only what is new. Each run carries its record's key (`ovprof.record_key`, see
ovprof/export/__init__.py); a record whose key is already in the experiment is skipped. A run left RUNNING by
an export that stopped half-way is deleted and written again. A run whose record a later one of the same run_id
now supersedes gets `ovprof.superseded` = true; the report run's artifacts are logged again (same names
overwrite).

MLflow 3 refuses its file store (`./mlruns`) unless `MLFLOW_ALLOW_FILE_STORE=true` is set, and its database
store needs the full `mlflow` package (SQLAlchemy). mlflow-skinny has the file store, so a file-store export
sets the variable for its own duration when it is unset; set it to false to have the file store refused.
Against a server, unless set: 3 retries of a failed request, backoff factor 1 (`SERVER_ENV`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from ovprof.errors import UsageError, printable

DEFAULT_STORE = "mlruns"
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
RUN_STATUS = {"ok": "FINISHED", "oom": "FAILED", "error": "FAILED", "timeout": "KILLED"}
SEARCH_FIELDS = ("start", "granularity", "limit")
SUMMARY_METRICS = ("max_batch", "first_oom_batch", "trial_count", "growth_trials", "trial_bound",
                   "growth_trial_bound")
# MLflow's limits (mlflow/utils/validation.py); over them a param is cut, a tag refused.
PARAM_CHARS, TAG_CHARS, KEY_CHARS, EXPERIMENT_CHARS = 6000, 8000, 250, 500


class ExportError(RuntimeError):
    """MLflow refused or failed (a server down, a store it cannot write): exit 1 with its message."""


@dataclass
class Outcome:
    uri: str
    experiment: str
    experiment_id: str
    created_experiment: bool
    new: int = 0
    already: int = 0  # found complete in the experiment: skipped
    redone: int = 0  # found half-written: deleted and written again
    marked_superseded: int = 0  # runs exported earlier whose record a later one now supersedes
    report_run: str | None = None
    run_ids: dict[str, str] = field(default_factory=dict)  # record key -> MLflow run id, for every chosen record


def require() -> None:
    import importlib

    try:
        importlib.import_module("mlflow")
    except ImportError:
        raise UsageError("--to mlflow needs MLflow, which is not installed: pip install 'ovprof[mlflow]'") from None


def resolve_uri(text: str | None) -> tuple[str, Path | None]:
    """The tracking URI to give MLflow and, for a local file store, its folder (checked by the caller).

    None: ./mlruns. A plain path or a `file:` URI is a file store (made absolute); any other scheme (http,
    https, sqlite, databricks, ...) is passed on as it is."""
    if text is None:
        text = DEFAULT_STORE
    if not text.strip():
        raise UsageError("--tracking-uri: an empty URI")
    parts = urlsplit(text)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"--tracking-uri {printable(text)}: a file store on another host; give a local path")
        path = Path(url2pathname(parts.path))
    elif parts.scheme == "":
        path = Path(text)
    else:
        return text, None
    path = path.expanduser().resolve()
    return path.as_uri(), path


# Set for the export's duration where the user has not set them. MLflow 3 opens its file store only with
# MLFLOW_ALLOW_FILE_STORE=true. Against a server, MLflow retries a failed request 7 times with a backoff factor
# of 2 (minutes before a mistyped URL is an error); 3 retries, factor 1, fail within seconds.
FILE_STORE_ENV = {ALLOW_FILE_STORE: "true"}
SERVER_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


@contextmanager
def _env_defaults(values: dict[str, str]):
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def experiment_name(chosen, given: str | None) -> str:
    name = given if given is not None else (chosen.sweep_name() or Path(chosen.store).stem)
    if not name.strip() or len(name) > EXPERIMENT_CHARS:
        raise UsageError(f"--experiment {printable(name)!r}: give a name of 1 to {EXPERIMENT_CHARS} characters")
    return name


# -- one record as MLflow entities ------------------------------------------------------------------------------


def _ms(stamp: str | None) -> int | None:
    if not stamp:
        return None
    try:
        t = _dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return int(t.timestamp() * 1000)


def _text(v, limit: int) -> str:
    s = json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


_BAD_KEY = re.compile(r"[^\w./\- :]")


def _key(name: str) -> str:
    """A name MLflow accepts for a metric, param or tag: its characters, no empty or climbing path parts."""
    parts = [p for p in _BAD_KEY.sub("_", name).split("/") if p not in ("", ".", "..")]
    return "/".join(parts)[:KEY_CHARS] or "_"


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def run_metrics(rec) -> list[tuple[str, float, int]]:
    """(name, value, step) for every numeric figure of a record; nulls left out."""
    out: list[tuple[str, float, int]] = []

    def add(name: str, v, step: int = 0) -> None:
        if _is_num(v):
            out.append((_key(name), float(v), step))

    if rec.kind == "run":
        for name, v in rec.metrics.items():
            if isinstance(v, list):
                for i, x in enumerate(v):
                    add(name, x, i)
            elif isinstance(v, dict):
                for part, x in _flat(v):
                    add(f"{name}.{part}", x)
            else:
                add(name, v)
    else:
        for name in SUMMARY_METRICS:
            add(name, getattr(rec, name))
    add("wall_time_s", rec.wall_time_s)
    for part, x in _flat(rec.derived or {}):
        add(f"derived.{part}", x)
    return out


def run_params(rec) -> dict[str, str]:
    params = {_key(k): _text(v, PARAM_CHARS) for k, v in rec.config.items()}
    if rec.kind == "max_batch":
        params.update({f"search.{k}": _text(getattr(rec, k), PARAM_CHARS) for k in SEARCH_FIELDS})
    return params


def run_tags(item, store: str) -> dict[str, str]:
    from ovprof import __version__

    rec = item.record
    env = rec.env or {}
    err = rec.error or {}
    tags = {f"env.{k}": v for k, v in env.items() if v is not None}
    tags.update({
        "ovprof.kind": rec.kind, "ovprof.record_key": item.key, "ovprof.run_id": rec.run_id,
        "ovprof.status": rec.status, "ovprof.superseded": str(item.superseded).lower(),
        "ovprof.schema_version": rec.schema_version, "ovprof.version": __version__, "ovprof.store": store,
        "ovprof.sweep": rec.sweep, "ovprof.started_at": rec.started_at, "ovprof.finished_at": rec.finished_at,
        "ovprof.error_type": err.get("type"), "ovprof.error_message": _first_line(err.get("message")),
        "mlflow.source.git.commit": env.get("git_sha"),
    })
    if rec.kind == "run":
        tags.update({f"null_reason.{m}": why for m, why in (rec.null_reasons or {}).items()})
        tags.update({"ovprof.exit_code": rec.exit_code, "ovprof.log_path": rec.log_path,
                     "ovprof.max_batch_search": rec.max_batch_search})
    else:
        tags["ovprof.limit_reached"] = str(rec.limit_reached).lower()
    if rec.status != "ok" and err:
        tags["mlflow.note.content"] = f"**{rec.status}**: {err.get('type') or 'error'}: {err.get('message') or ''}"
    return {_key(k): _text(v, TAG_CHARS) for k, v in tags.items() if v is not None}


def _first_line(msg) -> str | None:
    text = str(msg or "").strip()
    return text.splitlines()[0] if text else None


# -- the export --------------------------------------------------------------------------------------------------


def export(chosen, *, uri: str, local: bool, experiment: str, report_dir: Path | None = None) -> Outcome:
    """Write `chosen`'s records to `experiment` at `uri`; see the module docstring."""
    from mlflow.exceptions import MlflowException

    server = urlsplit(uri).scheme in ("http", "https")
    with _env_defaults(FILE_STORE_ENV if local else SERVER_ENV if server else {}):
        try:
            return _export(chosen, uri=uri, experiment=experiment, report_dir=report_dir)
        except MlflowException as e:
            if local and "MLFLOW_ALLOW_FILE_STORE" in str(e):
                raise UsageError(f"--tracking-uri {uri}: MLflow refuses its file store because "
                                 f"{ALLOW_FILE_STORE}={os.environ.get(ALLOW_FILE_STORE)}; unset it, or give a "
                                 "server (http://...) or a database (sqlite:///mlflow.db, needs the full mlflow "
                                 "package)") from None
            raise ExportError(f"MLflow at {uri}: {_first_line(e.message) or type(e).__name__}") from e


def _export(chosen, *, uri: str, experiment: str, report_dir: Path | None) -> Outcome:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None and exp.lifecycle_stage != "active":
        raise UsageError(f"experiment {printable(experiment)!r} at {uri} is deleted: restore it (mlflow "
                         "experiments restore) or give another --experiment")
    created = exp is None
    if created:
        eid = client.create_experiment(experiment, tags={
            "ovprof.store": chosen.store,
            "mlflow.note.content": f"Run records exported by `ovprof export` from `{chosen.store}`: one run per "
                                   "record (tag `ovprof.kind`: run, max_batch), parameters from its config, "
                                   "metrics from its metrics block (units in the names), tags `env.*` from its "
                                   "environment. A report exported with it is the run named `report`."})
    else:
        eid = exp.experiment_id
    out = Outcome(uri=uri, experiment=experiment, experiment_id=eid, created_experiment=created)
    found = _runs_by_key(client, eid)

    for item in chosen.items:
        rec = item.record
        run = found.get(item.key)
        if run is not None and run.info.status != "RUNNING":
            out.already += 1
            out.run_ids[item.key] = run.info.run_id
            continue
        if run is not None:
            client.delete_run(run.info.run_id)
            del found[item.key]
            out.redone += 1
        else:
            out.new += 1
        start = _ms(rec.started_at)
        end = _ms(rec.finished_at) or (start + int(rec.wall_time_s * 1000) if start and rec.wall_time_s else None)
        stamp = end or start or int(time.time() * 1000)
        # the key first: a run an interrupted export leaves behind is found (RUNNING) and written again
        new = client.create_run(eid, start_time=start, run_name=f"{rec.run_id} ({rec.status})",
                                tags={"ovprof.record_key": item.key, "ovprof.kind": rec.kind})
        rid = new.info.run_id
        client.log_batch(rid, metrics=[Metric(k, v, stamp, step) for k, v, step in run_metrics(rec)],
                         params=[Param(k, v) for k, v in run_params(rec).items()],
                         tags=[RunTag(k, v) for k, v in run_tags(item, chosen.store).items()])
        client.log_dict(rid, rec.to_json(), "record.json")
        client.set_terminated(rid, status=RUN_STATUS[rec.status], end_time=end)
        out.run_ids[item.key] = rid

    for key, run in found.items():
        if key in chosen.superseded_keys and run.data.tags.get("ovprof.superseded") != "true":
            client.set_tag(run.info.run_id, "ovprof.superseded", "true")
            out.marked_superseded += 1

    if report_dir is not None:
        out.report_run = _log_report(client, eid, found, report_dir, chosen.store)
    return out


def _runs_by_key(client, eid: str) -> dict:
    """The experiment's active runs that ovprof exported, by record key (the first complete one of a key)."""
    from mlflow.entities import ViewType

    found: dict = {}
    token = None
    while True:
        page = client.search_runs([eid], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        for run in page:
            key = run.data.tags.get("ovprof.record_key")
            if key is not None and (key not in found or found[key].info.status == "RUNNING"):
                found[key] = run
        token = page.token
        if not token:
            return found


def _log_report(client, eid: str, found: dict, report_dir: Path, store: str) -> str:
    """The report folder's files as the artifacts of the experiment's `report` run (made once, logged again)."""
    key = f"report/{report_dir.resolve().name}"
    run = found.get(key)
    if run is None:
        run = client.create_run(eid, run_name="report", tags={"ovprof.record_key": key, "ovprof.kind": "report"})
    rid = run.info.run_id
    from ovprof import __version__

    client.log_batch(rid, tags=[_tag(k, v) for k, v in {
        "ovprof.store": store, "ovprof.report_dir": str(report_dir), "ovprof.version": __version__,
        "mlflow.note.content": f"The report `ovprof report` wrote to `{report_dir}` from `{store}`: "
                               "report.html (plots embedded), report.md, one CSV per table, tables.json."}.items()])
    client.log_artifacts(rid, str(report_dir))
    if run.info.status == "RUNNING":
        client.set_terminated(rid, status="FINISHED")
    return rid


def _tag(k: str, v: str):
    from mlflow.entities import RunTag

    return RunTag(k, _text(v, TAG_CHARS))
