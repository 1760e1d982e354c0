"""Parsing wrk's report (the benchmark's load generator when installed)."""

import pytest

from bench.loadgen import check_loopback, parse_wrk

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:18205/v2/models/intent/infer
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    45.10ms   18.20ms 120.33ms   70.00%
    Req/Sec   704.12     80.10     0.90k    68.00%
  Latency Distribution
     50%   43.70ms
     75%   55.02ms
     90%   70.11ms
     99%    1.02s
  3504 requests in 5.00s, 1.50MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:    700.72
Transfer/sec:    307.10KB
"""


def test_parse_wrk_report():
    r = parse_wrk(WRK_OUTPUT)
    assert r == {"throughput_rps": 700.72, "p50_ms": 43.7, "p99_ms": 1020.0, "errors": 7, "requests": 3504}


def test_parse_wrk_microseconds_and_garbage():
    out = WRK_OUTPUT.replace("43.70ms", "850.00us")
    assert parse_wrk(out)["p50_ms"] == 0.85
    with pytest.raises(ValueError, match="unexpected wrk output"):
        parse_wrk("wrk: connection refused")


def test_only_loopback_targets():
    check_loopback("http://127.0.0.1:8001/v2")
    with pytest.raises(ValueError):
        check_loopback("http://10.0.0.5:8001/v2")
