"""mmcourse.data.conll: round trip, -DOCSTART- and blank lines, the tag set, bad lines."""
from __future__ import annotations

import re

import pytest

from mmcourse.data.conll import read_conll, write_conll
from mmcourse.data.text import TAGS
from mmcourse.data.text import Captions


def test_round_trip_of_generated_captions(small_dataset, tmp_path):
    captions = Captions(small_dataset.text[:50].numpy(), small_dataset.tags[:50].numpy())
    sentences = [(s.split(), t) for s, t in zip(captions.strings(), captions.tag_strings())]
    path = write_conll(sentences, tmp_path / "sub" / "captions.conll")   # creates the folder
    assert path == tmp_path / "sub" / "captions.conll"
    assert read_conll(path, tagset=TAGS) == sentences


def test_docstart_and_blank_lines(tmp_path):
    path = tmp_path / "doc.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"      # several blank lines: one boundary
        "-DOCSTART- -X- -X- O\n"
        "Peter NNP B-NP B-PER\n"
        "-DOCSTART- -X- -X- O\n"                            # a DOCSTART also ends a sentence
        "Blackburn NNP B-NP B-PER\n",                       # no final blank line
        encoding="utf-8")
    assert read_conll(path) == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter"], ["B-PER"]),
                                (["Blackburn"], ["B-PER"])]


def test_unknown_tag_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("a O\nred B-COLOR\n\ndisc B-THING\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("bad.conll:4: unknown tag 'B-THING'")):
        read_conll(path, tagset=TAGS)
    assert read_conll(path)[1] == (["disc"], ["B-THING"])  # without a tag set any tag is read


def test_line_without_a_tag_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("a O\nred\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("bad.conll:2: expected 'token ... tag', got 'red'")):
        read_conll(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="CoNLL file not found: .*none.conll"):
        read_conll(tmp_path / "none.conll")


def test_write_rejects_tokens_and_tags_of_different_lengths(tmp_path):
    with pytest.raises(ValueError, match="sentence 1: 2 tokens but 1 tags"):
        write_conll([(["a"], ["O"]), (["red", "disc"], ["B-COLOR"])], tmp_path / "x.conll")


def test_write_rejects_a_token_that_cannot_be_read_back(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        write_conll([(["New York", "is"], ["B-LOC", "O"])], tmp_path / "x.conll")
