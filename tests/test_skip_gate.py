"""The skip gate (tests/skip_gate.py): pytest runs inside pytest (pytester), with the gate installed the way
tests/conftest.py installs it, over small suites that skip in every way pytest can."""

from __future__ import annotations

import pytest

from tests.skip_gate import ALLOW_LIST, OPT_OUT, load_allow_list

SUITE = {
    "test_servers.py": """
        import pytest

        def test_runs():
            assert True

        def test_needs_redis():
            pytest.skip("redis-server is not installed")

        @pytest.mark.skipif(True, reason="promtool not found")
        def test_needs_promtool():
            pass

        @pytest.mark.xfail(reason="known bug", strict=True)
        def test_known_bug():
            assert False
    """,
    "test_module_skip.py": """
        import pytest
        pytest.importorskip("no_such_package_kefu", reason="the milvus package is not installed")

        def test_never_collected():
            pass
    """,
}

ALL_LISTED = """
[[skip]]
nodeid = "test_servers.py::test_needs_*"
reason = "not"
why = "this suite's own servers"

[[skip]]
nodeid = "test_module_skip.py"
reason = "milvus package"
why = "a module-level importorskip"
"""


def run(pytester: pytest.Pytester, allow_list: str | None, *args: str) -> pytest.RunResult:
    pytester.makepyfile(**SUITE)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    allow = pytester.path / "allowed.toml"
    allow.write_text(allow_list if allow_list is not None else "", "utf-8")
    pytester.makeconftest(
        f"""
        from pathlib import Path
        from tests.skip_gate import install

        def pytest_configure(config):
            install(config, Path({str(allow)!r}))
        """
    )
    return pytester.runpytest("-p", "no:cacheprovider", "-q", *args)


def test_an_unlisted_skip_fails_the_run_and_is_named(pytester, monkeypatch):
    monkeypatch.delenv(OPT_OUT, raising=False)
    result = run(pytester, None)
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)  # every test that ran passed ...
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # ... and still the run fails
    result.stdout.fnmatch_lines(
        [
            "*skip gate: skips not in the allow-list*",
            "SKIPPED test_module_skip.py: the milvus package is not installed",
            "SKIPPED test_servers.py::test_needs_redis: redis-server is not installed",
            "SKIPPED test_servers.py::test_needs_promtool: promtool not found",
            "3 unlisted skip(s) fail this run*",
        ]
    )
    assert "test_known_bug" not in result.stdout.str().split("skip gate")[1]  # an xfail is not a skip


def test_listed_skips_pass_and_each_entry_matches_only_its_tests(pytester, monkeypatch):
    monkeypatch.delenv(OPT_OUT, raising=False)
    assert run(pytester, ALL_LISTED).ret == pytest.ExitCode.OK
    narrower = ALL_LISTED.replace('"test_servers.py::test_needs_*"', '"test_servers.py::test_needs_redis"')
    result = run(pytester, narrower)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED test_servers.py::test_needs_promtool: promtool not found"])
    assert "SKIPPED test_servers.py::test_needs_redis" not in result.stdout.str()
    wrong_reason = ALL_LISTED.replace('reason = "milvus package"', 'reason = "redis"')
    result = run(pytester, wrong_reason)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED test_module_skip.py: the milvus package is not installed"])


def test_failures_keep_their_exit_code_and_deselection_is_not_a_skip(pytester, monkeypatch):
    monkeypatch.delenv(OPT_OUT, raising=False)
    selected = run(pytester, None, "test_servers.py", "-k", "test_runs")  # the rest deselected, not skipped
    assert selected.ret == pytest.ExitCode.OK, selected.stdout.str()
    pytester.makepyfile(test_broken="def test_broken():\n    assert False\n")
    assert run(pytester, ALL_LISTED).ret == pytest.ExitCode.TESTS_FAILED


def test_the_opt_out_turns_the_gate_off(pytester, monkeypatch):
    monkeypatch.setenv(OPT_OUT, "1")
    assert run(pytester, None).ret == pytest.ExitCode.OK


def test_an_entry_without_its_reason_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.delenv(OPT_OUT, raising=False)
    no_why = '[[skip]]\nnodeid = "test_servers.py::*"\nreason = "redis"\n'
    result = run(pytester, no_why)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "entry 1 must have exactly ['nodeid', 'reason', 'why']" in result.stderr.str()
    result = run(pytester, '[[skip]]\nnodeid = "x"\nreason = "y"\nwhy = " "\n')
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_the_repository_allow_list_is_valid_and_every_entry_says_why():
    for entry in load_allow_list(ALLOW_LIST):
        assert entry.nodeid.startswith("tests/") and len(entry.why) > 20, entry
