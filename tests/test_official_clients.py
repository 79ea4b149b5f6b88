"""The providers' official Python clients judge the simulator: for every dialect, the
SDK pointed at ``simulate --api KIND`` with a key lists (paging past one page), gets
and cancels without a validation error, every body the simulator served is valid for
the SDK's own model, and every status it served is one the SDK's enum lists."""

from __future__ import annotations

import json
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import LLAMA, Clock
from watchdog.core.estimates import read_request
from watchdog.sim.simulator import Simulator

KEY = "sk-official-client-test"
BATCHES = 130  # more than one page of every paged list


@dataclass
class Served:
    """The simulator and every JSON body it answered, by path."""

    simulator: Simulator
    root: str
    bodies: list[tuple[str, Any]] = field(default_factory=list)

    def statuses(self, read: Callable[[Any], str | None]) -> set[str]:
        found: set[str] = set()
        for _, body in self.bodies:
            items = body if isinstance(body, list) else body.get("data", [body])
            found |= {s for item in items if isinstance(item, dict) and (s := read(item))}
        return found


def account(sim: Simulator) -> None:
    """Batches in every state the progression has: validating, running, finalizing,
    completed, expired, cancelling, cancelled (the running ones spread over time)."""
    for i in range(BATCHES):
        sim.add(f"batch_{i:03d}", age=i, model=LLAMA, total=10**6, rate=1.0)
    sim.add("batch_validating", validating_for=3600, model=LLAMA)
    sim.add("batch_finalizing", age=100, total=10, rate=1, finalizing_for=3600, model=LLAMA)
    sim.add("batch_completed", age=100, total=10, rate=1, finalizing_for=1, model=LLAMA)
    sim.add("batch_expired", age=7200, window=3600, total=10**6, rate=1, model=LLAMA)
    stopping = sim.add("batch_cancelling", age=50, total=10**6, rate=1, cancel_delay=3600)
    stopping.cancel_at = sim.clock() - 10
    stopped = sim.add("batch_cancelled", age=50, total=10**6, rate=1, cancel_delay=1)
    stopped.cancel_at = sim.clock() - 10
    sim.add("batch_small", validating_for=3600, model=LLAMA, total=3, input_file="requests")


async def input_file(answer: Any) -> None:
    """What an SDK downloaded as the small batch's input file (its own answer type:
    bytes at ``content``, or a body to read): the requests the estimate reads."""
    if hasattr(answer, "aread"):  # a streamed response (Mistral's)
        content = await answer.aread()
    elif isinstance(getattr(answer, "content", None), bytes):
        content = answer.content
    else:
        content = await answer.read()
    lines = content.splitlines()
    assert len(lines) == 3 and all(read_request(line) for line in lines)


