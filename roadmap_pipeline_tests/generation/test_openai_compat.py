"""The OpenAI-compatible generator against a real chat-completions server on loopback."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from roadmap_pipeline.domain.content import QuizContent, ResourcesContent, TutorialContent
from roadmap_pipeline.domain.framework import load_framework
from roadmap_pipeline.generation.generator import (
    ConceptContext,
    PermanentGenerationError,
    TransientGenerationError,
)
from roadmap_pipeline.generation.openai_compat import OpenAICompatibleGenerator
from roadmap_pipeline.samples import synthetic_framework
from roadmap_pipeline.testing.llm_server import LLMServer, Step

API_KEY = "sk-test-5d1f0c9a-never-log-me"


@pytest.fixture
def context() -> ConceptContext:
    framework = load_framework(synthetic_framework("llm-roadmap", 3))
    return ConceptContext.from_framework(
        framework, "llm-roadmap:c-1-1-2", preferences={"language": "en"}
    )


def make_generator(server: LLMServer, **kwargs) -> OpenAICompatibleGenerator:
    settings = {"timeout_s": 5.0, "max_concurrency": 4, "max_retries": 2} | kwargs
    return OpenAICompatibleGenerator(server.base_url, "loopback-model", API_KEY, **settings)


def test_a_valid_reply_is_validated_into_content_with_structured_output(llm_server, context):
    generator = make_generator(llm_server)

    tutorial = generator.tutorial(context)
    resources = generator.resources(context)
    quiz = generator.quiz(context)

    assert isinstance(tutorial, TutorialContent)
    assert isinstance(resources, ResourcesContent)
    assert isinstance(quiz, QuizContent)
    assert "Concept 2 of llm-roadmap" in tutorial.title
    assert llm_server.calls == 3
    first = llm_server.requests[0]
    assert first.body["model"] == "loopback-model"
    assert first.response_format == "json_schema"
    assert first.body["response_format"]["json_schema"]["name"] == "tutorial"
    assert first.headers["authorization"] == f"Bearer {API_KEY}"
    prompt = first.messages[1]["content"]
    assert '"concept": "Concept 2 of llm-roadmap"' in prompt
    assert '"learner_preferences": {"language": "en"}' in prompt
    assert '"prerequisites": ["Concept 1 of llm-roadmap"]' in prompt


def test_malformed_json_is_repaired_with_one_round_trip(llm_server, context):
    llm_server.script(Step.malformed(), Step.valid())

    quiz = make_generator(llm_server).quiz(context)

    assert isinstance(quiz, QuizContent)
    assert llm_server.calls == 2
    repair = llm_server.requests[1].messages
    assert repair[-2] == {"role": "assistant", "content": '{"title": "unfinished'}
    assert repair[-1]["role"] == "user"
    assert repair[-1]["content"].startswith(
        "Your reply could not be used: the reply is not valid JSON"
    )


def test_json_that_does_not_validate_is_sent_back_with_the_validation_errors(llm_server, context):
    llm_server.script(Step.invalid(), Step.valid())

    make_generator(llm_server).resources(context)

    feedback = llm_server.requests[1].messages[-1]["content"]
    assert "resources: Field required" in feedback
    assert "unexpected: Extra inputs are not permitted" in feedback


def test_a_reply_that_never_validates_is_a_permanent_failure_after_one_repair(llm_server, context):
    llm_server.script(Step.invalid(), Step.malformed())

    with pytest.raises(PermanentGenerationError) as failure:
        make_generator(llm_server).quiz(context)

    assert str(failure.value).startswith(
        "quiz: the reply does not match the quiz schema even after one repair: "
        "the reply is not valid JSON"
    )
    assert llm_server.calls == 2


def test_429_is_retried_after_the_servers_retry_after(llm_server, context):
    llm_server.script(Step.error(429, "slow down", retry_after="0.6"))

    make_generator(llm_server).tutorial(context)

    first, second = llm_server.requests
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 0.6


def test_a_500_then_success_is_retried_transparently(llm_server, context):
    llm_server.script(Step.error(500))

    make_generator(llm_server).tutorial(context)

    assert [r.status for r in llm_server.requests] == [500, 200]


def test_5xx_until_retries_run_out_is_a_transient_failure(llm_server, context):
    llm_server.script(*[Step.error(503, "overloaded")] * 3)

    with pytest.raises(TransientGenerationError) as failure:
        make_generator(llm_server, max_retries=1).quiz(context)

    assert str(failure.value) == (
        f"quiz: HTTP 503 from {llm_server.base_url}: overloaded (2 attempts)"
    )
    assert llm_server.calls == 2


def test_a_reply_slower_than_the_timeout_is_a_transient_failure(llm_server, context):
    llm_server.script(Step.slow(1.5))
    generator = make_generator(llm_server, timeout_s=0.3, max_retries=0)

    started = time.monotonic()
    with pytest.raises(TransientGenerationError) as failure:
        generator.tutorial(context)

    assert time.monotonic() - started < 1.2
    assert str(failure.value) == (
        f"tutorial: no reply from {llm_server.base_url} within 0.3s (1 attempts)"
    )


def test_a_timed_out_request_is_retried_by_the_client(llm_server, context):
    llm_server.script(Step.slow(1.5))

    make_generator(llm_server, timeout_s=0.3, max_retries=1).tutorial(context)

    assert llm_server.calls == 2


def test_a_server_without_structured_output_gets_json_mode(context):
    with LLMServer(json_schema_supported=False) as server:
        generator = make_generator(server)
        generator.tutorial(context)
        generator.quiz(context)
        formats = [(r.response_format, r.status) for r in server.requests]

    # the first request learns that json_schema is refused; later ones go straight to JSON mode
    assert formats == [("json_schema", 400), ("json_object", 200), ("json_object", 200)]


def test_a_4xx_is_permanent_not_retried_and_never_shows_the_api_key(llm_server, context, caplog):
    caplog.set_level(logging.DEBUG)
    llm_server.script(Step.error(401, f"Incorrect API key provided: {API_KEY}"))
    generator = make_generator(llm_server)

    with pytest.raises(PermanentGenerationError) as failure:
        generator.quiz(context)

    assert str(failure.value) == (
        f"quiz: HTTP 401 from {llm_server.base_url}: Incorrect API key provided: ***"
    )
    assert llm_server.calls == 1
    assert API_KEY not in repr(generator)
    assert API_KEY not in caplog.text


def test_connection_refused_is_transient(context):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    generator = OpenAICompatibleGenerator(
        f"http://127.0.0.1:{port}/v1", "m", API_KEY, timeout_s=1, max_retries=0
    )

    with pytest.raises(TransientGenerationError, match=r"^tutorial: cannot reach http://127"):
        generator.tutorial(context)


def test_concurrent_requests_are_bounded_by_max_concurrency(context):
    with LLMServer(latency_s=0.2) as server:
        generator = make_generator(server, max_concurrency=2)
        threads = [threading.Thread(target=generator.quiz, args=(context,)) for _ in range(6)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        elapsed = time.monotonic() - started

        assert server.calls == 6
        assert server.peak_in_flight == 2
    assert elapsed >= 0.6  # 6 calls of 0.2 s, two at a time


def test_the_server_runs_as_its_own_process_and_reports_its_calls(context):
    """How the benchmark uses it: a child process, counters over HTTP."""
    command = [sys.executable, "-m", "roadmap_pipeline.testing.llm_server", "--latency", "0"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        base_url = child.stdout.readline().strip()
        generator = OpenAICompatibleGenerator(base_url, "m", API_KEY, timeout_s=5)
        generator.quiz(context)
        with urllib.request.urlopen(f"{base_url}/_stats", timeout=5) as reply:
            assert json.load(reply) == {"calls": 1, "peak_in_flight": 1}
    finally:
        child.kill()
        child.wait(timeout=10)
