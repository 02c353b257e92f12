"""Render a notebook as a report: execute it with parameters, write the executed ``.ipynb``
and a self-contained HTML file next to it.

This is what ``workbench report NOTEBOOK -p NAME VALUE ... --out DIR`` runs. A report is
meant to be made by a cron job and opened later, anywhere, maybe with no network, so:

* **execution** is papermill's (parameters injected after the cell tagged ``parameters``),
  on a kernel that runs *this* interpreter (:func:`ensure_kernel`), so the notebook imports
  the same ``workbench`` as the command. A jupytext ``.py``/``.md`` notebook is converted
  first. A parameter the notebook's ``parameters`` cell does not assign is refused before
  anything runs: a typo in a crontab would otherwise render last week's defaults silently.
* **the HTML opens offline**: nbconvert's ``lab`` template without the script tags it
  loads from CDNs (require.js, MathJax, Mermaid, the widget manager); images, SVG included,
  are embedded as data URIs (one ``<img>`` per image keeps each SVG's ids to itself, where
  several inline SVGs could collide). Whatever a notebook's own outputs pull from the
  network (Altair's default renderer loads vega from a CDN) makes the report fail with
  :class:`NotSelfContained`, naming the cell, instead of producing a page that draws
  nothing offline; :func:`workbench.charts.use_offline_renderer` is the cure for charts.
* **code is hidden where the report reads better without it**: the input of cells tagged
  ``hide-input`` or ``remove-input`` (all inputs with ``no_input=True``), the outputs of
  cells tagged ``hide-output`` or ``remove-output``, and whole cells tagged ``remove-cell``,
  ``parameters`` or ``injected-parameters`` are left out of the HTML (the ``.ipynb`` keeps
  everything). Prompts (``In [3]:``) are never shown; LaTeX in markdown stays as written
  (MathJax would need the network).
* **no half files**: both files are written under temporary names in the output directory
  and renamed into place, so a reader (or the next cron run) sees the previous report or
  the new one, never a part of one.
* **a failing cell** raises :class:`CellFailed`, which names the cell (its index in the
  notebook as written, from 0, and its first line) and the exception; the partly executed
  notebook is kept as ``<name>.failed.ipynb`` in the output directory for debugging (the
  next successful run of the same name removes it). A report of that name written by an
  earlier run stays as it was.

Example::

    report = render("notebooks/overview.ipynb", "reports/2026-W02",
                    {"start": "2026-01-05", "end": "2026-01-11", "data_dir": "/srv/data"})
    report.html   # reports/2026-W02/overview.html

The kernel runs in the notebook's own directory (as Jupyter runs it) unless ``cwd`` says
otherwise, so relative paths in a notebook mean what they meant while it was written.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import jinja2
import jupytext
import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from nbconvert import HTMLExporter
from nbformat import NotebookNode
from traitlets.config import Config

from workbench.errors import CellFailed, NotSelfContained, ReportUsageError, WorkbenchError

Progress = Callable[[str], None]
"""Receives one line per phase of :func:`render` (executing, writing HTML, done)."""

KERNEL_NAME = "mediaevents-python"
"""The kernelspec :func:`ensure_kernel` installs when no ``python3`` runs this interpreter."""

IPYKERNEL_QUIET = "--IPKernelApp.log_level=CRITICAL"

HIDE_INPUT_TAGS = frozenset({"hide-input", "remove-input"})
HIDE_OUTPUT_TAGS = frozenset({"hide-output", "remove-output"})
ERROR_MARKER_TAG = "papermill-error-cell-tag"  # papermill's note cells in a failed notebook
PARAMETER_TAGS = frozenset({"parameters", "injected-parameters"})
REMOVE_CELL_TAGS = frozenset({"remove-cell", ERROR_MARKER_TAG}) | PARAMETER_TAGS

# nbconvert's lab page without what it loads from CDNs: require.js (only classic widgets
# use it), the widget manager (a report is static), MathJax and Mermaid (both dynamic).
REPORT_TEMPLATE_NAME = "workbench_report.html.j2"
REPORT_TEMPLATE = """\
{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

# ------------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class Report:
    """What :func:`render` wrote."""

    notebook: Path
    """The executed notebook (``<out>/<name>.ipynb``)."""
    html: Path
    """The self-contained page (``<out>/<name>.html``)."""
    cells: int
    """Code cells executed (the injected parameters cell included)."""
    seconds: float
    """Wall time of the whole rendering."""


# ------------------------------------------------------------------------------- parameters


def parse_value(text: str) -> Any:
    """A ``-p`` value as the notebook gets it: papermill's ``True``/``False``/``None``, then
    JSON (numbers, ``true``, ``null``, lists, objects, a quoted string), else the text.

    >>> [parse_value(v) for v in ["7", "2.5", "True", "null", '["a", 1]', "data", '"07"']]
    [7, 2.5, True, None, ['a', 1], 'data', '07']
    >>> parse_value("2026-01-05"), parse_value("NaN")
    ('2026-01-05', 'NaN')
    """
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return text


def _no_constant(name: str) -> float:
    """JSON's ``NaN`` and ``Infinity`` stay text: a notebook could not take them as code."""
    raise ValueError(name)


def read_parameter_file(path: Path | str) -> dict[str, Any]:
    """The parameters in a YAML (or JSON) file holding one mapping of names to values."""
    import yaml  # papermill's own dependency

    file = Path(path)
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportUsageError(f"cannot read parameter file {file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ReportUsageError(f"{file} is not YAML: {str(exc).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise ReportUsageError(f"{file} must hold a mapping of parameter names to values")
    return loaded


def check_parameter_names(names: list[str]) -> None:
    """Refuse a name that cannot be a Python variable (it would break the injected cell)."""
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ReportUsageError(f"parameter name {name!r} is not a Python identifier")


# -------------------------------------------------------------------------------- notebooks


def load_notebook(path: Path | str) -> NotebookNode:
    """A ``.ipynb`` as it is, any other extension through jupytext (``py:percent`` and the
    rest of its formats), as an nbformat v4 notebook."""
    file = Path(path)
    if not file.is_file():
        raise ReportUsageError(f"no notebook at {file}")
    try:
        if file.suffix == ".ipynb":
            return nbformat.read(file, as_version=4)
        return jupytext.read(file)
    except Exception as exc:  # nbformat and jupytext raise many kinds for "not a notebook"
        raise ReportUsageError(f"{file} is not a notebook: {exc}") from None


def _tags(cell: NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _first_line(text: str, *, code: bool = True) -> str:
    """The line that names a cell (its first line of code, past comments) or a message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if code:
        lines = [line for line in lines if not line.startswith("#")] or lines
    return lines[0][:160] if lines else ""


# ---------------------------------------------------------------------------------- kernels


def _runs_this_interpreter(argv: list[str]) -> bool:
    """Whether a kernelspec's command starts this very interpreter: jupyter_client swaps a
    bare ``python``/``python3``/``python3.X`` for ``sys.executable`` when it launches one."""
    if not argv:
        return False
    major, minor = sys.version_info[:2]
    if argv[0] in {"python", f"python{major}", f"python{major}.{minor}"}:
        return True
    return os.path.abspath(argv[0]) == os.path.abspath(sys.executable)


def ensure_kernel(prefix: Path | str | None = None) -> str:
    """The name of a kernelspec that runs this interpreter, installing one if needed.

    ``python3`` is used when it runs this interpreter (ipykernel ships one in the venv).
    Otherwise (a ``python3`` of another environment found first on ``JUPYTER_PATH``, or
    none at all) :data:`KERNEL_NAME` is installed under ``prefix`` (default: this
    environment, ``sys.prefix``) and used. A fresh CI venv thus needs no setup step.
    """
    manager = KernelSpecManager()
    for name in ("python3", KERNEL_NAME):
        try:
            spec = manager.get_kernel_spec(name)
        except NoSuchKernel:
            continue
        if spec.language == "python" and _runs_this_interpreter(spec.argv):
            return name
    from ipykernel.kernelspec import install

    where = install(
        kernel_name=KERNEL_NAME,
        display_name=f"Python {sys.version_info[0]}.{sys.version_info[1]} (mediaevents)",
        prefix=str(prefix if prefix is not None else sys.prefix),
    )
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        raise WorkbenchError(
            f"installed the kernelspec {KERNEL_NAME} in {where}, but Jupyter does not find it "
            "there (is JUPYTER_PATH set?)"
        ) from None
    if not _runs_this_interpreter(spec.argv):
        raise WorkbenchError(
            f"a kernelspec {KERNEL_NAME} in {spec.resource_dir} runs {spec.argv[0]}, not "
            f"{sys.executable}: remove it"
        )
    return KERNEL_NAME


# ------------------------------------------------------------------------------------- HTML


def html_exporter(*, no_input: bool = False) -> HTMLExporter:
    """nbconvert's exporter configured for an offline report (see the module docstring)."""
    config = Config()
    config.TagRemovePreprocessor.enabled = True
    config.TagRemovePreprocessor.remove_cell_tags = set(REMOVE_CELL_TAGS)
    config.TagRemovePreprocessor.remove_input_tags = set(HIDE_INPUT_TAGS)
    config.TagRemovePreprocessor.remove_all_outputs_tags = set(HIDE_OUTPUT_TAGS)
    return HTMLExporter(
        config=config,
        extra_loaders=[jinja2.DictLoader({REPORT_TEMPLATE_NAME: REPORT_TEMPLATE})],
        template_file=REPORT_TEMPLATE_NAME,
        exclude_input=no_input,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )


def to_html(
    nb: NotebookNode,
    *,
    title: str = "report",
    no_input: bool = False,
    images_dir: Path | None = None,
) -> str:
    """The report page of an executed notebook; ``images_dir`` resolves the relative image
    paths of markdown cells (they are embedded)."""
    resources = {"metadata": {"name": title, "path": str(images_dir or Path.cwd())}}
    body, _ = html_exporter(no_input=no_input).from_notebook_node(nb, resources=resources)
    return body


_TAG = re.compile(r"<(?P<tag>[A-Za-z][\w:-]*)(?P<attrs>\s[^>]*)?>")
_ATTR = re.compile(
    r"""(?:^|\s)(?P<name>src|srcset|href|xlink:href|data|poster|background|action)\s*=\s*"""
    r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s>]+))""",
    re.IGNORECASE,
)
_CSS_URL = re.compile(r"""url\(\s*["']?(?P<ref>[^)"'\s]+)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+(?:url\()?\s*["']?(?P<ref>[^)"'\s;]+)""", re.IGNORECASE)
_JS_IMPORT = re.compile(r"""\bimport\s*\(\s*["'`](?P<ref>[^"'`]+)""")
_SCRIPT = re.compile(r"<script\b[^>]*>(?P<body>.*?)</script\s*>", re.IGNORECASE | re.DOTALL)
# a URL a script could load: a string literal that starts like one ("$schema" values only
# name a JSON schema, so they are not counted)
_SCRIPT_URL = re.compile(
    r"""(?<!"\$schema": )(?<!"\$schema":)["'`](?P<ref>(?:https?:)?//[^"'`\s]+)""",
    re.IGNORECASE,
)
_LOCAL = ("data:", "#", "about:", "javascript:", "mailto:")
_NAVIGATION_TAGS = {"a", "area", "svg:a"}  # a link the reader may follow, not a resource


def _is_external(ref: str) -> bool:
    ref = ref.strip()
    return bool(ref) and not ref.lower().startswith(_LOCAL) and not ref.startswith("{{")


def external_references(html: str) -> list[str]:
    """Everything a page would load from outside itself: ``src``/``href``/... attributes
    (links a reader may follow, ``<a href>``, excepted), CSS ``url()`` and ``@import``,
    JavaScript ``import()``, and any URL literal in an inline script (where Altair's default
    renderer keeps the CDN addresses it loads vega from; a ``"$schema"`` value is not
    counted). A relative path counts: the page must open wherever it is copied.

    >>> external_references('<a href="https://x.org">x</a><img src="data:image/png;base64,">')
    []
    >>> external_references(
    ...     '<script src="https://cdn.example/vega.js"></script>'
    ...     '<link rel="stylesheet" href="style.css"><div style="background: url(//f/a.png)">'
    ... )
    ['https://cdn.example/vega.js', 'style.css', '//f/a.png']
    >>> external_references(
    ...     '<script>const paths = {"vega": "https://cdn.example/vega@6"};'
    ...     'embed({"$schema": "https://vega.github.io/schema/v6.json"})</script>'
    ... )
    ['https://cdn.example/vega@6']
    """
    found: list[str] = []
    for tag in _TAG.finditer(html):
        name = tag["tag"].lower()
        for attr in _ATTR.finditer(tag["attrs"] or ""):
            if name in _NAVIGATION_TAGS and attr["name"].lower() in ("href", "xlink:href"):
                continue
            value = attr["dq"] if attr["dq"] is not None else attr["sq"] or attr["bare"] or ""
            refs = (
                [part.strip().split(" ")[0] for part in value.split(",")]
                if attr["name"].lower() == "srcset"
                else [value]
            )
            found.extend(ref for ref in refs if _is_external(ref))
    for pattern in (_CSS_URL, _CSS_IMPORT, _JS_IMPORT):
        found.extend(m["ref"] for m in pattern.finditer(html) if _is_external(m["ref"]))
    for script in _SCRIPT.finditer(html):
        found.extend(m["ref"] for m in _SCRIPT_URL.finditer(script["body"]))
    return list(dict.fromkeys(found))


def _cells_referring(nb: NotebookNode, refs: list[str]) -> list[tuple[int | None, str]]:
    """Each reference with the index of the first cell whose source or outputs hold it."""
    located: list[tuple[int | None, str]] = []
    for ref in refs:
        index = next(
            (i for i, cell in enumerate(nb.cells) if ref in json.dumps(cell, ensure_ascii=False)),
            None,
        )
        located.append((index, ref))
    return located


# ---------------------------------------------------------------------------------- render


def render(
    notebook: Path | str,
    out_dir: Path | str,
    parameters: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    no_input: bool = False,
    cwd: Path | str | None = None,
    kernel: str | None = None,
    timeout: float | None = None,
    progress: Progress | None = None,
) -> Report:
    """Execute ``notebook`` with ``parameters`` and write ``<out_dir>/<name>.ipynb`` and
    ``<out_dir>/<name>.html`` (``name`` defaults to the notebook's stem).

    ``cwd`` is the kernel's working directory (default: the notebook's directory),
    ``kernel`` a kernelspec name (default: :func:`ensure_kernel`), ``timeout`` the seconds
    one cell may run (default: no limit). Raises :class:`ReportUsageError` for a request
    that cannot work, :class:`CellFailed` when a cell fails, :class:`NotSelfContained` when
    the page would need the network, :class:`~workbench.errors.WorkbenchError` for the rest.
    """
    started = time.monotonic()
    say = progress or (lambda line: None)
    source = Path(notebook)
    stem = name or source.stem
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ReportUsageError(f"--name {stem!r} must be a plain file name")
    params = dict(parameters or {})
    check_parameter_names(list(params))
    nb = load_notebook(source)
    if params and not any("parameters" in _tags(cell) for cell in nb.cells):
        raise ReportUsageError(f"{source} has no cell tagged 'parameters' to take {sorted(params)}")
    kernel_name = kernel or ensure_kernel()
    spec = _kernel_spec(kernel_name)
    nb = _prepared(nb, kernel_name)
    workdir = Path(cwd).resolve() if cwd is not None else source.resolve().parent
    if not workdir.is_dir():
        raise ReportUsageError(f"--cwd {workdir} is not a directory")
    cells = sum(cell.cell_type == "code" for cell in nb.cells) + (1 if params else 0)

    with TemporaryDirectory(prefix="workbench-report-") as tmp:
        prepared = Path(tmp) / f"{stem}.ipynb"
        nbformat.write(nb, prepared)
        if params:
            _check_known(source, prepared, params)
        out = Path(out_dir).resolve()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReportUsageError(f"cannot create {out}: {exc.strerror}") from None
        final_ipynb, final_html = out / f"{stem}.ipynb", out / f"{stem}.html"
        failed_ipynb = out / f"{stem}.failed.ipynb"
        temp_ipynb = out / f".{stem}.{os.getpid()}.partial.ipynb"
        temp_html = out / f".{stem}.{os.getpid()}.partial.html"
        try:
            say(f"executing {cells} cells of {source} (kernel {kernel_name}, in {workdir})")
            _execute(
                source,
                prepared,
                temp_ipynb,
                failed=failed_ipynb,
                params=params,
                kernel=kernel_name,
                kernel_argv=spec.argv,
                workdir=workdir,
                timeout=timeout,
            )
            executed = nbformat.read(temp_ipynb, as_version=4)
            executed.metadata.setdefault("papermill", {})
            executed.metadata.papermill["input_path"] = str(source)
            executed.metadata.papermill["output_path"] = str(final_ipynb)
            nbformat.write(executed, temp_ipynb)
            say(f"writing {final_html}")
            html = to_html(executed, title=stem, no_input=no_input, images_dir=source.parent)
            refs = external_references(html)
            if refs:
                os.replace(temp_ipynb, final_ipynb)
                raise NotSelfContained(final_html, _cells_referring(_as_written(executed), refs))
            temp_html.write_text(html, encoding="utf-8")
            os.replace(temp_ipynb, final_ipynb)
            os.replace(temp_html, final_html)
            failed_ipynb.unlink(missing_ok=True)  # a failure of an earlier run is stale now
        finally:
            temp_ipynb.unlink(missing_ok=True)
            temp_html.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    say(f"wrote {final_ipynb.name} and {final_html.name} in {out} ({seconds:.1f} s)")
    return Report(notebook=final_ipynb, html=final_html, cells=cells, seconds=seconds)


def _prepared(nb: NotebookNode, kernel_name: str) -> NotebookNode:
    """The notebook as papermill gets it: on our kernel, without the parameters a previous
    run injected (an executed notebook given as input; papermill would replace them)."""
    nb.cells = [cell for cell in nb.cells if "injected-parameters" not in _tags(cell)]
    nb.metadata["kernelspec"] = {
        "name": kernel_name,
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def _check_known(source: Path, prepared: Path, params: Mapping[str, Any]) -> None:
    """Refuse a parameter the ``parameters`` cell does not assign (when papermill can read
    that cell's assignments at all)."""
    from papermill import inspect_notebook

    known = inspect_notebook(str(prepared))
    unknown = sorted(set(params) - set(known))
    if known and unknown:
        raise ReportUsageError(
            f"{source} has no parameter {', '.join(unknown)} "
            f"(its parameters cell sets {', '.join(sorted(known))})"
        )


def _kernel_spec(name: str) -> KernelSpec:
    try:
        return KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        known = ", ".join(sorted(KernelSpecManager().find_kernel_specs())) or "none"
        raise ReportUsageError(f"no kernelspec named {name!r} (installed: {known})") from None


def _execute(
    source: Path,
    prepared: Path,
    output: Path,
    *,
    failed: Path,
    params: dict[str, Any],
    kernel: str,
    kernel_argv: list[str],
    workdir: Path,
    timeout: float | None,
) -> None:
    """Run papermill; on any failure keep the partial notebook as ``failed`` and raise
    :class:`CellFailed` naming the cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # ipykernel logs its own chatter (TCP without encryption, the interrupt after an error)
    # to the terminal, where a cron job would mail it; the failure is reported here instead
    quiet = [IPYKERNEL_QUIET] if any("ipykernel" in arg for arg in kernel_argv) else []
    try:
        papermill.execute_notebook(
            str(prepared),
            _format_literal(str(output)),  # papermill str.format()s the output path
            parameters=params,
            kernel_name=kernel,
            cwd=str(workdir),
            progress_bar=False,
            log_output=False,
            request_save_on_cell_execute=True,
            execution_timeout=timeout,
            extra_arguments=quiet,
        )
    except Exception as exc:  # the kernel's failures come as many kinds
        partial: Path | None = None
        if output.exists():
            os.replace(output, failed)
            partial = failed
        cells = _as_written(nbformat.read(failed, as_version=4)).cells if partial else []
        if isinstance(exc, PapermillExecutionError):
            index = _index_as_written(nbformat.read(failed, as_version=4), exc.cell_index)
            raise CellFailed(
                source,
                index,
                _first_line(exc.source),
                exc.ename,
                _first_line(exc.evalue, code=False),
                partial,
            ) from None
        index = _last_started(cells)
        first = _first_line(cells[index].source) if index is not None else ""
        evalue = _first_line(str(exc), code=False)
        raise CellFailed(source, index, first, type(exc).__name__, evalue, partial) from None


def _format_literal(path: str) -> str:
    return path.replace("{", "{{").replace("}", "}}")


def _as_written(nb: NotebookNode) -> NotebookNode:
    """An executed notebook without papermill's additions (error notes, injected cell), so
    its cell indexes are those of the notebook as written."""
    nb = nbformat.from_dict(nb)
    nb.cells = [
        cell
        for cell in nb.cells
        if not {ERROR_MARKER_TAG, "injected-parameters"} & set(_tags(cell))
    ]
    return nb


def _index_as_written(failed_nb: NotebookNode, executed_index: int) -> int:
    """Papermill's index of the failing cell counts the injected parameters cell (and
    nothing else: its error notes are added after the index is taken)."""
    cells = [cell for cell in failed_nb.cells if ERROR_MARKER_TAG not in _tags(cell)]
    injected_before = sum("injected-parameters" in _tags(cell) for cell in cells[:executed_index])
    return executed_index - injected_before


def _last_started(cells: list[NotebookNode]) -> int | None:
    """The last cell papermill started: the one running when a timeout or a dead kernel
    stopped execution."""
    started = [
        i
        for i, cell in enumerate(cells)
        if cell.get("metadata", {}).get("papermill", {}).get("start_time")
    ]
    return started[-1] if started else None


__all__ = [
    "HIDE_INPUT_TAGS",
    "HIDE_OUTPUT_TAGS",
    "KERNEL_NAME",
    "REMOVE_CELL_TAGS",
    "CellFailed",
    "NotSelfContained",
    "Progress",
    "Report",
    "ReportUsageError",
    "check_parameter_names",
    "ensure_kernel",
    "external_references",
    "html_exporter",
    "load_notebook",
    "parse_value",
    "read_parameter_file",
    "render",
    "to_html",
]
