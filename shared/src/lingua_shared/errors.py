"""Domain errors, each mapped once to a protocol error code (and a WebSocket close code)."""

from __future__ import annotations

from typing import Any

from lingua_shared.protocol.codes import CloseCode, ErrorCode
from lingua_shared.protocol.common import ErrorMessage


class LinguaError(Exception):
    """Base of every domain error; ``code`` is the protocol error code sent to the peer."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    close_code: int | None = None  # set when the connection must be closed

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_message(self) -> ErrorMessage:
        return ErrorMessage(code=self.code.value, message=self.message, details=self.details)


class InvalidMessage(LinguaError):
    code = ErrorCode.INVALID_MESSAGE


class InvalidCapabilitySchema(LinguaError):
    code = ErrorCode.INVALID_CAPABILITY_SCHEMA


class MessageTooLarge(LinguaError):
    """Above an application limit: the error goes out and the connection stays open (a frame
    above the WebSocket ``max_size`` is closed with 1009 by the library itself)."""

    code = ErrorCode.MESSAGE_TOO_LARGE


class NodeNotRegistered(LinguaError):
    code = ErrorCode.NODE_NOT_REGISTERED


class NodeIdConflict(LinguaError):
    code = ErrorCode.NODE_ID_CONFLICT


class DependencyDown(LinguaError):
    """Redis or RabbitMQ did not answer in time; the request can be retried."""

    code = ErrorCode.SCHEDULER_DEPENDENCY_DOWN


class Unauthorized(LinguaError):
    """Missing, bad or foreign credentials: the connection is closed with 1008 (policy)."""

    code = ErrorCode.UNAUTHORIZED
    close_code = CloseCode.POLICY


class ScriptRejected(LinguaError):
    """A Lua script refused its input (a negative code); ``reason`` names the code."""

    code = ErrorCode.INVALID_MESSAGE


class UnsupportedFeature(LinguaError):
    code = ErrorCode.UNSUPPORTED_FEATURE


class InvalidSession(LinguaError):
    """A message for no session, or for a session that is not this connection's."""

    code = ErrorCode.INVALID_SESSION
