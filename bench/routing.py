"""Routing benchmark: 100,000 prefixes (IPv4 and IPv6 mixed), 1,000,000 lookups.

Prints lookups per second of the router's hot path and of its full match (with the rule),
the same lookups through a brute-force reference on a sample (the ratio), and memory.

    python bench/routing.py [--prefixes 100000] [--lookups 1000000] [--sample 300]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import resource
import time

from connector.config import Config, Constituency, RecipientConfig
from connector.routing import Router


def build(prefix_count: int, rng: random.Random) -> tuple[list[ipaddress._BaseNetwork], Config]:
    networks: set[ipaddress._BaseNetwork] = set()
    while len(networks) < prefix_count:
        if rng.random() < 0.6:
            plen = rng.choice([16, 20, 22, 24, 24, 24, 26, 28])
            networks.add(ipaddress.ip_network((rng.getrandbits(32), plen), strict=False))
        else:
            plen = rng.choice([32, 40, 44, 48, 48, 56, 64])
            networks.add(ipaddress.ip_network((0x2001_0DB8 << 96 | rng.getrandbits(96), plen), strict=False))
    nets = sorted(networks, key=lambda n: (n.version, n.network_address, n.prefixlen))
    # One recipient per 10 prefixes, built without the YAML layer (validated models all the same).
    recipients = [
        RecipientConfig(
            id=f"r{i // 10}",
            name=f"R{i // 10}",
            kind="organisation",
            constituency=Constituency(networks=nets[i : i + 10]),
        )
        for i in range(0, len(nets), 10)
    ]
    return nets, Config(recipients=recipients)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def brute_force(nets: list[ipaddress._BaseNetwork], owners: dict, ip: str) -> str | None:
    address = ipaddress.ip_address(ip)
    best = None
    for net in nets:
        if (
            net.version == address.version
            and address in net
            and (best is None or net.prefixlen > best.prefixlen)
        ):
            best = net
    return owners[best] if best else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=300, help="lookups through the brute-force reference")
    args = parser.parse_args()
    rng = random.Random(42)

    started = time.perf_counter()
    nets, config = build(args.prefixes, rng)
    build_s = time.perf_counter() - started
    before = rss_bytes()
    started = time.perf_counter()
    router = Router(config)
    load_s = time.perf_counter() - started
    router_bytes = rss_bytes() - before

    # Half the probes inside a claimed prefix, half random.
    probes = []
    for _ in range(args.lookups):
        if rng.random() < 0.5:
            net = nets[rng.randrange(len(nets))]
            offset = rng.randrange(min(net.num_addresses, 2**32))
            probes.append(str(net.network_address + offset))
        elif rng.random() < 0.6:
            probes.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        else:
            probes.append(str(ipaddress.IPv6Address(0x2001_0DB8 << 96 | rng.getrandbits(96))))

    lookup = router.lookup_owner
    started = time.perf_counter()
    for ip in probes:
        lookup(ip)
    single_s = time.perf_counter() - started
    started = time.perf_counter()
    owners_found = router.lookup_owners(probes)
    hot_s = time.perf_counter() - started
    hits = sum(1 for owner in owners_found if owner is not None)

    subset = probes[: min(len(probes), 200_000)]
    started = time.perf_counter()
    for ip in subset:
        router.owner_of_ip(ip)
    full_s = time.perf_counter() - started

    owners = {net: r.id for r in config.recipients for net in r.constituency.networks}
    sample = probes[: args.sample]
    started = time.perf_counter()
    reference = [brute_force(nets, owners, ip) for ip in sample]
    brute_s = time.perf_counter() - started
    agree = sum(1 for ip, ref in zip(sample, reference, strict=True) if lookup(ip) == ref)

    per_s = args.lookups / hot_s
    print(
        f"prefixes: {len(nets):,} ({sum(n.version == 4 for n in nets):,} IPv4, "
        f"{sum(n.version == 6 for n in nets):,} IPv6) in {len(config.recipients):,} recipients"
    )
    print(
        f"router build: {load_s:.2f} s (generating the config: {build_s:.2f} s); "
        f"router memory: {router_bytes / 2**20:.1f} MiB (RSS growth while building it)"
    )
    print(
        f"lookups: {args.lookups:,} in {hot_s:.2f} s = {per_s:,.0f} lookups/s (bulk path, "
        f"Router.lookup_owners); {hits:,} routed"
    )
    print(f"one call per lookup (Router.lookup_owner): {args.lookups / single_s:,.0f} lookups/s")
    print(f"full match with rule text: {len(subset) / full_s:,.0f} lookups/s")
    brute_per_s = len(sample) / brute_s
    print(
        f"brute-force reference: {brute_per_s:,.1f} lookups/s on a sample of {len(sample)}; "
        f"agreement {agree}/{len(sample)}; ratio {per_s / brute_per_s:,.0f}x"
    )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"target >= 1,000,000 lookups/s: {'met' if per_s >= 1_000_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
