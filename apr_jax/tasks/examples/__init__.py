"""Worked examples of user tasks (``arithmetic``: word problems with a parallel decomposition)."""
