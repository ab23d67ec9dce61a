"""Registers servicers with request decoding that can fail cleanly.

The generated `add_*Servicer_to_server` functions decode requests with
`FromString`; a request that is not valid protobuf (e.g. invalid UTF-8 in a
string field) then fails inside grpc as UNKNOWN, naming a Python class. Here a
decode failure becomes an `Undecodable` value that the servicer wrapper
(`status.maps_errors`) answers with INVALID_ARGUMENT, reason MALFORMED_REQUEST.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import ServiceDescriptor


class Undecodable:
    """Stands in for a request whose bytes are not a valid message."""

    def __init__(self, error: str) -> None:
        self.error = error


def _safe(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode_or_mark(data: bytes) -> Any:
        try:
            return decode(data)
        except (message.DecodeError, UnicodeDecodeError, ValueError) as exc:
            return Undecodable(type(exc).__name__)

    return decode_or_mark


Behavior = Callable[[Any, Any], Awaitable[Any]]

HandlerInterceptor = Callable[[str, Behavior], Behavior]
"""A server interceptor applied once per method, when the service is registered:
given the method's full name (`/potato.runs.v2.RunsService/MarkDay`) and its
behaviour, it returns the behaviour to serve (the same one when it does not apply).

This is where the cross-cutting concerns live (access control, load shedding), one
object each, for every service this module registers; health and reflection are
registered by their own libraries and so are never intercepted. It is the same idea as a
`grpc.aio.ServerInterceptor` without that API's per-call price: grpc.aio runs its
interceptor chain in Python on every RPC of every method (63 µs per call measured on an
echo method, `scripts/bench_auth_interceptor.py`), where a method that a concern does
not apply to pays nothing here."""


def method_name(service: ServiceDescriptor, method: str) -> str:
    return f"/{service.full_name}/{method}"


def add_service(server: grpc.aio.Server, servicer: Any, service: ServiceDescriptor,
                interceptors: Sequence[HandlerInterceptor] = ()) -> None:
    """Like the generated add_*Servicer_to_server, for every unary-unary and
    unary-stream (server streaming) method of `service`. `interceptors` wrap every
    method; the first one listed runs first.

    A server-streaming behaviour is a coroutine that writes with `context.write` and
    returns None when the stream is over (an async-generator method is refused), so an
    interceptor wraps it exactly as a unary one: `await behavior(...)`
    lasts the whole stream. An interceptor that limits calls in flight must therefore
    tell streams apart (transport/shedding.py: streams are counted against a limit of
    their own)."""
    handlers = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not supported")
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        behavior = getattr(servicer, method.name)
        if inspect.isasyncgenfunction(behavior):
            raise ValueError(f"{method.full_name}: write with context.write, not yield")
        for intercept in reversed(interceptors):
            behavior = intercept(method_name(service, method.name), behavior)
        make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[method.name] = make(
            behavior,
            request_deserializer=_safe(request.FromString),
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
