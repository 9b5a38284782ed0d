"""``roadmap-pipeline``: the operator CLI, a thin layer over the store's functions.

The database comes from ``ROADMAP_DATABASE_URL`` (default: an SQLite file in the working
directory). Exit status: 0 when all is well, 1 when ``verify`` (or ``repair``) leaves violations,
2 when the input cannot be used (a bad file, an unknown roadmap, an unreachable database, an
unsupported URL): a message on stderr names the problem and nothing is written.

To add a command: decorate a function with ``@main.command()`` and take the :class:`Session`
with ``@pass_session``; raise :class:`OperatorError` (or let one of ``INPUT_ERRORS`` escape) for
input the operator must fix.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine

from roadmap_pipeline.domain.framework import Framework, FrameworkError, validate_submission
from roadmap_pipeline.domain.keys import UnsafeIdError, short_concept_id
from roadmap_pipeline.store.activity import NothingRunning, WorkInProgress
from roadmap_pipeline.store.database import (
    DatabaseUnavailable,
    DatabaseUrlError,
    check_reachable,
    connect,
    create_store_engine,
    database_url_from_env,
    normalize_url,
    safe_url,
)
from roadmap_pipeline.store.invariants import (
    RULE_DESCRIPTIONS,
    Rule,
    Scope,
    Violation,
    counts_by_rule,
    find_violations,
)
from roadmap_pipeline.store.migrate import (
    DatabaseState,
    IncompleteDatabase,
    MigrationReport,
    UpgradeBlocked,
    database_state,
    init_db,
    upgrade_db,
)
from roadmap_pipeline.store.repair import CONTENT_POLICY, HUMAN_ACTIONS, RepairReport, repair
from roadmap_pipeline.store.writers import (
    RoadmapConflict,
    UnknownConcept,
    UnknownRoadmap,
    require_roadmaps,
    submit_frameworks,
)

INPUT_ERRORS: tuple[type[Exception], ...] = (
    FrameworkError,
    UnsafeIdError,
    UnknownRoadmap,
    UnknownConcept,
    RoadmapConflict,
    DatabaseUnavailable,
    DatabaseUrlError,
    UpgradeBlocked,
    IncompleteDatabase,
)
PROGRESS_MIN = 10  # show a progress bar from this many files or roadmaps on


class OperatorError(click.ClickException):
    """Input the operator must fix: printed on stderr, exit status 2."""

    exit_code = 2


class _Commands(click.Group):
    """Turns the store's input errors, raised by any command, into OperatorError."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except INPUT_ERRORS as exc:
            raise OperatorError(str(exc)) from None


@dataclass
class Session:
    """What every command shares: the database URL, one engine, the activity source."""

    url: str
    _engine: Engine | None = None
    _instance: Any = None

    def engine(self, *, create: bool = False) -> Engine:
        """The reachable database. Without ``create`` it must already hold the service's tables
        (an SQLite file that does not exist is not created)."""
        if self._engine is None:
            parsed = normalize_url(self.url)
            if not create and parsed.get_backend_name() == "sqlite":
                path = parsed.database
                if path and path != ":memory:" and not Path(path).exists():
                    raise OperatorError(
                        f"no database at {path}: run `roadmap-pipeline init-db` first, or set "
                        "ROADMAP_DATABASE_URL"
                    )
            engine = create_store_engine(parsed)
            try:
                check_reachable(engine)
            except DatabaseUnavailable:
                engine.dispose()
                raise
            self._engine = engine
        if not create:
            state, _ = database_state(self._engine)
            if state in (DatabaseState.EMPTY, DatabaseState.INCOMPLETE):
                raise OperatorError(
                    f"the database {self.display_url} does not hold the roadmap tables: run "
                    "`roadmap-pipeline init-db` first"
                )
        return self._engine

    @property
    def display_url(self) -> str:
        return safe_url(self.url)

    def activity(self) -> WorkInProgress:
        """Who answers "is work for this item queued or running?" (invariant 5): Dagster's run
        status when ``DAGSTER_HOME`` points at an instance, else nothing is taken to run."""
        instance = self.instance()
        if instance is None:
            return NothingRunning()
        from roadmap_pipeline.orchestration.activity import DagsterActivity

        return DagsterActivity(instance)

    def instance(self) -> Any:
        """The Dagster instance of ``DAGSTER_HOME``, or None when there is none."""
        home = os.environ.get("DAGSTER_HOME")
        if not home or not (Path(home) / "dagster.yaml").exists():
            return None
        if self._instance is None:
            import dagster as dg

            self._instance = dg.DagsterInstance.from_config(home)
        return self._instance

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None


