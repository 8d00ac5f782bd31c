"""An auditor checks the ledger without trusting the node that serves it.

    python examples/auditor.py 127.0.0.1:7400 net/identities/auditor head.json

Fetches the newest head a majority of the consortium's members cosigned
(a C2SP checkpoint) and proves every entry up to it included. The first
run keeps the members' names and keys in head.json, with the head, as
`yilian ledger head --out` does; later runs trust only those members, and
prove the new head consistent with the saved one. All checks are made in
Python.
"""

import json
import pathlib
import sys

import yilian

target, directory, saved = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
me = yilian.Identity(directory)
old = json.loads(saved.read_text()) if saved.exists() else None
cosigners = None if old is None else [yilian.Cosigner(c["name"], bytes.fromhex(c["key"])) for c in old["cosigners"]]
with me.channel(target) as channel:
    auditor = yilian.Auditor(channel, cosigners=cosigners)
    head = auditor.cosigned_head()
    print(f"head: {head.size} entries, root {head.root.hex()}, cosigned by {', '.join(head.signers)}")
    for i in range(head.size):
        auditor.entry(i, head)
    print(f"entries 0..{head.size - 1}: each included in the head")
    if old is not None:
        earlier = yilian.Checkpoint(old["origin"], old["size"], bytes.fromhex(old["root"]), ())
        auditor.consistent(earlier, head)
        print(f"consistent with the earlier head of {earlier.size} entries")
    saved.write_text(json.dumps({
        "origin": head.origin, "size": head.size, "root": head.root.hex(),
        "cosigners": [{"name": c.name, "key": c.key.hex()} for c in auditor.cosigners],
    }))
