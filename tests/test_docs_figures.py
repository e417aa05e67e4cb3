"""Every figure in docs/BENCHMARKS.md and docs/SERVING.md can be traced: each section of measured
figures cites a raw output under docs/raw/, and each cited raw output is committed with the
provenance.json that names its command, commit and machine (tools/provenance.py)."""

import re

import pytest

from tests.distributed.conftest import REPO

DOCS = REPO / "docs"
FIGURE_DOCS = ("BENCHMARKS.md", "SERVING.md")
# A section whose figures cannot have a raw output says why itself: the GPU run predates them.
WITHOUT_RAW_OUTPUT = ("## On a GPU",)


def cited_raw_outputs(text: str) -> set[str]:
    return set(re.findall(r"\]\((raw/[^)#]+?)/?\)", text))


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_raw_output_a_doc_cites_is_committed_with_its_provenance(doc):
    for cited in cited_raw_outputs((DOCS / doc).read_text()):
        folder = DOCS / cited
        assert folder.is_dir(), f"{doc} cites {cited}, which is not in docs/"
        assert list(folder.rglob("provenance.json")), f"{doc}: {cited} has no provenance.json"


@pytest.mark.parametrize("doc", FIGURE_DOCS)
def test_each_section_of_measured_figures_cites_its_raw_output(doc):
    text = (DOCS / doc).read_text()
    assert "raw output not kept" not in text.lower()
    for section in re.split(r"\n(?=## )", text)[1:]:
        title = section.splitlines()[0]
        measured = re.search(r"\d ?(ms|req/s|samples/s|targets/s|GB|GiB)\b", section)
        if measured and not title.startswith(WITHOUT_RAW_OUTPUT):
            assert cited_raw_outputs(section), f"{doc}, {title}: figures ({measured[0]}) without a raw output"