async def serve(kind: str, clock: Clock, aiohttp_server: Any) -> Served:
    simulator = Simulator(clock=clock.time, api_key=KEY, api=kind)
    account(simulator)
    app = simulator.app()
    served = Served(simulator, "")

    @web.middleware
    async def keep(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            served.bodies.append((request.path, json.loads(response.body)))
        return response

    app.middlewares.append(keep)
    server = await aiohttp_server(app)
    served.root = str(server.make_url("")).rstrip("/")
    return served


def literals(annotation: Any) -> set[str]:
    """Every string a status annotation admits (Literal, Optional, Union, enum)."""
    if typing.get_origin(annotation) is typing.Literal:
        return {a for a in typing.get_args(annotation) if isinstance(a, str)}
    found: set[str] = set()
    for arg in typing.get_args(annotation):
        found |= literals(arg)
    return found


def check(
    served: Served, model: Any, status_field: str = "status", skip: tuple[str, ...] = ()
) -> None:
    """Every batch body served validates with the SDK's model; every status is in its
    enum."""
    for path, body in served.bodies:
        if path.endswith(skip):
            continue
        items = body if isinstance(body, list) else body.get("data", [body])
        for item in items:
            model.model_validate(item)
    allowed = literals(model.model_fields[status_field].annotation)
    served_statuses = served.statuses(lambda item: item.get(status_field))
    assert served_statuses and served_statuses <= allowed, served_statuses - allowed


Run = Callable[[Served], Awaitable[None]]


async def openai_run(served: Served) -> None:
    from openai import AsyncOpenAI
    from openai.types import Batch

    async with AsyncOpenAI(api_key=KEY, base_url=served.root + "/v1", max_retries=0) as client:
        await exercise_openai(client, served, Batch)


async def azure_run(served: Served) -> None:
    from openai import AsyncAzureOpenAI
    from openai.types import Batch

    client = AsyncAzureOpenAI(
        api_key=KEY, azure_endpoint=served.root, api_version="2024-10-21", max_retries=0
    )
    async with client:
        await exercise_openai(client, served, Batch)


async def azure_v1_run(served: Served) -> None:
    """Azure's v1 data plane: the plain OpenAI client on {endpoint}/openai/v1."""
    from openai import AsyncOpenAI
    from openai.types import Batch

    client = AsyncOpenAI(api_key=KEY, base_url=served.root + "/openai/v1", max_retries=0)
    async with client:
        await exercise_openai(client, served, Batch)


async def exercise_openai(client: Any, served: Served, model: Any) -> None:
    listed = [b.id async for b in client.batches.list(limit=20)]
    assert len(listed) == len(served.simulator.batches) and len(set(listed)) == len(listed)
    assert (await client.batches.retrieve("batch_005")).status == "in_progress"
    assert (await client.batches.cancel("batch_006")).status == "cancelling"
    with pytest.raises(Exception) as refused:
        await client.batches.cancel("batch_completed")
    assert getattr(refused.value, "status_code", None) == 409
    await input_file(await client.files.content("file-batch_small"))
    check(served, model, skip=("/cancel",))


async def groq_run(served: Served) -> None:
    from groq import AsyncGroq
    from groq.types import BatchListResponse, BatchRetrieveResponse

    async with AsyncGroq(api_key=KEY, base_url=served.root, max_retries=0) as client:
        listed = await client.batches.list()  # no paging: every batch in one answer
        assert len(listed.data) == len(served.simulator.batches)
        assert (await client.batches.retrieve("batch_005")).status == "in_progress"
        assert (await client.batches.cancel("batch_006")).status == "cancelling"
        await input_file(await client.files.content("file-batch_small"))
    for path, body in served.bodies:
        if path.endswith("/batches"):
            BatchListResponse.model_validate(body)
    check(served, BatchRetrieveResponse)


async def mistral_run(served: Served) -> None:
    from mistralai.client import Mistral
    from mistralai.client.models import BatchJob, ListBatchJobsResponse

    async with Mistral(api_key=KEY, server_url=served.root) as client:
        listed: list[str] = []
        page = 0
        while True:  # the SDK pages by number and says the total
            answer = await client.batch.jobs.list_async(page=page, page_size=50)
            listed += [job.id for job in answer.data or []]
            if len(listed) >= answer.total or not answer.data:
                break
            page += 1
        assert len(listed) == len(served.simulator.batches) == len(set(listed))
        assert (await client.batch.jobs.get_async(job_id="batch_005")).status == "RUNNING"
        cancelled = await client.batch.jobs.cancel_async(job_id="batch_006")
        small = await client.batch.jobs.get_async(job_id="batch_small")
        assert small.input_files == ["file-batch_small"]
        await input_file(await client.files.download_async(file_id=small.input_files[0]))
    assert cancelled.status == "CANCELLATION_REQUESTED"
    for path, body in served.bodies:
        if path.endswith("/jobs"):
            ListBatchJobsResponse.model_validate(body)
    check(served, BatchJob)


async def together_run(served: Served) -> None:
    from together import AsyncTogether
    from together.types import BatchJob

    async with AsyncTogether(api_key=KEY, base_url=served.root, max_retries=0) as client:
        listed = await client.batches.list()  # one bare array, every batch
        assert len(listed) == len(served.simulator.batches)
        assert (await client.batches.retrieve("batch_005")).status == "IN_PROGRESS"
        await client.batches.cancel("batch_006")
        with pytest.raises(Exception) as refused:
            await client.batches.cancel("batch_completed")
        await input_file(await client.files.content("file-batch_small"))
    assert getattr(refused.value, "status_code", None) == 400
    check(served, BatchJob, skip=("/cancel",))


async def anthropic_run(served: Served) -> None:
    from anthropic import AsyncAnthropic
    from anthropic.types.messages import MessageBatch

    async with AsyncAnthropic(api_key=KEY, base_url=served.root, max_retries=0) as client:
        listed = [b.id async for b in client.messages.batches.list(limit=20)]
        assert len(listed) == len(served.simulator.batches) == len(set(listed))
        running = await client.messages.batches.retrieve("batch_005")
        assert running.processing_status == "in_progress"
        stopping = await client.messages.batches.cancel("batch_006")
    assert stopping.processing_status == "canceling"
    check(served, MessageBatch, status_field="processing_status", skip=("/cancel",))


RUNS: dict[str, tuple[str, Run]] = {
    "openai": ("openai", openai_run),
    "azure": ("azure", azure_run),
    "azure-v1": ("azure", azure_v1_run),
    "groq": ("groq", groq_run),
    "mistral": ("mistral", mistral_run),
    "together": ("together", together_run),
    "anthropic": ("anthropic", anthropic_run),
}


@pytest.mark.parametrize("name", list(RUNS))
async def test_the_official_client_reads_pages_and_cancels(
    name: str, clock: Clock, aiohttp_server: Any
) -> None:
    kind, run = RUNS[name]
    served = await serve(kind, clock, aiohttp_server)
    await run(served)
    assert served.simulator.calls["batch_006"]["cancel"] == 1


# Every status each official SDK lists (and Together's older SDK's CANCELING), in an
# object its model accepts with every optional field present, null, and missing: the
# adapter reads each, maps the status, and keeps what can be judged.

OPENAI_BATCH: dict[str, Any] = {
    "id": "batch_t", "object": "batch", "endpoint": "/v1/chat/completions",
    "input_file_id": "file-in", "completion_window": "24h", "created_at": 1_764_320_400,
    "expires_at": 1_764_406_800, "in_progress_at": 1_764_320_460, "finalizing_at": None,
    "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
    "cancelled_at": None, "output_file_id": "file-out", "error_file_id": "file-err",
    "errors": {"object": "list", "data": [{"code": "x", "line": 1, "message": "m", "param": None}]},
    "request_counts": {"total": 100, "completed": 40, "failed": 5},
    "metadata": {"team": "research"}, "model": LLAMA,
    "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 2},
              "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 1},
              "total_tokens": 15},
}  # fmt: skip
MISTRAL_JOB: dict[str, Any] = {
    "id": "batch_t", "object": "batch", "input_files": ["file-in"],
    "endpoint": "/v1/chat/completions", "errors": [{"message": "bad line", "count": 2}],
    "created_at": 1_764_320_400, "total_requests": 100, "completed_requests": 45,
    "succeeded_requests": 40, "failed_requests": 5,
    "metadata": {"team": "research", "priority": 3}, "model": "mistral-small-latest",
    "agent_id": None, "output_file": "file-out", "error_file": None, "outputs": None,
    "started_at": 1_764_320_460, "completed_at": None,
}  # fmt: skip
TOGETHER_JOB: dict[str, Any] = {
    "id": "batch_t", "user_id": "u", "input_file_id": "file-in", "file_size_bytes": 1024,
    "job_deadline": "2025-11-29T09:00:00Z", "created_at": "2025-11-28T09:00:00Z",
    "endpoint": "/v1/chat/completions", "progress": 45.0, "model_id": LLAMA,
    "output_file_id": "file-out", "error_file_id": None, "error": None, "completed_at": None,
}  # fmt: skip
ANTHROPIC_BATCH: dict[str, Any] = {
    "id": "batch_t", "type": "message_batch", "created_at": "2025-11-28T09:00:00Z",
    "expires_at": "2025-11-29T09:00:00Z", "archived_at": None, "cancel_initiated_at": None,
    "ended_at": None, "results_url": None,
    "request_counts": {"processing": 100, "succeeded": 0, "errored": 0, "canceled": 0,
                       "expired": 0},
}  # fmt: skip
OPENAI_STATUSES = ["validating", "failed", "in_progress", "finalizing", "completed", "expired",
                   "cancelling", "cancelled"]  # fmt: skip


