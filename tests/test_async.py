"""Streaming for asyncio: same text as generate, cancellation within one token, a free event
loop while decoding, and a context that works right after any way out."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from llama_cython import AsyncGenerationStream, ContextBusyError

PROMPT = "Once upon a time, in a small village by the sea,"


@pytest.fixture(scope="module")
def ctx(smol):
    with smol.new_context(n_ctx=1024, n_threads=2) as context:
        yield context


@pytest.fixture(scope="module")
def ref(ctx) -> str:
    return ctx.generate(PROMPT, max_tokens=32, temperature=0)


async def _collect(stream: AsyncGenerationStream) -> list[str]:
    return [piece async for piece in stream]


def _timeout(seconds: float):
    if sys.version_info >= (3, 11):
        return asyncio.timeout(seconds)
    pytest.skip("asyncio.timeout needs Python 3.11")


def test_async_pieces_add_up_to_generate(ctx, ref):
    stream = ctx.generate_async(PROMPT, max_tokens=32, temperature=0)
    assert isinstance(stream, AsyncGenerationStream)
    pieces = asyncio.run(_collect(stream))
    assert "".join(pieces) == ref == stream.text
    assert stream.finish_reason == "length" and stream.closed


def test_async_with_sampling_equals_generate(ctx):
    opts = {"max_tokens": 32, "temperature": 0.9, "seed": 77}
    text = ctx.generate(PROMPT, **opts)
    assert "".join(asyncio.run(_collect(ctx.generate_async(PROMPT, **opts)))) == text


def test_task_cancel_stops_within_one_token(ctx, ref):
    received: list[str] = []

    async def consume() -> None:
        async for piece in ctx.generate_async(PROMPT, max_tokens=100_000, ignore_eos=True):
            received.append(piece)

    async def main() -> float:
        task = asyncio.create_task(consume())
        while len(received) < 5:
            await asyncio.sleep(0.001)
        task.cancel()
        asked = len(received)
        t0 = time.perf_counter()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(received) == asked              # nothing more reached the consumer
        return time.perf_counter() - t0

    asyncio.run(main())
    stats = ctx.last_stats
    assert stats.finish_reason == "cancelled"
    # The loop noticed at its next token: at most the one in flight was added.
    assert stats.completion_tokens <= len(received) + 2, (stats.completion_tokens, len(received))
    assert ctx.generate(PROMPT, max_tokens=32, temperature=0) == ref   # usable at once


def test_asyncio_timeout(ctx, ref):
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with _timeout(0.2):
                async for _ in ctx.generate_async(PROMPT, max_tokens=100_000, ignore_eos=True):
                    pass
        # The cancellation propagated only after the context was handed back.
        assert ctx.generate(PROMPT, max_tokens=32, temperature=0) == ref

    asyncio.run(main())
    assert ctx.last_stats.finish_reason == "length"   # the check above ran a normal generation


def test_breaking_out_of_async_for(ctx, ref):
    async def main() -> None:
        async for _ in ctx.generate_async(PROMPT, max_tokens=500):
            break
        assert ctx.generate(PROMPT, max_tokens=32, temperature=0) == ref
        stream = ctx.generate_async(PROMPT, max_tokens=500)
        await stream.__anext__()
        with pytest.raises(ContextBusyError):      # an open stream keeps its context
            ctx.generate(PROMPT, max_tokens=2)
        await stream.aclose()
        assert stream.closed and stream.finish_reason == "cancelled"
        async with ctx.generate_async(PROMPT, max_tokens=500) as s2:
            await s2.__anext__()
        assert s2.closed

    asyncio.run(main())
    assert ctx.generate(PROMPT, max_tokens=32, temperature=0) == ref


def test_event_loop_is_not_blocked(ctx):
    async def main() -> tuple[int, float]:
        ticks = 0
        gaps: list[float] = []

        async def ticker() -> None:
            nonlocal ticks
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        # a long prompt too: its decode must not block the loop either
        async for _ in ctx.generate_async(PROMPT * 30, max_tokens=40, ignore_eos=True):
            pass
        elapsed = time.perf_counter() - t0
        tick_task.cancel()
        return ticks, max(gaps) if gaps else elapsed

    ticks, worst_gap = asyncio.run(main())
    stats = ctx.last_stats
    assert stats.completion_tokens == 40
    # The loop kept ticking through prompt and generation: no gap near a whole decode.
    assert ticks >= 20
    assert worst_gap < max(0.25, stats.prompt_ms / 1000 / 2), worst_gap


def test_two_contexts_stream_concurrently(smol):
    with smol.new_context(n_ctx=256, n_threads=1) as a, smol.new_context(n_ctx=256, n_threads=1) as b:
        ra = a.generate(PROMPT, max_tokens=16, temperature=0)
        rb = b.generate("The recipe for bread:", max_tokens=16, temperature=0)

        async def main() -> tuple[list[str], list[str]]:
            return await asyncio.gather(
                _collect(a.generate_async(PROMPT, max_tokens=16, temperature=0)),
                _collect(b.generate_async("The recipe for bread:", max_tokens=16, temperature=0)),
            )

        pa, pb = asyncio.run(main())
        assert "".join(pa) == ra and "".join(pb) == rb


def test_errors_surface_in_the_awaiting_task(smol):
    with smol.new_context(n_ctx=256) as c:
        with pytest.raises(TypeError):
            c.generate_async(123)
        with pytest.raises(ValueError):
            c.generate_async(PROMPT, max_tokens=0)
        assert c.generate(PROMPT, max_tokens=4, temperature=0)
