"""The release's plots: PNG files drawn from the aggregate, listed in the manifest, shown in the card."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from tests.tasks.publish.test_publish import CARD_INFO, _scored, _tables
from ultrafeedback.infra.store import Store
from ultrafeedback.tasks.publish.plots import render_plots
from ultrafeedback.tasks.publish.publish import publish_release

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ["plots/ratings.png", "plots/overall_score.png", "plots/leaderboard.png", "plots/sources.png"]


@pytest.fixture(scope="module")
def aggregate() -> dict:
    return _tables(_scored()).aggregate


def test_four_plots_from_the_aggregate_are_pngs_of_the_same_bytes_each_time(aggregate):
    plots = render_plots(aggregate)
    assert [plot.path for plot in plots] == NAMES
    from PIL import Image

    for plot in plots:
        assert plot.png.startswith(PNG)
        assert b"Software" not in plot.png[:200], "the PNG must not carry the matplotlib version"
        width, height = Image.open(io.BytesIO(plot.png)).size
        assert 300 < width < 1200 and 200 < height < 1600, (plot.path, width, height)
    assert [plot.png for plot in render_plots(aggregate)] == [plot.png for plot in plots]


def test_a_plot_without_its_table_is_left_out_and_no_aggregate_gives_none(aggregate):
    assert render_plots(None) == []
    partial = {**aggregate, "by_source": [], "leaderboard": []}
    assert [plot.path for plot in render_plots(partial)] == NAMES[:2]


def test_the_plots_differ_when_the_data_do(aggregate):
    changed = json.loads(json.dumps(aggregate))
    changed["overall_histogram"][6]["count"] += 5
    before = {plot.path: plot.png for plot in render_plots(aggregate)}
    after = {plot.path: plot.png for plot in render_plots(changed)}
    assert before["plots/overall_score.png"] != after["plots/overall_score.png"]
    assert before["plots/ratings.png"] == after["plots/ratings.png"]


def test_a_release_holds_the_plots_lists_them_and_its_card_shows_them(tmp_path: Path):
    store = Store(str(tmp_path / "store"), "unit")
    release = publish_release(store, "unit", _tables(_scored()), {}, CARD_INFO)
    folder = Path(release.uri)
    manifest = json.loads((folder / "manifest.json").read_text())
    card = (folder / "README.md").read_text()
    assert "## Plots" in card
    for name in NAMES:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG)
        assert manifest["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
        title = manifest["files"][name]["title"]
        assert f"![{title}]({name})" in card
    again = publish_release(store, "unit", _tables(_scored()), {}, CARD_INFO)
    assert again.version == 1 and not again.created, "plots do not change a release's content hash"
