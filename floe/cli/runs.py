"""``floe runs list|delete|gc``: see the run cache, delete runs, clean what nothing can use
(failed, stale and corrupt runs), so a crash or a full disk never leaves a user stuck."""
from __future__ import annotations

import time

from floe.cli.options import Command, flag, positional, text_flag

__all__ = ["COMMANDS", "run_rows"]


def run_rows(root=None) -> list[dict]:
    """One row per run folder: id, kind, status (``corrupt`` when unreadable), size, date."""
    from floe.store.runs import Run, cache_root, health
    folder = (root or cache_root()) / "runs"
    rows = []
    for path in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True) if folder.exists() else []:
        if not path.is_dir():
            continue
        run = Run(path)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        rows.append({"run": run.id, "kind": run.kind,
                     "status": health(run),
                     "mb": round(size / 2 ** 20, 2),
                     "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))})
    return rows


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    lines = ["  ".join(k.ljust(w) for k, w in widths.items())]
    lines += ["  ".join(str(r[k]).ljust(w) for k, w in widths.items()) for r in rows]
    return "\n" + "\n".join(lines)


def _runs(args) -> dict:
    from floe.store.runs import RunLockedError, collect_garbage, open_run
    if args.action == "list":
        rows = run_rows()
        return {"runs": rows, "count": len(rows), "table": _table(rows)}
    if args.action == "delete":
        if not args.ids:
            raise ValueError("say which runs to delete: floe runs delete RUN [RUN ...] (see floe runs list)")
        deleted, locked = [], []
        for run_id in args.ids:
            try:
                open_run(run_id).delete()
                deleted.append(run_id)
            except RunLockedError:
                locked.append(run_id)
        if locked:
            raise ValueError(f"in use by a live process, not deleted: {', '.join(locked)}"
                             + (f" (deleted: {', '.join(deleted)})" if deleted else ""))
        return {"deleted": ", ".join(deleted), "count": len(deleted)}
    if args.ids:
        raise ValueError("floe runs gc takes no run ids (it finds failed, stale and corrupt runs)")
    found = collect_garbage(dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    return {verb: ", ".join(f"{i} ({why})" for i, why in found) or "nothing", "count": len(found),
            "runs": [{"run": i, "status": why} for i, why in found]}


COMMANDS = {
    "runs": Command(
        "list the runs in the cache, delete runs, or clean (gc) failed, stale and corrupt ones",
        (positional("action", "list, delete RUN..., or gc", choices=("list", "delete", "gc")),
         positional("ids", "run ids (for delete)", many=True),
         flag("dry_run", "gc: only list what would be deleted"),
         flag("json", "print a machine-readable summary"),
         text_flag("out", "folder holding the runs (default: $FLOE_CACHE or the project's cache/)")),
        _runs),
}
