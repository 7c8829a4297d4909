"""predserve's benchmark: a closed-loop V2 load generator, same-run baselines, and MLServer side by side.

`make bench` (python -m bench run) and `make bench-compare` (python -m bench compare); see docs/performance.md.
"""
