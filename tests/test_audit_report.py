"""The audit report page: parsed as HTML (fast), and driven in headless Chromium (-m browser)."""

from __future__ import annotations

import json
import math
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from explainers.services.audit_groups import ALL, summarise_groups
from explainers.services.audit_report import LOOK_AT, write_report
from explainers.services.audit_work import SCORES, Row
from explainers.services.samples import SAMPLES_DIR

METHODS = ["gradcam", "gradcam++"]
GROUPS = ["doctor", "nurse"]


def make_rows(folder: Path, count: int, seed: int = 0) -> list[Row]:
    """``count`` audited images in two groups: nurses' maps mostly inside the box, doctors' less;
    every 50th map blank (cannot judge), image 3 unreadable."""
    (folder / "overlays").mkdir(parents=True, exist_ok=True)
    thumb = Image.open(SAMPLES_DIR / "chelsea.jpg").convert("RGB").resize((64, 64))
    thumb.save(folder / "overlays" / "thumb.png")
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        group = GROUPS[i % 2]
        if i == 3:
            rows.append(Row(i, f"img{i:04d}.jpg", "", status="unreadable", reason="cut off", group=group))
            continue
        scores = {}
        for m in METHODS:
            share = (
                math.nan
                if i % 50 == 7
                else min(1.0, max(0.0, rng.gauss(0.7 if group == "nurse" else 0.3, 0.1)))
            )
            scores[m] = dict(zip(SCORES, (share, rng.random() * 0.5, float(i % 3 == 0), 0.2, 0.6)))
        rows.append(
            Row(
                i,
                f"img{i:04d}.jpg",
                "",
                group=group,
                box="40,40,120,120",
                box_area=0.1276,
                prediction=rng.choice(["stethoscope", "lab coat", "wig"]),
                probability=0.5,
                target="stethoscope",
                target_probability=0.4,
                scores=scores,
                pictures={"image": "overlays/thumb.png", **{m: "overlays/thumb.png" for m in METHODS}},
            )
        )
    return rows


