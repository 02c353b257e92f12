"""``workbench report``: notebooks executed by a real kernel into an ``.ipynb`` and an HTML page.

The notebooks are written here with nbformat (and one as a jupytext ``py:percent`` file); a
chart is a real Altair spec rendered to SVG by vl-convert and displayed as ``image/svg+xml``.
The command runs as a separate process where its exit status, stderr and files are the
behaviour (a cron job sees nothing else), in-process where a test needs the Python API.
"""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from workbench import cli, report

pytestmark = pytest.mark.integration

WORKBENCH = [sys.executable, "-m", "workbench.cli"]

CHART = """\
import altair as alt
import vl_convert
from IPython.display import SVG, display
values = [{"day": d, "plays": (d + 1) * n} for d in range(7)]
spec = alt.Chart(alt.Data(values=values)).mark_bar().encode(x="day:O", y="plays:Q").to_dict()
display(SVG(vl_convert.vegalite_to_svg(spec)))
"""


def code(source: str, *tags: str) -> Any:
    cell = new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def write_notebook(path: Path, *cells: Any) -> Path:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WORKBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=180)


def page_text(page: str) -> str:
    """The page's visible text and attribute values, entities decoded (``'`` is ``&#x27;``)."""
    return html.unescape(page)


def without_css_comments(page: str) -> str:
    return re.sub(r"/\*.*?\*/", "", page, flags=re.DOTALL)


# ---------------------------------------------------------------------------------------
# one weekly report, rendered once by the command as cron runs it


class Weekly(NamedTuple):
    result: subprocess.CompletedProcess[str]
    out: Path
    notebook: Path


@pytest.fixture(scope="module")
def weekly(tmp_path_factory: pytest.TempPathFactory) -> Weekly:
    root = tmp_path_factory.mktemp("weekly")
    notebook = write_notebook(
        root / "notebooks" / "weekly.ipynb",
        new_markdown_cell("# Weekly overview"),
        code('n = 2\nlabel = "default"\nfactor = 1.0  # PARAMETERS_CELL', "parameters"),
        code(
            "shown = n * 3  # VISIBLE_CODE\n"
            'print(f"n*3 = {shown}, label = {label!r}, factor = {factor!r}")'
        ),
        code(
            '# HIDDEN_INPUT\nprint("read next to the notebook:", open("note.txt").read())',
            "hide-input",
        ),
        code("# REMOVED_INPUT\n" + CHART, "remove-input"),
        code('print("REMOVED_CELL_OUTPUT")  # REMOVED_CELL', "remove-cell"),
        code('print("HIDDEN_OUTPUT")  # CODE_OF_A_HIDDEN_OUTPUT', "hide-output"),
    )
    (notebook.parent / "note.txt").write_text("the notebook's own directory")
    (root / "params.yaml").write_text("n: 1\nfactor: 2.5\n")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    out = root / "reports" / "2026-W02"
    result = run(
        "report", str(notebook), "-f", str(root / "params.yaml"), "-p", "n", "5",
        "-r", "label", "07", "--out", str(out), "--name", "overview-2026-W02",
        cwd=elsewhere,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Weekly(result, out, notebook)


def test_report_writes_the_executed_notebook_and_the_page_and_nothing_else(
    weekly: Weekly,
) -> None:
    out = weekly.out
    assert sorted(p.name for p in out.iterdir()) == [
        "overview-2026-W02.html",
        "overview-2026-W02.ipynb",
    ]
    executed = nbformat.read(out / "overview-2026-W02.ipynb", as_version=4)
    nbformat.validate(executed)
    assert all(cell.get("execution_count") for cell in executed.cells if cell.cell_type == "code")
    assert executed.metadata.papermill["input_path"] == str(weekly.notebook)
    page = (out / "overview-2026-W02.html").read_text()
    assert page.lstrip().startswith("<!DOCTYPE html>")
    assert "<title>overview-2026-W02</title>" in page


def test_parameters_from_the_command_line_and_a_file_are_injected_and_used(
    weekly: Weekly,
) -> None:
    executed = nbformat.read(weekly.out / "overview-2026-W02.ipynb", as_version=4)
    assert executed.metadata.papermill["parameters"] == {"n": 5, "factor": 2.5, "label": "07"}
    (injected,) = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "n = 5" in injected.source
    expected = "n*3 = 15, label = '07', factor = 2.5"  # -p beats -f; -r keeps a string
    assert expected in json.dumps(executed.cells[3].outputs)
    assert expected in page_text((weekly.out / "overview-2026-W02.html").read_text())


def test_the_kernel_runs_in_the_notebooks_directory(weekly: Weekly) -> None:
    page = page_text((weekly.out / "overview-2026-W02.html").read_text())
    assert "read next to the notebook: the notebook's own directory" in page


def test_tagged_inputs_cells_and_outputs_are_left_out_of_the_page_only(
    weekly: Weekly,
) -> None:
    page = page_text((weekly.out / "overview-2026-W02.html").read_text())
    assert "VISIBLE_CODE" in page  # untagged code is shown
    assert "read next to the notebook" in page and "HIDDEN_INPUT" not in page
    assert "REMOVED_INPUT" not in page and "vegalite_to_svg" not in page
    assert "REMOVED_CELL" not in page  # neither its code nor its output
    assert "CODE_OF_A_HIDDEN_OUTPUT" in page  # the code of a hidden output stays ...
    assert re.search(r">\s*HIDDEN_OUTPUT\s*<", page) is None  # ... its printed line does not
    assert "PARAMETERS_CELL" not in page and "# Parameters" not in page
    assert "In&nbsp;[" not in page and "In [" not in page  # no prompts
    executed = (weekly.out / "overview-2026-W02.ipynb").read_text()
    for kept in ["HIDDEN_INPUT", "REMOVED_INPUT", "REMOVED_CELL_OUTPUT", "PARAMETERS_CELL"]:
        assert kept in executed  # the notebook keeps everything


def test_the_page_references_nothing_outside_itself(weekly: Weekly) -> None:
    page = (weekly.out / "overview-2026-W02.html").read_text()
    assert report.external_references(page) == []
    # and by a rule that shares nothing with the product's: no address at all outside the
    # theme's CSS comments, and every src a data URI
    assert re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", without_css_comments(page)) == []
    sources = re.findall(r"""\ssrc\s*=\s*["']?([^"'\s>]+)""", page)
    assert sources and all(src.startswith("data:") for src in sources)
    assert "<script src" not in page and "<link" not in page and "@import" not in page


def test_an_svg_chart_is_embedded_in_the_page(weekly: Weekly) -> None:
    executed = nbformat.read(weekly.out / "overview-2026-W02.ipynb", as_version=4)
    (svg,) = [
        output.data["image/svg+xml"]
        for cell in executed.cells
        for output in cell.get("outputs", [])
        if "image/svg+xml" in output.get("data", {})
    ]
    assert svg.lstrip().startswith("<svg") and "<path" in svg  # vega draws bars as paths
    page = (weekly.out / "overview-2026-W02.html").read_text()
    embedded = [
        base64.b64decode(data).decode()
        for data in re.findall(r'<img[^>]*src="data:image/svg\+xml;base64,([^"]+)"', page)
    ] + re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)
    assert [chart.strip() for chart in embedded] == [svg.strip()]


