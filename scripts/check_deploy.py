#!/usr/bin/env python3
"""Checks the deployment files without a Docker engine or a Kubernetes cluster.

1. deploy/docker-compose.yml parses and has the expected services;
2. the Kubernetes manifests validate against their schemas, offline
   (kubernetes-validate ships them), strictly;
3. the Grafana dashboard JSON parses, Prometheus config and alert rules parse;
4. every metric the dashboard and the alert rules name exists in /metrics of a
   running `redraft up` (started here on free ports, stopped at the end);
5. with --prometheus: a real Prometheus server (Debian package) scrapes that
   cluster; every dashboard query and every alert expression (without its
   threshold) must return data through Prometheus's HTTP API; with --chart PNG
   the main queries are also rendered as a chart (docs/dashboard.png is made so).

Usage: scripts/check_deploy.py REDRAFT_BINARY [--prometheus [--chart PNG]]
"""
import json, os, re, shutil, socket, subprocess, sys, tempfile, time, urllib.parse, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")


def fail(msg):
    print(f"check_deploy: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def ensure_python_packages():
    need = []
    for module, package in [("yaml", "pyyaml"), ("kubernetes_validate", "kubernetes-validate"), ("matplotlib", "matplotlib")]:
        try:
            __import__(module)
        except ImportError:
            need.append(package)
    if need:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *need], check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def check_files():
    import yaml
    compose = yaml.safe_load(open(os.path.join(DEPLOY, "docker-compose.yml")))
    services = set(compose["services"])
    for want in ["placement-1", "placement-2", "placement-3", "node-1", "node-2", "node-3", "proxy-1", "proxy-2", "prometheus", "grafana"]:
        if want not in services:
            fail(f"docker-compose.yml lacks service {want}")
    for name, svc in compose["services"].items():
        if "command" in svc and not isinstance(svc["command"], list):
            fail(f"compose service {name}: command must be a list")
    result = subprocess.run(["kubernetes-validate", "--strict", "--quiet", os.path.join(DEPLOY, "kubernetes", "redraft.yaml")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail("Kubernetes manifests do not validate:\n" + result.stdout + result.stderr)
    kinds = [d["kind"] for d in yaml.safe_load_all(open(os.path.join(DEPLOY, "kubernetes", "redraft.yaml"))) if d]
    for want in ["StatefulSet", "Deployment", "Service", "PodDisruptionBudget"]:
        if want not in kinds:
            fail(f"Kubernetes manifests lack a {want}")
    yaml.safe_load(open(os.path.join(DEPLOY, "prometheus", "prometheus-compose.yml")))
    alerts = yaml.safe_load(open(os.path.join(DEPLOY, "prometheus", "alerts.yml")))
    dashboard = json.load(open(os.path.join(DEPLOY, "grafana", "dashboards", "redraft.json")))
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = [(r["alert"], r["expr"]) for g in alerts["groups"] for r in g["rules"]]
    print(f"check_deploy: compose ({len(services)} services), Kubernetes ({len(kinds)} objects), "
          f"dashboard ({len(queries)} queries), alerts ({len(rules)} rules) parse and validate")
    return queries, rules


def start_cluster(redraft, work):
    # Below Linux's ephemeral range (32768+), where the suite's many client
    # sockets (some in TIME_WAIT) may still hold a port.
    base = 20000 + int.from_bytes(os.urandom(2), "big") % 12000
    proxy = free_port()
    subprocess.run([redraft, "up", "--dir", os.path.join(work, "cluster"), "--port", str(proxy), "--base-port", str(base), "--detach"],
                   check=True, stdout=subprocess.DEVNULL)
    up = json.load(open(os.path.join(work, "cluster", "up.json")))
    return proxy, up


def load(proxy, n=300):
    with socket.create_connection(("127.0.0.1", proxy)) as s:
        for i in range(n):
            s.sendall(f"*3\r\n$3\r\nSET\r\n$5\r\nk{i:04d}\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$5\r\nk{i:04d}\r\n".encode())
        # One command that fails (INCR of a non-number), so the error panels
        # have a series to show.
        s.sendall(b"*2\r\n$4\r\nINCR\r\n$5\r\nk0000\r\n")
        s.settimeout(20)
        got = b""
        while b"-ERR" not in got or got.count(b"\r\n") < 3 * n + 1:
            got += s.recv(65536)


def metric_names(text):
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def check_metric_names(up, queries, rules):
    exposed = set()
    for group in ("placement", "nodes", "proxy"):
        for m in up[group]:
            exposed |= metric_names(http_get(f"http://{m['http']}/metrics"))
    named = set()
    for expr in queries + [e for _, e in rules]:
        named |= set(re.findall(r"\bredraft_[a-z0-9_]+", expr))
    missing = sorted(n for n in named if n not in exposed)
    if missing:
        fail(f"metrics named in the dashboard or alerts but not exposed: {missing}")
    print(f"check_deploy: all {len(named)} metrics named by the dashboard and alerts are exposed")


def strip_threshold(expr):
    return re.split(r"\s(?:>|<|==|!=|>=|<=)\s", expr)[0]


def check_with_prometheus(up, queries, rules, work, proxy):
    if not shutil.which("prometheus"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "prometheus"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["systemctl", "stop", "prometheus"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    port = free_port()
    jobs = {"placement": "redraft-placement", "nodes": "redraft-node", "proxy": "redraft-proxy"}
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [os.path.join(DEPLOY, "prometheus", "alerts.yml")],
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [m["http"] for m in up[group]]}]}
                                 for group, job in jobs.items()]}
    path = os.path.join(work, "prometheus.yml")
    json.dump(config, open(path, "w"))  # JSON is YAML
    prom = subprocess.Popen(["prometheus", f"--config.file={path}", f"--storage.tsdb.path={work}/tsdb",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.time() + 60
        start = time.time()
        while time.time() < deadline:
            load(proxy, 100)
            try:
                targets = json.loads(http_get(f"{api}/targets"))["data"]["activeTargets"]
                if targets and all(t["health"] == "up" for t in targets) and time.time() - start > 20:
                    break
            except Exception:
                pass
            time.sleep(1)
        else:
            fail("Prometheus did not scrape every member")
        def query(expr):
            return json.loads(http_get(f"{api}/query?" + urllib.parse.urlencode({"query": expr})))["data"]["result"]
        empty = [q for q in queries if not query(q)]
        empty += [f"alert {name}: {strip_threshold(e)}" for name, e in rules if not query(strip_threshold(e))]
        if empty:
            fail(f"queries returning no data: {empty}")
        rules_loaded = json.loads(http_get(f"{api}/rules"))["data"]["groups"]
        if sum(len(g["rules"]) for g in rules_loaded) != len(rules):
            fail("Prometheus did not load every alert rule")
        print(f"check_deploy: Prometheus returns data for all {len(queries)} dashboard queries and {len(rules)} alert expressions")
        if "--chart" in sys.argv:
            render_chart(api, sys.argv[sys.argv.index("--chart") + 1])
    finally:
        prom.terminate()
        prom.wait()


def render_chart(api, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("Commands/s by command", "sum(rate(redraft_proxy_commands_total[15s])) by (command)", "command"),
              ("Command latency p99 (s)", "histogram_quantile(0.99, sum(rate(redraft_proxy_command_duration_seconds_bucket[15s])) by (le))", None),
              ("Appends per fsync", "sum(rate(redraft_raft_log_batch_requests_sum[15s])) / sum(rate(redraft_raft_log_batch_requests_count[15s]))", None),
              ("Leaders per node", "redraft_node_leaders", "instance")]
    end = time.time()
    fig, axes = plt.subplots(2, 2, figsize=(11, 6))
    for ax, (title, expr, label) in zip(axes.flat, panels):
        q = urllib.parse.urlencode({"query": expr, "start": end - 60, "end": end, "step": 2})
        for series in json.loads(http_get(f"{api}/query_range?{q}"))["data"]["result"]:
            xs = [float(t) - end for t, _ in series["values"]]
            ys = [float(v) if v not in ("NaN", "+Inf") else 0 for _, v in series["values"]]
            ax.plot(xs, ys, label=series["metric"].get(label, "") if label else None)
        ax.set_title(title)
        ax.set_xlabel("seconds")
        if label:
            ax.legend(fontsize=7)
    fig.suptitle("Redraft dashboard queries, from Prometheus's API (redraft up under a small load)")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"check_deploy: wrote {out}")


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    redraft = sys.argv[1]
    ensure_python_packages()
    queries, rules = check_files()
    work = tempfile.mkdtemp(prefix="redraft-deploy-check-")
    try:
        proxy, up = start_cluster(redraft, work)
        load(proxy)
        time.sleep(1)
        check_metric_names(up, queries, rules)
        if "--prometheus" in sys.argv:
            check_with_prometheus(up, queries, rules, work, proxy)
    finally:
        subprocess.run([redraft, "down", "--dir", os.path.join(work, "cluster")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
