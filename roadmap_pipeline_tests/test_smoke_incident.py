from roadmap_pipeline.samples import build_incident
from roadmap_pipeline.store.activity import NothingRunning
from roadmap_pipeline.store.database import connect
from roadmap_pipeline.store.invariants import Scope, counts_by_rule, find_violations
from roadmap_pipeline.store.sync import sync_roadmaps


def test_incident_smoke(engine):
    state = build_incident(engine)
    with connect(engine) as conn:
        found = find_violations(conn, Scope.fleet(), NothingRunning())
    print(counts_by_rule(found))
    report = sync_roadmaps(engine, [state.roadmap_id], NothingRunning())
    print(len(report.entries), report.tasks)
    with connect(engine) as conn:
        after = find_violations(conn, Scope.fleet(), NothingRunning())
    print(after)
    assert not after
