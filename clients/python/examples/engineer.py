"""An ML engineer trains a model on devices' data without seeing it.

    python examples/engineer.py 127.0.0.1:7400 net/identities/eng TASK.toml VALIDATION.csv TEST.csv

Submits the task (anchored on the ledger before the node stores it), prints
each round as it closes, downloads the model as ONNX and runs it locally
with onnxruntime on TEST.csv (a header, the schema's label column among the
columns).
"""

import csv
import sys

import yilian

target, directory, task_file, validation, test = sys.argv[1:6]
with yilian.Identity(directory).channel(target) as channel:
    engineer = yilian.Engineer(channel)
    submitted = engineer.submit(task_file, validation)
    print(f"task {submitted.task_id}: {submitted.params} parameters, ledger entry {submitted.ledger_index}")
    for event in engineer.events(submitted.task_id):
        if event.kind == "closed":
            print(f"round {event.round}: accuracy {event.accuracy:.3f}, loss {event.loss:.4f}")
        elif event.kind == "ended":
            print(f"ended: {event.phase} after {event.rounds_closed} rounds")
    model = yilian.Model(engineer.download(submitted.task_id, "onnx"))

with open(test) as f:
    reader = csv.reader(f)
    header = next(reader)
    table = [[float(v) for v in row] for row in reader]
# The label column is the one the task's schema names; the last by convention here.
y = header.index("y") if "y" in header else len(header) - 1
x = [[v for i, v in enumerate(row) if i != y] for row in table]
right = sum(int(p) == int(row[y]) for p, row in zip(model.predict(x), table))
print(f"test accuracy {right / len(table):.3f} on {len(table)} rows, run locally with onnxruntime")
