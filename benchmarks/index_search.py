"""Similar-image search benchmark: the code index (``autoencoders/index.py``) with
each engine -- exact NumPy, FAISS exact (``IndexFlatIP``), FAISS HNSW and FAISS
IVF, FAISS PQ fast scan with exact re-ranking -- on random codes and, optionally, on a saved model's Fashion-MNIST codes.

Data: for each of ``--sizes`` (default 100,000 and 1,000,000), that many random
128-d codes (standard Gaussian rows, L2-normalised: no cluster structure at all,
the hardest case for approximate search) and ``--queries`` (1,000) more drawn
the same way as queries; with ``--clustered-sizes``, codes with structure, as a
model's codes have: a mixture of 1,000 Gaussian clusters in a random
16-dimensional subspace of the 128, plus a little noise in every direction,
L2-normalised (queries from the same mixture); with ``--model PATH``, also the
codes that model gives the 60,000 Fashion-MNIST training images (the items) and
the first 1,000 test images (the queries), read from ``--data-dir``.

Reported per engine, data set and search setting: build time (creating the
index and adding every code, IVF's k-means included); latency per query, median
and p99 over the queries searched one at a time; batch throughput (every query
in one call, queries/s); recall@10 against exact search; memory: the index's
own bytes (``CodeIndex.nbytes``: its float32 codes, plus FAISS's structure
holding another copy of them) and how much the process's resident set grew
while it was built.  HNSW is measured at each ``--ef-search``, IVF at each
``--nprobe``, PQ at each ``--rerank``, on one built index each; the module's
defaults are marked.

Target (checked at the largest random size, and likewise reported for the
largest clustered size): an approximate index at recall@10 >= 0.95 answers a
query at least 10x faster (median single-query latency) than exact NumPy
search.  On random codes (structureless 128-d data, the worst case of
nearest-neighbour search) IVF and HNSW are out of reach of it (at 1M codes IVF
needed nprobe 768 for recall 0.984, 16.5 ms a query against exact NumPy's 22.9
ms); PQ meets it (README: rerank 300, recall 0.970, 10.1x-12.3x in two runs);
the clustered codes show what codes with structure get.

Other work on the machine (a second Python process, a test run) distorts every
timing here: run it on an otherwise idle machine.  FAISS uses ``--threads``
OpenMP threads (default: all it sees); NumPy's BLAS picks its own, to pin it set
``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` before starting.  Building HNSW
over a million codes is slow on two cores (55.7 s for 100k random codes).

    python benchmarks/index_search.py                          # 100k and 1M random codes
    python benchmarks/index_search.py --sizes 20000            # a quick check that it runs
    python benchmarks/index_search.py --clustered-sizes 1000000  # + 1M codes with structure
    python benchmarks/index_search.py --sizes 100000 --engines numpy,hnsw --ef-search 128,256
    python benchmarks/index_search.py --sizes 0 --model runs/retrieve/model.npz \\
        --data-dir ../shared/datasets                          # a model's codes only
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from autoencoders.index import DEFAULT_PARAMS, CodeIndex  # noqa: E402

ENGINES = {  # name -> (kind, engine)
    "numpy": ("exact", "numpy"),
    "faiss-exact": ("exact", "faiss"),
    "hnsw": ("hnsw", "faiss"),
    "ivf": ("ivf", "faiss"),
    "pq": ("pq", "faiss"),
}
LABELS = {"numpy": "exact NumPy", "faiss-exact": "FAISS exact", "hnsw": "FAISS HNSW",
          "ivf": "FAISS IVF", "pq": "FAISS PQ fast scan + re-rank"}
TARGET_RECALL, TARGET_SPEEDUP = 0.95, 10.0


def ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def rss_mb():
    """The process's resident set now (Linux), else its peak so far, in MB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_codes(n, dim, seed):
    """``n`` standard-Gaussian rows of ``dim``, L2-normalised, float32."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 1 << 16):
        block = rng.standard_normal((min(1 << 16, n - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def clustered_codes(n, dim, seed, structure_seed=12345, clusters=1000, subspace=16):
    """``n`` codes from a fixed mixture (``structure_seed``): Gaussian clusters in a
    random ``subspace``-dimensional subspace plus isotropic noise, L2-normalised."""
    structure = np.random.default_rng(structure_seed)
    basis, _ = np.linalg.qr(structure.standard_normal((dim, min(subspace, dim))))
    centres = structure.standard_normal((clusters, basis.shape[1]))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 1 << 16):
        m = min(1 << 16, n - start)
        low = centres[rng.integers(clusters, size=m)] + 0.5 * rng.standard_normal(
            (m, basis.shape[1]))
        block = low @ basis.T + 0.05 * rng.standard_normal((m, dim))
        out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def model_codes(path, data_dir, n_queries):
    """(items, queries) codes of Fashion-MNIST train and test images under the model."""
    from autoencoders import Autoencoder, datasets
    model = Autoencoder.load(path)
    X, _ = datasets.load_fashion_mnist(data_dir, split="train", flatten=True)
    X_test, _ = datasets.load_fashion_mnist(data_dir, split="test", flatten=True)
    return (model.transform(X).astype(np.float32),
            model.transform(X_test[:n_queries]).astype(np.float32))


def search_settings(name, args):
    """[(label, search params, is the module's default)] to measure for engine ``name``."""
    if name == "hnsw":
        default = DEFAULT_PARAMS["hnsw"]["ef_search"]
        return [(f"ef_search={v}", {"ef_search": v}, v == default) for v in args.ef_search]
    if name == "ivf":
        default = DEFAULT_PARAMS["ivf"]["nprobe"]
        return [(f"nprobe={v}", {"nprobe": v}, v == default) for v in args.nprobe]
    if name == "pq":
        default = DEFAULT_PARAMS["pq"]["rerank"]
        return [(f"rerank={v}", {"rerank": v}, v == default) for v in args.rerank]
    return [("", {}, True)]


def build_params(name, args):
    if name == "hnsw":
        return {"M": args.M, "ef_construction": args.ef_construction}
    if name == "ivf":
        return {"nlist": args.nlist}
    if name == "pq":
        return {"M": args.pq_M}
    return {}


def measure(index, queries, k, truth):
    """Latency (one query at a time), batch throughput and recall@k of ``index``."""
    index.search(queries[:5], k)  # warm-up
    latencies = []
    for i in range(len(queries)):
        started = time.perf_counter()
        index.search(queries[i:i + 1], k)
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    result = index.search(queries, k)
    batch_s = time.perf_counter() - started
    latencies.sort()
    row = {"median_ms": statistics.median(latencies) * 1e3,
           "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3,
           "batch_qps": len(queries) / batch_s}
    if truth is not None:
        hits = [len(set(a) & set(b)) for a, b in zip(result.ids.tolist(), truth.tolist())]
        row["recall_at_k"] = float(np.mean(hits)) / truth.shape[1]
    return row, result


def bench_dataset(data_name, items, queries, args, log):
    """Rows of results for every engine on one data set."""
    n, dim = items.shape
    paths = [f"code/{i:07d}" for i in range(n)]
    rows, truth = [], None
    names = list(args.engines)
    if "numpy" in names:  # exact NumPy first: its answer is the truth for recall
        names.remove("numpy")
        names.insert(0, "numpy")
    for name in names:
        kind, engine = ENGINES[name]
        params = build_params(name, args)
        if kind == "ivf" and n < params["nlist"]:
            log(f"  {name}: skipped, {n} codes < nlist={params['nlist']}")
            continue
        gc.collect()
        rss_before = rss_mb()
        started = time.perf_counter()
        index = CodeIndex(dim, kind=kind, engine=engine, **params)
        index.add(items, paths)
        build_s = time.perf_counter() - started
        rss_growth = rss_mb() - rss_before
        nbytes = index.nbytes
        log(f"  {LABELS[name]}: built in {build_s:.1f} s, {nbytes / 2 ** 20:.0f} MB "
            f"(RSS +{rss_growth:.0f} MB)")
        for label, search_params, default in search_settings(name, args):
            if search_params:
                index.set_search_params(**search_params)
            row, result = measure(index, queries, args.k, truth)
            if truth is None and kind == "exact":
                truth = result.ids
                row["recall_at_k"] = 1.0
            row.update(data=data_name, n=n, dim=dim, engine=name, kind=kind,
                       setting=label, default=default, params=dict(index.params),
                       build_s=build_s, index_mb=nbytes / 2 ** 20, rss_growth_mb=rss_growth)
            rows.append(row)
            log(f"    {label or 'exact':<16} median {row['median_ms']:8.3f} ms  p99 "
                f"{row['p99_ms']:8.3f} ms  batch {row['batch_qps']:10.0f} q/s  recall@{args.k} "
                f"{row.get('recall_at_k', float('nan')):.4f}")
        del index, result
    return rows


def table(rows, k):
    lines = [f"| data | n | engine | setting | build s | median ms | p99 ms | batch q/s | "
             f"recall@{k} | index MB | RSS +MB |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        setting = r["setting"] + (" (default)" if r["default"] and r["setting"] else "")
        recall = f"{r['recall_at_k']:.4f}" if "recall_at_k" in r else "-"
        lines.append(f"| {r['data']} | {r['n']:,} | {LABELS[r['engine']]} | {setting or '-'} | "
                     f"{r['build_s']:.1f} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['batch_qps']:,.0f} | {recall} | {r['index_mb']:.0f} | "
                     f"{r['rss_growth_mb']:.0f} |")
    return lines


def targets(rows, data="random"):
    """The target at the largest size of ``data``: the fastest approximate setting
    with recall@10 >= 0.95 against exact NumPy, by median single-query latency."""
    random_rows = [r for r in rows if r["data"] == data]
    if not random_rows:
        return [f"Target: not measured (no {data} data set)."], None
    n = max(r["n"] for r in random_rows)
    at_n = [r for r in random_rows if r["n"] == n]
    exact = next((r for r in at_n if r["engine"] == "numpy"), None)
    good = [r for r in at_n if r["kind"] != "exact" and r.get("recall_at_k", 0) >= TARGET_RECALL]
    head = (f"Target at {n:,} {data} codes: an approximate index at recall@10 >= "
            f"{TARGET_RECALL} answers a query >= {TARGET_SPEEDUP:.0f}x faster than exact NumPy")
    if exact is None:
        return [head, "  not measured: exact NumPy was not run"], None
    if not good:
        best = max((r for r in at_n if r["kind"] != "exact"),
                   key=lambda r: r.get("recall_at_k", 0), default=None)
        extra = (f" (best: {LABELS[best['engine']]} {best['setting']}, recall "
                 f"{best['recall_at_k']:.4f})" if best else "")
        return [head, f"  MISSED: no approximate setting reached recall@10 {TARGET_RECALL}"
                      f"{extra}"], {"n": n, "met": False}
    fastest = min(good, key=lambda r: r["median_ms"])
    speedup = exact["median_ms"] / fastest["median_ms"]
    verdict = "met" if speedup >= TARGET_SPEEDUP else "MISSED"
    return [head, f"  {LABELS[fastest['engine']]} {fastest['setting']}: recall@10 "
                  f"{fastest['recall_at_k']:.4f}, median {fastest['median_ms']:.3f} ms vs exact "
                  f"NumPy {exact['median_ms']:.3f} ms: {speedup:.1f}x -- {verdict}"], \
        {"n": n, "engine": fastest["engine"], "setting": fastest["setting"],
         "recall_at_k": fastest["recall_at_k"], "speedup": speedup,
         "met": speedup >= TARGET_SPEEDUP}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=ints, default=[100_000, 1_000_000],
                        help="numbers of random codes, comma-separated (0 or empty: none)")
    parser.add_argument("--clustered-sizes", type=ints, default=[],
                        help="numbers of clustered codes (codes with structure), comma-separated")
    parser.add_argument("--dim", type=int, default=128, help="size of the random codes")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--engines", default="numpy,faiss-exact,hnsw,ivf,pq",
                        help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--M", type=int, default=DEFAULT_PARAMS["hnsw"]["M"])
    parser.add_argument("--ef-construction", type=int,
                        default=DEFAULT_PARAMS["hnsw"]["ef_construction"])
    parser.add_argument("--ef-search", type=ints, default=sorted(
        {64, 256, 1024, 1536, 2048, 3072, DEFAULT_PARAMS["hnsw"]["ef_search"]}))
    parser.add_argument("--nlist", type=int, default=DEFAULT_PARAMS["ivf"]["nlist"])
    parser.add_argument("--nprobe", type=ints, default=sorted(
        {8, 32, 128, 512, 768, DEFAULT_PARAMS["ivf"]["nprobe"]}))
    parser.add_argument("--pq-M", type=int, default=DEFAULT_PARAMS["pq"]["M"],
                        help="pq: sub-quantizers (default: half the code size)")
    parser.add_argument("--rerank", type=ints, default=sorted(
        {100, 200, 500, 1000, DEFAULT_PARAMS["pq"]["rerank"]}))
    parser.add_argument("--threads", type=int, default=None,
                        help="FAISS's OpenMP threads (default: FAISS's own choice, all cores)")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="also index the Fashion-MNIST codes of this saved model")
    parser.add_argument("--data-dir", default=None,
                        help="the folder with fashion-mnist (default: $AUTOENCODERS_DATA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "index_search.json"))
    args = parser.parse_args(argv)
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        parser.error(f"--engines: unknown {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    machine = {"python": platform.python_version(), "numpy": np.__version__,
               "platform": platform.platform(), "cpus": os.cpu_count()}
    if any(ENGINES[e][1] == "faiss" for e in args.engines):
        try:
            import faiss
        except ImportError:
            parser.error("the faiss engines need FAISS: pip install 'minigrad-autoencoders[index]' "
                         "(or --engines numpy)")
        if args.threads:
            faiss.omp_set_num_threads(args.threads)
        machine.update(faiss=faiss.__version__, faiss_threads=faiss.omp_get_max_threads())

    def log(message):
        print(message, flush=True)

    rows = []
    for n in [s for s in args.sizes if s > 0]:
        log(f"random codes: {n:,} x {args.dim}, {args.queries} queries")
        items = random_codes(n, args.dim, args.seed)
        queries = random_codes(args.queries, args.dim, args.seed + 1_000_003)
        rows += bench_dataset("random", items, queries, args, log)
        del items
    for n in [s for s in args.clustered_sizes if s > 0]:
        log(f"clustered codes: {n:,} x {args.dim}, {args.queries} queries")
        items = clustered_codes(n, args.dim, args.seed)
        queries = clustered_codes(args.queries, args.dim, args.seed + 1_000_003)
        rows += bench_dataset("clustered", items, queries, args, log)
        del items
    if args.model:
        log(f"Fashion-MNIST codes of {args.model}")
        items, queries = model_codes(args.model, args.data_dir, args.queries)
        rows += bench_dataset(f"fashion-mnist ({os.path.basename(args.model)})", items, queries,
                              args, log)

    target_lines, target = targets(rows)
    if any(r["data"] == "clustered" for r in rows):
        lines, target_clustered = targets(rows, "clustered")
        target_lines += lines
    else:
        target_clustered = None
    text = "\n".join(table(rows, args.k) + [""] + target_lines)
    print("\n" + text)
    save_results(args.out, {"argv": sys.argv, "machine": machine, "k": args.k,
                            "queries": args.queries, "results": rows, "target": target,
                            "target_clustered": target_clustered,
                            "report": text})


def save_results(path, document):
    """``document`` as JSON at ``path``, written atomically."""
    from autoencoders.files import write_json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, document)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
