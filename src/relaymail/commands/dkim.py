"""`relaymail dkim keygen DOMAIN SELECTOR`: a new key file and the DNS record to publish."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import Config
from ..errors import ConfigError
from .exits import EX_CANTCREAT, EX_OK, EX_USAGE, stop


def key_path(args: argparse.Namespace, config: Config | None) -> Path:
    """Where the key goes: the key_file --config names for it, else DIR/DOMAIN.SELECTOR.key."""
    if config is None:
        return Path(args.dir or ".") / f"{args.domain}.{args.selector}.key"
    domain = config.dkim.get(args.domain)
    where = f'dkim."{args.domain}"'
    if domain is None:
        raise ConfigError(where, f"missing in {config.source} (add it, or use --dir)")
    for entry in domain.keys:
        if entry.selector == args.selector:
            return entry.key_file
    raise ConfigError(where, f"has no key with selector {args.selector!r}")


def keygen(args: argparse.Namespace, config: Config | None) -> int:
    from ..dkim.keygen import DEFAULT_RSA_BITS, generate_key, txt_record, write_key
    from ..dkim.keys import KeyAlgorithm

    algorithm = KeyAlgorithm(args.type)
    if algorithm is KeyAlgorithm.ED25519 and args.bits is not None:
        print("relaymail: --bits is for RSA keys; Ed25519 has one size", file=sys.stderr)
        return EX_USAGE
    try:
        path = key_path(args, config)
    except ConfigError as exc:
        return stop("relaymail", exc)
    pem, key = generate_key(algorithm, args.bits or DEFAULT_RSA_BITS)
    try:
        write_key(path, pem)
    except FileExistsError:
        print(f"relaymail: {path} exists; not overwritten (a new key needs a new selector)",
              file=sys.stderr)  # fmt: skip
        return EX_CANTCREAT
    except OSError as exc:
        print(f"relaymail: cannot create {path}: {exc.strerror or exc}", file=sys.stderr)
        return EX_CANTCREAT
    print(f"relaymail: wrote {path} ({key.algorithm.value}, mode 0600); publish:", file=sys.stderr)
    print(txt_record(args.domain, args.selector, key))
    return EX_OK
