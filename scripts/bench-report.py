#!/usr/bin/env python3
"""Renders scripts/bench's results into docs/benchmarks.md, between the GENERATED markers
(the hand-written notes around them are kept; a missing file gets a skeleton).

    bench-report.py RESULTS COMMANDS DOC LOAD_START LOAD_END QUICK   # write the document
    bench-report.py --judge sustained|delivers RESULTS LABEL           # exit 0 if that run passes

The verdicts on a run, used by scripts/bench to steer its sweep and here for the tables:"""
import json
import os
import platform
import subprocess
import sys


def clean(r):
    """Nothing lost, nothing duplicated (reconnects with recovery allowed)."""
    return r["lost"] == 0 and r["duplicated"] == 0


def sustained(r):
    """Clean, no client cut off (no queue overflowed, so no reconnect), p99 within 50 ms."""
    return clean(r) and r.get("reconnects", 0) == 0 and r["latency_ms"]["p99"] <= 50


def offered(r):
    """Deliveries/s offered by a rate-limited fan-out run (None for 'as fast as possible')."""
    return r["rate"] * r["clients"] if r["rate"] > 0 else None


def delivers(r):
    """Clean, and at least 95 % of the offered deliveries/s arrived: not yet past saturation."""
    o = offered(r)
    return clean(r) and (o is None or r["deliveries_per_sec"] >= 0.95 * o)


if len(sys.argv) > 1 and sys.argv[1] == "--judge":
    verdict, results_path, label = sys.argv[2:5]
    judge = {"sustained": sustained, "delivers": delivers}[verdict]
    for line in open(results_path):
        r = json.loads(line)["report"]
        if r["label"] == label:
            sys.exit(0 if judge(r) else 1)
    sys.exit(1)

results_path, commands_path, doc_path, load_start, load_end, quick = sys.argv[1:7]
runs = [json.loads(l) for l in open(results_path) if l.strip()]
by = {r["report"]["label"]: r for r in runs}


def past_saturation(label):
    """A run of the saturation sweep that fell short (the one that ended the sweep)."""
    return by[label].get("phase") == "saturation" and not delivers(by[label]["report"])


def sweep_mark(label):
    """Why a run ended the saturation sweep, for its row."""
    if not past_saturation(label):
        return ""
    r = by[label]["report"]
    if not clean(r):
        return " (ended the sweep: lost or duplicated)"
    return f" (ended the sweep: {r['deliveries_per_sec'] / offered(r):.0%} of offered)"

commands = {}
for line in open(commands_path):
    label = line.rsplit("--label ", 1)[-1].strip()
    commands[label] = line.strip()


def machine():
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} CPUs ({model}), {mem} MiB RAM, Linux {platform.release()}; "
            f"{rustc}; {redis.split(' sha=')[0]}")


def f(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def row(label, cells):
    return "| " + " | ".join([label] + cells) + " |"


def fanout_table(labels):
    lines = [
        "| run | clients | gw | rate /s | deliveries/s | ratio to ceiling | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lost | dup | reconnects | recovered / not | publish errors | gateway CPU µs/delivery | all servers CPU µs/delivery | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label in labels:
        if label not in by:
            continue
        r = by[label]["report"]
        l = r["latency_ms"]
        name = f"`{label}`{sweep_mark(label)}"
        lines.append(row(name, [
            str(r["clients"]), str(r["gateways"]),
            "max" if r["rate"] == 0 else f(r["rate"]),
            f(r["deliveries_per_sec"]), f(r.get("ratio_to_ceiling"), 2),
            f(l["p50"], 2), f(l["p90"], 2), f(l["p99"], 2), f(l["p999"], 2), f(l["max"], 1),
            str(r["lost"]), str(r["duplicated"]), str(r.get("reconnects", 0)),
            f"{r.get('recovered', 0)} / {r.get('not_recovered', 0)}", str(r["publish_errors"]),
            f(r.get("gateway_cpu_us_per_delivery"), 3), f(r.get("server_cpu_us_per_delivery"), 3),
            by[label]["load"],
        ]))
    return "\n".join(lines)


labels = [r["report"]["label"] for r in runs]
fan = [l for l in labels if l.startswith("ceiling") or l.startswith("fanout")]
scale_c = [l for l in labels if l.startswith("scale-c")]
scale_g = [l for l in labels if l.startswith("scale-g")]
out = []
out.append(f"Machine: {machine()}. Load average (1, 5, 15 min) at the start: {load_start}; "
           f"at the end: {load_end}. {'Quick sizes (`--quick`).' if quick == '1' else ''}")
out.append("")
out.append("### Fan-out and the ceiling (100-byte messages, one channel)")
out.append("")
out.append(fan_table := fanout_table(fan))
out.append("")
if "channels" in by:
    r = by["channels"]["report"]
    l = r["latency_ms"]
    out.append("### Channels (a channel per client plus one shared; 1% of publishes to the shared one)")
    out.append("")
    out.append("| clients | publishes/s | published | deliveries/s | p50 ms | p99 ms | max ms | lost | dup | publish errors | gateway CPU µs/delivery | load |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    out.append(row(str(r["clients"]), [f(r["rate"]), str(r["published"]), f(r["deliveries_per_sec"]),
               f(l["p50"], 2), f(l["p99"], 2), f(l["max"], 1), str(r["lost"]), str(r["duplicated"]),
               str(r["publish_errors"]), f(r.get("gateway_cpu_us_per_delivery"), 3), by["channels"]["load"]])[2:])
    out.append("")
