"""Write the README's result tables from ``results/*/summary.json``: one source for every number.

Each table sits between two markers that name its source::

    <!-- results: results/split-mnist/summary.json -->
    | strategy | final avg acc (%) | ...
    <!-- /results -->

``python -m hypercl.bench.readme`` rewrites every such block from its summary (the table of
``summary.md``, :func:`hypercl.bench.results.markdown_table`, without its heading);
``--check`` changes nothing and exits 1, naming each block that differs (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from hypercl.bench.results import markdown_table

BLOCK = re.compile(r"(<!-- results: (?P<source>\S+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def table_of(summary: dict) -> str:
    """The tables of ``summary.md`` (from the first ``|`` line on)."""
    text = markdown_table(summary)
    return text[text.index("\n|") + 1 :]


def render(readme: str, root: Path, only: set[str] | None = None) -> tuple[str, list[str]]:
    """``readme`` with every block (or those whose source is in ``only``) rewritten from its
    summary under ``root``, and the sources of the blocks that changed."""
    changed: list[str] = []

    def fill(m: re.Match) -> str:
        if only is not None and m["source"] not in only:
            return m[0]
        path = root / m["source"]
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"README block {m['source']}: cannot read its summary ({err}).") from None
        body = table_of(summary)
        if body != m["body"]:
            changed.append(m["source"])
        return m[1] + body + m[4]

    return BLOCK.sub(fill, readme), changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hypercl.bench.readme", description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default="README.md", help="the file to update (default: README.md)")
    p.add_argument("--root", default=".", help="the folder the blocks' sources are relative to")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs")
    args = p.parse_args(argv)
    readme = Path(args.readme)
    try:
        text = readme.read_text()
        new, changed = render(text, Path(args.root))
    except (OSError, ValueError) as err:
        print(f"readme: {err}", file=sys.stderr)
        return 2
    if not BLOCK.search(text):
        print(f"readme: {readme} has no <!-- results: ... --> block", file=sys.stderr)
        return 2
    if args.check:
        for source in changed:
            print(f"readme: the table from {source} differs; run python -m hypercl.bench.readme", file=sys.stderr)
        return 1 if changed else 0
    if changed:
        readme.write_text(new)
    print(f"readme: {len(changed)} table(s) rewritten" + (f": {', '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
