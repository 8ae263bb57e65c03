"""core/jsonable.py: what ``--json`` and the viewer's page send, as JSON can hold it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from keishiki.core.jsonable import jsonable


class _Result:
    def to_dict(self):
        return {"n": np.int64(3)}


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.float32(1.5), 1.5),
        (np.int64(7), 7),
        (b"a\xff", "a\\xff"),
        ((1, 2), [1, 2]),
        ({"k": {3}}, {"k": [3]}),
        (float("nan"), "nan"),
        ([float("-inf"), {"x": math.inf}], ["-inf", {"x": "inf"}]),
        (_Result(), {"n": 3}),
        (object, str(object)),
        ({1: None}, {"1": None}),
    ],
)
def test_jsonable(value, expected):
    got = jsonable(value)
    assert got == expected
    assert json.loads(json.dumps(got, allow_nan=False)) == expected
