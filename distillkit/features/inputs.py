"""Inputs of the caching pipeline: a source image decoded once into the student's view and each teacher's input."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from distillkit.sources import BadImage, load_rgb
from distillkit.sources.decode import decode_image, read_source
from distillkit.sources.views import View, center_view, draft_factor, random_view, render


@dataclass
class DecodedSample:
    ok: bool
    error: str
    source_hw: tuple[int, int]
    view: np.ndarray
    image: np.ndarray | None  # student view, uint8 HxWx3
    teacher_inputs: dict[tuple[int, int], np.ndarray]


def decode_sample(uri: str, image_hw: tuple[int, int], teacher_hws: set[tuple[int, int]],
                  storage_options: dict, view_mode: str = "center", seed: int = 0,
                  loader: Callable[[str], np.ndarray] | None = None) -> DecodedSample:
    def view_of(full_hw: tuple[int, int]) -> View:
        return random_view(full_hw, image_hw, seed) if view_mode == "random" else center_view(full_hw, image_hw)

    sizes = {tuple(image_hw), *map(tuple, teacher_hws)}
    try:
        if loader:  # decoded in full once for several views
            image = loader(uri)
            full = image.shape[:2]
        else:  # a JPEG much larger than every output inside the view is decoded smaller (draft mode)
            image, full = decode_image(read_source(uri, storage_options), uri,
                                       lambda hw: draft_factor(view_of(hw), sizes))
    except BadImage as e:
        return DecodedSample(False, str(e), (0, 0), np.full(5, np.nan, np.float32), None, {})
    view = view_of(full)
    got = image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width)
    scale = (got[0] / full[0], got[1] / full[1])
    try:
        student = render(image, view, image_hw, scale)
        inputs = {hw: (student if hw == tuple(image_hw) else render(image, view, hw, scale)) for hw in teacher_hws}
    except (ValueError, OSError) as e:
        return DecodedSample(False, f"cannot render view: {e}", full, view.as_array(), None, {})
    return DecodedSample(True, "", full, view.as_array(), student, inputs)


class SharedDecodes:
    """Decoded images shared by the K views of an image (rows of one image are adjacent): a small LRU."""

    def __init__(self, storage_options: dict, size: int = 16):
        import threading
        from collections import OrderedDict

        self._so, self._size, self._lock = storage_options, size, threading.Lock()
        self._items: OrderedDict = OrderedDict()

    def __call__(self, uri: str) -> np.ndarray:
        with self._lock:
            if uri in self._items:
                self._items.move_to_end(uri)
                hit = self._items[uri]
                if isinstance(hit, BadImage):
                    raise hit
                return hit
        try:
            value = load_rgb(uri, self._so)
        except BadImage as e:
            value = e
        with self._lock:
            self._items[uri] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        if isinstance(value, BadImage):
            raise value
        return value


def prefetched(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """Map fn over items on a thread pool, yielding results in order with `window` jobs in flight."""
    inflight: deque = deque()
    for item in items:
        inflight.append(pool.submit(fn, item))
        if len(inflight) >= window:
            yield inflight.popleft().result()
    while inflight:
        yield inflight.popleft().result()
