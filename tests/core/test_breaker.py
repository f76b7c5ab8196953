import pytest

from bridge.core.breaker import STATE_VALUES, CircuitBreaker


def test_opens_after_threshold_and_recovers_through_half_open():
    b = CircuitBreaker(failures=3, recovery=10.0)
    assert b.allow(0.0) and b.state(0.0) == "closed"
    b.failure(0.0)
    b.failure(0.0)
    assert b.state(0.0) == "closed"
    b.failure(1.0)
    assert b.state(1.0) == "open" and not b.allow(5.0)
    assert b.state(11.0) == "half_open"
    assert b.allow(11.0)  # the one trial
    assert not b.allow(11.0)
    b.success()
    assert b.state(11.0) == "closed" and b.allow(11.0)


def test_failed_trial_reopens():
    b = CircuitBreaker(failures=1, recovery=5.0)
    b.failure(0.0)
    assert b.allow(5.0)
    b.failure(5.0)
    assert b.state(6.0) == "open"
    assert b.state(10.0) == "half_open"


def test_success_resets_the_count():
    b = CircuitBreaker(failures=2, recovery=5.0)
    b.failure(0.0)
    b.success()
    b.failure(0.0)
    assert b.state(0.0) == "closed"
    assert STATE_VALUES == {"closed": 0, "half_open": 1, "open": 2}


def test_retry_in():
    b = CircuitBreaker(failures=1, recovery=10.0)
    assert b.retry_in(0.0) == 0.0
    b.failure(0.0)
    assert b.retry_in(4.0) == 6.0
    assert b.retry_in(10.0) == 0.0  # half-open, the trial is free
    assert b.allow(10.0)
    assert b.retry_in(10.0) == 1.0  # the trial is under way


# -- issue 11: trials that end without an outcome, and failures of one session only

from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bridge.core.breaker import KNOWN_GOOD, Permit  # noqa: E402


def opened(threshold: int = 1, recovery: float = 10.0, trial_timeout: float = 30.0):
    b = CircuitBreaker(failures=threshold, recovery=recovery, trial_timeout=trial_timeout)
    for _ in range(threshold):
        b.failure(0.0)
    assert b.state(0.0) == "open"
    return b


def test_a_released_trial_lets_the_next_request_be_the_trial():
    b = opened()
    trial = b.allow(10.0)
    assert trial == Permit(1) and trial.trial == 1
    assert b.allow(10.0) is None
    b.release(trial)
    again = b.allow(10.0)
    assert again == Permit(2)
    assert b.state(10.0) == "half_open"


def test_releasing_a_permit_that_is_not_the_trial_changes_nothing():
    b = opened()
    b.release(Permit())  # a request let through while closed
    trial = b.allow(10.0)
    assert trial is not None
    b.release(Permit(trial.trial + 1))  # not the trial under way
    assert b.allow(10.0) is None
    b.release(trial)
    b.release(trial)  # twice: still harmless
    assert b.allow(10.0) == Permit(trial.trial + 1)


def test_a_trial_out_past_its_timeout_is_given_up_on():
    b = opened(recovery=10.0, trial_timeout=5.0)
    assert b.allow(10.0) == Permit(1)
    assert b.allow(14.999) is None
    assert b.retry_in(14.0) == pytest.approx(1.0)  # recovery/10 = 1.0 < 1.0 left
    assert b.retry_in(14.5) == pytest.approx(0.5)  # no later than the trial's deadline
    assert b.allow(15.0) == Permit(2)
    assert b.retry_in(15.0) == 1.0


def test_closed_permits_are_not_trials():
    b = CircuitBreaker(failures=3, recovery=1.0)
    assert b.allow(0.0) == Permit(0)
    assert not Permit(0).trial


def test_the_trial_of_a_new_half_open_period_starts_free():
    b = opened(recovery=1.0)
    assert b.allow(1.0) == Permit(1)
    b.failure(1.5)  # the trial failed: open again
    assert b.state(1.5) == "open" and b.allow(2.0) is None
    assert b.allow(2.5) == Permit(2)  # recovered again: a fresh trial


