"""bench/run: every benchmark of issues 9 and 14, one after another, then one table and one chart.

Runs bench/credits, hot_account, usage, balance_read, transactions_page, usage_overview, ratelimit, webhooks,
memory, floors, holds, outbound_webhooks and hosts (each starts its own database, Redis and servers, and writes bench/results/<name>.json),
runs `billing audit` on the database of any benchmark that did not audit itself, keeps each one's outcome (exit,
duration, audit, load average before it) in bench/results/run.json, then writes bench/results/summary.md (the
table: project figure, ceiling measured in the same run, ratio, target, met, load average before) and
bench/results/summary.png (the ratios against their targets, the figures with a limit against it, and the
transactions page's cost against the ledger's size), and prints the table. Exit 1 when a benchmark's checks
failed (an invariant, a lost or doubled write, an error answer: its exit 1, or a failed audit), 2 when one
could not run; a missed target is reported, not an error. See bench/README.md.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import LOGS, RESULTS, ROOT, audit, log, row

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Bench:
    name: str  # bench/<name> writes bench/results/<result>.json
    result: str
    database: str
    args: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)  # added to args by --quick


BENCHES = [
    Bench("credits", "credits", "billing_bench_credits",
          ["--database", "billing_bench_credits", "--redis-port", "6400",
           "--output", str(RESULTS / "credits.json")],
          ["--credits", "2000", "--pgbench-seconds", "10"]),
    Bench("hot_account", "hot_account", "billing_bench_hot_account", [],
          ["--credits", "1000", "--pgbench-seconds", "10"]),
    # issue 14: batches of 100 events from 4 clients (its defaults)
    Bench("usage", "usage", "billing_bench_usage", [], ["--batches", "200", "--pgbench-seconds", "10"]),
    Bench("balance_read", "balance_read", "billing_bench_balance_read", [],
          ["--seconds", "10", "--pgbench-seconds", "10"]),
    Bench("transactions_page", "transactions_page", "billing_bench_transactions_page", [],
          ["--sizes", "10000,100000,1000000", "--requests", "200", "--pgbench-transactions", "300"]),
    Bench("usage_overview", "usage_overview", "billing_bench_usage_overview", [],
          ["--requests", "200", "--pgbench-transactions", "200"]),
    Bench("ratelimit", "ratelimit", "billing_bench_ratelimit", [],
          ["--seconds", "10", "--redis-requests", "100000"]),
    Bench("webhooks", "webhooks", "billing_bench_webhooks", [],
          ["--checkouts", "600", "--workspaces", "300", "--pgbench-seconds", "10"]),
    Bench("memory", "memory", "billing_bench_memory", [], ["--seconds", "30", "--workspaces", "300"]),
    # issue 14: the three hot paths beside their floor apps (bench/floor.py), best server each
    Bench("floors", "floors", "billing_bench_floors", [], ["--quick"]),
    # issue 16: a hold's create and capture beside a balance read; the median of five rounds (with three, identical
    # runs on a shared 2-core machine judged the create 1.40x to 1.75x a read)
    Bench("holds", "holds", "billing_bench_holds", ["--rounds", "5"], ["--seconds", "2"]),
    # issue 17: credits applied/s with a webhook endpoint subscribed vs without, and deliveries/s
    Bench("outbound_webhooks", "outbound_webhooks", "billing_bench_outbound_webhooks", [],
          ["--credits", "2000", "--workspaces", "200"]),
    # issue 18: worker hosts in network namespaces (root only): one vs two, and a host cut off mid-credit
    Bench("hosts", "hosts", "billing_bench_hosts", [], ["--credits", "1000", "--workspaces", "300", "--cuts", "1"]),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs (about 25 minutes)")
    p.add_argument("--only", help="comma-separated benchmarks to run (default: all): "
                                  + ",".join(b.name for b in BENCHES))
    p.add_argument("--report", action="store_true", help="run nothing: table and chart from the last results")
    return p.parse_args()


# --- rows of the table, from each benchmark's JSON

def credits_rows(r: dict) -> list[dict]:
    """Issue 14: against the two-commit ceiling (accept, then apply); issue 9's one-transaction one beside it."""
    two, one, applied = r["two_commit_ceiling"], r["ceiling"]["tps"], r["applied"]["per_s"]
    ratio = r["ratio_to_two_commit_ceiling"]
    figures = (f"{applied:.0f} credits applied/s (HTTP accept → applied)",
               f"{two['tps']:.0f} credits/s (pgbench: accept + apply, two commits, -c {two['clients']}); "
               f"one-transaction pgbench: {one:.0f} tps")
    return [row("credits end to end", *figures, ratio, "≥ 0.5×", ratio >= 0.5),
            row("credits end to end, moonshot (batching)", *figures, ratio, "≥ 1.0×", ratio >= 1.0)]


