"""Known-answer vectors for federated/src/dp.rs, from Google's dp-accounting.

Each case is the epsilon dp-accounting's RDP accountant (default orders, the
default add-or-remove-one neighbouring relation) reports at `delta` after
composing the Poisson-subsampled Gaussian mechanism `steps` times:

    SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)

Re-run from the workspace root with:

    pip install dp-accounting==0.6.0
    python federated/tests/vectors/gen_dp_accounting.py

It overwrites dp_accounting.json next to this script.
"""

import datetime
import itertools
import json
import math
import pathlib
import platform
from importlib import metadata

import dp_accounting
from absl import logging
from dp_accounting import rdp

# dp-accounting warns about each fractional order whose series does not
# converge in 1000 terms; it drops that order (RDP infinity), and so does dp.rs.
logging.set_verbosity(logging.ERROR)

VERSION = "0.6.0"
COMMAND = "python federated/tests/vectors/gen_dp_accounting.py"

QS = [0.001, 0.01, 0.05, 0.1, 0.3, 1.0]
SIGMAS = [0.5, 0.8, 1.0, 1.5, 3.0, 10.0]
STEPS = [1, 10, 100, 1000]
DELTA = 1e-5

# Other deltas, on a sub-grid, so the conversion is pinned away from 1e-5 too.
SUB_QS = [0.01, 0.1, 1.0]
SUB_SIGMAS = [0.8, 1.0, 3.0]
SUB_STEPS = [1, 100, 1000]
SUB_DELTAS = [1e-6, 1e-3]


def epsilon(q, sigma, steps, delta):
    accountant = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    eps = float(accountant.get_epsilon(delta))
    # JSON has no infinity; no case of this grid should need one.
    assert math.isfinite(eps), (q, sigma, steps, delta, eps)
    return eps


def main():
    installed = metadata.version("dp-accounting")
    if installed != VERSION:
        raise SystemExit(f"need dp-accounting=={VERSION}, found {installed}")

    grid = [(q, s, n, DELTA) for q, s, n in itertools.product(QS, SIGMAS, STEPS)]
    grid += [
        (q, s, n, d)
        for d, q, s, n in itertools.product(SUB_DELTAS, SUB_QS, SUB_SIGMAS, SUB_STEPS)
    ]
    cases = [
        {"q": q, "noise_multiplier": s, "steps": n, "delta": d, "epsilon": epsilon(q, s, n, d)}
        for q, s, n, d in grid
    ]

    out = {
        "generated_by": {
            "package": f"dp-accounting {installed}",
            "command": COMMAND,
            "date": datetime.date.today().isoformat(),
            "python": platform.python_version(),
            "numpy": metadata.version("numpy"),
            "scipy": metadata.version("scipy"),
        },
        "mechanism": "SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(noise_multiplier)), steps)",
        "accountant": "dp_accounting.rdp.RdpAccountant() (DEFAULT_RDP_ORDERS, ADD_OR_REMOVE_ONE)",
        "cases": cases,
    }
    # One case a line keeps the file short and its diffs readable.
    text = json.dumps({k: v for k, v in out.items() if k != "cases"}, indent=1)
    rows = ",\n".join("  " + json.dumps(c) for c in cases)
    text = text[: text.rindex("}")].rstrip() + ',\n "cases": [\n' + rows + "\n ]\n}\n"
    path = pathlib.Path(__file__).with_name("dp_accounting.json")
    path.write_text(text)
    print(f"wrote {len(cases)} cases to {path}")


if __name__ == "__main__":
    main()
