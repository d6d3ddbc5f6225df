"""Writes the Mann-Whitney U reference values the statistics module is tested against
(crates/canary-controller/src/canary/fixtures/mannwhitney.json), computed with scipy.stats.mannwhitneyu.
Run once, by hand: python3 -m venv /tmp/v && /tmp/v/bin/pip install scipy && /tmp/v/bin/python scripts/mannwhitney-fixtures.py
"""
import json
import random

import scipy
from scipy.stats import mannwhitneyu

random.seed(13)


def case(name, x, y, method):
    r = mannwhitneyu(x, y, alternative="two-sided", method=method, use_continuity=True)
    return {"name": name, "x": x, "y": y, "method": method, "u": float(r.statistic), "p": float(r.pvalue)}


cases = [
    case("small, no ties, exact", [1.1, 2.3, 3.5, 4.2], [5.0, 6.1, 7.3], "exact"),
    case("small, overlapping, exact", [3.0, 1.0, 4.5, 1.5, 5.9], [2.6, 5.3, 5.8, 9.7, 9.3, 2.4], "exact"),
    case("equal sizes 8, exact", [0.8, 1.9, 2.7, 3.1, 4.4, 5.0, 6.2, 7.7], [1.2, 2.2, 3.9, 4.8, 5.5, 6.6, 8.1, 9.0], "exact"),
    case("with ties, asymptotic", [1, 2, 2, 3, 3, 3, 4], [3, 3, 4, 4, 5, 5, 6], "asymptotic"),
    case("identical, asymptotic", [2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0], "asymptotic"),
    case("shifted normal 30/30, asymptotic", [round(random.gauss(10, 2), 3) for _ in range(30)],
         [round(random.gauss(12, 2), 3) for _ in range(30)], "asymptotic"),
    case("same distribution 50/40, asymptotic", [round(random.gauss(100, 15), 2) for _ in range(50)],
         [round(random.gauss(100, 15), 2) for _ in range(40)], "asymptotic"),
    case("latencies with ties 20/25, asymptotic", [random.choice([5, 10, 20, 50, 100]) for _ in range(20)],
         [random.choice([5, 10, 20, 50, 100, 200]) for _ in range(25)], "asymptotic"),
    case("small, no ties, asymptotic", [1.1, 2.3, 3.5, 4.2], [5.0, 6.1, 7.3], "asymptotic"),
]
out = {"generator": f"scipy {scipy.__version__} mannwhitneyu(x, y, alternative='two-sided', use_continuity=True)",
       "cases": cases}
with open("crates/canary-controller/src/canary/fixtures/mannwhitney.json", "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
