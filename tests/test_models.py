"""The wire model reads real provider payloads; batch ids are validated before URLs."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import payload
from watchdog.core.models import (
    BatchObject,
    BatchPage,
    InvalidBatchId,
    is_unknown_status,
    read_page,
    validate_batch_id,
    view_of,
)


def test_reasoning_payload_with_legacy_keys() -> None:
    """OpenAI's completed batch: cached and reasoning are parts; legacy keys are ignored."""
    batch = BatchObject.model_validate(payload("openai_completed_reasoning.json"))
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.cached_tokens) == (31_493_594, 24_045_184)
    assert (batch.usage.output_tokens, batch.usage.reasoning_tokens) == (19_786_241, 18_373_824)
    assert batch.error_file_id is None  # "" means absent
    assert batch.output_file_id == "file-Out123"


def test_failed_validation_keeps_errors_and_null_counts() -> None:
    """A batch that failed validation has errors and no counts, usage or model."""
    batch = BatchObject.model_validate(payload("openai_failed_validation.json"))
    assert batch.errors is not None and batch.errors.data[0].code == "token_limit_exceeded"
    assert batch.request_counts is None and batch.usage is None and batch.model is None
    view = view_of("openai", batch)
    assert view.counts is None and view.tokens is None
    assert view.created_at == datetime(2025, 1, 4, 14, 13, 20, tzinfo=UTC)


def test_deepinfra_cancelling_payload() -> None:
    """DeepInfra's shape parses and normalises, metadata included."""
    view = view_of("deepinfra", BatchObject.model_validate(payload("deepinfra_cancelling.json")))
    assert view.status == "cancelling"
    assert view.counts is not None and view.counts.finished == 1224
    assert view.metadata == {"team": "research", "job": "eval-nightly"}


def test_validating_without_usage_or_metadata() -> None:
    """Missing usage and null metadata are fine; counts 0/0/0 are kept."""
    view = view_of("openai", BatchObject.model_validate(payload("openai_validating_no_usage.json")))
    assert view.tokens is None and view.metadata is None
    assert view.counts is not None and view.counts.total == 0


def test_unknown_status_is_kept_verbatim() -> None:
    """A status we have never seen is kept as it came, and flagged unknown."""
    data = payload("openai_validating_no_usage.json") | {"status": "queued_for_gpu"}
    batch = BatchObject.model_validate(data)
    assert batch.status == "queued_for_gpu"
    assert is_unknown_status(batch.status) and not is_unknown_status("cancelling")


def test_list_page() -> None:
    """The list envelope parses, empty or not."""
    page = BatchPage.model_validate(payload("openai_list_page.json"))
    assert page.data == [] and page.has_more is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"request_counts": {"total": 5, "completed": -1, "failed": 0}}, "out of range"),
        # Values the spec allows but no clock or column can hold (issue 10).
        ({"expires_at": 1_764_406_800_000}, r"not a Unix time in seconds.*milliseconds"),
        ({"in_progress_at": -5}, "not a Unix time"),
        ({"request_counts": {"total": 2**63, "completed": 0, "failed": 0}}, "out of range"),
        ({"usage": {"input_tokens": 2**64, "output_tokens": 1}}, "out of range"),
        ({"status": "s" * 65}, "longer than 64"),
        ({"model": "m" * 257}, "longer than 256"),
        ({"output_file_id": "f" * 129}, "longer than 128"),
        ({"endpoint": "/" * 129}, "longer than 128"),
        ({"id": "../files"}, "invalid batch id"),
        ({"request_counts": {"total": 5, "completed": 2, "failed": 4}}, "exceeds total"),
        (
            {
                "usage": {
                    "input_tokens": 10,
                    "output_tokens": 1,
                    "input_tokens_details": {"cached_tokens": 11},
                }
            },
            "cached_tokens exceeds",
        ),
        ({"usage": {"input_tokens": "many", "output_tokens": 1}}, "valid integer"),
        ({"status": None}, "valid string"),
    ],
)
def test_malformed_answers_are_refused(change: dict[str, object], message: str) -> None:
    """A malformed answer raises (and becomes poll_failed), it is never half-read."""
    with pytest.raises(ValidationError, match=message):
        BatchObject.model_validate(payload("openai_validating_no_usage.json") | change)


