"""Guided lessons: short experiments on a running server, narrated step by step.

``./dev lesson`` lists them, ``./dev lesson NAME`` runs one (``python -m
lessons NAME``) against the demo's server, which ``./dev demo`` starts with
``--trace`` and ``--lesson-hooks``.  Each lesson connects a few clients of its
own over TCP, provokes one thing (a message, a killed lock holder, a client
that stops reading, a Ctrl-C) and says in plain words what to look at in the
demo's trace and inspector panes, printing the same evidence itself, read
from the trace table and the shared tables.

The lessons sit above ``shm`` and ``protocol`` and import nothing else of
the project (``tests/test_layering.py``): they look at the server the way
any other process could, which is part of what they teach.
"""
