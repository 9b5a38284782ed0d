"""A content generator over any OpenAI-compatible chat-completions endpoint.

Why the ``openai`` package rather than hand-written HTTP: it is maintained by the API's owner and
speaks every OpenAI-compatible server through ``base_url`` (vLLM, Ollama, LiteLLM, Azure-style
gateways), and its client already does what the issue asks of the transport layer: per-request
timeouts, retries of 408/409/429/5xx, timeouts and connection errors with exponential backoff and
jitter, honouring ``Retry-After``/``retry-after-ms``. We only add what is ours: the prompt, the
JSON-schema reply format (with a fallback to JSON mode), validation with the domain models, one
repair round-trip, a bound on concurrent requests, and the transient/permanent classification
that the workflow's retry layer acts on.

The API key is handed to the client and kept nowhere else; it is never logged or put in an error
message (a server that echoes it back gets it redacted).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from typing import Any, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from roadmap_pipeline.domain.content import (
    CONTENT_MODEL,
    QuizContent,
    ResourcesContent,
    TutorialContent,
)
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.generator import (
    ConceptContext,
    GenerationError,
    PermanentGenerationError,
    TransientGenerationError,
)

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
_MAX_ERRORS_SHOWN = 8
_MAX_MESSAGE = 300
_NO_KEY = "not-needed"  # local servers ignore the key, but the client insists on one

_GUIDANCE: dict[ItemType, str] = {
    ItemType.TUTORIAL: (
        "Write a tutorial in Markdown (field markdown; 10-30 KB: sections, examples, exercises), "
        "a title, a summary of at most 300 characters and estimated_completion_time in minutes."
    ),
    ItemType.RESOURCES: (
        "Recommend 5-10 distinct, real learning resources (type one of article, video, book, "
        "course, documentation, tool) with a relevance_score between 0 and 1, and list the "
        "search queries you would use."
    ),
    ItemType.QUIZ: (
        "Write 5-8 questions (question_type single_choice, multiple_choice or true_false; "
        "difficulty easy, medium or hard). correct_answer lists 0-based indices into options; "
        "single_choice and true_false have exactly one answer; true_false has the options "
        '["True", "False"]. question_id values are unique.'
    ),
}


class OpenAICompatibleGenerator:
    """Chat completions asking for JSON that matches the item's schema, validated and repaired."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_concurrency: int = 4,
        max_retries: int = 3,
        *,
        structured_output: bool = True,
        temperature: float | None = 0.3,
        max_tokens: int | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._secret = api_key or ""
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or _NO_KEY,
            timeout=timeout_s,
            max_retries=max_retries,
        )
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._json_schema = structured_output
        self._mode_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAICompatibleGenerator(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def name(self) -> str:
        return f"openai-compatible:{self.model}"[:128]

    def close(self) -> None:
        self._client.close()

    def tutorial(self, context: ConceptContext) -> TutorialContent:
        return self._generate(ItemType.TUTORIAL, context, TutorialContent)

    def resources(self, context: ConceptContext) -> ResourcesContent:
        return self._generate(ItemType.RESOURCES, context, ResourcesContent)

    def quiz(self, context: ConceptContext) -> QuizContent:
        return self._generate(ItemType.QUIZ, context, QuizContent)

    # --- one item: ask, validate, repair once ------------------------------------------------

    def _generate(self, item: ItemType, context: ConceptContext, model: type[ModelT]) -> ModelT:
        messages = _messages(item, context)
        reply = self._complete(item, messages)
        try:
            return _parse(reply, model)
        except ValueError as first:
            problem = _describe(first)
            logger.info("%s: the reply did not validate, asking for a repair: %s", item, problem)
        messages += [
            {"role": "assistant", "content": reply},
            {
                "role": "user",
                "content": (
                    "Your reply could not be used: "
                    f"{problem}\nReply again with only the corrected JSON object."
                ),
            },
        ]
        repaired = self._complete(item, messages)
        try:
            return _parse(repaired, model)
        except ValueError as second:
            raise PermanentGenerationError(
                f"{item.value}: the reply does not match the {item.value} schema even after one "
                f"repair: {_describe(second)}"
            ) from None

    def _complete(self, item: ItemType, messages: list[dict[str, str]]) -> str:
        with self._slots:
            if self._json_schema:
                try:
                    return self._request(item, messages, _json_schema_format(item))
                except openai.BadRequestError as exc:
                    # Servers without structured output reject json_schema with a 400; JSON mode
                    # plus the schema in the prompt is the portable fallback.
                    self._use_json_mode(exc)
                except openai.OpenAIError as exc:
                    raise self._classify(item, exc) from None
            try:
                return self._request(item, messages, {"type": "json_object"})
            except openai.OpenAIError as exc:
                raise self._classify(item, exc) from None

    def _use_json_mode(self, exc: openai.BadRequestError) -> None:
        with self._mode_lock:
            if self._json_schema:
                logger.warning(
                    "%s rejected response_format json_schema (%s); using JSON mode from now on",
                    self.base_url,
                    self._redact(_short(exc.message)),
                )
            self._json_schema = False

    def _request(
        self, item: ItemType, messages: list[dict[str, str]], response_format: dict[str, Any]
    ) -> str:
        # The SDK's typed overloads want its TypedDict params; our dicts have the same shape.
        extra: dict[str, Any] = {"messages": messages, "response_format": response_format}
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        if self.max_tokens is not None:
            extra["max_tokens"] = self.max_tokens
        completion = self._client.chat.completions.create(model=self.model, **extra)
        if not completion.choices:
            return ""
        choice = completion.choices[0]
        content = choice.message.content or ""
        if choice.finish_reason == "length":
            logger.info("%s: the reply was cut off at the token limit", item)
        return content

    def _classify(self, item: ItemType, exc: openai.OpenAIError) -> GenerationError:
        """Transient (worth another attempt later) or permanent, with a reason a human reads."""
        attempts = self.max_retries + 1
        where = self.base_url
        if isinstance(exc, openai.APITimeoutError):
            return TransientGenerationError(
                f"{item.value}: no reply from {where} within {self.timeout_s:g}s "
                f"({attempts} attempts)"
            )
        if isinstance(exc, openai.APIConnectionError):
            return TransientGenerationError(
                f"{item.value}: cannot reach {where} ({attempts} attempts): "
                f"{self._redact(_short(str(exc)))}"
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = self._redact(_short(_status_message(exc)))
            reason = f"{item.value}: HTTP {status} from {where}: {detail}"
            if status in (408, 409, 429) or status >= 500:
                return TransientGenerationError(f"{reason} ({attempts} attempts)")
            return PermanentGenerationError(reason)
        return PermanentGenerationError(
            f"{item.value}: {type(exc).__name__}: {self._redact(_short(str(exc)))}"
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


@functools.cache
def _schema(item: ItemType) -> dict[str, Any]:
    # Building a JSON schema is costly CPU (it showed in the concurrency benchmark); the models
    # never change at run time.
    return CONTENT_MODEL[item].model_json_schema()


@functools.cache
def _system_prompt(item: ItemType) -> str:
    schema = json.dumps(_schema(item), separators=(",", ":"))
    return (
        "You write learning content for one concept of a learning roadmap.\n"
        f"Item: {item.value}\n"
        f"{_GUIDANCE[item]}\n"
        "Reply with exactly one JSON object and nothing else (no prose, no code fences), "
        f"valid against this JSON schema:\n{schema}"
    )


def _json_schema_format(item: ItemType) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": item.value,
            "schema": _schema(item),
            # strict=True would reject the schema's limits (lengths, ranges, uri format); the
            # reply is validated by the domain model anyway.
            "strict": False,
        },
    }


def _messages(item: ItemType, context: ConceptContext) -> list[dict[str, str]]:
    concept = context.concept
    facts = {
        "roadmap": context.roadmap_title,
        "stage": context.stage_name,
        "module": context.module_name,
        "concept": concept.name,
        "description": concept.description,
        "difficulty": concept.difficulty,
        "keywords": concept.keywords,
        "prerequisites": list(context.prerequisite_names),
        "learner_preferences": context.preferences,
    }
    user = f"Write the {item.value} for this concept:\n" + json.dumps(facts, ensure_ascii=False)
    return [
        {"role": "system", "content": _system_prompt(item)},
        {"role": "user", "content": user},
    ]


def _parse(reply: str, model: type[ModelT]) -> ModelT:
    """Parse and validate; ValueError (JSONDecodeError, ValidationError) when it does not fit."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    if not text:
        raise ValueError("the reply is empty")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"the reply is a JSON {type(data).__name__}, not an object")
    return model.model_validate(data)


def _describe(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False)
        shown = [
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in errors[:_MAX_ERRORS_SHOWN]
        ]
        more = len(errors) - len(shown)
        return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    if isinstance(exc, json.JSONDecodeError):
        return f"the reply is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    return str(exc)


def _status_message(exc: openai.APIStatusError) -> str:
    """The server's own message (``{"error": {"message": ...}}``), else the client's summary."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return exc.message


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
