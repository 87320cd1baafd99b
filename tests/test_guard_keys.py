"""Many keys in one call: `stillwatch keys create --count N` makes them in one transaction, each shown once."""

from __future__ import annotations

from guard_support import run_cli
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.db import make_engine


def test_keys_create_count_makes_that_many_working_keys(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    code, out, err = run_cli(capsys, "keys", "create", "--account", "fleet", "--count", "25", "--db", db)
    keys = out.split()
    assert code == 0 and len(keys) == len(set(keys)) == 25 and "25 keys" in err
    engine = make_engine(db)
    store = AccountStore(engine)
    assert {store.authenticate(k).account_name for k in keys} == {"fleet"}
    assert len(store.list_keys("fleet")) == 25
    engine.dispose()
    code, _, err = run_cli(capsys, "keys", "create", "--account", "fleet", "--count", "0", "--db", db)
    assert code == 2 and "--count" in err