for label in [l for l in labels if l.startswith("connect")]:
    r = by[label]["report"]
    h, s = r["handshake_ms"], r["subscribed_ms"]
    out.append(f"### Connect (`{label}`: idle connections, each subscribed to one channel)")
    out.append("")
    out.append("| connections | failed | connections/s | handshake p50 / p99 / max ms | subscribed p50 / p99 / max ms | gateway RSS KiB per connection | load |")
    out.append("|---:|---:|---:|---|---|---:|---|")
    out.append("| " + " | ".join([str(r["clients"]), str(r["clients_failed"]), f(r["connections_per_sec"]),
               f"{f(h['p50'],2)} / {f(h['p99'],2)} / {f(h['max'],1)}",
               f"{f(s['p50'],2)} / {f(s['p99'],2)} / {f(s['max'],1)}",
               f(r["gateway_kib_per_connection"], 2), by[label]["load"]]) + " |")
    out.append("")
    out.append("| process | RSS before KiB | RSS after KiB |")
    out.append("|---|---:|---:|")
    for u in r["servers"]:
        out.append(f"| {u['name']} | {u['rss_kib_before']:,} | {u['rss_kib_after']:,} |")
    out.append("")
if scale_c:
    out.append("### How cost grows with clients (200k deliveries/s offered, 2 gateways)")
    out.append("")
    out.append(fanout_table(scale_c))
    out.append("")
if scale_g:
    out.append("### How cost grows with gateways (1,000 clients, 300k deliveries/s offered)")
    out.append("")
    out.append(fanout_table(scale_g))
    out.append("")
json_labels = [l for l in labels if l.startswith("json")]
if json_labels:
    out.append("### What users see: JSON clients, HTTP publishing, beside a JSON ceiling")
    out.append("")
    out.append("Chorus's JSON form (text frames) read by the same clients, publications over HTTP "
               "with 16 in flight; `json-ceiling-r*` is the ceiling server speaking JSON to the same "
               "clients at the same rate.")
    out.append("")
    out.append(fanout_table(json_labels))
    out.append("")
# The targets, each with the run that measures it.
ceil = by.get("ceiling", {}).get("report", {}).get("deliveries_per_sec")
fan_runs = [by[l]["report"] for l in fan if l.startswith("fanout")]
clean_runs = [r for r in fan_runs if clean(r)]
targets = []
if clean_runs:
    # Saturation throughput: the most deliveries/s of a fan-out run without loss or duplicate
    # (fanout-max, the sweep, and the saturation runs past it), against this run's ceiling.
    sat = max(clean_runs, key=lambda r: r["deliveries_per_sec"])
    ratio = sat["deliveries_per_sec"] / ceil if ceil else None
    recon = sat.get("reconnects", 0)
    how = (f"; {recon} reconnects, {sat.get('recovered', 0)} recovered, {sat.get('not_recovered', 0)} not"
           if recon else "; no reconnects")
    targets.append(("Saturation throughput ≥ 0.8 × ceiling",
                    f"{f(sat['deliveries_per_sec'])}/s = {f(ratio, 2)} × ceiling ({f(ceil)}/s), p99 {f(sat['latency_ms']['p99'], 1)} ms{how}",
                    ratio is not None and ratio >= 0.8, sat["label"]))
    cpu = sat.get("gateway_cpu_us_per_delivery")
    targets.append(("Gateway CPU per delivery at saturation ≤ 1.0 µs", f"{f(cpu, 3)} µs", cpu is not None and cpu <= 1.0, sat["label"]))
    near = [r for r in clean_runs if r["rate"] > 0 and abs(r["rate"] * r["clients"] - 100_000) <= 10_000]
    if near:
        r = near[0]
        # The generator's own floor at this rate: the ceiling server, same clients, same rate.
        floor = by.get("ceiling-r100", {}).get("report")
        also = f" (the ceiling server at the same rate: {f(floor['latency_ms']['p99'], 2)} ms)" if floor else ""
        targets.append(("p99 at 100k deliveries/s ≤ 10 ms", f"{f(r['latency_ms']['p99'], 2)} ms{also}", r["latency_ms"]["p99"] <= 10, r["label"]))
    ok = [r for r in clean_runs if r["rate"] > 0 and sustained(r) and r["deliveries"] == r["expected_deliveries"]]
    if ok:
        best = max(ok, key=lambda r: r["deliveries_per_sec"])
        targets.append(("Highest sustained rate: p99 ≤ 50 ms, no queue growth", f"{f(best['deliveries_per_sec'])}/s (p99 {f(best['latency_ms']['p99'], 1)} ms) = {f(best['deliveries_per_sec'] / ceil if ceil else None, 2)} × ceiling", True, best["label"]))
