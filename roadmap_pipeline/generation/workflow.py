"""The per-concept LangGraph workflow: tutorial -> resources -> quiz, with durable checkpoints.

Why it is shaped like this (DESIGN.md, "Retry and recovery"):

- The thread id is the concept's partition key, never a run id, so every retry (a LangGraph node
  retry, a Dagster step retry, a rerun after a crash) finds the concept's unfinished run and
  resumes after its last finished node (``durability="sync"`` persists each step before the next).
- The node that was running when a process died re-runs. Each node therefore writes its own item
  through the store's idempotent writer, under a generation id fixed when the run STARTED and
  checkpointed with the input. A node first asks the ledger (the ``content_generations`` rows):
  if its write committed before the crash it records the item completed without calling the
  generator. The ledger is read once when a run starts, under the concept's lock, for every
  generation the run may write; a node's first attempt trusts that read (nobody else writes the
  concept while the lock is held) and only a retried node asks again.
- Items are independent: a permanent failure (or transient retries exhausted) is recorded in the
  state as a failed item and the graph goes on to the next item; the Dagster layer turns failed
  items into failed partitions. Only unexpected errors (say the database is away) escape the
  graph, which leaves the checkpoint to resume.
- Two workers on one thread would both run every node, so a per-concept lock is held around the
  whole run (``ConceptLocks``).
- After a run reaches END the thread's checkpoints are pruned: the content rows are the record.
"""

from __future__ import annotations

import logging
import operator
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypedDict

import sqlalchemy
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import RetryPolicy

from roadmap_pipeline.domain.content import ItemContent
from roadmap_pipeline.domain.framework import Framework
from roadmap_pipeline.domain.keys import concept_key
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.faults import FaultInjectingGenerator, FaultPlan, KillPoint
from roadmap_pipeline.generation.generator import (
    ConceptContext,
    ContentGenerator,
    PermanentGenerationError,
    TransientGenerationError,
    generate_item,
)
from roadmap_pipeline.generation.locks import ConceptLocks
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.writers import (
    ItemWrite,
    UnknownConcept,
    find_generation,
    find_generations,
    require_roadmap,
    save_item,
)

logger = logging.getLogger(__name__)

_GENERATION_NAMESPACE = uuid.UUID("0b6f7f0e-4c0a-4f43-9a55-7a1d8c3e52b4")
ITEM_ORDER: tuple[ItemType, ...] = tuple(ItemType)


@dataclass(frozen=True)
class ItemOutcome:
    item: ItemType
    status: Literal["completed", "failed"]
    row_id: str | None
    content_version: int | None  # tutorials only
    generated: bool  # the generator was called for it in this run
    error: str | None  # the reason, when failed
    attempts: int  # generator attempts made in this run
    # Completed by other work since this request was made (see ``DoneElsewhere``): who did it.
    done_by: str | None = None

    def to_state(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "row_id": self.row_id,
            "content_version": self.content_version,
            "generated": self.generated,
            "error": self.error,
            "attempts": self.attempts,
            "done_by": self.done_by,
        }

    @classmethod
    def from_state(cls, item: ItemType, value: dict[str, Any]) -> ItemOutcome:
        return cls(
            item=item,
            status="completed" if value.get("status") == "completed" else "failed",
            row_id=value.get("row_id"),
            content_version=value.get("content_version"),
            generated=bool(value.get("generated")),
            error=value.get("error"),
            attempts=int(value.get("attempts") or 0),
            done_by=value.get("done_by"),
        )


@dataclass(frozen=True)
class ConceptOutcome:
    roadmap_id: str
    concept_id: str  # the stored concept id, exactly as in framework_data
    thread_id: str  # the concept partition key
    items: dict[ItemType, ItemOutcome]  # one per requested item (those of a resumed run too)
    resumed: bool  # an unfinished checkpoint was resumed
    skipped_locked: bool  # another worker held the concept's lock; nothing was done
    duration_s: float
    # The run raised (a database error, a lost lock connection): its items are reported failed,
    # but the thread may hold finished work that the next run resumes or reclaims.
    errored: bool = False

    @property
    def failed(self) -> bool:
        return any(o.status == "failed" for o in self.items.values())


