import pytest

from srsmlm.errors import InputError
from srsmlm.sheet import load_sheet, names_with_role

HEADER = "name\tstack\tlocalizations\tformat\tpixel_size_nm\trole\n"


def write(tmp_path, rows):
    p = tmp_path / "acq.tsv"
    p.write_text(HEADER + "".join("\t".join(r) + "\n" for r in rows))
    return p


def test_roles(tmp_path):
    p = write(
        tmp_path,
        [
            ("a", "a.tif", "a.xls", "peakfit", "", "train"),
            ("b", "b.tif", "b.csv", "thunderstorm", "107", "both"),
            ("c", "c.tif", "c.xls", "peakfit", "160", "apply"),
        ],
    )
    sheet = load_sheet(p)
    assert names_with_role(sheet, "train") == ["a", "b"]
    assert names_with_role(sheet, "apply") == ["b", "c"]
    assert sheet.loc["b", "pixel_size_nm"] == 107.0


@pytest.mark.parametrize(
    "rows, match",
    [
        (
            [
                ("a", "a.tif", "a.xls", "peakfit", "", "train"),
                ("a", "b.tif", "b.xls", "peakfit", "", "train"),
            ],
            "duplicate acquisition name",
        ),
        ([("a", "a.tif", "a.xls", "nikon", "", "train")], "unknown format 'nikon'"),
        ([("a", "a.tif", "a.csv", "thunderstorm", "", "train")], "pixel_size_nm is empty"),
        ([("a", "a.tif", "a.xls", "peakfit", "", "learn")], "unknown role"),
        ([("a b", "a.tif", "a.xls", "peakfit", "", "train")], "not usable as a folder name"),
        ([("a", "a.tif", "a.xls", "peakfit", "-3", "train")], "positive number"),
    ],
)
def test_bad_sheets(tmp_path, rows, match):
    with pytest.raises(InputError, match=match) as info:
        load_sheet(write(tmp_path, rows))
    assert "\n" not in str(info.value)


def test_missing_sheet_and_columns(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_sheet(tmp_path / "nope.tsv")
    p = tmp_path / "x.tsv"
    p.write_text("name\tstack\nA\ta.tif\n")
    with pytest.raises(InputError, match="missing column"):
        load_sheet(p)
