"""What the gateway reads from a ``node_register`` beyond the declared fields."""

from __future__ import annotations

from typing import Any

import pytest

from lingua_gateway.node_registration import register_trace_id
from lingua_shared.errors import InvalidMessage
from lingua_shared.protocol import MAX_TRACE_ID, NodeRegister


@pytest.mark.parametrize("value", [None, "", "t-1", "x" * MAX_TRACE_ID])
def test_a_string_trace_id_is_kept(value: str | None) -> None:
    reg = NodeRegister.model_validate({"type": "node_register", "trace_id": value})
    assert register_trace_id(reg) == value
    assert register_trace_id(NodeRegister()) is None


@pytest.mark.parametrize("value", [True, 5, 1.5, [], ["t"], {"a": 1}, "x" * (MAX_TRACE_ID + 1)])
def test_any_other_trace_id_is_invalid_message(value: Any) -> None:
    """Regression: these reached the bus event's model and came back as INTERNAL_ERROR."""
    reg = NodeRegister.model_validate({"type": "node_register", "trace_id": value})
    with pytest.raises(InvalidMessage, match="trace_id"):
        register_trace_id(reg)
