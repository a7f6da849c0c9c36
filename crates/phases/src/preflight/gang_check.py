"""The orchestrator's gang preflight, run on every node of a group before
the server starts (the orchestrator writes this file and runs it with the
server's own Python, which has torch).

One rank: `gang_check.py rank --rank R --world N --master HOST:PORT ...`:
joins a TCPStore at the master (rank 0 hosts it), checks in, waits for
every rank (rank 0 names the ones missing), forms a process group (gloo on
CPU, nccl on GPUs), times an all-reduce and, on rank 0, a ping-pong with
every other rank; sees which GPUs it has. Prints one JSON line.

A Ray cluster: `gang_check.py ray --address GCS --master HOST:PORT ...`
runs one rank as a task on every alive node (pinned to it, with the node's
GPUs) and prints each rank's line (a task that did not finish gets one too).
"""
import argparse
import datetime
import json
import os
import socket
import sys
import time


def ms(since):
    return round((time.monotonic() - since) * 1000, 1)


def gpus_seen():
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as e:  # a broken driver is what this is for
        return [f"error: {e}"]


def check_rank(rank, world, master, backend, nbytes, iters, timeout, expect_gpus, address):
    """One rank's check; every failure is reported in the result, never raised."""
    started = time.monotonic()
    out = {
        "rank": rank,
        "host": socket.gethostname(),
        "address": address or "",
        "backend": backend,
    }
    try:
        import torch
        import torch.distributed as dist
    except Exception as e:
        out["error"] = f"cannot import torch: {e}"
        return out
    out["gpus"] = gpus_seen()
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        out["cuda-visible-devices"] = cvd
    wrong_gpus = None
    # A node offering "GPUs" without seeing any may be a CPU node whose
    # slots are not GPUs: checked against rank 0's backend below.
    seen = len(out["gpus"])
    if expect_gpus is not None and seen and seen != expect_gpus:
        wrong_gpus = f"sees {seen} GPUs ({', '.join(out['gpus'])}), offers {expect_gpus}"
    host, port = master.rsplit(":", 1)
    limit = datetime.timedelta(seconds=timeout)
    try:
        store = dist.TCPStore(host, int(port), world, rank == 0, limit, wait_for_workers=False)
    except Exception as e:
        out["error"] = f"cannot reach the group's master {master}: {str(e).splitlines()[0] if str(e) else e!r}"
        return out
    store.set(f"joined/{rank}", out["host"])
    if rank == 0:
        deadline = time.monotonic() + timeout
        missing = list(range(world))
        while time.monotonic() < deadline:
            missing = [r for r in range(world) if not store.check([f"joined/{r}"])]
            if not missing:
                break
            time.sleep(0.05)
        store.set("go", json.dumps(missing))
        out["missing"] = missing
    else:
        try:
            store.wait(["go"], limit)
            missing = json.loads(store.get("go"))
        except Exception as e:
            out["error"] = f"joined the master {master}, but the group did not form: {e}"
            return out
    out["join-ms"] = ms(started)
    # Every rank uses rank 0's library: a node that sees no GPU in a
    # group on NCCL is the one named.
    if rank == 0:
        store.set("backend", backend)
    else:
        store.wait(["backend"], limit)
        leader = store.get("backend").decode()
        if leader == "nccl" and not out["gpus"]:
            wrong_gpus = wrong_gpus or "sees no GPU, while rank 0 runs NCCL"
        backend = leader
        out["backend"] = backend
    if missing:
        out["error"] = f"ranks {missing} did not join the master {master} within {timeout} s"
        return out
    if wrong_gpus:
        # Every rank joined: this one says what is wrong and leaves; the
        # others' collective fails on its own timeout.
        store.set(f"gpus-wrong/{rank}", wrong_gpus)
    store.set(f"checked/{rank}", "1")
    store.wait([f"checked/{r}" for r in range(world)], limit)
    bad = [r for r in range(world) if store.check([f"gpus-wrong/{r}"])]
    if bad:
        out["error"] = wrong_gpus or f"ranks {bad} see the wrong GPUs"
        return out
    try:
        device = "cpu"
        if backend == "nccl":
            torch.cuda.set_device(0)
            device = "cuda:0"
        dist.init_process_group(
            backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=world, timeout=limit
        )
        x = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
        dist.all_reduce(x)  # connections made here
        times = []
        for _ in range(max(iters, 1)):
            t = time.monotonic()
            dist.all_reduce(x)
            if device != "cpu":
                torch.cuda.synchronize()
            times.append((time.monotonic() - t) * 1000)
        times.sort()
        out["allreduce-ms"] = round(times[len(times) // 2], 2)
        out["bytes"] = x.numel() * 4
        expected = float(world) ** (max(iters, 1) + 1)
        if abs(float(x[0].item()) - expected) > expected * 1e-3:
            out["error"] = f"the all-reduce summed {x[0].item()}, expected {expected}"
        ping = torch.ones(max(nbytes // 16, 1), dtype=torch.float32, device=device)
        if rank == 0:
            p2p = {}
            for r in range(1, world):
                t = time.monotonic()
                dist.send(ping, r)
                dist.recv(ping, r)
                if device != "cpu":
                    torch.cuda.synchronize()
                p2p[str(r)] = round((time.monotonic() - t) * 1000, 2)
            out["p2p-ms"] = p2p
        else:
            dist.recv(ping, 0)
            dist.send(ping, 0)
        dist.destroy_process_group()
    except Exception as e:
        out["error"] = f"the {backend} collective failed: {str(e).splitlines()[0] if str(e) else e!r}"
    out["took-ms"] = ms(started)
    return out


def ray_main(args):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    host = args.master.rsplit(":", 1)[0]
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    # The master's node is rank 0, the others in address order.
    nodes.sort(key=lambda n: (n.get("NodeManagerAddress") != host, n.get("NodeManagerAddress", "")))
    world = len(nodes)

    @ray.remote(num_cpus=0)
    def one(rank, gpus, address):
        backend = args.backend
        if backend == "auto":
            backend = "nccl" if gpus_seen() else "gloo"
        return check_rank(rank, world, args.master, backend, args.bytes, args.iters, args.timeout,
                          int(gpus) if args.check_gpus else None, address)

    refs = []
    for rank, n in enumerate(nodes):
        gpus = n.get("Resources", {}).get("GPU", 0)
        strategy = NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
        refs.append(one.options(scheduling_strategy=strategy, num_gpus=gpus).remote(rank, gpus, n.get("NodeManagerAddress")))
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=args.timeout * 2 + 20)
    for rank, (ref, n) in enumerate(zip(refs, nodes)):
        line = {"rank": rank, "host": n.get("NodeManagerHostname", ""), "address": n.get("NodeManagerAddress", "")}
        if ref in done:
            try:
                line = ray.get(ref)
            except Exception as e:
                cause = getattr(e, "cause", None) or e
                lines = [l for l in str(cause).splitlines() if l.strip()]
                line["error"] = f"its task failed: {type(cause).__name__}: {lines[-1] if lines else ''}"
        else:
            line["error"] = "its task did not finish (not scheduled on the node, or hung)"
        print(json.dumps(line), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["rank", "ray"])
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--master", required=True)
    parser.add_argument("--address", default="")
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl", "auto"])
    parser.add_argument("--bytes", type=int, default=4 << 20)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--expect-gpus", type=int, default=None)
    parser.add_argument("--check-gpus", action="store_true")
    args = parser.parse_args()
    if args.mode == "ray":
        ray_main(args)
        return
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if gpus_seen() else "gloo"
    line = check_rank(args.rank, args.world, args.master, backend, args.bytes, args.iters,
                      args.timeout, args.expect_gpus, args.address)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
