"""The figures of README.md and docs/*.md match the committed result files they cite
(``benchmarks/check_docs.py``), and the checker catches what it should."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_docs", ROOT / "benchmarks" / "check_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_docs"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


check_docs = load_checker()


def test_every_cited_figure_matches_its_source_and_every_results_table_cites_one() -> None:
    problems = check_docs.check(ROOT)
    assert problems == [], "\n".join(problems)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.csv").write_text("name,score,p\nalpha,0.0765,0.0112\nbeta,1.5,0.5\n")
    (tmp_path / "docs").mkdir()
    return tmp_path


def problems_of(repo: Path, text: str) -> list[str]:
    doc = repo / "docs" / "page.md"
    doc.write_text(text)
    return check_docs.check(repo, [doc])


def test_a_table_matches_its_csv_as_rounded(repo: Path) -> None:
    table = "| name | score |\n|---|---|\n| alpha | 0.077 |\n| beta | 1.50 |\n"
    assert problems_of(repo, "<!-- source: results/r.csv -->\n" + table) == []


def test_a_wrong_cell_an_unknown_row_and_a_missing_file_are_reported(repo: Path) -> None:
    table = "| name | score |\n|---|---|\n| alpha | 0.078 |\n| gamma | 1 |\n"
    problems = problems_of(repo, "<!-- source: results/r.csv -->\n" + table)
    assert len(problems) == 2
    assert "row 'alpha', column 'score'" in problems[0] and "0.078" in problems[0]
    assert "row 'gamma' is not in the source" in problems[1]
    problems = problems_of(repo, "<!-- source: results/absent.csv -->\n" + table)
    assert len(problems) == 1 and "does not exist" in problems[0]


def test_a_results_table_without_a_source_fails_and_a_config_table_does_not(repo: Path) -> None:
    results = "| method | accuracy |\n|---|---|\n| a | 0.9 |\n"
    assert "no source comment" in problems_of(repo, results)[0]
    assert "no source comment" in problems_of(repo, "| a | b |\n|---|---|\n| x | 3.1 ± 0.2 |\n")[0]
    assert problems_of(repo, "| key | meaning |\n|---|---|\n| `lr` | 0.02 |\n") == []


def test_the_figures_of_a_cited_paragraph_are_looked_up(repo: Path) -> None:
    cited = (
        "<!-- source: results/r.csv -->\nAlpha scored 0.077 (p = 0.011) over 5 seeds, `lr=0.3`.\n"
    )
    assert problems_of(repo, cited) == []
    problems = problems_of(repo, cited.replace("0.011", "0.015"))
    assert len(problems) == 1 and "p = 0.015" in problems[0]
    assert problems_of(repo, "<!-- source: results/r.csv -->\nBeta gains 150% (+1.5).\n") == []


def test_numbers_keep_their_rounding() -> None:
    [value] = check_docs.numbers("0.077")
    assert value.matches(0.0765) and value.matches(0.0774) and not value.matches(0.0776)
    assert [n.value for n in check_docs.numbers("[-14.80, 7.40] 1,000 R^2 t0 2.13.0 +-0.5")] == [
        -14.8,
        7.4,
        1000.0,
        0.5,
    ]


def test_a_source_comment_must_precede_a_table_or_a_paragraph(repo: Path) -> None:
    for block in ("## Heading 0.5\n", "```\n0.5\n```\n"):
        problems = problems_of(repo, "<!-- source: results/r.csv -->\n" + block)
        assert len(problems) == 1 and "must precede a table or a paragraph" in problems[0]


def test_a_source_can_be_narrowed_to_rows_columns_and_sections(repo: Path) -> None:
    text = "Beta's p is 0.50.\n"
    assert problems_of(repo, "<!-- source: results/r.csv -->\n" + text) == []
    narrow = "<!-- source: results/r.csv?name=alpha&columns=p -->\n"
    assert "'Beta's p is 0.50.': not in the source" in problems_of(repo, narrow + text)[0]
    assert "no row with" in problems_of(repo, narrow.replace("alpha", "gamma") + text)[0]
    (repo / "results" / "r.md").write_text(
        "# A\n\n## x\n\nvalue 0.25\n\n## y\n\nvalue 0.75\n\n# B\n\n## x\n\nvalue 0.5\n"
    )
    assert problems_of(repo, "<!-- source: results/r.md#B#x -->\nIt is 0.50.\n") == []
    problems = problems_of(repo, "<!-- source: results/r.md#A#x -->\nIt is 0.50.\n")
    assert len(problems) == 1 and "not in the source" in problems[0]


def test_a_markdown_table_may_show_some_of_its_source_tables_columns(repo: Path) -> None:
    (repo / "results" / "r.md").write_text(
        "| name | score | wall s |\n|---|---|---|\n| alpha | 0.25 | 3.1 |\n| beta | 0.5 | 9.9 |\n"
    )
    narrow = "| name | score |\n|---|---|\n| alpha | 0.25 |\n| beta | 0.50 |\n"
    assert problems_of(repo, "<!-- source: results/r.md -->\n" + narrow) == []
    wrong = narrow.replace("0.50", "0.60")
    problems = problems_of(repo, "<!-- source: results/r.md -->\n" + wrong)
    assert len(problems) == 1 and "row 'beta', column 'score'" in problems[0]
    unknown = "| name | accuracy |\n|---|---|\n| alpha | 0.25 |\n"
    problems = problems_of(repo, "<!-- source: results/r.md -->\n" + unknown)
    assert len(problems) == 1 and "no table with the columns ['name', 'accuracy']" in problems[0]


def test_the_faults_view_shows_a_completed_runs_margin_and_any_other_runs_status(
    repo: Path,
) -> None:
    header = "setting,defence,fault,fraction,status,mean_over_chance\n"
    rows = [
        "digits,none,none,0.0,completed,0.4951",
        "digits,none,scale,0.1,diverged,-9e13",
        "digits,none,scale,0.3,completed,0.2",
        "other,none,none,0.0,completed,0.1",
    ]
    (repo / "results" / "faults.csv").write_text(header + "\n".join(rows) + "\n")
    source = "<!-- source: results/faults.csv; view: faults(digits) -->\n"
    table = "| defence | clean | `scale` |\n|---|---|---|\n| weighted mean | +0.50 | {} |\n"
    assert problems_of(repo, source + table.format("diverged / +0.20")) == []
    problems = problems_of(repo, source + table.format("completed / +0.20"))
    assert len(problems) == 1 and "column '`scale`'" in problems[0]
