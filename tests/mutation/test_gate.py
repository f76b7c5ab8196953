"""The mutation gate itself: it must be able to fail."""

from tests.mutation.gate import gate, module_of, parse_results, parse_survivors

RESULTS = """\
    bridge.core.timers.xǁTimerQueueǁschedule__mutmut_1: killed
    bridge.core.timers.xǁTimerQueueǁschedule__mutmut_2: survived
    bridge.protocol.tokens.x__b64__mutmut_7: no tests
    bridge.protocol.tokens.x__b64__mutmut_8: timeout
    bridge.protocol.tokens.x__b64__mutmut_9: skipped
"""
NAMES = [line.strip().split(": ")[0] for line in RESULTS.splitlines()]


def results(**override):
    out = parse_results(RESULTS)
    out.update(override)
    return out


def test_parse_results_reads_every_line_and_nothing_else():
    text = "Removed 0 obsolete test names\n" + RESULTS + "\n"
    assert parse_results(text) == {
        NAMES[0]: "killed",
        NAMES[1]: "survived",
        NAMES[2]: "no tests",
        NAMES[3]: "timeout",
        NAMES[4]: "skipped",
    }


def test_parse_survivors():
    text = f"# a comment\n\n{NAMES[1]} — never observable\nbad line\n{NAMES[1]} — twice\nx — \n"
    listed, problems = parse_survivors(text)
    assert listed == {NAMES[1]: "never observable"}
    assert [p.split(":")[0] for p in problems] == ["line 4", "line 5", "line 6"]


def test_module_of():
    assert module_of(NAMES[0]) == "bridge.core.timers"
    assert module_of(NAMES[2]) == "bridge.protocol.tokens"


def test_passes_when_every_survivor_is_listed_and_the_rate_is_met():
    listed = {NAMES[1]: "r", NAMES[2]: "r"}
    passed, report = gate(results(), listed, min_rate=50.0)
    assert passed, report
    assert "killed 2 (50.0 % of 4 tested)" in report  # skipped is not tested; timeout kills
    assert "surviving: 2, of which 2 listed in survivors.txt" in report
    assert report.endswith("mutation gate: passed")


def test_fails_below_the_rate():
    passed, report = gate(results(), {NAMES[1]: "r", NAMES[2]: "r"}, min_rate=97.0)
    assert not passed and "FAIL: the kill rate 50.0 % is below 97 %" in report


def test_fails_on_an_unlisted_survivor_or_no_tests():
    passed, report = gate(results(), {NAMES[1]: "r"}, min_rate=0.0)
    assert not passed and "FAIL: 1 surviving mutants" in report and NAMES[2] in report


def test_fails_on_a_mutant_without_a_verdict():
    passed, report = gate(results(**{NAMES[0]: "suspicious"}), {NAMES[1]: "r", NAMES[2]: "r"}, 0.0)
    assert not passed and "FAIL: 1 mutants have no verdict" in report


def test_fails_on_no_results_at_all():
    assert gate({}, {}, 0.0) == (
        False,
        "FAIL: mutmut reported no mutants: did `mutmut run` run?",
    )


def test_fails_on_a_malformed_survivors_file():
    listed = {NAMES[1]: "r", NAMES[2]: "r"}
    passed, report = gate(results(), listed, 0.0, ["line 3: bad"])
    assert not passed and "line 3: bad" in report


def test_stale_entries_warn_but_pass():
    listed = {NAMES[1]: "r", NAMES[2]: "r", NAMES[0]: "r", "bridge.core.gone__mutmut_1": "r"}
    passed, report = gate(results(), listed, 0.0)
    assert passed, report
    assert "warning: 1 listed survivors no longer exist" in report
    assert "warning: 1 listed survivors are now killed" in report
    assert "bridge.core.gone__mutmut_1" in report
