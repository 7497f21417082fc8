"""Recurring identities (``track_id``): each one's look, and the dealer that places them.

Ids ``1..N`` are the training identities, ``N+1..`` the validation ones, so the splits share
none; within a split two identities differ in two attributes or more (colour, pattern).
"""

from __future__ import annotations

import numpy as np

from vision_tasks.data.synthetic.categories import CIRCLE, PERSON, SQUARE, TRIANGLE

# Identities per category; train ids come first, val ids after them, so the splits are disjoint.
_TRAIN_POOL = {PERSON: 16, CIRCLE: 8, SQUARE: 8, TRIANGLE: 8}
_VAL_POOL = {PERSON: 8, CIRCLE: 4, SQUARE: 4, TRIANGLE: 4}
# RGB, far apart, so that no camera's colour cast turns one into another.
_PALETTE = np.array(
    [
        (220, 40, 40),
        (245, 140, 30),
        (235, 220, 50),
        (50, 170, 60),
        (40, 200, 210),
        (40, 70, 220),
        (135, 50, 190),
        (245, 120, 190),
        (235, 235, 235),
        (30, 30, 30),
        (125, 75, 40),
        (0, 110, 110),
    ],
    dtype=np.float32,
)
_SKIN = np.array([(240, 200, 170), (215, 165, 120), (160, 110, 75), (95, 65, 45)], np.float32)
_PATTERNS = ("solid", "stripes", "checks")


def _make_identities(seed: int) -> dict[int, dict]:
    """Draw every identity's appearance; ids 1..N are train, N+1.. are val."""
    rng = np.random.Generator(np.random.PCG64([seed, 2]))
    identities: dict[int, dict] = {}
    for pool in (_TRAIN_POOL, _VAL_POOL):
        keys: dict[bool, list[tuple]] = {True: [], False: []}  # persons, shapes
        for category, size in pool.items():
            taken = keys[category == PERSON]
            for _ in range(size):
                # Two persons, or two shapes even of different kinds, of a split differ in two
                # attributes or more, so that colour and pattern alone tell identities apart.
                while True:
                    look = _draw_look(rng, category)
                    key = (look["primary"], look["pattern"], look["secondary"], look["trousers"])
                    if all(sum(a != b for a, b in zip(key, k, strict=True)) >= 2 for k in taken):
                        break
                taken.append(key)
                identities[len(identities) + 1] = {"category_id": category, **look}
    return identities


def _draw_look(rng: np.random.Generator, category: int) -> dict:
    """Draw one appearance; colours come from the same palette for every category."""
    primary, secondary, trousers = (int(i) for i in rng.choice(len(_PALETTE), 3, replace=False))
    pattern = _PATTERNS[int(rng.integers(len(_PATTERNS)))]
    person = category == PERSON
    return {
        "primary": primary,
        "secondary": primary if pattern == "solid" else secondary,
        "pattern": pattern,
        "trousers": trousers if person else -1,
        "skin": int(rng.integers(len(_SKIN))) if person else -1,
        "long_sleeves": bool(rng.random() < 0.5) if person else False,
    }


class _Dealer:
    """Hands out identities in shuffled rounds, preferring ones this camera has not seen yet.

    Rounds keep the appearance counts balanced; the camera preference shows every identity to a
    second camera as soon as it appears a second time.
    """

    def __init__(self, identities: dict[int, dict], rng: np.random.Generator) -> None:
        self.rng = rng
        self.pools: dict[int, list[int]] = {}
        for k, v in identities.items():
            self.pools.setdefault(v["category_id"], []).append(k)
        self.rounds: dict[int, list[int]] = {c: [] for c in self.pools}
        self.cameras: dict[int, set[int]] = {k: set() for k in identities}

    def deal(self, category: int, camera: int, exclude: set[int]) -> int:
        """Return an identity of ``category`` not in ``exclude`` for an image from ``camera``."""
        queue = self.rounds[category]
        if all(k in exclude for k in queue):
            queue.extend(int(k) for k in self.rng.permutation(self.pools[category]))
        candidates = [k for k in queue if k not in exclude]
        pick = next((k for k in candidates if camera not in self.cameras[k]), candidates[0])
        queue.remove(pick)
        self.cameras[pick].add(camera)
        return pick
