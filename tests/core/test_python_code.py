"""core/python_code.py: one parse of a code text for the TorchScript reader and the scan."""

from __future__ import annotations

import ast

import pytest

from keishiki.core import python_code


@pytest.fixture(autouse=True)
def _empty():
    python_code.forget()
    yield
    python_code.forget()


def test_the_same_text_gives_the_same_tree():
    text = "class A:\n    x: int = 1\n"
    first = python_code.parse(text)
    assert python_code.parse(text) is first
    assert ast.dump(first) == ast.dump(ast.parse(text))
    assert python_code.parse(text + "\n") is not first


def test_kept_trees_stay_within_the_budget(monkeypatch):
    monkeypatch.setattr(python_code, "KEPT_CHARS", 100)
    texts = [f"x{n} = {'1' * 30}\n" for n in range(6)]  # 36 characters each
    trees = [python_code.parse(t) for t in texts]
    assert sum(map(len, python_code._kept)) <= 100
    assert list(python_code._kept) == texts[-2:]  # the newest two
    assert python_code.parse(texts[-1]) is trees[-1]
    assert python_code.parse(texts[0]) is not trees[0]  # parsed again
    big = "y = 1\n" * 40  # over the budget alone: parsed, never kept
    assert python_code.parse(big) is not python_code.parse(big)


@pytest.mark.parametrize("text, error", [("def (:\n", SyntaxError), ("x = '\0'", SyntaxError)])
def test_errors_are_raised_each_time(text, error):
    for _ in range(2):
        with pytest.raises(error):
            python_code.parse(text)
    assert not python_code._kept
