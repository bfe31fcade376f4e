#!/usr/bin/env python3
"""Render BENCHMARKS.md from one run of scripts/bench.sh.

Arguments: the run directory (criterion/ and figures.jsonl), the run's start time, the benches
that failed (space-separated, may be empty), then the benches that ran. With
`VIGIL_BENCH_PREVIOUS` naming an earlier BENCHMARKS.md, the rows of areas this run did not
measure are carried over from it, marked with the date and commit they were measured at. Criterion's results
give the throughput figures (median time per iteration and the bench's declared throughput);
figures.jsonl gives what the other benches measured (benches/support/report.rs).
"""

import json
import os
import pathlib
import platform
import subprocess
import sys

run_dir = pathlib.Path(sys.argv[1])
started = sys.argv[2]
failed = sys.argv[3].split()
ran = sys.argv[4:]

# Criterion benchmarks that make the report: full id prefix → (area, figure, unit, target).
# Unit "events/s": elements per second; "µs": time per iteration.
CRITERION = [
    ("decode/opa_envoy_ext_authz/auto", "decode", "OPA decision (Envoy ext_authz, ~600 B), format auto-detected, one core", "events/s", (">=", 500_000)),
    ("decode/opa_envoy_ext_authz/pinned", "decode", "OPA decision, format pinned, one core", "events/s", None),
    ("decode/opa_upload_gzip_x100", "decode", "OPA upload (gzip array of 100), one core", "events/s", None),
    ("decode/opa_real_samples", "decode", "OPA real samples, one core", "events/s", None),
    ("decode/envoy", "decode", "Envoy access log, one core", "events/s", None),
    ("decode/hubble", "decode", "Hubble flow (real samples), one core", "events/s", None),
    ("decode/k8s_audit_falco", "decode", "Kubernetes audit (Falco samples, ~1.8 KB), one core", "events/s", None),
    ("decode/k8s_audit_panther", "decode", "Kubernetes audit (Panther samples), one core", "events/s", None),
    ("decode/gke_audit", "decode", "GKE audit, one core", "events/s", None),
    ("decode/aks_wrapped_k8s_audit", "decode", "AKS-wrapped Kubernetes audit, one core", "events/s", None),
    ("decode/native", "decode", "Vigil native JSON, one core", "events/s", None),
    ("store/decode", "chain + write", "decode alone, the same records into Arrow batches of 50 000, one core (the reference of the next two)", "events/s", None),
    ("store/decode_chain", "chain + write", "decode + hash chain + Merkle tree, sealed per 50 000, one core", "events/s", None),
    ("store/decode_chain_write", "chain + write", "decode + chain + durable zstd Parquet file (fsync), one core", "events/s", None),
    ("store/decode_chain_write_bucket", "chain + write", "the same into a store in a bucket (moto on loopback): each file put and acknowledged before its local rename", "events/s", None),
    ("store/bucket_copy", "chain + write", "a reader's new local copy of that bucket (`--store s3://…`: listed, fetched, written durably)", "events/s", None),
    ("verify/store", "verify", "vigil verify: every leaf, chain hash, root and signature (4 logs)", "events/s", (">=", 1_000_000)),
    ("verify/store_decoded", "verify", "vigil verify --decoded (every record decoded again and compared)", "events/s", None),
    ("proof/inclusion_generate_1M", "verify", "inclusion proof, generated from a 1M-leaf log", "µs", None),
    ("proof/inclusion_verify_1M", "verify", "inclusion proof, verified", "µs", None),
    ("proof/consistency_generate_600k_1M", "verify", "consistency proof 600k → 1M, generated", "µs", None),
    ("proof/consistency_verify_600k_1M", "verify", "consistency proof, verified", "µs", None),
    ("detect/default_pack_", "detect", "default rule pack, {groups} groups per per-caller rule, one core", "events/s", (">=", 1_000_000)),
]
# References measured in the same run, for criterion figures: id → (reference id, name).
REFERENCES = {
    "store/decode_chain": ("store/decode", "decode alone"),
    "store/decode_chain_write": ("store/decode", "decode alone"),
    "store/decode_chain_write_bucket": ("store/decode_chain_write", "into a local directory"),
    "verify/store_decoded": ("verify/store", "verify without --decoded"),
}
AREAS = ["decode", "chain + write", "ingest", "detect", "sigma", "detection", "alert latency", "memory", "query", "verify", "storage"]


def criterion_results():
    out = {}
    root = run_dir / "criterion"
    for bench in root.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        ns = est["median"]["point_estimate"]
        tp = meta.get("throughput") or {}
        elements = tp.get("Elements") or (tp.get("ElementsAndBytes") or {}).get("elements")
        nbytes = tp.get("Bytes") or (tp.get("ElementsAndBytes") or {}).get("bytes")
        out[meta["full_id"]] = {
            "ns": ns,
            "per_s": elements / (ns / 1e9) if elements else None,
            "mb_s": nbytes / (ns / 1e9) / 1e6 if nbytes else None,
        }
    return out


def fmt(v, unit):
    if v is None:
        return "—"
    if unit in ("events/s", "records/s"):
        return f"{v:,.0f}".replace(",", " ") + " /s"
    if unit == "×":
        return f"{v:.2f}×"
    if unit == "%":
        return f"{v:.1f} %"
    if unit == "/M":
        return f"{v:.2f} per 1 000 000"
    if unit in ("ms", "µs"):
        return f"{v:,.1f} {unit}".replace(",", " ")
    return f"{v:,.0f} {unit}".replace(",", " ")


