"""The shapes world: a seeded world of coloured shapes on a 2x2 grid, its captions and statements
(``world``), the bundled SD3-architecture model built on it (``model``), and the ground-truth judge
that reads images back into scenes (``judge``). It gives the project a text-to-image task with
exact answers, offline.
"""