def sdk_model(kind: str) -> Any:
    if kind in ("openai", "azure"):
        from openai.types import Batch

        return Batch
    if kind == "groq":
        from groq.types import BatchRetrieveResponse

        return BatchRetrieveResponse
    if kind == "mistral":
        from mistralai.client.models import BatchJob

        return BatchJob
    if kind == "together":
        from together.types import BatchJob as TogetherJob

        return TogetherJob
    from anthropic.types.messages import MessageBatch

    return MessageBatch


def cases() -> list[tuple[str, dict[str, Any], str]]:
    """(kind, object, the status the watchdog must read)."""
    out = [(k, OPENAI_BATCH | {"status": s}, s) for k in ("openai", "azure", "groq")
           for s in OPENAI_STATUSES]  # fmt: skip
    mistral = {"QUEUED": "validating", "RUNNING": "in_progress", "SUCCESS": "completed",
               "FAILED": "failed", "TIMEOUT_EXCEEDED": "expired",
               "CANCELLATION_REQUESTED": "cancelling", "CANCELLED": "cancelled"}  # fmt: skip
    out += [("mistral", MISTRAL_JOB | {"status": s}, m) for s, m in mistral.items()]
    together = {"VALIDATING": "validating", "IN_PROGRESS": "in_progress",
                "COMPLETED": "completed", "FAILED": "failed", "EXPIRED": "expired",
                "CANCELLED": "cancelled", "CANCELING": "cancelling"}  # fmt: skip
    out += [("together", TOGETHER_JOB | {"status": s}, m) for s, m in together.items()]
    ended = {"processing": 0, "succeeded": 60, "errored": 5, "canceled": 0, "expired": 0}
    out += [
        ("anthropic", ANTHROPIC_BATCH | {"processing_status": "in_progress"}, "in_progress"),
        ("anthropic", ANTHROPIC_BATCH | {"processing_status": "canceling",
                                         "cancel_initiated_at": "2025-11-28T10:00:00Z"},
         "cancelling"),
        ("anthropic", ANTHROPIC_BATCH | {"processing_status": "ended", "request_counts": ended},
         "completed"),
        ("anthropic", ANTHROPIC_BATCH | {"processing_status": "ended",
                                         "request_counts": ended | {"expired": 35}}, "expired"),
        ("anthropic", ANTHROPIC_BATCH | {"processing_status": "ended",
                                         "cancel_initiated_at": "2025-11-28T10:00:00Z",
                                         "request_counts": ended | {"canceled": 35}}, "cancelled"),
    ]  # fmt: skip
    return out