def worked(b: CircuitBreaker, *scopes: str) -> None:
    for scope in scopes:
        b.success(scope)


def test_failures_of_one_scope_never_open_it():
    b = CircuitBreaker(failures=3, recovery=1.0)
    worked(b, "s1")
    for i in range(50):
        b.failure(float(i), "s1")
    assert b.state(50.0) == "closed"


def test_failures_of_sessions_that_never_worked_are_no_evidence():
    b = CircuitBreaker(failures=2, recovery=1.0)
    for i in range(20):  # made-up rooms, each answering 500
        b.failure(0.0, f"nobody{i}")
    assert b.state(0.0) == "closed"
    b.failure(0.0)  # they did not even start a run: one unscoped failure is not two
    assert b.state(0.0) == "closed"
    b.failure(0.0)
    assert b.state(0.0) == "open"


def test_failures_of_as_many_sessions_that_worked_as_the_threshold_open_it():
    b = CircuitBreaker(failures=3, recovery=1.0)
    worked(b, "s1", "s2", "s3")
    b.failure(0.0, "s1")
    b.failure(0.0, "s2")
    b.failure(0.0, "s2")
    assert b.state(0.0) == "closed"  # three in a row, but from two sessions
    b.failure(0.0, "s3")
    assert b.state(0.0) == "open"


def test_a_scoped_run_opens_at_once_with_an_unscoped_failure():
    b = CircuitBreaker(failures=3, recovery=1.0)
    worked(b, "s1")
    b.failure(0.0, "s1")
    b.failure(0.0, "s1")
    b.failure(0.0)
    assert b.state(0.0) == "open"


def test_an_unscoped_failure_alone_needs_the_threshold():
    b = CircuitBreaker(failures=3, recovery=1.0)
    worked(b, "s1")
    b.failure(0.0)
    b.failure(0.0, "s1")
    assert b.state(0.0) == "closed"
    b.failure(0.0, "s1")
    assert b.state(0.0) == "open"


def test_a_success_forgets_the_run():
    b = CircuitBreaker(failures=2, recovery=1.0)
    worked(b, "s1", "s2", "s3")
    b.failure(0.0, "s1")
    b.failure(0.0)
    assert b.state(0.0) == "open"
    b.success()
    b.failure(0.0, "s2")
    assert b.state(0.0) == "closed"
    b.failure(0.0, "s2")  # same scope, no unscoped failure since the success
    assert b.state(0.0) == "closed"
    b.success()
    b.failure(0.0, "s1")
    b.failure(0.0, "s3")
    assert b.state(0.0) == "open"


def test_known_good_sessions_are_bounded_least_recent_first():
    b = CircuitBreaker(failures=2, recovery=1.0)
    worked(b, "old", *[f"s{i}" for i in range(KNOWN_GOOD - 1)])
    worked(b, "old")  # refreshed: now the most recent
    worked(b, "new")  # one over: the least recently successful goes
    b.failure(0.0, "s0")
    b.failure(0.0, "old")
    assert b.state(0.0) == "closed", "s0 was forgotten"
    b.failure(0.0, "new")
    assert b.state(0.0) == "open"


def test_threshold_one_opens_on_any_evidence():
    b = CircuitBreaker(failures=1, recovery=1.0)
    b.failure(0.0, "unknown")
    assert b.state(0.0) == "closed"
    worked(b, "s1")
    b.failure(0.0, "s1")
    assert b.state(0.0) == "open"


def test_a_failed_trial_reopens_only_with_evidence():
    b = opened(recovery=1.0)
    trial = b.allow(1.0)
    assert trial == Permit(1)
    b.failure(1.0, "never-worked")  # says nothing of the app: the slot is free again
    assert b.state(1.0) == "half_open" and b.allow(1.0) == Permit(2)
    b2 = opened(recovery=1.0)
    worked(b2, "s9")
    b2.failure(0.0)  # open again
    assert b2.allow(1.0)
    b2.failure(1.0, "s9")
    assert b2.state(1.0) == "open"


