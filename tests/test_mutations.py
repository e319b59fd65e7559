"""The table of guarded fixes stays true (script/check_mutations.py): every mutation still applies to the code it
names, its tests exist, docs/TESTING.md shows the table, and each mutation makes its tests fail."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "script"))

import check_mutations  # noqa: E402


@pytest.mark.parametrize("number", range(1, len(check_mutations.MUTATIONS) + 1))
def test_each_mutation_applies_once_and_names_tests_that_exist(number):
    mutation = check_mutations.MUTATIONS[number - 1]
    with open(os.path.join(REPO, mutation.path)) as f:
        assert check_mutations.mutated_text(mutation, f.read()) != ""
    for test in mutation.tests:
        path, name = test.split("::")
        function = name.split("[")[0]  # a parametrized test's id names one of its cases
        with open(os.path.join(REPO, path)) as f:
            assert re.search(rf"^def {re.escape(function)}\(", f.read(), flags=re.MULTILINE), test


def test_a_mutation_whose_text_is_gone_is_refused():
    mutation = check_mutations.MUTATIONS[0]
    with pytest.raises(ValueError, match="occurs 0 times"):
        check_mutations.mutated_text(mutation, "no such text")


def test_docs_testing_md_holds_the_table():
    with open(os.path.join(REPO, "docs", "TESTING.md")) as f:
        assert check_mutations.table() in f.read()


def test_every_mutation_makes_its_tests_fail():
    result = subprocess.run([sys.executable, os.path.join(REPO, "script", "check_mutations.py")], cwd=REPO,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"all {len(check_mutations.MUTATIONS)} mutations caught" in result.stdout
