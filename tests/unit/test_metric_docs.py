"""Every metric exported is in its module's documented table (name, and type for the live
ones), and the table names nothing that is not exported: the list cannot drift."""

from __future__ import annotations

import re

import pipelines.live.metrics as live
import pipelines.ops.pipeline_metrics as pipeline
from quantdag.metrics import main, metric_rows


def _documented(doc: str) -> set[str]:
    return set(re.findall(r"^(quantdag_[a-z_]+)", doc, flags=re.MULTILINE))


def test_the_documented_tables_list_exactly_what_is_exported() -> None:
    exported = {name for _, name, *_ in metric_rows()}
    documented = _documented(live.__doc__ or "") | _documented(pipeline.__doc__ or "")
    # a name split over two lines in the table: the counter's _total on the next line
    documented = {n + "_total" if n + "_total" in exported else n for n in documented}
    assert documented == exported, (documented - exported, exported - documented)


def test_the_live_table_gives_each_metric_its_type() -> None:
    types = {name: kind for where, name, kind, *_ in metric_rows() if where == "live"}
    doc = live.__doc__ or ""
    for name, kind in types.items():
        base = name.removesuffix("_total")
        line = next(line for line in doc.splitlines() if line.startswith(base))
        assert kind in line, (name, kind, line)


def test_the_list_prints_as_a_markdown_table(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| where | name") and len(out) == 2 + len(metric_rows())
