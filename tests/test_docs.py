"""The docs agree with themselves: every figure of README's results tables is one docs/RESULTS.md reports, and
each figure of README's Gym table is the one RESULTS.md gives in the same task's row of the same quantity's column."""

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


def markdown_tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every table of `markdown` as a list of rows, each {header cell: cell}."""
    tables, block = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            header, rows = block[0], [row for row in block[1:] if not row[0].startswith("---")]
            tables.append([dict(zip(header, row)) for row in rows])
            block = []
    return tables


def table_with(tables: list, *columns: str) -> list[dict[str, str]]:
    """The one table that has all of `columns`."""
    matches = [table for table in tables if table and all(column in table[0] for column in columns)]
    assert len(matches) == 1, f"{len(matches)} tables of RESULTS.md have the columns {columns}"
    return matches[0]


def row_where(table: list, **cells) -> dict[str, str]:
    matches = [row for row in table if all(row[column] == value for column, value in cells.items())]
    assert len(matches) == 1, f"{len(matches)} rows of RESULTS.md have {cells}"
    return matches[0]


def figures(cell: str) -> list[str]:
    return NUMBER.findall(cell.replace("**", ""))


def readme_gym_figures_from_results(results: str, task: str) -> dict[str, list[str]]:
    """What README's Gym results row of `task` (e.g. "Hopper-v5") must say in each column, read from the rows and
    columns of RESULTS.md that report it: [mean, std, D4RL score, initial mean] for the fine-tuning columns."""
    tables, short = markdown_tables(results), task.split("-")[0]
    demos = row_where(table_with(tables, "dataset mean return (std)"), task=task)
    pretrained = table_with(tables, "task", "policy", "mean return (std), 50 episodes")
    headline = table_with(markdown_tables(section(results, "Headline")), "final D4RL score")

    def bc(policy):
        return figures(row_where(pretrained, task=task, policy=policy)["mean return (std), 50 episodes"])[:1]

    def finetuned(algorithm):
        row = row_where(headline, **{"task, algorithm": f"{short}, {algorithm}"})
        return (figures(row["final eval return"])[:2] + figures(row["final D4RL score"])[:1]
                + figures(row["initial eval return"])[:1])

    return {"dataset mean return": figures(demos["dataset mean return (std)"])[:1], "Gaussian BC": bc("Gaussian"),
            "diffusion BC": bc("diffusion"), "DPPO": finetuned("DPPO"), "Gaussian PPO": finetuned("Gaussian PPO")}


def readme_gym_rows(readme: str) -> list[dict[str, str]]:
    return [row for table in markdown_tables(section(readme, "Results")) for row in table
            if row.get("task", "").endswith("-v5")]


def readme_gym_mismatches(readme: str, results: str) -> list[str]:
    """'task / column: README says X, RESULTS.md says Y' for every cell of README's Gym table that differs."""
    mismatches = []
    for row in readme_gym_rows(readme):
        expected = readme_gym_figures_from_results(results, row["task"])
        for column, cell in row.items():
            prefix = next((name for name in expected if column.startswith(name)), None)
            if prefix is not None and figures(cell) != expected[prefix]:
                mismatches.append(f"{row['task']} / {column}: README says {figures(cell)}, "
                                  f"RESULTS.md says {expected[prefix]}")
    return mismatches


def test_each_figure_of_the_readme_gym_table_is_its_own_row_and_column_in_results_md():
    readme = read("README.md")
    rows = readme_gym_rows(readme)
    assert [row["task"] for row in rows] == ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"]
    assert len(rows[0]) == 6, "task, dataset, two BC columns and two fine-tuning columns"
    assert not readme_gym_mismatches(readme, read("docs/RESULTS.md"))


def test_the_row_check_finds_swapped_columns():
    """Swapping the Hopper row's DPPO and Gaussian PPO cells (or its two BC cells) keeps every figure somewhere in
    RESULTS.md, so only the row-and-column check notices."""
    readme = read("README.md")
    hopper = next(line for line in readme.splitlines() if line.startswith("| Hopper-v5 |"))
    cells = hopper.strip().strip("|").split("|")
    for a, b in ((2, 3), (4, 5)):
        swapped = list(cells)
        swapped[a], swapped[b] = cells[b], cells[a]
        mismatches = readme_gym_mismatches(readme.replace(hopper, "|" + "|".join(swapped) + "|"),
                                           read("docs/RESULTS.md"))
        assert len(mismatches) == 2 and all(m.startswith("Hopper-v5 / ") for m in mismatches), mismatches
