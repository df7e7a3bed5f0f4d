"""Commit every finished run of a results folder as soon as it lands, README tables included.

    python -m hypercl.bench.land results/pmnist-10 results/pmnist-10-class --every 60

Beside a long grid (``hypercl-bench ... --resume --checkpoint-every N &``), this polls the folders'
``runs/*.json``. Each new or changed run is committed on its own, with its folder's summary and
plots and, in the README, the tables whose source is that summary rewritten
(:mod:`hypercl.bench.readme`), so a session that ends mid-grid keeps every run that finished
and the committed README always agrees with the committed summaries (the test suite checks it).

The commit is built in an index of its own, from ``HEAD``: whatever else is edited or staged in
the checkout stays out of it, README.md included (its working copy gets the same table rewrite,
nothing else). A run is landed once the runner has written the summary after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hypercl.bench.readme import render


class Moved(RuntimeError):
    """``HEAD`` moved while a commit was being built (another commit landed meanwhile)."""


def _git(repo: Path, *args: str, env: dict | None = None, input: str | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, input=input, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def pending(repo: Path, folder: str) -> list[str]:
    """The run files of ``folder`` (relative to ``repo``) that git sees new or changed, whose
    summary the runner has written since: ready to land."""
    status = _git(repo, "status", "--porcelain", "--untracked-files=all", "--", f"{folder}/runs")
    summary = repo / folder / "summary.json"
    ready = []
    for line in status.splitlines():
        path = line[3:].strip().strip('"')
        name = Path(path).name
        if not name.endswith(".json") or name.startswith("."):  # the runner's temporary files
            continue
        run = repo / path
        if run.exists() and summary.exists() and summary.stat().st_mtime >= run.stat().st_mtime:
            ready.append(path)
    return sorted(ready)


def land(repo: Path, folder: str, run: str, readme: str = "README.md") -> str:
    """Commit ``run`` with ``folder``'s summary, plots and README tables; the new commit's id.

    Raises:
        Moved: ``HEAD`` changed meanwhile; nothing was changed, try again.
    """
    head = _git(repo, "rev-parse", "HEAD").strip()
    base = repo / folder
    paths = [run] + [
        str(p.relative_to(repo)) for p in sorted(base.iterdir()) if p.name in ("summary.json", "summary.md")
        or p.suffix == ".png"
    ]  # fmt: skip
    source = {f"{folder}/summary.json"}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(repo, "read-tree", head, env=env)
        _git(repo, "add", "--", *paths, env=env)
        if (repo / readme).exists():
            committed = _git(repo, "show", f"{head}:{readme}")
            text, changed = render(committed, repo, only=source)
            if changed:
                blob = _git(repo, "hash-object", "-w", "--stdin", input=text).strip()
                _git(repo, "update-index", "--cacheinfo", f"100644,{blob},{readme}", env=env)
        tree = _git(repo, "write-tree", env=env).strip()
    if tree == _git(repo, "rev-parse", f"{head}^{{tree}}").strip():  # landed before, index not synced
        _sync(repo, head, paths, readme, source)
        return head
    record = json.loads((repo / run).read_text())
    message = f"Run landed in {folder}: {Path(run).name}"
    if "final_avg_acc" in record:
        message += f" (final {100 * record['final_avg_acc']:.2f} %, BWT {100 * record['bwt']:+.2f})"
    if record.get("command"):
        message += f"\n\n{record['command']}\n"
    commit = _git(repo, "commit-tree", tree, "-p", head, "-m", message).strip()
    try:
        _git(repo, "update-ref", "-m", message.splitlines()[0], "HEAD", commit, head)
    except RuntimeError as err:
        raise Moved(str(err)) from None
    _sync(repo, commit, paths, readme, source)
    return commit


def _sync(repo: Path, commit: str, paths: list[str], readme: str, source: set[str]) -> None:
    """The checkout's index entries of ``paths`` and ``readme`` (only) brought up to ``commit``,
    and the working README's tables from ``source`` rewritten as the commit's are."""
    for attempt in range(5):
        try:
            _git(repo, "reset", "-q", commit, "--", *paths, readme)
            break
        except RuntimeError:  # index.lock held by a git command of the user's for a moment
            if attempt == 4:
                raise
            time.sleep(1 + attempt)
    working = repo / readme
    if working.exists():
        text, changed = render(working.read_text(), repo, only=source)
        if changed:
            working.write_text(text)


def land_all(repo: Path, folders: list[str], readme: str = "README.md", tries: int = 5) -> list[str]:
    """Land every pending run of ``folders``; the commit lines, one per run."""
    landed = []
    for folder in folders:
        for run in pending(repo, folder):
            for attempt in range(tries):
                try:
                    commit = land(repo, folder, run, readme)
                    break
                except Moved:
                    time.sleep(1 + attempt)
            else:
                raise RuntimeError(f"{run}: HEAD kept moving over {tries} tries; run again")
            landed.append(f"{commit[:10]} {run}")
    return landed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hypercl.bench.land", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="results folders to watch (e.g. results/pmnist-10)")
    p.add_argument("--every", type=float, default=60.0, help="seconds between looks (default 60)")
    p.add_argument("--once", action="store_true", help="land what is ready now and exit")
    p.add_argument("--readme", default="README.md", help="the README whose tables follow the summaries")
    args = p.parse_args(argv)
    try:
        repo = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel").strip())
    except RuntimeError as err:
        p.error(f"run it inside the git checkout that holds the results ({err})")
    folders = []
    for folder in args.folders:
        path = Path(folder).resolve()
        if not path.is_relative_to(repo):
            p.error(f"{folder} is not inside the checkout {repo.name}/: pass a results folder of it")
        folders.append(path.relative_to(repo).as_posix())
    try:
        while True:
            try:
                for line in land_all(repo, folders, args.readme):
                    print(f"landed {line}", flush=True)
            except RuntimeError as err:
                print(f"land: {err}", file=sys.stderr, flush=True)
                if args.once:
                    return 1
            if args.once:
                return 0
            time.sleep(args.every)  # a failed look is tried again at the next one
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
