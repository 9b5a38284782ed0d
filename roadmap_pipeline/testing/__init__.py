"""Test doubles that speak real protocols (a loopback chat-completions server, counting
generators, a concept worker for crash tests). Used by the tests, the benchmarks and demos;
never by production code paths."""