@pytest.mark.parametrize(
    "batch_id",
    ["batch_abc123", "a", "x" * 128, "batch_01JD2Q7V3M8K2Y1R6X9T4W5E0A", "a.b:c-d_e", "..."],
)
def test_valid_batch_ids(batch_id: str) -> None:
    """Provider-style ids pass unchanged."""
    assert validate_batch_id(batch_id) == batch_id


@pytest.mark.parametrize(
    "batch_id", ["", ".", "..", "../files/x", "a b", "x" * 129, "a/b", "a?b", "a%2f", "é", "a\nb"]
)
def test_invalid_batch_ids(batch_id: str) -> None:
    """Anything that could change the URL is refused with a reason."""
    with pytest.raises(InvalidBatchId, match="invalid batch id"):
        validate_batch_id(batch_id)


def test_non_finite_numbers_are_refused_not_crashing() -> None:
    """1e400 parses as infinity: a validation error, never an OverflowError."""
    body = b'{"id": "b1", "status": "in_progress", "created_at": 1e400}'
    with pytest.raises(ValidationError, match="not a finite number"):
        BatchObject.model_validate_json(body)


def test_a_malformed_list_item_costs_only_itself() -> None:
    """One bad item in a page is skipped and counted; the others are kept, and the page
    still gives a cursor to go on from."""
    good = payload("openai_validating_no_usage.json")
    items = [
        good | {"id": "batch_a"},
        good | {"id": "batch_b", "expires_at": 1_764_406_800_000},
        {"id": 7},
        "not an object",
        good | {"id": "batch_c", "request_counts": {"total": 1e400, "completed": 0, "failed": 0}},
        good | {"id": "batch_d"},
    ]
    body = json.dumps({"object": "list", "data": items, "has_more": True})
    page = read_page(body.replace('"total": Infinity', '"total": 1e400').encode())
    assert [b.id for b in page.data] == ["batch_a", "batch_d"]
    assert page.skipped == 4 and page.cursor == "batch_d" and page.has_more


def test_metadata_of_any_json_type_is_kept_and_read_as_text() -> None:
    """Mistral's and Groq's metadata values may be any JSON: the batch is not refused;
    the values are kept as sent and matched, grouped and shown as their text."""
    from watchdog.core.policies import Match

    raw = {"team": "research", "priority": 3, "urgent": True, "tags": ["a", "b"], "none": None}
    batch = BatchObject.model_validate({"id": "b", "status": "in_progress", "metadata": raw})
    assert batch.metadata == raw
    view = view_of("p", batch)
    assert view.metadata == {"team": "research", "priority": "3", "urgent": "true",
                             "tags": '["a","b"]', "none": "null"}  # fmt: skip
    assert Match(metadata={"priority": "3", "urgent": "true"}).matches(view)
    odd = BatchObject.model_validate({"id": "b", "status": "in_progress", "metadata": [1, 2]})
    assert odd.metadata is None


@pytest.mark.parametrize(
    ("errors", "kept"),
    [
        ({"object": "list", "data": [{"code": "a", "message": "m"}]}, 1),
        ({"object": "list", "data": {"code": "a", "message": "m"}}, 1),  # Azure's spec
        ({"object": "list", "data": [{"code": 5, "line": "x"}]}, None),  # unreadable
        ("oops", None),
        ([{"message": "Mistral's list"}], None),
    ],
)
def test_errors_never_cost_the_batch(errors: Any, kept: int | None) -> None:
    """``errors`` is not judged: any shape is read where it can be, else dropped — the
    batch itself always parses."""
    batch = BatchObject.model_validate({"id": "b", "status": "failed", "errors": errors})
    assert (None if batch.errors is None else len(batch.errors.data)) == kept