def ratelimit_rows(r: dict) -> list[dict]:
    # bench/ratelimit is someone else's and its JSON has changed shape: take either
    top, raw = r.get("max_rate") or r["api"], r.get("redis_benchmark_decide") or r["redis_benchmark_acquire"]
    paced = r.get("paced")
    p99, where = (paced["p99_ms"], f"paced at {paced['rate']:.0f}/s") if paced else (top["p99_ms"], "at max load")
    return [row("rate-limit check", f"{top['decisions_per_s']:.0f} decisions/s",
                f"{raw['rps']:.0f}/s (redis-benchmark, same script)", r["ratio"], "≥ 0.3×", r["ratio"] >= 0.3),
            row("rate-limit check, p99", f"p99 {p99} ms {where}", "—", None, "< 5 ms", p99 < 5, value=p99)]


def rows_of(bench: Bench, result: dict) -> list[dict]:
    """The benchmark's rows; one row saying so when its JSON is not of a shape this script knows."""
    try:
        if bench.name == "credits":
            return credits_rows(result)
        if bench.name == "ratelimit":
            return ratelimit_rows(result)
        return result["summary"]
    except (KeyError, TypeError, ValueError) as exc:
        return [row(bench.name, f"{bench.result}.json not understood ({type(exc).__name__}: {exc})", "—", None,
                    "—", None)]


# --- running

