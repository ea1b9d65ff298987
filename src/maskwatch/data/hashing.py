"""Perceptual hashes, fast near-duplicate search (multi-index hashing) and grouping."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

#: Largest Hamming distance between 64-bit perceptual hashes counted as a near-duplicate.
NEAR_DISTANCE = 4


def phash_int(img) -> int:
    """64-bit perceptual hash (imagehash.phash) of a Pillow image, as an int."""
    import imagehash

    bits = imagehash.phash(img).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


def near_pairs(hashes: list[int | None], max_distance: int = NEAR_DISTANCE) -> list[tuple]:
    """All pairs (i, j, distance), i < j, of hashes within ``max_distance`` bits.

    Multi-index hashing: the 64 bits are cut into ``max_distance + 1`` chunks; two hashes
    within the distance agree exactly on at least one chunk (pigeonhole), so only hashes
    sharing a chunk value are compared, with vectorised popcounts. Equal hashes are
    collapsed first. None entries (unreadable images) are ignored.
    """
    by_value: dict[int, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        if h is not None:
            by_value[h].append(i)
    values = np.array(list(by_value), dtype=np.uint64)
    members = list(by_value.values())
    pairs: list[tuple] = []
    for idx in members:
        pairs.extend((a, b, 0) for k, a in enumerate(idx) for b in idx[k + 1:])
    n_chunks = max_distance + 1
    bounds = np.linspace(0, 64, n_chunks + 1).astype(int)
    seen: set[tuple[int, int]] = set()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        width = hi - lo
        chunk = (values >> np.uint64(64 - hi)) & np.uint64((1 << width) - 1)
        order = np.argsort(chunk, kind="stable")
        sorted_chunk = chunk[order]
        starts = np.flatnonzero(np.r_[True, sorted_chunk[1:] != sorted_chunk[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts, ends):
            if e - s < 2:
                continue
            ids = order[s:e]
            vals = values[ids]
            for r0 in range(0, len(ids), 512):
                block = vals[r0:r0 + 512]
                dist = _popcount(block[:, None] ^ vals[None, :])
                rows, cols = np.nonzero(dist <= max_distance)
                keep = cols > rows + r0
                for r, c in zip(rows[keep].tolist(), cols[keep].tolist()):
                    a, b = int(ids[r0 + r]), int(ids[c])
                    key = (a, b) if a < b else (b, a)
                    if key in seen:
                        continue
                    seen.add(key)
                    d = int(dist[r, c])
                    for x in members[a]:
                        for y in members[b]:
                            pairs.append((min(x, y), max(x, y), d))
    return pairs


def connected_groups(n: int, edges) -> list[list[int]]:
    """The connected components of the graph on 0..n-1 with ``edges`` (pairs, or triples
    whose first two items are the ends): each sorted, ordered by their smallest member."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ends = np.asarray([e[:2] for e in edges], dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(ends), np.int8), (ends[:, 0], ends[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels.tolist()):
        groups[label].append(i)
    return sorted(groups.values(), key=lambda g: g[0])
