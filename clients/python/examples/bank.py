"""A bank asks one consented question about a customer's encrypted record.

    python examples/bank.py 127.0.0.1:7400 net/identities/bank c1 GRANT_ID

Asks `income >= 100000` under the grant the holder made (docs/bank.md), and
prints the answer only after checking it here: the Groth16 proof, the
verifying key and the record's anchor on the ledger, and that the proof
states the question asked. The node never shows the record.
"""

import sys

import yilian

target, directory, record, grant = sys.argv[1:5]
me = yilian.Identity(directory)
with me.channel(target) as channel:
    bank = yilian.Bank(channel)
    answer = bank.ask(record, grant, [yilian.Predicate("income", "gte", 100000)])
    print(
        f"{record}: income >= 100000 is {answer.answer}; proof verified here against the "
        f"verifying key at ledger entry {answer.vk_anchor_index} and the record anchor at "
        f"entry {answer.anchor_index}, under the members' cosigned head of size {answer.head.size}"
    )