def test_progress_is_one_line_per_phase_on_stderr(weekly: Weekly) -> None:
    result = weekly.result
    # ours: a kernel under load may add a line of its own (zmq, debugpy), which is not ours
    lines = [line for line in result.stderr.splitlines() if line.startswith("workbench: ")]
    assert [line.split(" ")[1] for line in lines] == ["executing", "writing", "wrote"], (
        result.stderr
    )
    assert "executing 7 cells of" in lines[0]  # six code cells and the injected one
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------
# the other ways in: jupytext, --no-input, quiet, an installed kernel


def test_a_jupytext_notebook_renders_without_any_code_and_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    notebook = tmp_path / "overview.py"
    notebook.write_text(
        "# %% [markdown]\n# # Jupytext overview\n\n"
        '# %% tags=["parameters"]\nperiod_days = 7\n\n'
        '# %%\nprint(f"covering {period_days} days")  # CODE_MARK\n\n'
        f"# %%\nn = 1\n{CHART}"
    )
    out = tmp_path / "out"
    status = cli.main(["report", str(notebook), "-p", "period_days", "28", "--out", str(out)])
    captured = capfd.readouterr()
    assert status == 0, captured.err
    assert captured.err.startswith("workbench: executing 4 cells of")  # progress ...
    page = page_text((out / "overview.html").read_text())
    assert "covering 28 days" in page and "Jupytext overview" in page
    assert "CODE_MARK" in page  # code is shown by default ...

    status = cli.main(
        ["report", str(notebook), "-p", "period_days", "28", "--out", str(out), "--no-input", "-q"]
    )
    captured = capfd.readouterr()
    assert status == 0
    assert captured.err == ""  # ... none with --quiet, and no kernel chatter either
    page = page_text((out / "overview.html").read_text())
    assert "covering 28 days" in page and "Jupytext overview" in page
    assert "CODE_MARK" not in page and "print(" not in page  # ... and none with --no-input
    assert "data:image/svg+xml;base64," in page


def test_a_kernel_for_this_interpreter_is_installed_when_python3_is_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = tmp_path / "foreign" / "kernels" / "python3"
    foreign.mkdir(parents=True)
    (foreign / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    "/opt/other/bin/python3",
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "Python 3 (another environment)",
                "language": "python",
            }
        )
    )
    prefix = tmp_path / "prefix"
    monkeypatch.setenv("JUPYTER_PATH", f"{tmp_path / 'foreign'}:{prefix / 'share' / 'jupyter'}")
    name = report.ensure_kernel(prefix=prefix)
    assert name == report.KERNEL_NAME
    spec = KernelSpecManager().get_kernel_spec(name)
    assert spec.argv[0] == sys.executable
    assert Path(spec.resource_dir).is_relative_to(prefix)
    assert report.ensure_kernel(prefix=prefix) == name  # found, not installed again

    notebook = write_notebook(tmp_path / "k.ipynb", code("import sys\nprint(sys.executable)"))
    done = report.render(notebook, tmp_path / "out", kernel=name)
    executed = nbformat.read(done.notebook, as_version=4)
    assert executed.metadata.kernelspec.name == report.KERNEL_NAME
    assert executed.cells[0].outputs[0].text.strip() == sys.executable


