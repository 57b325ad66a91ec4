"""Row 16 of issue 10: backups of an emptied database never push the good ones out.

A timer on a fresh disaster-recovery host, or a backup of the wrong database, writes
backups far smaller than the tier's recent median. They are kept and flagged, do not
count toward retention, and the good history survives until a normal-size backup
follows or the operator accepts the new size (`pyops prune --accept ID`).
"""

from __future__ import annotations

import json
import sqlite3

from integration_helpers import Pyops, compression, make_sample_db, sqlite_target


def test_a_run_of_tiny_backups_keeps_the_good_ones(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=4000)
    pyops.write(compression("none") + "[retention]\ndaily = 2\n\n" + sqlite_target("app", db))
    good = [pyops.backup("app") for _ in range(3)]
    assert [b["id"] for b in pyops.listed()] == good[::-1][:2]  # daily = 2 as usual

    db.unlink()  # the application now writes into an empty database
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    bad = [pyops.backup("app") for _ in range(3)]

    listed = [b["id"] for b in pyops.listed()]
    assert listed == bad[::-1] + good[::-1][:2]  # the two good ones survived three prunes
    rows = json.loads(pyops.ok("prune", "--dry-run", "--format", "json").stdout)["backups"]
    reasons = {r["id"]: r["reason"] for r in rows}
    assert all("not counted" in reasons[b] for b in bad), reasons
    assert "pyops prune --accept" in reasons[bad[0]]

    # the operator says the new size is right: from then on it is the normal
    pruned = json.loads(pyops.ok("prune", "--accept", bad[0], "--format", "json").stdout)["backups"]
    deleted = {r["id"] for r in pruned if not r["keep"]}
    assert deleted == set(good[-2:]) | {bad[0]}
    assert [b["id"] for b in pyops.listed()] == bad[::-1][:2]


def test_accepting_an_unknown_backup_changes_nothing(pyops: Pyops) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=10)
    pyops.write(sqlite_target("app", db))
    first = pyops.backup("app")
    proc = pyops.run("prune", "--accept", "app.daily.20200101T000000Z")
    assert proc.returncode == 1 and "no complete backup" in proc.stderr, proc.stderr
    assert [b["id"] for b in pyops.listed()] == [first]
