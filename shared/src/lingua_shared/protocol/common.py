"""Base model, the ``error`` message used in both directions, and the type tags of a union."""

from typing import Any, Literal, get_args

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


def message_types(union: Any) -> frozenset[str]:
    """The ``type`` tags of a discriminated union of wire models (``Annotated[A | B, ...]``),
    read from each model's ``Literal`` ``type`` field: what one direction of an endpoint may
    carry, derived from the models so that the two never disagree."""
    members = get_args(get_args(union)[0])
    return frozenset(
        tag for model in members for tag in get_args(model.model_fields["type"].annotation)
    )