# ---------------------------------------------------------------------------------------
# failures


def test_a_failing_cell_exits_1_naming_it_and_keeps_the_partial_notebook(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "nb" / "fails.ipynb",
        code("n = 1", "parameters"),
        code('print("the first cell ran")'),
        code("value = n / 0  # the failing line\nprint('not reached')"),
        code('print("never")'),
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "fails.ipynb").write_text("last week's notebook")
    (out / "fails.html").write_text("last week's page")
    result = run("report", str(notebook), "-p", "n", "3", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    failure = [line for line in result.stderr.splitlines() if "failed in" in line]
    assert failure == [
        f"workbench report: {notebook} failed in cell 2 (value = n / 0  # the failing line): "
        "ZeroDivisionError: division by zero"
    ]
    assert f"partly executed notebook is {out / 'fails.failed.ipynb'}" in result.stderr
    # the earlier report is untouched, the failed run is kept beside it, nothing half-written
    assert (out / "fails.ipynb").read_text() == "last week's notebook"
    assert (out / "fails.html").read_text() == "last week's page"
    assert sorted(p.name for p in out.iterdir()) == [
        "fails.failed.ipynb",
        "fails.html",
        "fails.ipynb",
    ]
    partial = nbformat.read(out / "fails.failed.ipynb", as_version=4)
    text = json.dumps(partial.cells)
    assert "the first cell ran" in text and "ZeroDivisionError" in text
    assert "not reached" in text and '"never\\n"' not in text  # source only, never run


def test_a_cell_that_runs_past_the_timeout_is_named(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "slow.ipynb",
        code("import itertools"),
        code("for _ in itertools.count():\n    pass"),
    )
    with pytest.raises(report.CellFailed) as failed:
        report.render(notebook, tmp_path / "out", timeout=1)
    assert failed.value.cell_index == 1
    assert failed.value.first_line == "for _ in itertools.count():"
    assert failed.value.ename == "CellTimeoutError"
    assert failed.value.partial == tmp_path / "out" / "slow.failed.ipynb"
    assert not (tmp_path / "out" / "slow.html").exists()


def test_a_page_that_would_load_from_a_cdn_is_refused_naming_the_cell(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "cdn.ipynb",
        code("from IPython.display import HTML, display"),
        code("display(HTML('<script src=\"https://cdn.example.org/vega.js\"></script>'))"),
    )
    out = tmp_path / "out"
    result = run("report", str(notebook), "--out", str(out), "-q", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"workbench report: {out / 'cdn.html'} not written: the page would need the network for "
        "https://cdn.example.org/vega.js (cell 1) (render charts offline with "
        "workbench.charts.use_offline_renderer(), embed images)"
    ]
    assert not (out / "cdn.html").exists()
    assert (out / "cdn.ipynb").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.ipynb"], "no notebook at missing.ipynb"),
        (["{nb}", "-p", "n"], "argument -p/--parameter: expected 2 arguments"),
        (["{nb}", "-p", "nn", "1"], "{nb} has no parameter nn (its parameters cell sets label, n)"),
        (["{nb}", "-p", "not valid", "1"], "parameter name 'not valid' is not a Python identifier"),
        (["{nb}", "--name", "a/b"], "--name 'a/b' must be a plain file name"),
        (["{nb}", "-f", "{missing}"], "cannot read parameter file {missing}"),
        (["{nb}", "--kernel", "nope"], "no kernelspec named 'nope'"),
    ],
    ids=["no-notebook", "p-without-value", "unknown-name", "bad-name", "bad-out-name",
         "no-file", "no-kernel"],
)  # fmt: skip
def test_a_bad_invocation_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    nb = write_notebook(tmp_path / "ok.ipynb", code("n = 1\nlabel = 'x'", "parameters"))
    names = {"nb": str(nb), "missing": str(tmp_path / "missing.yaml")}
    argv = ["report", *(arg.format(**names) for arg in args), "--out", str(tmp_path / "out")]
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert message.format(**names) in err
    assert not (tmp_path / "out").exists()


def exit_status(argv: list[str]) -> int | str | None:
    """``main``'s status, whether it returns it or argparse exits with it."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def test_sql_still_answers_next_to_report(tmp_path: Path) -> None:
    import duckdb

    db = tmp_path / "a.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE t AS SELECT 42 AS answer")
    result = run("sql", "SELECT answer FROM t", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout
