"""The shapes world: a seeded world of coloured shapes on a 2x2 grid (``scenes``, drawn by
``rendering``), its captions and the statements they make (``captions``), the checker of those
statements (``statements``), its samples, edit pairs and dataset writers (``world``), the bundled
SD3-architecture model built on it (``model``), and the ground-truth judge that reads images back
into scenes (``classifier``, ``classifier_training``) and scores captions on them (``judge``). It
gives the project a text-to-image task with exact answers, offline.
"""
