"""``floe runs list|delete|gc|pack|unpack``: see the run cache, delete runs, clean what
nothing can use (failed, stale and corrupt runs), so a crash or a full disk never leaves a
user stuck, and carry finished runs to another machine (floe.store.archive)."""
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
    if args.action in ("pack", "unpack"):
        return _archive(args)
    if args.ids:
        raise ValueError("floe runs gc takes no run ids (it finds failed, stale and corrupt runs)")
    found = collect_garbage(dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    return {verb: ", ".join(f"{i} ({why})" for i, why in found) or "nothing", "count": len(found),
            "runs": [{"run": i, "status": why} for i, why in found]}


def _archive(args) -> dict:
    from floe.store.archive import pack_runs, unpack_runs
    if not args.archive:
        raise ValueError(f"floe runs {args.action} needs --archive FILE.tar.gz")
    if args.action == "pack":
        packed = pack_runs(args.ids, args.archive, with_inputs=args.with_inputs)
        return {"packed": ", ".join(packed), "count": len(packed), "archive": args.archive}
    if args.ids:
        raise ValueError("floe runs unpack takes no run ids: it adds every run of --archive")
    done = unpack_runs(args.archive)
    summary = {what: ", ".join(ids) or "none" for what, ids in
               (("added", done["added"]), ("replaced", done["replaced"]), ("kept", done["kept"]),
                ("busy", done["busy"]))}
    return {**summary, "count": len(done["added"]) + len(done["replaced"]), "runs": done}


COMMANDS = {
    "runs": Command(
        "list the runs in the cache, delete runs, clean (gc) failed, stale and corrupt ones, or "
        "pack finished runs into an archive another machine unpacks",
        (positional("action", "list, delete RUN..., gc, pack RUN... --archive FILE, or unpack --archive FILE",
                    choices=("list", "delete", "gc", "pack", "unpack")),
         positional("ids", "run ids (for delete and pack)", many=True),
         flag("dry_run", "gc: only list what would be deleted"),
         text_flag("archive", "pack, unpack: the .tar.gz archive of runs to write or read"),
         flag("with_inputs", "pack: also the runs they were computed from, as their configs name them (a "
                             "score run's warm-up, a compare's score and probe runs)"),
         flag("json", "print a machine-readable summary"),
         text_flag("out", "folder holding the runs (default: $FLOE_CACHE or the project's cache/)")),
        _runs),
}