def variants(raw: dict[str, Any], required: set[str]) -> list[tuple[str, dict[str, Any]]]:
    optional = [k for k in raw if k not in required]
    return [
        ("present", raw),
        ("null", raw | dict.fromkeys(optional)),
        ("missing", {k: v for k, v in raw.items() if k in required}),
    ]


@pytest.mark.parametrize(("kind", "raw", "status"), cases())
def test_every_sdk_status_and_shape_reads(kind: str, raw: dict[str, Any], status: str) -> None:
    from watchdog.core.models import BatchObject, view_of
    from watchdog.providers.dialects import DIALECTS, inward

    model = sdk_model(kind)
    if kind == "together" and raw["status"] == "CANCELING":
        pass  # the older SDK's (together-python 1.x) spelling: today's model lacks it
    else:
        model.model_validate(raw)
    required = {n for n, f in model.model_fields.items() if f.is_required()} | {"id", "status"}
    required |= {"processing_status", "request_counts"} if kind == "anthropic" else set()
    for shape, body in variants(raw, required):
        view = view_of(kind, BatchObject.model_validate(inward(DIALECTS[kind], body)))
        assert view.status == status, (shape, body)
        if shape == "present":  # what can be judged is kept
            kept = {"metadata": view.metadata, "counts": view.counts, "tokens": view.tokens,
                    "created": view.created_at}  # fmt: skip
            assert kept["created"] is not None, kept
            if raw.get("metadata"):
                assert view.metadata and view.metadata["team"] == "research"
            if kind in ("openai", "azure"):
                assert view.tokens is not None and view.counts is not None


SPECS = Path(__file__).parent / "data" / "specs"
SPEC_OF = {"openai": "openai_batch", "azure": "openai_batch", "azure-v1": "openai_batch",
           "groq": "openai_batch", "together": "together_batch"}  # fmt: skip


def spec(name: str, part: str) -> Any:
    from jsonschema import Draft202012Validator

    schema = json.loads((SPECS / f"{name}.schema.json").read_text())
    return Draft202012Validator({"$ref": f"#/$defs/{part}", "$defs": schema["$defs"]})


@pytest.mark.parametrize("name", list(SPEC_OF))
async def test_the_simulator_answers_as_the_providers_spec_says(
    name: str, clock: Clock, aiohttp_server: Any
) -> None:
    """Every answer of the simulator in a dialect that has a published spec — batches,
    lists, a cancel, a refused cancel — is valid against that spec's schema."""
    kind, run = RUNS[name]
    served = await serve(kind, clock, aiohttp_server)
    await run(served)
    schema = SPEC_OF[name]
    item, whole = spec(schema, "job" if kind == "together" else "batch"), spec(schema, "list")
    refused = spec(schema, "error") if kind == "together" else None
    for path, body in served.bodies:
        if "error" in body and refused is not None:
            refused.validate(body)
        elif "error" in body:
            continue  # OpenAI's error object is not part of the Batch schemas
        elif path.endswith("/batches") and kind != "groq":
            whole.validate(body)
        else:
            for one in body.get("data", [body]) if isinstance(body, dict) else body:
                item.validate(one)
