#!/usr/bin/env python3
"""Check docker-compose.yml without a Docker engine (``make lint`` runs it).

1. The file, as written, against ``deploy/compose-schema.json`` (the part of the Compose Specification
   it may use, strict: a misspelt or misplaced key fails).
2. Interpolated as Compose does (``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}``, ``$$``): it fails
   without each variable that must be set (``SYNDICATE_BASE_URL`` among them), and with them set every
   service's environment is settings the server reads, with values it accepts (``Settings.from_env``).
3. The topology holds together: every ``depends_on``, network and named volume exists, every bind-mounted
   file is in the repository; the balancer's upstreams (``deploy/nginx.conf``) are a service and its
   port; ``SYNDICATE_TRUSTED_PROXIES`` is the balancer's network and holds its address; the store Redis
   fsyncs every write and the cache Redis is bounded.

Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from jsonschema import Draft202012Validator, FormatChecker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.core.settings import Settings, SettingsError  # noqa: E402

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "deploy" / "compose-schema.json"
NGINX = ROOT / "deploy" / "nginx.conf"
# Must be set by whoever deploys: the file must refuse to start without them.
REQUIRED = ("SYNDICATE_BASE_URL", "SYNDICATE_ADMIN_TOKEN", "SYNDICATE_PUBLISHER_TOKENS")
SAMPLE = {"SYNDICATE_BASE_URL": "https://feeds.example.com", "SYNDICATE_ADMIN_TOKEN": "a" * 32,
          "SYNDICATE_PUBLISHER_TOKENS": "cms:" + "p" * 32}
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|"
                       r"(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class Unset(Exception):
    """A required variable is unset (Compose stops with its message)."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in env and (env[name] != "" or op not in (":-", ":?"))
        if op in ("-", ":-"):
            return env[name] if present else arg
        if op in ("?", ":?"):
            if not present:
                raise Unset(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _VARIABLE.sub(one, value)


def known_settings() -> set[str]:
    source = (ROOT / "server" / "core" / "settings.py").read_text()
    return set(re.findall(r'"(SYNDICATE_[A-Z_]+|REDIS_URL)"', source))


def problems(text: str | None = None) -> list[str]:
    """What is wrong with docker-compose.yml (or ``text`` in its place), one line each."""
    found: list[str] = []
    raw = yaml.safe_load(COMPOSE.read_text() if text is None else text)
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        found.append(f"schema: {where}: {error.message}")
    if found:
        return found

    for name in REQUIRED:
        try:
            interpolate(raw, {k: v for k, v in SAMPLE.items() if k != name})
            found.append(f"interpolation: starts without {name}; use ${{{name}:?...}}")
        except Unset as exc:
            if not str(exc).startswith(name):
                found.append(f"interpolation: {exc}")
    try:
        compose = interpolate(raw, SAMPLE)
    except Unset as exc:
        return [*found, f"interpolation: {exc}"]

    services: dict[str, Any] = compose["services"]
    networks: dict[str, Any] = compose.get("networks") or {}
    volumes: dict[str, Any] = compose.get("volumes") or {}
    known = known_settings()
    for name, service in services.items():
        for needed in service.get("depends_on") or {}:
            if needed not in services:
                found.append(f"{name}: depends_on names no service {needed!r}")
        for network in service.get("networks") or []:
            if network not in networks:
                found.append(f"{name}: network {network!r} is not declared")
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                if not (COMPOSE.parent / source).exists():
                    found.append(f"{name}: bind-mounts {source}, which is not in the repository")
            elif source not in volumes:
                found.append(f"{name}: volume {source!r} is not declared")
        environment = {k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()}
        ours = {k: v for k, v in environment.items() if k.startswith("SYNDICATE_") or k == "REDIS_URL"}
        for variable in sorted(set(ours) - known):
            found.append(f"{name}: {variable} is not a setting the server reads")
        if ours:
            try:
                Settings.from_env(ours)
            except SettingsError as exc:
                found.append(f"{name}: {exc}")
    found += _topology(services, networks)
    return found


def _topology(services: dict[str, Any], networks: dict[str, Any]) -> list[str]:
    found: list[str] = []
    balancers = [n for n, s in services.items() if any(str(NGINX.relative_to(ROOT)) in m for m in s.get("volumes") or [])]
    if len(balancers) != 1:
        return [f"expected one service mounting {NGINX.relative_to(ROOT)}, found {balancers}"]
    balancer = services[balancers[0]]
    nginx = NGINX.read_text()
    listen = re.search(r"^\s*listen\s+(\d+)", nginx, re.M)
    published = [p.rsplit(":", 1)[1].split("/")[0] for p in balancer.get("ports") or []]
    if listen is None or listen.group(1) not in published:
        found.append(f"balancer: nginx listens on {listen.group(1) if listen else '?'}, the container publishes {published}")
    upstreams = re.findall(r"^\s*server\s+([A-Za-z0-9._-]+):(\d+)\b", nginx, re.M)
    if not upstreams:
        found.append("balancer: no upstream server in deploy/nginx.conf")
    for host, port in upstreams:
        target = services.get(host)
        if target is None:
            found.append(f"balancer: upstream {host}:{port} is not a service")
            continue
        if str((target.get("environment") or {}).get("SYNDICATE_PORT", "8080")) != port:
            found.append(f"balancer: upstream {host}:{port}, but {host} listens on its SYNDICATE_PORT")
        trusted = str((target.get("environment") or {}).get("SYNDICATE_TRUSTED_PROXIES") or "")
        if not trusted:
            found.append(f"{host}: behind the balancer without SYNDICATE_TRUSTED_PROXIES")
            continue
        trusted_networks = [ipaddress.ip_network(t.strip()) for t in trusted.split(",") if t.strip()]
        shared = set(_network_names(balancer)) & set(_network_names(target))
        subnets = [ipaddress.ip_network(c["subnet"]) for n in shared
                   for c in ((networks.get(n) or {}).get("ipam") or {}).get("config") or [] if "subnet" in c]
        if not subnets:
            found.append(f"{host}: the network it shares with the balancer has no fixed subnet to trust")
        for network in trusted_networks:
            if not any(network.subnet_of(s) for s in subnets if s.version == network.version):
                found.append(f"{host}: SYNDICATE_TRUSTED_PROXIES {network} is wider than the balancer's network")
        addresses = [a["ipv4_address"] for a in (balancer.get("networks") or {}).values()
                     if isinstance(balancer.get("networks"), dict) and a and "ipv4_address" in a]
        if not any(ipaddress.ip_address(a) in n for a in addresses for n in trusted_networks):
            found.append(f"{host}: SYNDICATE_TRUSTED_PROXIES does not hold the balancer's address")
        if "/readyz" not in " ".join((target.get("healthcheck") or {}).get("test") or []):
            found.append(f"{host}: its health check is not /readyz")
    found += _redis(services)
    return found


def _network_names(service: dict[str, Any]) -> list[str]:
    networks = service.get("networks") or []
    return list(networks) if isinstance(networks, (list, dict)) else []


def _redis(services: dict[str, Any]) -> list[str]:
    found: list[str] = []
    store_hosts: set[str] = set()
    cache_hosts: set[str] = set()
    for service in services.values():
        environment = service.get("environment") or {}
        if "SYNDICATE_CACHE_REDIS_URL" in environment:
            cache_hosts.add(urlsplit(str(environment["SYNDICATE_CACHE_REDIS_URL"])).hostname or "")
        command = service.get("command") or []
        text = " ".join(command) if isinstance(command, list) else command
        for monitored in re.findall(r"sentinel monitor \S+ (\S+) \d+ \d+", text):
            store_hosts.add(monitored)
        if "--replicaof" in command:
            store_hosts.add(next(n for n, s in services.items() if s is service))
    for host in sorted(store_hosts):
        command = (services.get(host) or {}).get("command") or []
        if _option(command, "--appendfsync") != "always" or _option(command, "--appendonly") != "yes":
            found.append(f"{host}: a store Redis must run with --appendonly yes --appendfsync always")
        if not (_option(command, "--maxmemory-policy") or "").startswith(("volatile-", "noeviction")):
            found.append(f"{host}: a store Redis may evict only keys with a TTL (volatile-* or noeviction)")
    if not cache_hosts:
        found.append("no service sets SYNDICATE_CACHE_REDIS_URL")
    for host in sorted(cache_hosts):
        command = (services.get(host) or {}).get("command") or []
        if not _option(command, "--maxmemory"):
            found.append(f"{host}: the cache Redis must be bounded (--maxmemory)")
        if _option(command, "--maxmemory-policy") not in ("allkeys-lru", "allkeys-lfu", "volatile-lru"):
            found.append(f"{host}: the cache Redis must evict (--maxmemory-policy allkeys-lru)")
    return found


def _option(command: list[str] | str, flag: str) -> str | None:
    if not isinstance(command, list) or flag not in command:
        return None
    index = command.index(flag)
    return command[index + 1] if index + 1 < len(command) else None


def main() -> int:
    found = problems()
    for line in found:
        print(f"docker-compose.yml: {line}", file=sys.stderr)
    if not found:
        print("docker-compose.yml: valid (schema, interpolation, settings, topology)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
