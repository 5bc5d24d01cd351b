"""Tasks: what the trainer needs to know about a family of problems.

A task gives the problems of each split, the root prompt of a problem, the
training traces (generated symbolically, or read from files) and a verifier
that scores what a finished root wrote. SFT (the dataset build), evaluation
and RL (prompts and rewards) take the task named by ``config.task.name``:

- ``countdown`` (default): ``apr_jax.tasks.countdown``'s problems, search traces
  and exact verifier;
- ``jsonl_traces``: your own ``ThreadTree`` JSONL files with an answer
  checker (``apr_jax.tasks.jsonl_traces``).

``base`` holds the interface (``Task``, ``Score``), ``registry`` the tasks by name.
"""
