"""The pieces of a report page (``workbench.present``): what they show as HTML, what they
say as plain text, and that the HTML needs nothing from outside itself."""

from __future__ import annotations

import re
from datetime import date

import polars as pl
from IPython.core.formatters import DisplayFormatter

from workbench import present
from workbench.report import external_references

COMPARISON = pl.DataFrame(
    {
        "measure": ["plays", "watch_time", "users", "peak_streams"],
        "current": [1_234, 45_000, 12, 4],
        "previous": [1_100, 50_000, 12, 0],
        "change": [1_234 / 1_100 - 1, -0.1, 0.0, None],
    }
)


def bundle(obj: object) -> dict[str, str]:
    data, _ = DisplayFormatter().format(obj)
    return data


def test_tiles_show_each_figure_with_its_change_as_html_and_as_text() -> None:
    tiles = present.period_tiles(COMPARISON, days=7)
    data = bundle(tiles)
    assert set(data) >= {"text/html", "text/plain"}
    page = data["text/html"]
    assert page.count('class="wb-tile"') == 4
    for words in ("1,234", "12 h 30 min", "+12 % vs. the 7 days before", "−10 %"):
        assert words in page and words in data["text/plain"]
    assert "nothing in the 7 days before" in page
    assert present.UP in page and present.DOWN in page  # up green, down orange
    assert external_references(page) == []


def test_a_table_formats_counts_durations_and_shares_and_keeps_the_figures_as_text() -> None:
    frame = pl.DataFrame(
        {
            "title": ["Lost", "<script>alert(1)</script>"],
            "kind": ["TV show", "Movie"],
            "plays": [12_345, 7],
            "watch_time": [45_000, 600],
            "share": [0.9994, 0.0006],
        }
    )
    table = present.table(
        frame,
        id="titles",
        title="Top titles",
        counts=["plays"],
        durations=["watch_time"],
        shares=["share"],
        heat="plays",
        titles={"title": "kind"},
        labels={"watch_time": "Watch time", "share": "Share of plays"},
    )
    data = bundle(table)
    page = data["text/html"]
    assert "12,345" in page and "12 h 30 min" in page and "10 min" in page
    assert "Share of plays" in page and "width: 99.9%" in page  # the bar
    assert "&lt;script&gt;" in page and "<script" not in page  # a title is text, never markup
    assert "TV show" in page and 'class="wb-title"' in page
    assert "background-color" in page  # the heat scale
    assert external_references(page) == []
    assert not re.search(r"fonts\.googleapis|@import|<link", page)
    assert (
        page
        == present.table(
            frame,
            id="titles",
            title="Top titles",
            counts=["plays"],
            durations=["watch_time"],
            shares=["share"],
            heat="plays",
            titles={"title": "kind"},
            labels={"watch_time": "Watch time", "share": "Share of plays"},
        )._repr_html_()
    ), "the same table must give the same HTML (nbval, diffs)"
    text = data["text/plain"].splitlines()
    assert text[0].split() == ["title", "plays", "Watch", "time", "Share", "of", "plays"]
    assert text[1].split()[:4] == ["Lost", "12,345", "12", "h"]
    assert "100 %" in text[1] and "0 %" in text[2]


def test_the_sentence_under_the_title_names_the_period_and_servers_in_words() -> None:
    names = [
        present.server_name("3f2a9c1b77aa", ["plex_webhook", "tautulli"], {}),
        present.server_name("77ee", ["jellyfin"], {"77": "Living room"}),
    ]
    sentence = (
        f"{present.period_words(date(2026, 1, 5), date(2026, 1, 11))} on "
        f"{present.join_words(names)}."
    )
    assert sentence == (
        "Monday 5 to Sunday 11 January 2026 on Plex server 3f2a9c1b and Living room."
    )
    head = bundle(present.header("Overview", sentence))
    assert "<h1" in head["text/html"] and sentence in head["text/plain"]


def test_the_parameters_block_is_collapsed_and_says_what_was_run() -> None:
    block = present.details(
        "How this report was made",
        {"tz": "Europe/Berlin", "start": "2026-01-05"},
        note="Read at log sequence 42.",
    )
    page = bundle(block)["text/html"]
    assert page.startswith('<details class="wb-details"') and " open" not in page
    assert "&#x27;Europe/Berlin&#x27;" in page and "log sequence 42" in page


def test_durations_changes_and_counts_read_as_words() -> None:
    assert present.duration(45_000) == "12 h 30 min"
    assert present.duration(3_599) == "59 min"
    assert present.change_words(0.004, 7) == "±0 % vs. the 7 days before"
    assert present.change_words(1.5, 1) == "+150 % vs. the day before"
    assert present.count(1_000_000) == "1,000,000"