def target_str(op, t, unit):
    """A target on the value (">=", "<=") or on the ratio to the reference ("ratio>=", "ratio<=")."""
    if op is None:
        return "—"
    sign = "≥ " if op.endswith(">=") else "≤ "
    return ("ratio " + sign + f"{t:g}") if op.startswith("ratio") else sign + fmt(t, unit)


def met(op, t, v, ratio):
    x = ratio if op and op.startswith("ratio") else v
    if op is None or x is None:
        return ""
    ok = x >= t if op.endswith(">=") else x <= t
    return "**met**" if ok else "**not met**"


rows = []
crit = criterion_results()
for prefix, area, figure, unit, target in CRITERION:
    for full_id, r in sorted(crit.items()):
        if not full_id.startswith(prefix):
            continue
        if prefix.endswith("_"):
            figure = figure.format(groups=full_id[len(prefix):].split("_")[0])
        v = r["per_s"] if unit == "events/s" else r["ns"] / 1e3
        if unit == "events/s" and r["mb_s"]:
            figure += f" ({r['mb_s']:.0f} MB/s)"
        ref = REFERENCES.get(full_id)
        ref_v = crit.get(ref[0], {}).get("per_s") if ref else None
        op, t = target if target else (None, None)
        rows.append((area, figure, v, unit, op, t, ref[1] if ref and ref_v else None, ref_v))
        break

figures = run_dir / "figures.jsonl"
for line in figures.read_text().splitlines() if figures.exists() else []:
    f = json.loads(line)
    rows.append((f["area"], f["figure"], f["value"], f["unit"], f["target_op"], f["target"],
                 f["reference"], f["reference_value"]))


def previous_rows(measured_areas):
    """Rows of an earlier report for areas this run did not measure, with when they were."""
    prev = os.environ.get("VIGIL_BENCH_PREVIOUS")
    if not prev or not pathlib.Path(prev).exists():
        return [], None
    text = pathlib.Path(prev).read_text()
    date = next((l.split("**Date**: ", 1)[1].split(" ")[0] for l in text.splitlines() if "**Date**:" in l), "?")
    build = next((l.split("commit ", 1)[1].strip() for l in text.splitlines() if "**Build**:" in l), "?")
    kept = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] in ("area", "---") or cells[0] in measured_areas:
            continue
        kept.append(cells)
    return kept, f"{date}, commit {build}"


def machine():
    cpu = "unknown"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(l.split()[1]) for l in pathlib.Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    # The report and the logs it writes are not changes to what was measured.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md", ":!benches/logs"], capture_output=True, text=True).stdout.strip()
    return cpu, os.cpu_count(), mem_kb / 1024 / 1024, platform.release(), rustc, commit + (" (with local changes)" if dirty else "")


cpu, cores, mem_gib, kernel, rustc, commit = machine()
carried, carried_from = previous_rows({r[0] for r in rows})
print("# Benchmarks")
print()
print("Written by `scripts/bench.sh` (every bench in `benches/`, release build, one run); do not edit by hand.")
print()
print(f"- **Date**: {started} (run started, UTC)")
print(f"- **Machine**: {cores} cores, {mem_gib:.1f} GiB memory, {cpu}; Linux {kernel}")
print(f"- **Build**: {rustc}; commit {commit}")
print(f"- **Benches run**: {', '.join(ran)}" + (f"; **failed**: {', '.join(failed)} (see `benches/logs/<bench>.log`)" if failed else ""))
if carried:
    print(f"- **Carried over** (not measured in this run; the row says when): {len(carried)} rows from the report of {carried_from}")
print("- The Kafka-facing benches run the real broker (Tansu, in memory) on the same cores as Vigil; "
      "\"one core\" figures are one thread. Ratios are against a reference measured in the same run.")
print()
print("| area | figure | value | target | reference (same run) | ratio | |")
print("|---|---|---|---|---|---|---|")
for area in AREAS + sorted(({r[0] for r in rows} | {c[0] for c in carried}) - set(AREAS)):
    for a, figure, v, unit, op, t, ref, ref_v in rows:
        if a != area:
            continue
        ratio = v / ref_v if ref_v else None
        ref_s = f"{ref}: {fmt(ref_v, unit)}" if ref_v is not None else "—"
        ratio_s = f"{ratio:.2f}" if ratio is not None else "—"
        print(f"| {a} | {figure} | {fmt(v, unit)} | {target_str(op, t, unit)} | {ref_s} | {ratio_s} | {met(op, t, v, ratio)} |")
    for c in carried:
        if c[0] == area:
            # A row carried over before keeps the date it was measured at.
            when = "" if "(measured " in c[1] else f" (measured {carried_from})"
            print(f"| {c[0]} | {c[1]}{when} | " + " | ".join(c[2:]) + " |")
print()
print("How each is measured: the header comment of each bench (`benches/<bench>.rs`); "
      "the raw output behind each row: `benches/logs/<bench>.log` (its first line names the commit "
      "and time of the run it comes from; a bench not run this time keeps the log of its carried-over rows).")
