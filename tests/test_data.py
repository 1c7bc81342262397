import json
import warnings

import pytest

from openvaccine.data import DataError, read_jsonl, verify_input, pair_table
from conftest import write_jsonl


def _bad(tmp_path, rows, labelled=True):
    p = write_jsonl(tmp_path / "bad.json", rows)
    with pytest.raises(DataError) as e:
        read_jsonl(p, labelled=labelled)
    return str(e.value)


def test_vendored_input_checksums():
    assert verify_input() == []


def test_valid_file_loads(tmp_path, train_rows):
    df = read_jsonl(write_jsonl(tmp_path / "t.json", train_rows[:5]), labelled=True)
    assert len(df) == 5 and list(df["id"]) == [r["id"] for r in train_rows[:5]]


@pytest.mark.parametrize("field, value, words", [
    ("sequence", "GGAXA", ["'sequence'", "'X'", "position 3"]),
    ("sequence", "", ["'sequence'", "empty"]),
    ("structure", "((..", ["'structure'", "length"]),
    ("predicted_loop_type", "EEE", ["'predicted_loop_type'", "length"]),
    ("reactivity", [0.1, 0.2], ["'reactivity'", "seq_scored"]),
    ("seq_scored", 500, ["'seq_scored'"]),
])
def test_field_errors_name_file_row_and_field(tmp_path, train_rows, field, value, words):
    rows = [dict(r) for r in train_rows[:3]]
    rows[1][field] = value
    msg = _bad(tmp_path, rows)
    assert "bad.json" in msg and "row 2" in msg and rows[1]["id"] in msg
    for w in words:
        assert w in msg


def test_unbalanced_structure(tmp_path, train_rows):
    r = dict(train_rows[0])
    s = r["structure"]
    i = s.index(")")
    r["structure"] = s[:i] + "." + s[i + 1:]          # drop one closing bracket
    assert "unbalanced '('" in _bad(tmp_path, [r])
    r["structure"] = ")" + s[1:]
    assert "unbalanced ')' at position 0" in _bad(tmp_path, [r])


def test_bad_loop_letter(tmp_path, train_rows):
    r = dict(train_rows[0])
    r["predicted_loop_type"] = "Z" + r["predicted_loop_type"][1:]
    assert "invalid letter(s) ['Z']" in _bad(tmp_path, [r])


def test_missing_field_duplicate_id_and_bad_json(tmp_path, train_rows):
    r = dict(train_rows[0])
    del r["signal_to_noise"]
    assert "missing field 'signal_to_noise'" in _bad(tmp_path, [r])
    assert "duplicate of row 1" in _bad(tmp_path, [train_rows[0], train_rows[0]])
    p = tmp_path / "broken.json"
    p.write_text(json.dumps(train_rows[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken.json: row 2: not valid JSON"):
        read_jsonl(p, labelled=True)


def test_test_file_needs_no_targets(tmp_path, test_rows):
    df = read_jsonl(write_jsonl(tmp_path / "test.json", test_rows), labelled=False)
    assert len(df) == len(test_rows)
    with pytest.raises(DataError, match="missing field 'signal_to_noise'"):
        read_jsonl(write_jsonl(tmp_path / "t2.json", test_rows), labelled=True)


def test_lowercase_and_t_are_normalised_with_warning(tmp_path, train_rows):
    r = dict(train_rows[0])
    r["sequence"] = r["sequence"].lower().replace("u", "t")
    with pytest.warns(UserWarning, match="normalised"):
        df = read_jsonl(write_jsonl(tmp_path / "t.json", [r]), labelled=True)
    assert df["sequence"][0] == train_rows[0]["sequence"]


def test_pair_table_with_pseudoknots():
    pt = pair_table("((..[[..))..]]")
    assert list(pt[:2]) == [9, 8] and pt[4] == 13 and pt[5] == 12 and pt[13] == 4 and pt[2] == -1
    with pytest.raises(DataError, match=r"unbalanced '\['"):
        pair_table("[[..]")
