"""Small requests grouped into one model call: an image waits at most ``max_wait`` seconds for
others to join it, and a call takes at most ``max_batch`` images. Images that queued while the
model was busy go together in the next call without waiting, so a loaded server batches more
and an idle one answers at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

import numpy as np

Item = TypeVar("Item")


class Batcher(Generic[Item]):
    """``await batcher(item)`` -> that item's result of ``run(items)`` (one float each), ``run``
    called on ``executor`` (one thread: the model is not thread safe)."""

    def __init__(self, run: Callable[[list[Item]], np.ndarray], executor: Executor,
                 max_batch: int, max_wait: float, on_batch: Callable[[int], None] = lambda n: None
                 ) -> None:
        self.run = run
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch
        self.queue: asyncio.Queue[tuple[Item, asyncio.Future[float]]] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Answer what is queued, then end."""
        while not self.queue.empty():
            await asyncio.sleep(0.001)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def __call__(self, item: Item) -> float:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _gather(self) -> list[tuple[Item, asyncio.Future[float]]]:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            # short naps rather than wait_for(queue.get()): on Python 3.11 a get cancelled by
            # wait_for's timeout just as an item arrives can lose that item
            await asyncio.sleep(min(left, 0.0005))
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.run, items)
            except Exception as err:  # noqa: BLE001 - each waiting request gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.on_batch(len(batch))
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(float(result))
