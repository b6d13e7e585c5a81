"""Every ``sbd_stream.<module>[.<name>]`` path the README and docs/*.md name imports (three docs named
``sbd_stream.noise.poisson_counts``; the module is ``sbd_stream.compute.noise``)."""

from __future__ import annotations

import re

from test_docs_paths import ROOT, _resolves


def test_every_sbd_stream_module_path_in_the_docs_imports() -> None:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    dotted = re.compile(r"\bsbd_stream(?:\.[A-Za-z_]\w*)+")
    found = {(p.name, m) for p in texts for m in dotted.findall(p.read_text())}
    assert found and [f for f in sorted(found) if not _resolves(f[1])] == []