class Page(HTMLParser):
    """The parts of the page the tests read: scripts, images, tables' rows and cells, headings."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []  # attributes and text of each <script>
        self.images: list[dict] = []
        self.tables: dict[str, list[list[dict]]] = {}  # id -> rows -> cells (attributes + text)
        self.headings: list[str] = []
        self._table: str | None = None
        self._cell: dict | None = None
        self._script: dict | None = None
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._script = {**attrs, "text": ""}
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "table" and "id" in attrs:
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = {**attrs, "text": ""}
            self.tables[self._table][-1].append(self._cell)
        elif tag in ("h2", "h3"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append(self._script)
            self._script = None
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th"):
            self._cell = None
        elif tag in ("h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        if self._script is not None:
            self._script["text"] += data
        if self._cell is not None:
            self._cell["text"] += data
        if self._heading is not None:
            self._heading.append(data)


def report(tmp_path: Path, count: int, grouped: bool = True) -> tuple[Page, str, list[Row]]:
    rows = make_rows(tmp_path, count)
    if not grouped:
        for row in rows:
            row.group = ""
    summaries = summarise_groups(rows, METHODS, grouped)
    write_report(
        tmp_path / "index.html", rows, METHODS, summaries, "test model, layer final", grouped, ["notes.txt"]
    )
    text = (tmp_path / "index.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return page, text, rows


def test_report_per_group_plots_tables_and_lists(tmp_path):
    page, text, rows = report(tmp_path, 120)
    # Offline: plotly's JavaScript inline, once; no script or picture from elsewhere.
    bundles = [s for s in page.scripts if len(s["text"]) > 1_000_000]
    assert len(bundles) == 1 and "plotly" in bundles[0]["text"][:2000].lower()
    assert not [s for s in page.scripts if "src" in s] and "<link" not in text
    assert all(not re.match(r"(https?:)?//", image["src"]) for image in page.images)
    # Per group: one row each after all images, the box share's mean ± sd and the blank maps.
    header, *groups = page.tables["groups"]
    assert [(row[0]["text"], row[1]["text"]) for row in groups] == [
        (g, m) for g in (ALL, "doctor", "nurse") for m in ("Grad-CAM", "Grad-CAM++")
    ]
    column = [c["text"] for c in header].index("box share (mean ± sd, n)")
    nurse = [r for r in rows if r.group == "nurse" and r.status == "ok"]
    shares = [
        r.scores["gradcam"]["energy_in_box"]
        for r in nurse
        if not math.isnan(r.scores["gradcam"]["energy_in_box"])
    ]
    assert float(groups[4][column]["data-v"]) == pytest.approx(sum(shares) / len(shares), rel=1e-5)
    assert "±" in groups[4][column]["text"] and f"({len(shares)})" in groups[4][column]["text"]
    judged = [c["text"] for c in header].index("cannot judge")
    assert groups[0][judged]["text"] == str(sum(1 for r in rows if r.status == "ok" and r.index % 50 == 7))
    # The plots: box share per group (a box per group and method, with the box area), predictions.
    figures = [json.loads(m) for m in re.findall(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", text)]
    box_traces = [t for f in figures for t in f if t.get("type") == "box"]
    assert [t["name"] for t in box_traces] == ["Grad-CAM", "Grad-CAM++"]
    assert set(box_traces[0]["x"]) == set(GROUPS) and len(box_traces[0]["y"]) == len(
        [r for r in rows if r.status == "ok" and not math.isnan(r.scores["gradcam"]["energy_in_box"])]
    )
    assert box_traces[0]["boxmean"] == "sd"
    bars = [t for f in figures for t in f if t.get("type") == "bar" and t.get("orientation") == "h"]
    assert {t["name"] for t in bars} == {"stethoscope", "lab coat", "wig"}
    assert all(t["y"] == GROUPS for t in bars)
    assert "Share of map energy inside each image's box, per group" in text
    # Look at these: the highest and the lowest box shares, in order.
    ranked = sorted(
        (r for r in rows if r.status == "ok" and not math.isnan(r.scores["gradcam"]["energy_in_box"])),
        key=lambda r: (r.scores["gradcam"]["energy_in_box"], r.image),
    )
    assert f"Grad-CAM: the {LOOK_AT} images with the highest box share" in page.headings
    highest = text.split(f"Grad-CAM: the {LOOK_AT} images with the highest box share")[1].split(
        "</div></div></div>"
    )[0]
    assert re.findall(r'class="name">([^<]+)<', highest)[:3] == [r.image for r in ranked[::-1][:3]]
    lowest = text.split(f"Grad-CAM: the {LOOK_AT} images with the lowest box share")[1]
    assert re.findall(r'class="name">([^<]+)<', lowest)[0] == ranked[0].image
    # Every image in the sortable table; unreadable ones say why.
    header, *images = page.tables["images"]
    assert len(images) == 120 and "img0003.jpg: unreadable: cut off" in images[3][0]["text"]
    assert any(c["text"] == "Grad-CAM++: box share" for c in header)
    assert "notes.txt" in text


def test_thousand_images_stay_usable(tmp_path):
    page, text, _ = report(tmp_path, 1000)
    assert len(page.tables["images"]) == 1001
    # Thumbnails load lazily (only the current page's rows are shown: the script pages them).
    assert len(page.images) > 2000 and all(image.get("loading") == "lazy" for image in page.images)
    assert 'id="filter"' in text and 'id="size"' in text and 'id="next"' in text
    assert '<option value="nurse">nurse</option>' in text
    assert len(text) < 12_000_000  # plotly's 4.7 MB once, plus about 5 kB per image


def test_report_without_groups_or_boxes(tmp_path):
    rows = make_rows(tmp_path, 10)
    for row in rows:
        row.group, row.box, row.box_area = "", "", math.nan
        for scores in row.scores.values():
            scores["energy_in_box"] = math.nan
    summaries = summarise_groups(rows, METHODS, grouped=False)
    write_report(tmp_path / "index.html", rows, METHODS, summaries, "context", grouped=False)
    text = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "No box share: give --box, or box columns x0,y0,x1,y1 in the --groups file." in text
    assert "Look at these" not in text and 'id="group"' not in text and "box share</th>" not in text
    assert "Prediction distribution per group" in text


@pytest.mark.browser
def test_report_pages_sorts_and_filters_in_chromium(tmp_path, browser, artifacts):
    _, _, rows = report(tmp_path, 240)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto((tmp_path / "index.html").as_uri())
        page.locator("#pageinfo").filter(has_text="of 240 images").wait_for()
        visible = page.locator("#images tbody tr:not([hidden])")
        assert visible.count() == 50 and page.locator("#pageinfo").inner_text().startswith("1–50 of 240")
        assert page.locator(".plot .main-svg").count() >= 3  # plotly drew every plot, offline
        page.screenshot(path=artifacts / "audit-report.png")
        page.click("#next")
        assert visible.first.locator(".name").inner_text() == "img0050.jpg"
        # Sort by Grad-CAM's box share, highest first: the first visible row has the highest share.
        heads = page.locator("#images thead th").all_inner_texts()
        column = heads.index("Grad-CAM: box share") + 1
        page.locator(f"#images thead th:nth-child({column})").click()
        assert page.locator("#pageinfo").inner_text().startswith("1–50")
        shown = visible.locator(f"td:nth-child({column})").evaluate_all(
            "(cells) => cells.map(c => c.dataset.v)"
        )
        everything = [r.scores["gradcam"]["energy_in_box"] for r in rows if r.status == "ok"]
        best = sorted((v for v in everything if not math.isnan(v)), reverse=True)
        assert [float(v) for v in shown[:5]] == pytest.approx(best[:5], abs=1e-6)
        page.locator(f"#images thead th:nth-child({column})").click()  # again: lowest first
        assert float(
            visible.first.locator(f"td:nth-child({column})").get_attribute("data-v")
        ) == pytest.approx(best[-1], abs=1e-6)
        page.select_option("#group", "doctor")
        assert visible.count() == 50 and page.locator("#pageinfo").inner_text().endswith("(page 1 of 3)")
        page.fill("#filter", "img0010")  # a doctor
        assert visible.count() == 1 and visible.first.locator(".name").inner_text() == "img0010.jpg"
        page.fill("#filter", "img0011")  # a nurse: not in the group
        assert visible.count() == 0 and page.locator("#pageinfo").inner_text() == "no image matches"
    finally:
        page.close()


def test_blank_maps_are_not_drawn_as_scores_nor_called_a_missing_box(tmp_path):
    """Every map blank (cannot judge): the box was given, so the page must not ask for one, and
    the faithfulness plot must not draw empty bars over a 0% axis as if measured; a group with
    no readable image is left out of that plot, as it is of the prediction plot."""
    rows = make_rows(tmp_path, 6)
    for row in rows:
        for scores in row.scores.values():
            scores.update({s: math.nan for s in SCORES})  # what a blank map gets
    rows[3].group = "unlisted"  # the unreadable image, alone in its group
    summaries = summarise_groups(rows, METHODS, True)
    write_report(tmp_path / "index.html", rows, METHODS, summaries, "test", True)
    text = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "give --box" not in text
    assert "every map is blank" in text
    assert '"text":"Faithfulness per group"' not in text  # no plot of nothing
    assert "Faithfulness per group: not scored" in text

    rows = make_rows(tmp_path, 6)
    rows[3].group = "unlisted"
    summaries = summarise_groups(rows, METHODS, True)
    write_report(tmp_path / "index.html", rows, METHODS, summaries, "test", True)
    text = (tmp_path / "index.html").read_text(encoding="utf-8")
    figure = next(
        part for part in text.split('<div class="plot">') if '"text":"Faithfulness per group"' in part
    )
    figure = figure.split("<h2")[0]  # up to the next section
    assert '"unlisted"' not in figure and '"doctor"' in figure
