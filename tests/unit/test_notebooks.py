"""The notebooks as files: each is paired with its jupytext ``py:percent`` twin and in sync
with it, has one ``parameters`` cell (papermill's) that reads its data directory from the
environment, and prints its headline figures as plain text in cells nbval compares.

Running them is ``make test``'s nbval step (against the demo dataset) and
``tests/integration/test_binder.py`` (against a live ingestor).
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
ENVIRONMENT_PARAMETERS = {
    "data_dir": 'os.environ.get("WORKBENCH_DATA_DIR", "../data")',
    "http_url": 'os.environ.get("WORKBENCH_HTTP_URL") or None',
    "nats_url": 'os.environ.get("WORKBENCH_NATS_URL") or None',
}

each_notebook = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])


def cells(notebook: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    return [
        (cell.cell_type, cell.source, list(cell.metadata.get("tags", [])))
        for cell in notebook.cells
    ]


def checked_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [
        cell
        for cell in notebook.cells
        if cell.cell_type == "code" and CHECK_MARKER in cell.source.splitlines()
    ]


def test_the_four_reports_are_there() -> None:
    assert {path.stem for path in NOTEBOOKS} == {
        "overview",
        "time_travel",
        "dedup_audit",
        "year_in_review",
    }


@each_notebook
def test_the_notebook_and_its_percent_script_hold_the_same_cells(path: Path) -> None:
    notebook = jupytext.read(path)
    twin_path = path.with_suffix(".py")
    assert twin_path.exists(), f"{twin_path.name} is missing: jupytext --sync {path.name}"
    twin = jupytext.read(twin_path)
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert twin.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert cells(twin) == cells(notebook), f"out of sync: jupytext --sync {path.name}"
    assert notebook.metadata["kernelspec"]["name"] == twin.metadata["kernelspec"]["name"]


@each_notebook
def test_one_parameters_cell_reads_the_data_directory_from_the_environment(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    parameters = papermill.inspect_notebook(str(path))
    for name, default in ENVIRONMENT_PARAMETERS.items():
        assert parameters[name]["default"] == default, name


@each_notebook
def test_it_opens_with_a_markdown_cell_saying_what_it_answers(path: Path) -> None:
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith("# ") and len(first.source.splitlines()) > 2


@each_notebook
def test_headline_figures_are_stored_as_plain_text_that_nbval_compares(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    checked = checked_cells(notebook)
    assert checked, f"{path.name} has no cell marked {CHECK_MARKER}"
    for cell in checked:
        assert cell.outputs, f"a checked cell of {path.name} has no stored output: make notebooks"
        for output in cell.outputs:
            assert output.output_type == "stream" and output.name == "stdout", output
            # no temporary or absolute paths: they would differ from run to run
            for fragment in ("/tmp/", str(ROOT), "/home/"):
                assert fragment not in output.text, (fragment, output.text)


@each_notebook
def test_stored_outputs_have_no_errors_and_charts_are_inline_svg(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs, f"{path.name} was stored without outputs: make notebooks"
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    for output in outputs:
        data = output.get("data", {})
        assert "application/javascript" not in data
        assert "<script" not in data.get("text/html", "")
    assert any("image/svg+xml" in output.get("data", {}) for output in outputs)