def run_one(bench: Bench, quick: bool) -> dict:
    """Run one benchmark (its output shown and kept in bench/results/logs/run-<name>.log); its outcome."""
    path = RESULTS / f"{bench.result}.json"
    argv = [str(ROOT / "bench" / bench.name), *bench.args, *(bench.quick if quick else [])]
    load_before = os.getloadavg()[0]
    log(f"=== {bench.name}: {' '.join(argv[1:]) or '(defaults)'}   [load average {load_before:.1f}]")
    started = time.time()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    with open(LOGS / f"run-{bench.name}.log", "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            print(f"  {line}", end="", flush=True)
            out.write(line)
        code = proc.wait()
    seconds = time.time() - started
    outcome = {"name": bench.name, "exit": code, "seconds": round(seconds, 1), "load_before": round(load_before, 2)}
    if not path.exists() or path.stat().st_mtime < started:
        outcome["error"] = f"exit {code}, no {path.name} written"
        return outcome
    result = json.loads(path.read_text())
    checked = result.get("audit")
    if checked is None:  # the benchmark did not audit its database itself
        checked = audit({**os.environ, "DATABASE_URL": ADMIN_URL.rsplit("/", 1)[0] + f"/{bench.database}"})
    outcome.update(audit=checked, result_mtime=path.stat().st_mtime)
    remember(outcome)
    outcome["rows"] = rows_of(bench, result)
    log(f"=== {bench.name}: exit {code} in {seconds:.0f} s; audit {'ok' if checked['ok'] else checked['problems'][:3]}")
    return outcome


OUTCOMES = RESULTS / "run.json"  # name -> the last outcome bench/run saw: exit, seconds, audit, load before


def remember(outcome: dict) -> None:
    known = json.loads(OUTCOMES.read_text()) if OUTCOMES.exists() else {}
    known[outcome["name"]] = outcome
    OUTCOMES.write_text(json.dumps(known, indent=2) + "\n")


def from_last_results(bench: Bench) -> dict:
    """The benchmark's rows from its JSON, with bench/run's outcome of the run that wrote it (when bench/run ran
    it: its exit, duration, audit and load average before)."""
    path = RESULTS / f"{bench.result}.json"
    if not path.exists():
        return {"name": bench.name, "error": f"no {path.name}"}
    result = json.loads(path.read_text())
    seen = (json.loads(OUTCOMES.read_text()) if OUTCOMES.exists() else {}).get(bench.name, {})
    if seen.get("result_mtime") != path.stat().st_mtime:  # written by a run of its own since
        seen = {"name": bench.name, "audit": result.get("audit") or {"ok": None, "problems": []},
                "load_before": result.get("load_before", "—")}
    return seen | {"rows": rows_of(bench, result)}


# --- the report

def yes_no(value) -> str:
    return "—" if value is None else ("yes" if value else "**no**")


def table(outcomes: list[dict]) -> str:
    """One line per row; its load average before: the row's own measurement's, else its benchmark's."""
    lines = ["| benchmark | project | ceiling (same run) | ratio | target | met | load avg before |",
             "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        if "error" in o:
            lines.append(f"| {o['name']} | did not run: {o['error']} | — | — | — | — | {o.get('load_before', '—')} |")
            continue
        for r in o["rows"]:
            ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}×"
            load = r.get("load_before")
            load = o.get("load_before", "—") if load is None else load
            lines.append(f"| {r['name']} | {r['project']} | {r['ceiling']} | {ratio} | {r['target']} | "
                         f"{yes_no(r['met'])} | {load} |")
    return "\n".join(lines)


def git_state() -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{git('rev-parse', '--short', 'HEAD')}{dirty}"


def report(outcomes: list[dict], quick: bool, seconds: float | None) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "`bench/run --quick`" if quick else "`bench/run`"
    took = f", {seconds / 60:.1f} minutes" if seconds else ""
    lines = [f"# Benchmarks: {mode}, {when}, commit {git_state()}, {os.cpu_count()} CPUs{took}", "",
             "API + worker + PostgreSQL + Redis + load generator on one machine, synchronous_commit on; each "
             "ratio compares the project with its ceiling measured in the same run (for the floors of issue 14: "
             "the thinnest Python app doing the same work, best server each).", "", table(outcomes), "",
             "| benchmark | exit | seconds | audit | load average before |", "|---|---|---|---|---|"]
    for o in outcomes:
        checked = o.get("audit") or {}
        state = "—" if checked.get("ok") is None else ("ok" if checked["ok"] else f"**{len(checked['problems'])} "
                                                                                  "problem(s)**")
        lines.append(f"| {o['name']} | {o.get('exit', '—')} | {o.get('seconds') or '—'} | {state} | "
                     f"{o.get('load_before', '—')} |")
    return "\n".join(lines) + "\n"


_TARGET = re.compile(r"([≥≤<>])\s*([\d.]+)")


def limited(r: dict) -> float | None:
    """A row without a ratio whose figure has a limit (a p99, a peak RSS): its figure over the limit."""
    found = _TARGET.search(r["target"])
    if r["ratio"] is not None or r.get("value") is None or not found or float(found.group(2)) <= 0:
        return None
    return r["value"] / float(found.group(2))


def bar_colour(r: dict) -> str:
    """Green: met; red: not; grey: a row without a target of its own (it shows where a cost goes)."""
    return "tab:grey" if r["met"] is None else ("tab:green" if r["met"] else "tab:red")


LIMIT_AXIS = 3.0  # figures past 3x their limit are drawn at 3x (their value is written beside)


def limits_panel(ax, rows: list[dict]) -> None:
    """Each figure as a share of its limit (< 1: within it)."""
    shares = [min(limited(r), LIMIT_AXIS) for r in rows][::-1]
    ax.barh([r["name"] for r in rows][::-1], shares,
            color=[bar_colour(r) for r in rows][::-1])
    ax.axvline(1.0, color="black", linewidth=2)
    for y, (r, share) in enumerate(zip(rows[::-1], shares)):
        ax.text(share, y, f"  {r['value']:g} ({r['target']})", va="center", fontsize=8)
    ax.set_xlim(0, LIMIT_AXIS * 1.5)
    ax.set_xlabel(f"figure ÷ its limit, drawn up to {LIMIT_AXIS:g} (black: the limit; green: met)")
    ax.set_title("Latencies and memory against their limits")


def chart(outcomes: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [r for o in outcomes for r in o.get("rows", [])]
    rows = [r for r in every if r["ratio"] is not None]
    with_limits = [r for r in every if limited(r) is not None]
    pages = RESULTS / "transactions_page.json"
    sizes = json.loads(pages.read_text())["sizes"] if pages.exists() else []
    fig = plt.figure(figsize=(18, 0.45 * max(len(rows), len(with_limits) * 2, 8) + 3))
    grid = fig.add_gridspec(2, 2, width_ratios=[3, 2], height_ratios=[max(len(with_limits), 1), 6])
    bars, limits, cost = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])
    names = [r["name"] for r in rows][::-1]
    values = [r["ratio"] for r in rows][::-1]
    colours = [bar_colour(r) for r in rows][::-1]
    bars.barh(names, values, color=colours)
    for y, r in enumerate(rows[::-1]):
        found = _TARGET.search(r["target"])
        target = float(found.group(2)) if found else 0.0
        if found:
            bars.plot([target] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
        bars.text(max(r["ratio"], target), y, f"  {r['ratio']:.2f}× ({r['target']})", va="center", fontsize=8)
    bars.set_xlabel("ratio to the ceiling (floors: the floor app) measured in the same run "
                    "(black: target; green: met; grey: no target)")
    bars.set_title("Project against its raw ceiling")
    bars.set_xlim(0, max(values + [1.6]) * 1.35)
    limits_panel(limits, with_limits)
    if sizes:
        x = [s["entries"] for s in sizes]
        for page, marker, colour in (("first", "o", "tab:blue"), ("deep", "s", "tab:orange")):
            cost.plot(x, [s[page]["http"]["p50_ms"] for s in sizes], marker=marker, color=colour,
                      label=f"{page} page, HTTP p50")
            cost.plot(x, [s[page]["bare_sql"]["p50_ms"] for s in sizes], marker=marker, color=colour, linestyle="--",
                      alpha=0.6, label=f"{page} page, bare SQL p50")
            if all("reference_http" in s[page] for s in sizes):
                cost.plot(x, [s[page]["reference_http"]["p50_ms"] for s in sizes], marker=marker, color=colour,
                          linestyle=":", alpha=0.6, label=f"{page} page at {x[0]:,} entries, measured alongside")
        cost.set_xscale("log")
        cost.set_xlabel("ledger entries of the account")
        cost.set_ylabel("ms")
        cost.set_ylim(bottom=0)
        cost.legend(fontsize=8)
    cost.set_title("GET .../transactions?limit=50 against data size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    args = parse_args()
    LOGS.mkdir(parents=True, exist_ok=True)
    chosen = BENCHES if not args.only else [b for b in BENCHES if b.name in args.only.split(",")]
    if args.only and len(chosen) != len(args.only.split(",")):
        print(f"bench/run: --only takes {', '.join(b.name for b in BENCHES)}", file=sys.stderr)
        return 2
    started = time.time()
    outcomes = [from_last_results(b) if args.report else run_one(b, args.quick) for b in chosen]
    seconds = None if args.report else time.time() - started
    text = report(outcomes, args.quick, seconds)
    (RESULTS / "summary.md").write_text(text)
    chart(outcomes, RESULTS / "summary.png")
    print("\n" + text)
    print(f"written: {RESULTS / 'summary.md'}, {RESULTS / 'summary.png'}")
    broken = [o["name"] for o in outcomes if o.get("exit") == 1 or (o.get("audit") or {}).get("ok") is False]
    failed = [o["name"] for o in outcomes if "error" in o or o.get("exit") not in (0, 1, None)]
    if broken:
        print(f"bench/run: checks failed (an invariant, a lost or doubled write, or an error answer) in: "
              f"{', '.join(broken)}; see bench/results/logs/run-<name>.log", file=sys.stderr)
        return 1
    if failed:
        print(f"bench/run: could not run: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
