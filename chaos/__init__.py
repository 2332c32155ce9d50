"""Does the pool lose anything when things die? The chaos suite: `python -m chaos [--short]`.

Real processes only: a Temporal dev server on an SQLite file, the simulator (`python -m
vastsim`), and `worker.py` processes, driven from this process through Temporal and the
simulator's /_sim control API. Each scenario injects one kind of fault and then checks the
invariants of DESIGN.md (no orphan instance, no double rent, every slot READY in the end, every
lease ended with a reason) and prints a table of faults injected, checks and violations.
"""
