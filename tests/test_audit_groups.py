"""The groups CSV (parsing and its one-line errors) and the per-group summaries."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from explainers.errors import ExplainerInputError
from explainers.services.audit_groups import (
    ALL,
    check_boxes,
    read_groups,
    summarise_groups,
    write_groups_csv,
    write_predictions_csv,
)
from explainers.services.audit_work import Row

IMAGES = ["a.jpg", "b.jpg", "c.png", "d.png"]


def groups(tmp_path: Path, text: str, group_by: str = "group", **kwargs):
    path = tmp_path / "groups.csv"
    path.write_text(text, encoding="utf-8")
    return read_groups(path, IMAGES, tmp_path / "photos", group_by, **kwargs)


def test_groups_and_boxes_are_read(tmp_path):
    text = "\ufeffimage,label,site,x0,y0,x1,y1\nphotos/a.jpg,nurse,north,10,20,110,120\n\nb.jpg,doctor,south,,,,\nc.png,nurse,south,0,0,223.6,224\n"
    entries = groups(tmp_path, text, group_by="label")
    assert list(entries) == ["a.jpg", "b.jpg", "c.png"]  # a path's last part names the image
    assert entries["a.jpg"].group == "nurse" and entries["a.jpg"].box == (10, 20, 110, 120)
    assert entries["b.jpg"].box is None and entries["b.jpg"].line == 4  # the blank line is counted
    assert entries["c.png"].box == (0, 0, 224, 224)  # rounded to whole pixels
    quoted = groups(tmp_path, 'image,group,,\na.jpg,"Smith, J",,\nb.jpg,"5"" screen",,\n')  # Excel's quoting
    assert quoted["a.jpg"].group == "Smith, J" and quoted["b.jpg"].group == '5" screen'
    by_site = groups(tmp_path, "file;site\na.jpg;north\nd.png;south\n", group_by="site", image_column="file")
    assert {name: e.group for name, e in by_site.items()} == {"a.jpg": "north", "d.png": "south"}
    assert by_site["a.jpg"].box is None


@pytest.mark.parametrize(
    "text, group_by, message",
    [
        ("", "group", "is empty: it needs a header row, e.g. image,group"),
        (
            "name,group\na.jpg,x\n",
            "group",
            "has no column 'image' for the image file names (its columns: name, group)",
        ),
        (
            "image,labels\na.jpg,x\n",
            "label",
            "has no column 'label' to group by (its columns: image, labels); Did you mean 'labels'?",
        ),
        ("image,group,x0,y0\na.jpg,x,1,2\n", "group", "has box columns x0, y0 but not x1, y1: give all four"),
        ("image,group,x0,y0,x1,y1\na.jpg,x,1,2,abc,40\n", "group", "line 2: box x1='abc' is not a number"),
        (
            "image,group,x0,y0,x1,y1\na.jpg,x,1,2,,40\n",
            "group",
            "line 2: the box has no x1; give all of x0,y0,x1,y1",
        ),
        (
            "image,group,x0,y0,x1,y1\na.jpg,x,50,2,10,40\n",
            "group",
            "line 2: the box (50, 2, 10, 40) is empty or negative",
        ),
        ("image,group\na.jpg,x\nz.jpg,y\n", "group", "line 3: image 'z.jpg' is not in"),
        (
            "image,group\na.jpg,x\nb.jpg,y\na.jpg,z\n",
            "group",
            "line 4: image 'a.jpg' is listed twice (also on line 2)",
        ),
        ("image,group\n,x\n", "group", "line 2: the 'image' cell is empty"),
        # An unclosed quote must not swallow the rest of the file into one group name.
        (
            'image,group\na.jpg,x\nb.jpg,"y\nc.png,z\nd.png,w\n',
            "group",
            "line 3: a quoted cell is never closed",
        ),
        ('image,group\na.jpg,"x\nb.jpg,y"\nc.png,z\n', "group", "line 2: the 'group' cell spans lines"),
        ("image,group,x0,y0,x1,y1\na.jpg,x,1,2,30,40,99\n", "group", "line 2 has 7 cells"),
        ("image,group,x0,y0,x1,y1\na.jpg,x,1,2\n", "group", "line 2 has 4 cells but the header has 6"),
        ("image,group,group\na.jpg,x,y\n", "group", "names the column 'group' twice"),
        ("image,group\n\n", "group", "has a header but lists no image: add one line per image, e.g. a.jpg"),
    ],
)
def test_bad_groups_file_one_line(tmp_path, text, group_by, message):
    with pytest.raises(ExplainerInputError) as error:
        groups(tmp_path, text, group_by=group_by)
    text = str(error.value)
    assert message in text and "\n" not in text and str(tmp_path / "groups.csv") in text


def test_missing_file_and_box_outside_the_input(tmp_path):
    with pytest.raises(ExplainerInputError, match="no such file"):
        read_groups(tmp_path / "nope.csv", IMAGES, tmp_path, "group")
    entries = groups(tmp_path, "image,group,x0,y0,x1,y1\na.jpg,x,0,0,10,10\nb.jpg,y,0,0,300,10\n")
    with pytest.raises(
        ExplainerInputError, match=r"line 3: the box of 'b.jpg', \(0, 0, 300, 10\), reaches outside"
    ):
        check_boxes(entries, tmp_path / "groups.csv", (224, 224))


def row(name: str, group: str, prediction: str, share: float, drop: float, box: str = "0,0,10,10") -> Row:
    scores = {
        "gradcam": {
            "energy_in_box": share,
            "average_drop": drop,
            "increase_in_confidence": 0.0 if drop == drop else math.nan,
            "deletion_auc": 0.2,
            "insertion_auc": 0.6,
        }
    }
    return Row(0, name, "", group=group, box=box, box_area=0.25, prediction=prediction, scores=scores)


def test_group_summaries(tmp_path):
    rows = [
        row("a", "nurse", "nurse", 0.8, 0.1),
        row("b", "nurse", "nurse", 0.6, 0.3),
        row("c", "nurse", "doctor", math.nan, math.nan),  # a blank map: cannot judge
        row("d", "doctor", "doctor", 0.1, 0.2),
        Row(0, "e", "", status="unreadable", reason="cut off", group="doctor"),
    ]
    summaries = summarise_groups(rows, ["gradcam"], grouped=True)
    assert [g.name for g in summaries] == [ALL, "doctor", "nurse"]
    everything, doctor, nurse = summaries
    assert (everything.images, everything.audited) == (5, 4)
    assert nurse.predictions == [("nurse", 2), ("doctor", 1)] and doctor.audited == 1
    s = nurse.methods["gradcam"]
    assert s.box_shares == [0.8, 0.6] and s.box_share_mean == pytest.approx(0.7)
    assert s.box_share_std == pytest.approx(math.sqrt(0.02)) and s.cannot_judge == 1
    assert s.average_drop == pytest.approx(0.2) and s.box_area_mean == 0.25
    one = doctor.methods["gradcam"]
    assert one.box_share_mean == pytest.approx(0.1) and math.isnan(one.box_share_std)  # one image: no spread
    write_groups_csv(tmp_path / "groups.csv", summaries, ["gradcam"])
    lines = (tmp_path / "groups.csv").read_text().splitlines()
    assert lines[0].startswith("group,images_count,audited_count,top_prediction,top_prediction_fraction,")
    assert lines[3].startswith("nurse,3,3,nurse,0.6667,0.7000,0.1414,0.2500,2,1,0.2000,")
    write_predictions_csv(tmp_path / "p.csv", summaries)
    assert "nurse,doctor,1,0.3333" in (tmp_path / "p.csv").read_text()


def test_no_box_means_no_share(tmp_path):
    (summary,) = summarise_groups([row("a", "", "x", math.nan, 0.1, box="")], ["gradcam"], grouped=False)
    s = summary.methods["gradcam"]
    assert s.box_shares == [] and math.isnan(s.box_share_mean) and s.cannot_judge == 0
    assert s.average_drop == pytest.approx(0.1)


def test_a_blank_map_without_a_box_cannot_be_judged_either():
    rows = [
        row("a", "", "x", math.nan, 0.1, box=""),  # scored
        row("b", "", "x", math.nan, math.nan, box=""),  # a blank map: no faithfulness score
    ]
    (summary,) = summarise_groups(rows, ["gradcam"], grouped=False)
    assert summary.methods["gradcam"].cannot_judge == 1
    guided = row("c", "", "x", math.nan, math.nan, box="")
    guided.scores = {"guided_backprop": guided.scores["gradcam"]}  # never scored, blank or not
    (summary,) = summarise_groups([guided], ["guided_backprop"], grouped=False)
    assert summary.methods["guided_backprop"].cannot_judge == 0
