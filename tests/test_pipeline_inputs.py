"""The input schema read from a fitted pipeline and the importer's statement over it, rows as a typed set's
DataFrame and back, and a sample CSV's column types: in process, without a server (issue 23 item 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from predserve.client.csvfile import CsvFormatError, sample_column_types
from predserve.server.domain import Column, ColumnType, Schema
from predserve.server.services.pipeline_inputs import (
    frame_of_rows,
    infer_schema,
    merge_stated,
    rows_of_frame,
    sample_frame,
)

NUMBER, STRING = ColumnType.NUMBER, ColumnType.STRING
FRAME = pd.DataFrame(
    {"age": [20.0, 30.0, 40.0, 50.0], "plan": ["a", "b", "a", "c"], "zip": [1.0, 2.0, 1.0, 3.0], "x": [0.0, 1, 2, 3]}
)
LABELS = np.array([0, 1, 0, 1])


def fitted(prepare: ColumnTransformer) -> Pipeline:
    return Pipeline([("prepare", prepare), ("model", LogisticRegression())]).fit(FRAME, LABELS)


def test_columns_chosen_by_name_by_position_and_by_mask_are_all_read() -> None:
    by_name = fitted(ColumnTransformer([("n", StandardScaler(), ["age", "x"]), ("s", OneHotEncoder(), ["plan"])]))
    by_position = fitted(
        ColumnTransformer([("s", OrdinalEncoder(), [1]), ("z", OneHotEncoder(), [2])], remainder="passthrough")
    )
    by_mask = fitted(ColumnTransformer([("s", OneHotEncoder(), [False, True, False, False])], remainder="passthrough"))
    expected = Schema(
        (Column("age", NUMBER), Column("plan", STRING), Column("zip", NUMBER), Column("x", NUMBER)), by_name=True
    )
    for pipeline in (by_name, by_position, by_mask):
        schema, categories = infer_schema(pipeline)
        assert schema == expected
        assert categories == {"plan": ["a", "b", "c"]}  # zip's categories are numbers: a number column


def test_a_pipeline_of_numbers_takes_a_matrix_as_before() -> None:
    on_frame = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())]).fit(FRAME[["age", "x"]], LABELS)
    on_matrix = on_frame.fit(FRAME[["age", "x"]].to_numpy(), LABELS)
    assert infer_schema(on_frame)[0] is None and infer_schema(on_matrix)[0] is None


def test_the_importer_states_or_corrects_and_a_column_it_names_must_exist() -> None:
    inferred = Schema((Column("age", NUMBER), Column("comment", NUMBER)), by_name=True)
    corrected = merge_stated(inferred, ["age", "comment"], 2, [Column("comment", STRING)])
    assert corrected == Schema((Column("age", NUMBER), Column("comment", STRING)), by_name=True)
    with pytest.raises(ValueError, match="does not take: coment; it takes age, comment"):
        merge_stated(inferred, ["age", "comment"], 2, [Column("coment", STRING)])
    # Fitted on a matrix: the statement names the columns, in order, and must have its width.
    named = merge_stated(None, [], 2, [Column("a", NUMBER), Column("b", NUMBER)])
    assert named == Schema.numbers(("a", "b")) and named.numeric
    with pytest.raises(ValueError, match="has 1 column"):
        merge_stated(None, [], 2, [Column("a", NUMBER)])
    assert merge_stated(None, [], 3, []) == Schema.numbers(("f0", "f1", "f2"))


def test_rows_round_trip_through_a_dataframe_with_missing_values() -> None:
    schema = Schema((Column("age", NUMBER), Column("plan", STRING)), by_name=True)
    rows = [[30.0, "pro"], [None, None], [41.5, "basic"]]
    frame = frame_of_rows(schema, rows)
    assert list(frame.dtypes) == [np.dtype(np.float64), np.dtype(object)]
    # NaN for a missing string, as pandas.read_csv gives it: SimpleImputer takes NaN as missing, None as a category
    assert np.isnan(frame["age"][1]) and np.isnan(frame["plan"][1])
    assert rows_of_frame(frame) == rows
    assert rows_of_frame(frame.assign(plan=["pro", None, "basic"])) == rows  # None for a string too
    sample = sample_frame(schema, {"plan": ["basic", "pro"]}, 3)
    assert sample["plan"].tolist() == ["basic", "pro", "basic"]


def test_a_sample_csv_gives_each_column_its_type(tmp_path: Path) -> None:
    path = tmp_path / "sample.csv"
    path.write_text("age,plan,vip,empty,churned\n30,pro,true,,yes\n,basic,false,,no\n41.5,,TRUE,,no\n")
    assert sample_column_types(path) == {"age": "number", "plan": "string", "vip": "number", "churned": "string"}
    assert "churned" not in sample_column_types(path, "churned")
    with pytest.raises(CsvFormatError, match="has no column 'target'"):
        sample_column_types(path, "target")
