"""Table 4.1 of the thesis, as each registered method's cost rule gives it."""

import pytest

from keras_mcv import cost, methods


@pytest.mark.parametrize(
    "method,k,alpha,expected",
    [
        ("baseline", 0, 0, (1, 1, 1)),
        ("discard", 0, 0, (3, 1, 1)),
        ("voting", 4, 0, (6, 1, 5)),
        ("search1", 7, 0, (9, 1, 8)),  # the thesis: 9 forwards, 8 steps at K = 7
        ("search2", 7, 0.5, (16, 1, 8)),  # Method 2: 16 forwards
        ("search2", 7, 0.0, (9, 1, 8)),  # no training-half forwards when alpha = 0
        ("search3", 7, 0, (9, 1, 8)),
    ],
)
def test_step_cost(method, k, alpha, expected):
    assert methods.get(method).step_cost(k, alpha) == expected


def test_theoretical_cost():
    assert cost.theoretical_cost({"forward": 500_000, "backward": 156_000, "step": 378_000}) == (656_000, 378_000)