class BreakerMachine(RuleBasedStateMachine):
    """Whatever callers do — succeed, fail (scoped or not), vanish without an
    outcome (cancelled), or never come back — the breaker never refuses every
    request for good, and never lets two trials out at once."""

    @initialize(threshold=st.integers(1, 4), recovery=st.sampled_from([0.5, 1.0, 3.0]),
                trial_timeout=st.sampled_from([0.5, 2.0, 10.0]))  # fmt: skip
    def make(self, threshold: int, recovery: float, trial_timeout: float) -> None:
        self.b = CircuitBreaker(failures=threshold, recovery=recovery, trial_timeout=trial_timeout)
        self.threshold = threshold
        self.trial_timeout = trial_timeout
        self.now = 0.0
        #: permits handed out and not resolved: (permit, when)
        self.out: list[tuple[Permit, float]] = []
        #: permits whose callers vanished (no outcome, no release)
        self.ghosts: list[tuple[Permit, float]] = []
        #: trials up to this number belong to a half-open period that is over
        self.stale_upto = 0
        self.issued = 0
        #: the failures that are evidence since the last success (None: unscoped)
        self.run: list[str | None] = []
        #: scopes that had a success
        self.good: set[str] = set()

    @rule(dt=st.sampled_from([0.0, 0.1, 0.6, 1.1, 3.5, 11.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    def ask(self) -> None:
        before = self.b.state(self.now)
        permit = self.b.allow(self.now)
        if before == "closed":
            assert permit == Permit(0)
        if before == "open":
            assert permit is None
        if permit is not None:
            if permit.trial:
                assert not self._live_trials(), "two trials out at once"
                assert permit.trial > self.issued, "trial numbers only grow"
                self.issued = permit.trial
            self.out.append((permit, self.now))

    @precondition(lambda self: self.out)
    @rule(data=st.data(), how=st.sampled_from(["success", "failure", "scoped", "release",
                                                "vanish"]))  # fmt: skip
    def resolve(self, data: st.DataObject, how: str) -> None:
        i = data.draw(st.integers(0, len(self.out) - 1))
        permit, issued_at = self.out.pop(i)
        before = self.b.state(self.now)
        scope = data.draw(st.sampled_from([None, "s1", "s2", "s3", "s4"]))
        if how == "success":
            self.b.success(scope)
            self.run = []
            if scope is not None:
                self.good.add(scope)
        elif how == "failure":
            self.b.failure(self.now)
            self.run.append(None)
        elif how == "scoped":
            scope = scope or "s1"
            self.b.failure(self.now, scope)
            if scope in self.good:
                self.run.append(scope)
            elif before != "half_open":
                assert self.b.state(self.now) == before, (
                    "a session that never worked is no evidence"
                )
        elif how == "release":
            self.b.release(permit)
        else:  # "vanish": the caller never comes back; only the trial's timeout frees it
            self.ghosts.append((permit, issued_at))
        if before == "closed" and self.b.state(self.now) == "open":
            evidence = None in self.run or len(set(self.run)) >= self.threshold
            assert len(self.run) >= self.threshold and evidence, (self.run, self.threshold)
        if how == "release" and permit.trial == self.issued:  # the trial under way: freed
            self.stale_upto = self.issued
        if how == "scoped" and before == "half_open" and scope not in self.good:
            self.stale_upto = self.issued  # no evidence: the trial's slot is free again
        if self.b.state(self.now) != "half_open":  # opened or closed: that period is over
            self.stale_upto = self.issued

    def _live_trials(self) -> list[Permit]:
        """Trials that may still answer, in the current half-open period."""
        return [
            p for p, at in self.out + self.ghosts
            if p.trial > self.stale_upto and self.now < at + self.trial_timeout
        ]  # fmt: skip

    @invariant()
    def never_stuck(self) -> None:
        """Half-open with no trial that may still answer: a request gets through."""
        if not hasattr(self, "b"):
            return
        if self.b.state(self.now) == "half_open" and not self._live_trials():
            assert self.b.retry_in(self.now) == 0.0


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = __import__("hypothesis").settings(
    max_examples=200, stateful_step_count=40, deadline=None
)


# -- exact values at the edges: defaults, retry_in when closed, the known-good bound,
# and thresholds changed in place (UpstreamClient.reconfigure keeps the breaker's state)


def test_the_default_trial_timeout_is_30_seconds():
    b = CircuitBreaker(failures=1, recovery=10.0)
    assert b.trial_timeout == 30.0
    b.failure(0.0)
    assert b.allow(10.0) == Permit(1)
    assert b.allow(39.999) is None
    assert b.retry_in(39.5) == pytest.approx(0.5)  # the trial's deadline is nearer than 1.0
    assert b.allow(40.0) == Permit(2)


def test_a_closed_breaker_never_asks_to_wait():
    b = CircuitBreaker(failures=2, recovery=10.0, trial_timeout=30.0)
    assert b.retry_in(5.0) == 0.0 and b.retry_in(1e6) == 0.0
    b.failure(3.0)  # one of two: still closed
    assert b.state(7.0) == "closed" and b.retry_in(7.0) == 0.0
    b.failure(3.0)
    assert b.allow(13.0) == Permit(1)  # the trial, due back by 43
    b.success()
    assert b.state(14.0) == "closed" and b.retry_in(14.0) == 0.0
    assert b.allow(14.0) == Permit(0)


def test_exactly_known_good_sessions_are_remembered_then_the_oldest_goes():
    b = CircuitBreaker(failures=2, recovery=1.0)
    worked(b, *[f"s{i}" for i in range(KNOWN_GOOD)])  # full, nobody forgotten yet
    b.failure(0.0, "s0")
    b.failure(0.0, f"s{KNOWN_GOOD - 1}")
    assert b.state(0.0) == "open", "the oldest of exactly KNOWN_GOOD is still known"
    b.success()
    worked(b, "extra")  # one over: s0, the least recently successful, goes (only it)
    b.failure(0.0, "s0")
    b.failure(0.0, "s1")
    assert b.state(0.0) == "closed", "s0 is no evidence any more, s1 is one"
    b.failure(0.0, "extra")
    assert b.state(0.0) == "open"


def test_a_failed_trial_reopens_after_the_threshold_was_raised():
    b = opened(threshold=1, recovery=10.0)
    b.threshold = 3  # a reload, while open: the run so far is one failure
    assert b.allow(10.0) == Permit(1)
    b.failure(10.0)  # the trial failed: half_open → open, whatever the run's length
    assert b.state(10.0) == "open" and b.allow(10.0) is None
    assert b.retry_in(12.0) == 8.0
    assert b.allow(20.0) == Permit(2)


def test_a_trial_failing_for_a_session_that_worked_reopens_after_a_raised_threshold():
    b = CircuitBreaker(failures=1, recovery=10.0)
    worked(b, "s1")
    b.failure(0.0, "s1")
    assert b.state(0.0) == "open"
    b.threshold = 4
    assert b.allow(10.0) == Permit(1)
    b.failure(10.0, "s1")  # evidence (s1 worked), the run two long: still reopens
    assert b.state(10.0) == "open" and b.retry_in(10.0) == 10.0


# the run's sessions used to be counted only up to the threshold of the time: after a
# reload raised it, a run of s1, s2, s3 was not evidence for failures=3
def test_a_raised_threshold_counts_every_session_of_the_run():
    b = CircuitBreaker(failures=2, recovery=10.0)
    worked(b, "s1", "s2", "s3")
    b.failure(0.0, "s1")
    b.failure(0.0, "s2")
    assert b.state(0.0) == "open"
    b.failure(1.0, "s3")  # a request let through before it opened: evidence, recovery anew
    assert b.retry_in(1.0) == 10.0
    b.threshold = 3  # a reload
    b.failure(2.0, "s1")  # the run: s1, s2, s3, s1: three sessions that worked, four failures
    assert b.retry_in(2.0) == 10.0  # evidence for failures=3: the recovery starts again
