"""mmcourse.glossary: the article's terms and its pipeline, consistent with the course map."""
from __future__ import annotations

from mmcourse.glossary import GLOSSARY, PIPELINE_EDGES
from mmcourse.diagrams import _MAP_LAYOUT


def test_every_term_has_chinese_english_and_a_place():
    for chinese, english, where in GLOSSARY:
        assert chinese.strip() and english.strip() and where.strip(), (chinese, english, where)
        assert any("\u4e00" <= ch <= "\u9fff" for ch in chinese), chinese  # really Chinese
    assert len({c for c, _, _ in GLOSSARY}) == len(GLOSSARY)  # no term twice
    assert len({e for _, e, _ in GLOSSARY}) == len(GLOSSARY)


def test_pipeline_edges_connect_nodes_of_the_course_map():
    nodes = {n for edge in PIPELINE_EDGES for n in edge}
    assert nodes == set(_MAP_LAYOUT)                 # every edge end is laid out, every box is used
    assert all(src != dst for src, dst in PIPELINE_EDGES)
    assert len(set(PIPELINE_EDGES)) == len(PIPELINE_EDGES)


def test_pipeline_runs_from_data_to_inference():
    """The edges form a DAG from 'multimodal data' (no input) to 'inference' (no output)."""
    sources = {s for s, _ in PIPELINE_EDGES} - {d for _, d in PIPELINE_EDGES}
    sinks = {d for _, d in PIPELINE_EDGES} - {s for s, _ in PIPELINE_EDGES}
    assert sources == {"multimodal data"} and sinks == {"inference"}
    reached, frontier = set(), {"multimodal data"}
    while frontier:
        reached |= frontier
        frontier = {d for s, d in PIPELINE_EDGES if s in frontier} - reached
    assert reached == set(_MAP_LAYOUT)


def test_map_chapters_agree_with_the_glossary():
    """Each map box has a glossary term, and the chapter the glossary gives appears on the box."""
    for node, (_, chapters) in _MAP_LAYOUT.items():
        entries = [where for _, english, where in GLOSSARY if english.split(" (")[0] == node]
        assert len(entries) == 1, node
        assert entries[0] in chapters, (node, entries[0], chapters)
