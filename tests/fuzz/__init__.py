"""Fuzzing of every parser of client bytes: property tests over the pure parsers, and random
byte streams against a live proxy (before login, after TLS, after login), with a watchdog on
its event loop and a replayed regression corpus (tests/corpus/<parser>/*.bin)."""