# Asked, under the concept's lock and only for items about to be generated, which of them other
# work has completed since this request was made (item -> who did it). The orchestrator answers
# from its own records: a request decided before that work finished must not redo it.
DoneElsewhere = Callable[[Sequence[ItemType]], Mapping[ItemType, str]]


@dataclass(frozen=True)
class NodeRetrySettings:
    """LangGraph ``RetryPolicy`` for transient generation errors (layer 1 of DESIGN.md)."""

    max_attempts: int = 3
    initial_interval_s: float = 1.0
    backoff_factor: float = 2.0
    max_interval_s: float = 30.0
    jitter: bool = True

    def policy(self) -> RetryPolicy:
        # retry_on is explicit: LangGraph's default predicate would not retry our errors'
        # relatives (ValueError, TimeoutError, OSError), and we want exactly the transient ones.
        return RetryPolicy(
            initial_interval=self.initial_interval_s,
            backoff_factor=self.backoff_factor,
            max_interval=self.max_interval_s,
            max_attempts=self.max_attempts,
            jitter=self.jitter,
            retry_on=TransientGenerationError,
        )


@dataclass(frozen=True)
class RunContext:
    """Per-invocation context (LangGraph runtime context, never checkpointed), read once per run
    instead of once per node: the roadmap's framework, and the ledger's writes for the run's
    generation ids as they stood when the run took the concept's lock."""

    framework: Framework
    written: Mapping[str, ItemWrite]


