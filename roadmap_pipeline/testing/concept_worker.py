"""Run one concept's workflow in its own process: the crash and two-worker tests start this.

    python -m roadmap_pipeline.testing.concept_worker --database-url URL --roadmap R \
        --concept C --request-id ID [--items tutorial,quiz] [--faults JSON] [--call-log PATH]
        [--delay-s 0.5] [--no-wait]

The offline generator is wrapped in a RecordingGenerator when ``--call-log`` is given, so a test
counts generator calls across processes, including the calls of a process that was killed. The
outcome is printed as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.checkpointer import default_checkpoint_url, open_checkpointer
from roadmap_pipeline.generation.faults import FaultPlan
from roadmap_pipeline.generation.generator import ContentGenerator
from roadmap_pipeline.generation.locks import locks_for
from roadmap_pipeline.generation.offline import OfflineGenerator
from roadmap_pipeline.generation.workflow import ConceptWorkflow, NodeRetrySettings
from roadmap_pipeline.store.database import create_store_engine
from roadmap_pipeline.testing.counting import RecordingGenerator


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--checkpoint-url")
    parser.add_argument("--roadmap", required=True)
    parser.add_argument("--concept", required=True)
    parser.add_argument("--request-id", required=True)
    parser.add_argument("--items", default=",".join(i.value for i in ItemType))
    parser.add_argument("--faults")
    parser.add_argument("--call-log")
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--no-wait", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    generator: ContentGenerator = OfflineGenerator()
    if args.call_log:
        generator = RecordingGenerator(generator, args.call_log, args.delay_s)
    engine = create_store_engine(args.database_url)
    checkpoint_url = args.checkpoint_url or default_checkpoint_url(args.database_url)
    locks = locks_for(args.database_url)
    items = [ItemType(i) for i in args.items.split(",") if i]
    with open_checkpointer(checkpoint_url, pool_size=2) as checkpointer:
        workflow = ConceptWorkflow(
            engine,
            generator,
            checkpointer,
            locks,
            faults=FaultPlan.parse(args.faults),
            node_retry=NodeRetrySettings(initial_interval_s=0.01, jitter=False),
        )
        outcome = workflow.run(
            args.roadmap,
            args.concept,
            items,
            request_id=args.request_id,
            wait_for_lock=not args.no_wait,
        )
    engine.dispose()
    report = asdict(outcome)
    report["items"] = {k.value: asdict(v) for k, v in outcome.items.items()}
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
