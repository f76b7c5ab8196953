"""A pytest plugin for `make mutation` (``-p tests.mutation.hypothesis_profile``).

Every mutant runs the same Hypothesis examples: no example database (a failure
found under one mutant must not be replayed under another), derandomised, no
deadline (the mutated code runs behind mutmut's trampolines, slower). A mutant
is then killed or not by the tests alone, the same on every run. No shrinking
either: a mutant only has to fail, and shrinking a failing state machine can
take a minute.
"""

from hypothesis import Phase, settings

settings.register_profile(
    "mutation",
    database=None,
    derandomize=True,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
)
settings.load_profile("mutation")
