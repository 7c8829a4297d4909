"""Test support shared by the tests, the scripts and the benchmark: the real server process, and waiting on it."""
