from scrumbot.errors import IndexMissingError
import pytest


def test_answer_with_fakes_cites_relative_source(fake_assistant):
    fake_assistant.index()
    a = fake_assistant.answer("Which certification is sought by business analysts?")
    assert not a.refused
    assert a.sources and all(s.source == "product-owner-101.txt" for s in a.sources)
    assert a.text  # echo of the first passage


def test_missing_index_says_what_to_run(fake_assistant):
    with pytest.raises(IndexMissingError, match="scrumbot index"):
        fake_assistant.answer("Which cert suits a business analyst?")
