"""Fake upstream servers and files for tests: real loopback servers speaking documented formats."""