pass_session = click.make_pass_decorator(Session)


@click.group(cls=_Commands)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Keep roadmap content and framework_data consistent.

    The database is ROADMAP_DATABASE_URL (sqlite:///path or postgresql://user@host/db), by
    default roadmap_pipeline.db in the working directory. Exit status: 0 ok, 1 violations
    found or left, 2 unusable input (nothing written).
    """
    session = Session(database_url_from_env())
    ctx.obj = session
    ctx.call_on_close(session.close)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


# --- database --------------------------------------------------------------------------------


@main.command("init-db")
@pass_session
def init_db_command(session: Session) -> None:
    """Create the tables, or adopt a service database without altering its tables."""
    _print_migration(session, init_db(session.engine(create=True)))


@main.command("upgrade-db")
@pass_session
def upgrade_db_command(session: Session) -> None:
    """Apply every migration: unique constraints, indexes and jsonb (refused while duplicates
    exist)."""
    _print_migration(session, upgrade_db(session.engine(create=True)))


def _print_migration(session: Session, report: MigrationReport) -> None:
    _out().print(
        f"{session.display_url}: {report.before.value} -> {report.after.value}: {report.message}"
    )


# --- submit ----------------------------------------------------------------------------------


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--user-id", default=None, help="The user the roadmaps belong to.")
@pass_session
def submit(session: Session, files: Sequence[Path], user_id: str | None) -> None:
    """Submit framework JSON FILEs: each becomes a roadmap and a pending creation task.

    Every file is checked first; when one is unusable nothing is written. Submitting the same
    document again changes nothing.
    """
    frameworks = _read_frameworks(files)
    engine = session.engine()
    with _progress("submitting", len(frameworks)) as advance:
        submissions = submit_frameworks(engine, frameworks, user_id, progress=advance)
    table = _table("", "roadmap", "concepts", "creation task", "result")
    for s in submissions:
        table.add_row(
            s.roadmap_id, str(s.concepts), s.task_id, "submitted" if s.created else "unchanged"
        )
    _out().print(table)


def _read_frameworks(files: Sequence[Path]) -> list[Framework]:
    problems: list[str] = []
    frameworks: dict[str, tuple[Path, Framework]] = {}
    with _progress("checking files", len(files)) as advance:
        for done, path in enumerate(files, start=1):
            advance(done)
            try:
                framework = validate_submission(_read_json(path))
            except (FrameworkError, _FileProblem) as exc:
                problems.append(f"{path}: {exc}")
                continue
            first = frameworks.get(framework.roadmap_id)
            if first is None:
                frameworks[framework.roadmap_id] = (path, framework)
            elif first[1].to_document() != framework.to_document():
                problems.append(
                    f"{path}: roadmap {framework.roadmap_id!r} is also in {first[0]} with a "
                    "different document"
                )
    if problems:
        raise OperatorError("nothing was submitted:\n" + "\n".join(problems))
    return [framework for _, framework in frameworks.values()]


class _FileProblem(Exception):
    pass


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _FileProblem("no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _FileProblem(f"cannot be read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _FileProblem(
            f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None


# --- verify ----------------------------------------------------------------------------------


@main.command()
@click.option("--roadmap", "roadmap_id", default=None, help="Check one roadmap (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of violations.")
@click.option("--limit", default=50, show_default=True, help="Rows shown per rule in the table.")
@pass_session
@click.pass_context
def verify(
    ctx: click.Context, session: Session, roadmap_id: str | None, as_json: bool, limit: int
) -> None:
    """Check the invariants; exit 1 when there are violations, 0 when there are none."""
    engine = session.engine()
    activity = session.activity()
    with connect(engine) as conn:
        if roadmap_id is not None:
            require_roadmaps(conn, [roadmap_id])
        scope = Scope.roadmap(roadmap_id) if roadmap_id else Scope.fleet()
        violations = find_violations(conn, scope, activity)
    if as_json:
        click.echo(json.dumps([v.model_dump(mode="json") for v in violations], indent=2))
        _err().print(f"activity: {activity.describe()}")
    else:
        console = _out()
        console.print(f"database: {session.display_url}")
        console.print(f"activity: {activity.describe()}")
        print_violations(console, violations, limit=limit, activity=activity)
    ctx.exit(1 if violations else 0)


def print_violations(
    console: Console,
    violations: Sequence[Violation],
    *,
    limit: int = 50,
    activity: WorkInProgress | None = None,
) -> None:
    """The violations grouped by rule, at most ``limit`` rows per rule.

    With ``activity`` (printed once above the table) its description is left out of each row.
    """
    said = f" ({activity.describe()})" if activity is not None else None
    if not violations:
        console.print("[green]no violations[/green]")
        return
    counts = {rule: n for rule, n in counts_by_rule(violations).items() if n}
    roadmaps = len({v.roadmap_id for v in violations})
    summary = ", ".join(f"{rule} {n}" for rule, n in counts.items())
    console.print(f"[red]{len(violations)} violation(s) in {roadmaps} roadmap(s)[/red]: {summary}")
    for rule_name in counts:
        rule = Rule(rule_name)
        rows = [v for v in violations if v.rule is rule]
        table = _table(
            f"{rule.value} ({len(rows)}): {RULE_DESCRIPTIONS[rule]}",
            "roadmap",
            "concept",
            "item",
            "detail",
        )
        previous = None
        for v in rows[:limit]:
            table.add_row(
                v.roadmap_id if v.roadmap_id != previous else "",
                short_concept_id(v.roadmap_id, v.concept_id) if v.concept_id else "-",
                v.item or "-",
                v.detail.replace(said, "") if said else v.detail,
            )
            previous = v.roadmap_id
        console.print(table)
        if len(rows) > limit:
            console.print(f"... and {len(rows) - limit} more (--limit, or --json for all)")


# --- repair ----------------------------------------------------------------------------------


@main.command("repair")
@click.option("--roadmap", "roadmap_id", default=None, help="Repair one roadmap (default: all).")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--limit", default=50, show_default=True, help="Rows shown per section.")
@pass_session
@click.pass_context
def repair_command(
    ctx: click.Context, session: Session, roadmap_id: str | None, dry_run: bool, limit: int
) -> None:
    """Set framework_data and task statuses from the content rows.

    Never deletes or rewrites content; what needs a human is reported. Exit 0 when nothing is
    left, 1 when violations are left (in a dry run: when any were found).
    """
    engine = session.engine()
    if roadmap_id is not None:
        with connect(engine) as conn:
            require_roadmaps(conn, [roadmap_id])
    scope = Scope.roadmap(roadmap_id) if roadmap_id else Scope.fleet()
    with _progress("repairing roadmaps", None) as advance:
        report = repair(engine, scope, session.activity(), dry_run=dry_run, progress=advance)
    console = _out()
    console.print(f"database: {session.display_url}")
    print_repair(console, report, limit=limit)
    ctx.exit(0 if report.clean else 1)


def print_repair(console: Console, report: RepairReport, *, limit: int = 50) -> None:
    """What a repair found, changed (or would change), left for a human, and left over."""
    verb = "would" if report.dry_run else "did"
    console.print(f"activity: {report.activity}")
    found = {rule: n for rule, n in counts_by_rule(report.found).items() if n}
    if not report.found:
        console.print("[green]found no violations: nothing to repair[/green]")
        return
    console.print(
        f"found {len(report.found)} violation(s): "
        + ", ".join(f"{rule} {n}" for rule, n in found.items())
    )
    _print_entry_changes(console, report, verb, limit)
    _print_task_changes(console, report, verb)
    if report.demoted:
        console.print(f"tutorials {verb} demote ({len(report.demoted)}), rows kept:")
        for d in report.demoted[:limit]:
            console.print(f"  {d.roadmap_id} / {d.concept_id}: v{d.version} ({d.tutorial_id})")
    if not report.changed:
        console.print(f"nothing {'would change' if report.dry_run else 'changed'}")
    if report.needs_human:
        console.print(f"[yellow]needs a human ({len(report.needs_human)}):[/yellow]")
        for rule_name, n in counts_by_rule(report.needs_human).items():
            if n:
                rule = Rule(rule_name)
                console.print(f"  {rule.value} {n}: {HUMAN_ACTIONS.get(rule, 'inspect the rows')}")
        for v in report.needs_human[:limit]:
            where = " / ".join(x for x in (v.concept_id, v.item) if x)
            console.print(f"    {v.roadmap_id} {where}: {v.detail}")
    for line in report.skipped[:limit]:
        console.print(f"[yellow]skipped[/yellow] {line}")
    console.print(CONTENT_POLICY)
    if report.remaining is None:
        console.print("dry run: nothing was written")
    elif report.remaining:
        left = {rule: n for rule, n in counts_by_rule(report.remaining).items() if n}
        console.print(
            f"[red]left: {len(report.remaining)} violation(s)[/red]: "
            + ", ".join(f"{rule} {n}" for rule, n in left.items())
        )
    else:
        console.print("[green]left: no violations[/green]")


def _print_entry_changes(console: Console, report: RepairReport, verb: str, limit: int) -> None:
    if not report.entries:
        return
    table = _table(
        f"framework_data: what repair {verb} change",
        "roadmap",
        "items -> completed",
        "items -> failed",
        "keys changed",
    )
    per_roadmap: dict[str, list[int]] = {}
    for change in report.entries:
        counts = per_roadmap.setdefault(change.roadmap_id, [0, 0, 0])
        if change.key.endswith("_status"):
            counts[0] += change.after == "completed"
            counts[1] += change.after == "failed"
        counts[2] += 1
    for rid, (completed, failed, keys) in list(per_roadmap.items())[:limit]:
        table.add_row(rid, str(completed), str(failed), str(keys))
    console.print(table)


def _print_task_changes(console: Console, report: RepairReport, verb: str) -> None:
    if not report.tasks:
        return
    table = _table(
        f"tasks: what repair {verb} roll up", "task", "roadmap", "status", "failed concepts"
    )
    for t in report.tasks:
        names = (
            ", ".join(short_concept_id(t.roadmap_id, f["concept_id"]) for f in t.failed_concepts)
            or "-"
        )
        table.add_row(t.task_id, t.roadmap_id, f"{t.before} -> {t.after}", names)
    console.print(table)


# --- demo ------------------------------------------------------------------------------------


@main.command()
def demo() -> None:
    """The main job on the embedded default, end to end: the bundled samples (the incident
    among them) submitted, generated offline (two quizzes fail on purpose), settled and checked,
    under ./.roadmap_pipeline/ (reset on every run); `make dev` then shows it in the UI."""
    import warnings

    from roadmap_pipeline.demo import run_demo

    warnings.filterwarnings("ignore")  # Dagster's beta/preview notices: not for this report
    run_demo(_out(), Path.cwd())


@main.command()
@click.option("--postgres", is_flag=True, help="Postgres storage (dagster.yaml) and data.")
@click.option("--port", default=3000, show_default=True)
def dev(postgres: bool, port: int) -> None:
    """Start `dagster dev` on 127.0.0.1 against the embedded default (./.roadmap_pipeline/)
    or, with --postgres, against ROADMAP_DATABASE_URL and DAGSTER_POSTGRES_URL."""
    from roadmap_pipeline import environment as env
    from roadmap_pipeline.demo import EmbeddedPaths, prepare_embedded

    process_env = dict(os.environ)
    if postgres:
        for name in (env.DATABASE_URL, "DAGSTER_POSTGRES_URL"):
            if not process_env.get(name):
                raise OperatorError(f"--postgres needs {name} (see the README)")
        process_env["DAGSTER_HOME"] = str(Path(__file__).resolve().parent.parent)
    else:
        paths = EmbeddedPaths(Path.cwd())
        prepare_embedded(paths, reset=False)
        process_env.setdefault("DAGSTER_HOME", str(paths.dagster_home))
    env.with_defaults(process_env, Path.cwd())
    if not (Path(process_env["DAGSTER_HOME"]) / "dagster.yaml").exists():
        raise OperatorError(f"no dagster.yaml in DAGSTER_HOME={process_env['DAGSTER_HOME']}")
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-m",
        "roadmap_pipeline.definitions",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    _err().print(
        f"dagster dev on http://127.0.0.1:{port} (DAGSTER_HOME={process_env['DAGSTER_HOME']}, "
        f"database {safe_url(process_env[env.DATABASE_URL])})"
    )
    os.execve(command[0], command, process_env)  # noqa: S606 - our venv's dagster, fixed args


# --- status ----------------------------------------------------------------------------------


@main.command()
@click.argument("roadmap_id", required=False)
@pass_session
def status(session: Session, roadmap_id: str | None) -> None:
    """The fleet, or one roadmap: per item type the concepts completed, failed and pending; the
    failed concepts and why; the task; the last check results (from Dagster when DAGSTER_HOME
    is set, else evaluated now)."""
    from roadmap_pipeline.status import gather

    engine = session.engine()
    if roadmap_id is not None:
        with connect(engine) as conn:
            require_roadmaps(conn, [roadmap_id])
    roadmaps, fleet = gather(engine, roadmap_id, session.activity(), session.instance())
    console = _out()
    console.print(f"database: {session.display_url}")
    totals = _table("items per type (concepts)", "item", "completed", "failed", "pending")
    for item in ("tutorial", "resources", "quiz"):
        counts: list[Mapping[str, int]] = [r.counts.get(item, {}) for r in roadmaps]
        totals.add_row(
            item,
            *(str(sum(c.get(k, 0) for c in counts)) for k in ("completed", "failed", "pending")),
        )
    console.print(totals)
    table = _table("roadmaps", "roadmap", "task", "status", "step", "failed concepts", "checks")
    for r in roadmaps:
        checks = "; ".join(f"{name}: {result}" for name, result in r.checks.items())
        table.add_row(
            r.roadmap_id,
            (r.task_id or "-")[:8],
            r.task_status or "-",
            r.task_step or "-",
            str(len(r.failed)),
            checks or "-",
        )
    console.print(table)
    failed = _table("failed concepts", "roadmap", "concept", "items", "reason")
    shown = 0
    for r in roadmaps:
        for concept_id, items in sorted(r.failed.items()):
            reason = "; ".join(r.reasons.get(f"{concept_id} {i}", "") for i in items).strip("; ")
            failed.add_row(
                r.roadmap_id,
                short_concept_id(r.roadmap_id, concept_id),
                "/".join(items),
                reason or "-",
            )
            shown += 1
    if shown:
        console.print(failed)
    for name, result in fleet.items():
        console.print(f"{name}: {result}")


# --- helpers ---------------------------------------------------------------------------------


def _table(title: str, *columns: str) -> Table:
    """A compact table whose ids wrap instead of being cut (an operator copies them)."""
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr for many files or roadmaps; ``advance(done[, total])``."""
    console = _err()
    bar = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = bar.add_task(description, total=total)

    def advance(done: int, new_total: int | None = None) -> None:
        if new_total is not None:
            bar.update(task, total=new_total, visible=new_total >= PROGRESS_MIN)
        bar.update(task, completed=done)

    if total is not None:
        bar.update(task, visible=total >= PROGRESS_MIN)
    with bar:
        yield advance
