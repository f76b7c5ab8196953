"""The gate of `make mutation`: read mutmut's results, fail below the kill rate
or on a survivor nobody has explained.

Run after ``mutmut run``, from the repository root::

    python tests/mutation/gate.py [--min-rate 97] [--survivors tests/mutation/survivors.txt]

It asks ``mutmut results --all true`` for every mutant and its status, then:

- the kill rate is killed / (total - skipped), timeouts counting as killed (as
  mutmut's own badge counts them); below ``--min-rate`` percent it fails;
- every mutant that survived (or that no test ran: ``no tests``) must be listed
  in the survivors file, one line each, ``<name> — <why no test can kill it>``;
  an unlisted one fails the gate, with the ``mutmut show`` command to see it;
- a mutant mutmut could not decide (suspicious, segfault, not checked,
  interrupted) fails the gate: rerun, a verdict is needed for each;
- a listed name that no longer exists (the code moved, mutmut renumbered), or
  that is now killed, is stale: a warning, not a failure; delete the line.

No results at all is a failure too (mutmut did not run), so the gate cannot
pass by reading nothing. Not a test module: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEPARATOR = " — "

KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests"}
SKIPPED = {"skipped"}
# anything else ("suspicious", "segfault", "not checked", ...) is undecided


def parse_results(text: str) -> dict[str, str]:
    """``    name: status`` lines of ``mutmut results`` → {name: status}."""
    results: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, status = line.strip().partition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        results[name] = status.strip()
    return results


def parse_survivors(text: str) -> tuple[dict[str, str], list[str]]:
    """The survivors file → ({name: reason}, [problems with its lines])."""
    listed: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, reason = line.partition(SEPARATOR)
        name, reason = name.strip(), reason.strip()
        if not sep or not name or not reason:
            problems.append(f"line {number}: not '<name>{SEPARATOR}<reason>': {line}")
        elif name in listed:
            problems.append(f"line {number}: {name} is listed twice")
        else:
            listed[name] = reason
    return listed, problems


def module_of(name: str) -> str:
    """``bridge.core.presence.xǁPresenceǁleave__mutmut_9`` → ``bridge.core.presence``."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith(("x_", "xǁ")):
            return ".".join(parts[:i])
    return name.rsplit(".", 1)[0]


def gate(
    results: dict[str, str],
    listed: dict[str, str],
    min_rate: float,
    problems: list[str] | None = None,
) -> tuple[bool, str]:
    """(passed, report) for mutmut's results against the listed survivors."""
    out: list[str] = []
    if not results:
        return False, "FAIL: mutmut reported no mutants: did `mutmut run` run?"
    counts = Counter(results.values())
    killed = sum(n for s, n in counts.items() if s in KILLED)
    skipped = sum(n for s, n in counts.items() if s in SKIPPED)
    tested = len(results) - skipped
    rate = 100.0 * killed / tested if tested else 0.0
    survivors = sorted(n for n, s in results.items() if s in SURVIVED)
    undecided = sorted(n for n, s in results.items() if s not in KILLED | SURVIVED | SKIPPED)
    out.append(
        f"mutants: {len(results)}, killed {killed} ({rate:.1f} % of {tested} tested), "
        + ", ".join(f"{status} {n}" for status, n in sorted(counts.items()) if status != "killed")
    )
    by_module = Counter(module_of(n) for n in survivors + undecided)
    if by_module:
        out.append("not killed, per module:")
        out += [f"  {module:32} {n}" for module, n in sorted(by_module.items())]

    explained = [n for n in survivors if n in listed]
    out.append(f"surviving: {len(survivors)}, of which {len(explained)} listed in survivors.txt")

    passed = True
    if rate < min_rate:
        passed = False
        out.append(f"FAIL: the kill rate {rate:.1f} % is below {min_rate:g} %")
    unlisted = [n for n in survivors if n not in listed]
    if unlisted:
        passed = False
        out.append(
            f"FAIL: {len(unlisted)} surviving mutants are not in survivors.txt "
            "(kill them with a test, or list them with the reason no test can):"
        )
        out += [f"  {n}: {results[n]}  (mutmut show {n})" for n in unlisted]
    if undecided:
        passed = False
        out.append(f"FAIL: {len(undecided)} mutants have no verdict; run again:")
        out += [f"  {n}: {results[n]}" for n in undecided]
    gone = sorted(n for n in listed if n not in results)
    now_killed = sorted(n for n in listed if results.get(n) in KILLED)
    if gone:
        out.append(f"warning: {len(gone)} listed survivors no longer exist (code moved?):")
        out += [f"  {n}" for n in gone]
    if now_killed:
        out.append(f"warning: {len(now_killed)} listed survivors are now killed:")
        out += [f"  {n}" for n in now_killed]
    if gone or now_killed:
        out.append("  (delete their lines from survivors.txt)")
    if problems:
        passed = False
        out.append(f"FAIL: {len(problems)} lines of survivors.txt are malformed:")
        out += [f"  {p}" for p in problems]
    out.append("mutation gate: " + ("passed" if passed else "FAILED"))
    return passed, "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-rate", type=float, default=97.0, help="percent (default 97)")
    parser.add_argument("--survivors", type=Path, default=HERE / "survivors.txt")
    args = parser.parse_args(argv)

    run = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    if run.returncode != 0:
        print(run.stdout + run.stderr, file=sys.stderr)
        print(f"FAIL: `mutmut results` exited with {run.returncode}", file=sys.stderr)
        return 1
    listed, problems = parse_survivors(args.survivors.read_text(encoding="utf-8"))
    passed, report = gate(parse_results(run.stdout), listed, args.min_rate, problems)
    print(report)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
