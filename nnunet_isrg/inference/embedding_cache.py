"""Image embeddings of the views of one volume, computed once each and kept while memory allows.

The encoder is most of a prediction's cost (74 ms of 98 ms for the ``tiny`` preset on a CPU core);
the decoder reads the embedding of a view for every click. A view is a crop box at a scale, so an
embedding depends on the image only, never on the clicks or the lesion: one cache serves every
lesion of the image, and a further click on a view already seen costs a decode.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch

#: default memory for cached embeddings; a ``tiny`` embedding takes 3.5 MB, so about 70 views
DEFAULT_MAX_BYTES = 256 * 2**20


def embedding_bytes(embedding: Any) -> int:
    """Bytes of the tensors an embedding holds: a tensor, an ``ImageEmbedding`` record, or tuples and
    records of those."""
    if torch.is_tensor(embedding):
        return embedding.numel() * embedding.element_size()
    if isinstance(embedding, (tuple, list)):
        return sum(embedding_bytes(e) for e in embedding)
    if hasattr(embedding, "__dict__"):
        return sum(embedding_bytes(e) for e in vars(embedding).values())
    return 0


class EmbeddingCache:
    """Least-recently-used embeddings keyed by view, within ``max_bytes``; ``encode_calls`` counts the
    encoder runs (the most recent entry is always kept, whatever its size)."""

    def __init__(self, encode: Callable[[torch.Tensor], Any], max_bytes: int = DEFAULT_MAX_BYTES):
        self._encode = encode
        self.max_bytes = int(max_bytes)
        self.encode_calls = 0
        self._entries: "OrderedDict[Hashable, tuple[Any, int]]" = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable, image: Callable[[], torch.Tensor]) -> Any:
        """The embedding of view ``key``; ``image()`` gives its (1, C, D, H, W) input when it must be encoded."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        with torch.no_grad():
            embedding = self._encode(image())
        self.encode_calls += 1
        size = embedding_bytes(embedding)
        self._entries[key] = (embedding, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
        return embedding

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