for rate in (100, 500, 1000):
    jc = by.get(f"json-ceiling-r{rate}", {}).get("report")
    jr = by.get(f"json-r{rate}", {}).get("report")
    if jc and jr and rate >= 500:
        ratio = jr["latency_ms"]["p99"] / jc["latency_ms"]["p99"] if jc["latency_ms"]["p99"] else None
        targets.append((f"JSON clients, {f(rate * jr['clients'])} deliveries/s offered: p99 ≤ 1.5 × the JSON ceiling's",
                        f"{f(jr['latency_ms']['p99'], 1)} ms against {f(jc['latency_ms']['p99'], 1)} ms = {f(ratio, 2)}×; "
                        f"{f(jr['deliveries_per_sec'])} delivered/s",
                        ratio is not None and ratio <= 1.5 and delivers(jr), f"json-r{rate}"))
    if jr and rate == 100:
        cpu = jr.get("server_cpu_us_per_delivery")
        targets.append((f"JSON clients, {f(rate * jr['clients'])} deliveries/s: all servers' CPU ≤ 5 µs per delivery",
                        f"{f(cpu, 2)} µs", cpu is not None and cpu <= 5, f"json-r{rate}"))
for label in [l for l in labels if l.startswith("connect")]:
    r = by[label]["report"]
    k = r.get("gateway_kib_per_connection")
    targets.append((f"{r['clients']:,} idle connections: gateway RSS ≤ 6 KiB per connection", f"{f(k, 2)} KiB", k is not None and k <= 6, label))
    cps, p99 = r.get("connections_per_sec"), r["handshake_ms"]["p99"]
    targets.append(("Connect ≥ 15,000/s, p99 handshake ≤ 100 ms", f"{f(cps)}/s, p99 {f(p99, 1)} ms", cps is not None and cps >= 15000 and p99 <= 100, label))
# Every run counts, except the saturation sweep's last one when it went past saturation: it is
# the probe that found the limit by overloading (its loss, if any, is shown here and in its row).
counted = [l for l in labels if not past_saturation(l)]
lost = sum(by[l]["report"]["lost"] for l in counted)
dup = sum(by[l]["report"]["duplicated"] for l in counted)
recon = sum(by[l]["report"].get("reconnects", 0) for l in counted)
rec = sum(by[l]["report"].get("recovered", 0) for l in counted)
notrec = sum(by[l]["report"].get("not_recovered", 0) for l in counted)
measured = (f"{lost} lost, {dup} duplicated over {len(counted)} runs "
            f"({recon} reconnects: {rec} subscriptions recovered, {notrec} not)")
for l in labels:
    r = by[l]["report"]
    if past_saturation(l) and not clean(r):
        measured += f"; not counted, the run past saturation that ended the sweep: `{l}` lost {r['lost']}, duplicated {r['duplicated']}"
targets.append(("Zero lost and zero duplicated, every scenario", measured, lost == 0 and dup == 0, "all"))
tt = ["### Targets", "", "| target | measured | met | run |", "|---|---|---|---|"]
for name, measured, met, label in targets:
    tt.append(f"| {name} | {measured} | {'yes' if met else '**no**'} | `{label}` |")
out[2:2] = tt + [""]

out.append("### Commands")
out.append("")
out.append("Each run as `scripts/bench` ran it (addresses and process ids are the run's own):")
out.append("")
out.append("```text")
for label in labels:
    out.append(commands.get(label, ""))
out.append("```")
generated = "\n".join(out)

begin, end = "<!-- BEGIN GENERATED by scripts/bench -->", "<!-- END GENERATED -->"
try:
    doc = open(doc_path).read()
except OSError:
    doc = f"# Benchmarks\n\n{begin}\n{end}\n"
if begin in doc and end in doc:
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc = f"{head}{begin}\n{generated}\n{end}{tail}"
else:
    doc = f"{doc}\n{begin}\n{generated}\n{end}\n"
open(doc_path, "w").write(doc)
