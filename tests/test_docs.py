"""The docs agree with themselves: every figure of README's results tables is one docs/RESULTS.md reports."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def read(path: str) -> str:
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def section(markdown: str, heading: str) -> str:
    """The text of the `## heading...` section, up to the next heading of level 2."""
    start = markdown.index(f"\n## {heading}")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end != -1 else len(markdown)]


def table_figures(text: str) -> list[str]:
    """Every number with a decimal point or of 4+ digits in the table rows of `text` (header and rule excluded):
    returns, scores and step counts, not the seed or episode counts that any page repeats."""
    rows = [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")][1:]
    numbers = [match for row in rows for match in NUMBER.findall(row)]
    return [n for n in numbers if "." in n or len(n.replace(",", "")) >= 4]


def test_every_figure_of_the_readme_results_table_is_in_results_md():
    figures = table_figures(section(read("README.md"), "Results"))
    assert len(figures) >= 10, "the parser found README's results table"
    results = read("docs/RESULTS.md")
    missing = [figure for figure in figures if figure not in results]
    assert not missing, f"README's results table gives figures docs/RESULTS.md does not: {missing}"


def test_the_check_finds_a_figure_that_is_not_in_results_md():
    readme = read("README.md").replace("\n## Results", "\n## Results\n\n| a | b |\n|---|---|\n| x | 98,765.4 |\n", 1)
    figures = table_figures(section(readme, "Results"))
    assert "98,765.4" in figures and "98,765.4" not in read("docs/RESULTS.md")
