"""An auditor checks the ledger without trusting the node that serves it.

    python examples/auditor.py 127.0.0.1:7400 net/identities/auditor head.json

Fetches the signed tree head and proves every entry included in it. If
head.json holds the head of an earlier run, proves the new head consistent
with it. Then saves the new head there for the next run. All proofs are
checked in Python.
"""

import json
import pathlib
import sys

import yilian

target, directory, saved = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
me = yilian.Identity(directory)
with me.channel(target) as channel:
    auditor = yilian.Auditor(channel)
    head = auditor.head()
    print(f"head: {head.size} entries, root {head.root.hex()}, signed by {head.log_key.hex()[:16]}")
    for i in range(head.size):
        auditor.entry(i, head)
    print(f"entries 0..{head.size - 1}: each included in the head")
    if saved.exists():
        old = yilian.Head(**{k: bytes.fromhex(v) if k in ("root", "log_key") else v
                             for k, v in json.loads(saved.read_text()).items()})
        auditor.consistent(old, head)
        print(f"consistent with the earlier head of {old.size} entries")
    saved.write_text(json.dumps({
        "size": head.size, "root": head.root.hex(), "timestamp_ms": head.timestamp_ms,
        "log_key": head.log_key.hex(), "cosigned": head.cosigned,
    }))
