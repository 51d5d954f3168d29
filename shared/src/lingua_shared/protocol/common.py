"""Base model and the ``error`` message used in both directions."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """Base of every wire message: unknown fields are accepted and kept, never an error."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict to send: ``None`` fields dropped, extras kept."""
        return self.model_dump(mode="json", exclude_none=True)


class ErrorMessage(WireModel):
    type: Literal["error"] = "error"
    code: str
    message: str
    details: dict[str, Any] | None = None
