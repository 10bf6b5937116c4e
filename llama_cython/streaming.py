"""Streaming for asyncio: the C generation loop, one piece at a time, in a worker thread.

Each ``__anext__`` runs one step of the same loop that :meth:`Context.generate_stream` uses, in
the event loop's default executor, so the loop is never blocked by decoding. Cancellation of the
awaiting task is turned into llama.cpp's abort flag (checked between tokens and between graph
nodes of a long prompt, without the GIL); the task's cancellation propagates only once the worker
has returned and the context has been handed back, so the context is usable right after.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from llama_cython._core import GenerationStream
    from llama_cython.stats import GenerationStats

__all__ = ["AsyncGenerationStream"]

_Stream = TypeVar("_Stream", bound="AsyncGenerationStream")


def _resolve(fut: asyncio.Future[str | None], value: str | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class AsyncGenerationStream:
    """Generated text as an async iterator of ``str`` pieces (see :meth:`Context.generate_async`).

    The context is busy until the stream ends, :meth:`aclose` is awaited, or the stream is
    garbage-collected (as after ``break`` in an ``async for`` over it).
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: GenerationStream) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncGenerationStream:
        return self

    async def __anext__(self) -> str:
        stream = self._stream
        if stream.closed:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str | None] = loop.create_future()
        # The worker lets go of the stream *before* it wakes the awaiting task: a stream dropped
        # right after (``break`` in ``async for``) is then freed at once, and its context free
        # for the next call, instead of whenever the pool thread finishes returning.
        holder = [stream]

        def work() -> None:
            step = holder.pop()
            try:
                value, exc = step.next_piece(), None
            except BaseException as e:   # handed to the awaiting task, not lost in the pool
                value, exc = None, e
            del step
            try:
                loop.call_soon_threadsafe(_resolve, done, value, exc)
            except RuntimeError:          # the event loop is already closed
                pass

        loop.run_in_executor(None, work)
        try:
            piece = await asyncio.shield(done)
        except asyncio.CancelledError:
            stream.cancel()              # the worker sees it within one token
            try:
                await done               # the worker returns; then the context is free
            except BaseException:
                pass
            finally:
                stream.close()           # if still in a step (cancelled twice), that step closes
            raise
        if piece is None:
            raise StopAsyncIteration
        return piece

    async def aclose(self) -> None:
        """Stop generation and hand the context back."""
        self._stream.close()

    async def __aenter__(self: _Stream) -> _Stream:  # noqa: PYI019 (Self needs typing_extensions on 3.10)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stream.close()

    def cancel(self) -> None:
        """Ask generation to stop within one token (safe from any thread)."""
        self._stream.cancel()

    @property
    def closed(self) -> bool:
        return self._stream.closed

    @property
    def finish_reason(self) -> str | None:
        return self._stream.finish_reason

    @property
    def text(self) -> str:
        """All the text yielded so far."""
        return self._stream.text

    @property
    def stats(self) -> GenerationStats | None:
        return self._stream.stats

    def __repr__(self) -> str:
        return repr(self._stream).replace("GenerationStream", "AsyncGenerationStream", 1)