def _merge_outcomes(
    left: dict[str, dict[str, Any]], right: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    return operator.or_(left or {}, right or {})


class ConceptState(TypedDict):
    """Checkpointed state: JSON-like only, so strict deserialization needs no allow-list."""

    roadmap_id: str
    concept_id: str
    request_id: str
    items: list[str]
    generation_ids: dict[str, str]
    preferences: dict[str, Any]
    outcomes: Annotated[dict[str, dict[str, Any]], _merge_outcomes]


def generation_id_for(request_id: str, thread_id: str, item: ItemType) -> str:
    """One generation of one item for one request: fixed when a run starts, reused on resume."""
    return str(uuid.uuid5(_GENERATION_NAMESPACE, f"{request_id}\x1f{thread_id}\x1f{item.value}"))


def _initial_generation_ids(
    request_id: str, thread_id: str, items: Iterable[ItemType]
) -> dict[str, str]:
    return {i.value: generation_id_for(request_id, thread_id, i) for i in items}


def _ordered(items: Iterable[ItemType | str]) -> list[ItemType]:
    wanted = {ItemType(i) for i in items}
    return [i for i in ITEM_ORDER if i in wanted]


class ConceptWorkflow:
    """Runs one concept's items through the checkpointed graph, under the concept's lock."""

    def __init__(
        self,
        engine: sqlalchemy.Engine,
        generator: ContentGenerator,
        checkpointer: BaseCheckpointSaver,
        locks: ConceptLocks,
        faults: FaultPlan | None = None,
        node_retry: NodeRetrySettings | None = None,
        keep_finished: bool = False,
    ) -> None:
        """``keep_finished``: leave a finished thread in place until the caller has recorded its
        outcome and calls :meth:`prune`. A process that dies in between leaves the thread
        finished; the next run of the concept then reclaims those outcomes instead of
        generating the items again (the orchestrator had not recorded them)."""
        self.keep_finished = keep_finished
        self.engine = engine
        self.faults = faults if faults is not None and faults.enabled else None
        if self.faults is not None and not isinstance(generator, FaultInjectingGenerator):
            generator = FaultInjectingGenerator(generator, self.faults)
        self.generator = generator
        self.checkpointer = checkpointer
        self.locks = locks
        self.node_retry = node_retry or NodeRetrySettings()
        self.graph = self._build_graph()

    # --- the graph --------------------------------------------------------------------------

    def _build_graph(self) -> Any:
        graph = StateGraph(ConceptState, context_schema=RunContext)
        policy = self.node_retry.policy()
        previous = START
        for item in ITEM_ORDER:
            graph.add_node(item.value, self._node(item), retry_policy=policy)
            graph.add_edge(previous, item.value)
            previous = item.value
        graph.add_edge(previous, END)
        return graph.compile(checkpointer=self.checkpointer)

    def _node(self, item: ItemType) -> Callable[..., dict[str, Any]]:
        def node(state: ConceptState, runtime: Runtime[RunContext]) -> dict[str, Any]:
            if item.value not in state["items"]:
                return {}
            info = runtime.execution_info
            attempt = info.node_attempt if info is not None else self.node_retry.max_attempts
            outcome = self._produce(state, item, attempt, runtime.context)
            return {"outcomes": {item.value: outcome.to_state()}}

        node.__name__ = item.value
        return node

    def _produce(
        self, state: ConceptState, item: ItemType, attempt: int, run: RunContext | None
    ) -> ItemOutcome:
        roadmap_id, concept_id = state["roadmap_id"], state["concept_id"]
        generation_id = state["generation_ids"][item.value]
        if run is not None and attempt == 1:
            # The run's lock has been held since the ledger was read: a write since then would
            # be this node's own, and a first attempt has made none.
            done, framework = run.written.get(generation_id), run.framework
        else:
            with connect(self.engine) as conn:
                done = find_generation(conn, generation_id)
                framework = run.framework if run else require_roadmap(conn, roadmap_id)
        if done is not None:
            # The write of this generation committed before (a crash after the write, or a
            # second worker on the same request): never generate it again.
            return _completed(item, done, generated=False, attempts=0)
        context = ConceptContext.from_framework(framework, concept_id, state["preferences"])
        try:
            content = generate_item(self.generator, item, context)
        except PermanentGenerationError as exc:
            return _failed(item, str(exc), attempt)
        except TransientGenerationError as exc:
            if attempt < self.node_retry.max_attempts:
                raise  # LangGraph's RetryPolicy runs the node again after a backoff
            return _failed(item, f"{exc} (gave up after {attempt} attempts)", attempt)
        written = self._write(roadmap_id, concept_id, item, content, generation_id)
        return _completed(item, written, generated=True, attempts=attempt)

    def _write(
        self,
        roadmap_id: str,
        concept_id: str,
        item: ItemType,
        content: ItemContent,
        generation_id: str,
    ) -> ItemWrite:
        self._kill_point("before_write", roadmap_id, concept_id, item)
        written = save_item(
            self.engine, roadmap_id, concept_id, content, generation_id, self.generator.name
        )
        self._kill_point("after_write", roadmap_id, concept_id, item)
        return written

    def _kill_point(
        self, point: KillPoint, roadmap_id: str, concept_id: str, item: ItemType
    ) -> None:
        if self.faults is not None:
            self.faults.kill_point(point, roadmap_id, concept_id, item)

    # --- running ----------------------------------------------------------------------------

    def run(
        self,
        roadmap_id: str,
        concept_id: str,
        items: Iterable[ItemType] = tuple(ItemType),
        *,
        request_id: str,
        preferences: dict[str, Any] | None = None,
        wait_for_lock: bool = True,
        done_elsewhere: DoneElsewhere | None = None,
    ) -> ConceptOutcome:
        """Generate the requested items of one concept; resume its unfinished run first.

        ``done_elsewhere`` is asked under the lock, so work that finished while this run waited
        for it (or before it started) is seen: those items are reported completed with
        ``done_by`` and are not generated."""
        started = time.monotonic()
        thread_id = concept_key(roadmap_id, concept_id)
        requested = _ordered(items)
        with self.locks.hold(thread_id, wait_for_lock) as acquired:
            if not acquired:
                return ConceptOutcome(
                    roadmap_id, concept_id, thread_id, {}, False, True, time.monotonic() - started
                )
            outcomes, resumed = self._run_locked(
                roadmap_id,
                concept_id,
                thread_id,
                requested,
                request_id,
                preferences or {},
                done_elsewhere,
            )
        ordered = {i: outcomes[i] for i in ITEM_ORDER if i in outcomes}
        return ConceptOutcome(
            roadmap_id, concept_id, thread_id, ordered, resumed, False, time.monotonic() - started
        )

    def _run_locked(
        self,
        roadmap_id: str,
        concept_id: str,
        thread_id: str,
        requested: list[ItemType],
        request_id: str,
        preferences: dict[str, Any],
        done_elsewhere: DoneElsewhere | None,
    ) -> tuple[dict[ItemType, ItemOutcome], bool]:
        config: RunnableConfig = {
            "configurable": {"thread_id": thread_id},
            # LangGraph runs checkpoint saves on a thread pool it creates per invocation; the
            # graph is a chain and durability="sync" waits for each save, so one worker is all
            # it can use. More only spawns threads (serialised on a global lock in
            # concurrent.futures), which cost the most when many concepts run at once.
            "max_concurrency": 1,
        }
        snapshot = self.graph.get_state(config)
        resumed = bool(snapshot.next)
        fresh_ids = _initial_generation_ids(request_id, thread_id, requested)
        context = self._run_context(
            roadmap_id,
            concept_id,
            [*((snapshot.values or {}).get("generation_ids") or {}).values(), *fresh_ids.values()],
        )
        outcomes: dict[ItemType, ItemOutcome] = {}
        if resumed:
            logger.info("resuming the unfinished run of %s at %s", thread_id, snapshot.next)
            earlier = set((snapshot.values or {}).get("outcomes") or {})
            for item, outcome in self._invoke(None, config, context).items():
                # Items finished by the interrupted process: nothing was generated for them now.
                done_before = item.value in earlier
                outcomes[item] = (
                    replace(outcome, generated=False, attempts=0) if done_before else outcome
                )
        elif snapshot.values:
            # A finished run that was never pruned: its caller died before recording it. Its
            # completed items are reclaimed (their rows exist; nothing is generated again).
            finished = (snapshot.values or {}).get("outcomes") or {}
            for name, value in finished.items():
                item = ItemType(name)
                outcome = ItemOutcome.from_state(item, value)
                if item in requested and outcome.status == "completed":
                    outcomes[item] = replace(outcome, generated=False, attempts=0)
            resumed = bool(outcomes)
        remaining = [i for i in requested if i not in outcomes]
        if remaining and done_elsewhere is not None:
            for item, by in done_elsewhere(remaining).items():
                outcomes[item] = ItemOutcome(item, "completed", None, None, False, None, 0, by)
            remaining = [i for i in remaining if i not in outcomes]
        if remaining:
            if snapshot.values and self.graph.get_state(config).values:
                self.checkpointer.delete_thread(thread_id)  # a fresh run, not a merge
            # The reclaimed outcomes travel into the fresh thread: until this caller records
            # them, the thread stays the only evidence that those items are done (a death now,
            # then a retry under a new request, must not generate them again).
            start = self._initial_state(
                roadmap_id, concept_id, thread_id, remaining, request_id, preferences, outcomes
            )
            outcomes |= self._invoke(start, config, context)
        elif snapshot.values and not snapshot.next and not self.keep_finished:
            self.checkpointer.delete_thread(thread_id)
        # else: everything reclaimed; the thread stays until the caller has recorded it.
        return outcomes, resumed

    def prune_recorded(self, outcomes: Iterable[ConceptOutcome]) -> None:
        """Prune the threads whose outcomes the caller has recorded. A run that raised is not
        one of them: its reported failures may hide items that finished (rows written, thread
        at END), and only the thread lets the next run, a new request, reclaim them instead of
        generating them again as new versions."""
        for outcome in outcomes:
            if not (outcome.skipped_locked or outcome.errored):
                self.prune(outcome.thread_id)

    def prune(self, thread_id: str) -> None:
        """Forget a finished thread once its outcome is recorded (``keep_finished`` mode)."""
        with self.locks.hold(thread_id, True):
            snapshot = self.graph.get_state({"configurable": {"thread_id": thread_id}})
            if not snapshot.next:
                self.checkpointer.delete_thread(thread_id)

    def _run_context(
        self, roadmap_id: str, concept_id: str, generation_ids: Iterable[str]
    ) -> RunContext:
        """The roadmap's tree and the ledger's writes of these generations, in one connection;
        UnknownRoadmap/UnknownConcept before any thread is started."""
        with connect(self.engine) as conn:
            framework = require_roadmap(conn, roadmap_id)
            if concept_id not in {c.concept_id for c in framework.concepts()}:
                raise UnknownConcept(f"roadmap {roadmap_id!r} has no concept {concept_id!r}")
            return RunContext(framework, find_generations(conn, generation_ids))

    def _initial_state(
        self,
        roadmap_id: str,
        concept_id: str,
        thread_id: str,
        items: list[ItemType],
        request_id: str,
        preferences: dict[str, Any],
        carried: Mapping[ItemType, ItemOutcome] | None = None,
    ) -> ConceptState:
        return {
            "roadmap_id": roadmap_id,
            "concept_id": concept_id,
            "request_id": request_id,
            "items": [i.value for i in items],
            "generation_ids": _initial_generation_ids(request_id, thread_id, items),
            "preferences": dict(preferences),
            "outcomes": {i.value: o.to_state() for i, o in (carried or {}).items()},
        }

    def _invoke(
        self, start: ConceptState | None, config: RunnableConfig, context: RunContext
    ) -> dict[ItemType, ItemOutcome]:
        final = self.graph.invoke(start, config, context=context, durability="sync")
        if not self.keep_finished:
            # Reached END: the rows are the record now, the checkpoints only cost space.
            self.checkpointer.delete_thread(config["configurable"]["thread_id"])
        return {
            ItemType(name): ItemOutcome.from_state(ItemType(name), value)
            for name, value in (final.get("outcomes") or {}).items()
        }


def _completed(item: ItemType, write: ItemWrite, *, generated: bool, attempts: int) -> ItemOutcome:
    return ItemOutcome(
        item=item,
        status="completed",
        row_id=write.row_id,
        content_version=write.content_version,
        generated=generated,
        error=None,
        attempts=attempts,
    )


def _failed(item: ItemType, error: str, attempts: int) -> ItemOutcome:
    logger.warning("item failed: %s", error)
    return ItemOutcome(item, "failed", None, None, True, error, attempts)


def run_concepts(
    workflow: ConceptWorkflow,
    targets: Sequence[tuple[str, str]],
    items: Iterable[ItemType],
    *,
    request_id: str,
    concurrency: int,
    on_done: Callable[[ConceptOutcome], None] | None = None,
    preferences: Mapping[str, dict[str, Any]] | None = None,
    done_elsewhere: Callable[[str, str], DoneElsewhere] | None = None,
) -> list[ConceptOutcome]:
    """Run concepts concurrently (at most ``concurrency`` at once); results in target order.

    ``on_done`` is called in the calling thread as each concept finishes. An exception in one
    concept becomes failed items for that concept and never stops the others. ``preferences``:
    the learner's preferences per roadmap id (from its task), given to the generator.
    ``done_elsewhere``: per (roadmap id, concept id), the question ``ConceptWorkflow.run`` asks
    under the concept's lock.
    """
    wanted = _ordered(items)
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="concept") as pool:
        futures = [
            pool.submit(
                _run_guarded,
                workflow,
                roadmap_id,
                concept_id,
                wanted,
                request_id,
                (preferences or {}).get(roadmap_id),
                done_elsewhere(roadmap_id, concept_id) if done_elsewhere else None,
            )
            for roadmap_id, concept_id in targets
        ]
        if on_done is not None:
            for future in as_completed(futures):
                on_done(future.result())
        # _run_guarded turns every exception into failed items: each future holds an outcome.
        return [future.result() for future in futures]


def _run_guarded(
    workflow: ConceptWorkflow,
    roadmap_id: str,
    concept_id: str,
    items: list[ItemType],
    request_id: str,
    preferences: dict[str, Any] | None,
    done_elsewhere: DoneElsewhere | None,
) -> ConceptOutcome:
    started = time.monotonic()
    try:
        return workflow.run(
            roadmap_id,
            concept_id,
            items,
            request_id=request_id,
            preferences=preferences,
            done_elsewhere=done_elsewhere,
        )
    except Exception as exc:
        logger.exception("concept %s of roadmap %s failed", concept_id, roadmap_id)
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        failed = {
            i: ItemOutcome(i, "failed", None, None, False, f"{i.value}: {reason}", 0) for i in items
        }
        return ConceptOutcome(
            roadmap_id,
            concept_id,
            _thread_id_or_raw(roadmap_id, concept_id),
            failed,
            resumed=False,
            skipped_locked=False,
            duration_s=time.monotonic() - started,
            errored=True,
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _thread_id_or_raw(roadmap_id: str, concept_id: str) -> str:
    try:
        return concept_key(roadmap_id, concept_id)
    except ValueError:
        return f"{roadmap_id}/{concept_id}"
