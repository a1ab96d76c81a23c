"""Benchmark harness of reinhardt-ws: contestant servers, bench clients, the C floor."""
